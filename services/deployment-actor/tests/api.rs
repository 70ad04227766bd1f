//! The endpoint contract: bad input gets a 4xx error reply (headers and body) and writes
//! nothing; JSON and protobuf clients both work; `$SRV.INFO` lists the endpoints.

mod common;

use common::{protobuf_headers, schedule_subject, ActorCalls};
use prost::Message;
use slipway_proto::v1::{
    ErrorReply, GetStateReply, ScheduleDesiredStateChangeReply, ScheduleDesiredStateChangeRequest,
};

#[tokio::test]
async fn bad_input_gets_a_4xx_error_reply_and_writes_nothing() {
    let mut env = common::start().await;
    let (project, dep) = env.seed_deployment().await;
    let unknown = "dep_doesnotexist";

    let cases: Vec<(&str, String, &[u8], u16, &str)> = vec![
        (
            "unknown state",
            schedule_subject(&dep),
            br#"{"delay_ms": 10, "state": "paused"}"#,
            400,
            "paused",
        ),
        (
            "negative delay",
            schedule_subject(&dep),
            br#"{"delay_ms": -5, "state": "standby"}"#,
            400,
            "delay_ms",
        ),
        (
            "absurd delay",
            schedule_subject(&dep),
            br#"{"delay_ms": "99999999999999", "state": "standby"}"#,
            400,
            "delay_ms",
        ),
        (
            "malformed JSON",
            schedule_subject(&dep),
            br#"{"delay_ms": 10, "state": "#,
            400,
            "malformed JSON",
        ),
        (
            "wrong JSON type",
            schedule_subject(&dep),
            br#"{"delay_ms": "soon", "state": "standby"}"#,
            400,
            "malformed JSON",
        ),
        (
            "unknown field",
            schedule_subject(&dep),
            br#"{"delay": 10, "state": "standby"}"#,
            400,
            "malformed JSON",
        ),
        (
            "unknown deployment",
            schedule_subject(unknown),
            br#"{"delay_ms": 10, "state": "standby"}"#,
            404,
            unknown,
        ),
        (
            "not a deployment id",
            schedule_subject("proj_x"),
            br#"{"delay_ms": 10, "state": "standby"}"#,
            400,
            "proj_x",
        ),
        (
            "clear unknown",
            format!("slipway.deployment.v1.clear_scheduled_state_changes.{unknown}"),
            b"{}",
            404,
            unknown,
        ),
        (
            "get_state unknown",
            format!("slipway.deployment.v1.get_state.{unknown}"),
            b"{}",
            404,
            unknown,
        ),
    ];
    for (what, subject, body, status, mentions) in cases {
        let err = env
            .request::<ScheduleDesiredStateChangeReply>(&subject, body.to_vec())
            .await
            .expect_err(what);
        assert_eq!(err.status, status, "{what}");
        assert!(err.header_message.contains(mentions), "{what}: {err:?}");
        assert_eq!(err.body["error"]["status"], status, "{what}: {err:?}");
        let code = if status == 404 {
            "not_found"
        } else {
            "invalid_argument"
        };
        assert_eq!(err.body["error"]["code"], code, "{what}");
        assert_eq!(
            err.body["error"]["message"],
            err.header_message.as_str(),
            "{what}"
        );
    }

    // Malformed protobuf: the error comes back in protobuf.
    let msg = env
        .client
        .request_with_headers(
            schedule_subject(&dep),
            protobuf_headers(),
            vec![0xff, 0xff, 0xff].into(),
        )
        .await
        .unwrap();
    let headers = msg.headers.clone().unwrap();
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    let err = ErrorReply::decode(msg.payload.as_ref())
        .unwrap()
        .error
        .unwrap();
    assert_eq!((err.status, err.code.as_str()), (400, "invalid_argument"));
    assert!(err.message.contains("protobuf"));

    // Nothing was written anywhere.
    let keys: Vec<String> = {
        use futures::TryStreamExt;
        env.transitions
            .keys()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert!(keys.is_empty(), "{keys:?}");
    let timers = env
        .js
        .get_stream("SLIPWAY_TIMERS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(timers.state.messages, 0);
    assert!(env.project_events(&project).await.is_empty());
    assert_eq!(env.store.deployment(&dep).await.unwrap().updated_at_ms, 1);
    assert!(
        env.services[0].is_running(),
        "bad input must not bring the service down"
    );
}

#[tokio::test]
async fn json_and_protobuf_clients_both_work() {
    let mut env = common::start().await;
    let (_, dep) = env.seed_deployment().await;

    let req = ScheduleDesiredStateChangeRequest {
        delay_ms: 60_000,
        state: "archived".into(),
        idempotency_key: String::new(),
        ..Default::default()
    };
    let msg = env
        .client
        .request_with_headers(
            schedule_subject(&dep),
            protobuf_headers(),
            req.encode_to_vec().into(),
        )
        .await
        .unwrap();
    assert_eq!(
        msg.headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str()),
        Some("application/protobuf")
    );
    let reply = ScheduleDesiredStateChangeReply::decode(msg.payload.as_ref()).unwrap();
    assert_eq!(reply.state, "archived");

    // JSON, as `nats req` sends it: every field present, int64 as a string.
    let msg = env
        .client
        .request(format!("slipway.deployment.v1.get_state.{dep}"), "".into())
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(json["deployment_id"], dep.as_str());
    assert_eq!(json["desired_state"], "running");
    assert_eq!(json["pending"]["nonce"], reply.nonce.as_str());
    assert_eq!(
        json["pending"]["fires_at_ms"],
        reply.fires_at_ms.to_string()
    );
    let typed: GetStateReply = serde_json::from_value(json).unwrap();
    assert_eq!(typed.pending.unwrap().fires_at_ms, reply.fires_at_ms);

    // lowerCamelCase input is accepted too.
    let camel = r#"{"delayMs": 0, "state": "standby", "idempotencyKey": "k"}"#;
    let r: ScheduleDesiredStateChangeReply =
        env.request(&schedule_subject(&dep), camel).await.unwrap();
    assert_eq!(r.state, "standby");
}

#[tokio::test]
async fn srv_info_lists_the_endpoints() {
    let env = common::start().await;
    let msg = env
        .client
        .request("$SRV.INFO.slipway-deployment", "".into())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(info["name"], "slipway-deployment");
    let mut endpoints: Vec<(String, String)> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["subject"].as_str().unwrap().into(),
            )
        })
        .collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        vec![
            (
                "clear_scheduled_state_changes".into(),
                "slipway.deployment.v1.clear_scheduled_state_changes.*".into()
            ),
            (
                "get_state".into(),
                "slipway.deployment.v1.get_state.*".into()
            ),
            (
                "schedule_desired_state_change".into(),
                "slipway.deployment.v1.schedule_desired_state_change.*".into()
            ),
        ]
    );
    let ping = env
        .client
        .request("$SRV.PING.slipway-deployment", "".into())
        .await
        .unwrap();
    assert!(!ping.payload.is_empty());
}
