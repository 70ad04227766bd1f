//! On a 3-node JetStream cluster with every stream and bucket at 3 replicas, schedules fire
//! and apply, also after one node is killed.

mod common;

use std::collections::BTreeMap;

use common::{bin, decode_reply, schedule_subject, ACTOR, TIMEOUT};
use futures::StreamExt;
use slipway_proto::v1::ScheduleDesiredStateChangeReply;
use slipway_store::{NewDeployment, Store};
use slipway_testkit::{NatsCluster, ServiceProcess, TestDb};

#[tokio::test]
async fn schedules_fire_on_a_three_node_cluster_and_survive_a_node_loss() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let db = TestDb::sqlite().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    store.create_workspace("ws_1", "w", "W", 1).await.unwrap();
    store
        .create_project("proj_1", "ws_1", "app", "App", "main", 1)
        .await
        .unwrap();
    let regions = BTreeMap::from([("local".to_string(), 1)]);
    store
        .create_environment(
            "env_1",
            "proj_1",
            "production",
            &regions,
            8080,
            "{}",
            &[],
            1,
        )
        .await
        .unwrap();
    for dep in ["dep_a", "dep_b"] {
        let new = NewDeployment {
            id: dep.into(),
            environment_id: "env_1".into(),
            ..Default::default()
        };
        store.insert_deployment(&new, 1).await.unwrap();
        store.upsert_topology(dep, "local", 1, 1).await.unwrap();
    }

    // Two actors, each attached to different nodes first.
    let mut actors = Vec::new();
    for i in 0..2 {
        let urls = if i == 0 {
            cluster.urls()
        } else {
            cluster.nodes[2].url() + "," + &cluster.nodes[1].url()
        };
        let actor = ServiceProcess::spawn(
            &format!("actor{i}"),
            bin(ACTOR),
            &[],
            &[
                ("SLIPWAY_NATS_URL", urls),
                ("SLIPWAY_JS_REPLICAS", "3".into()),
                ("SLIPWAY_DATABASE_URL", db.url.clone()),
            ],
        )
        .unwrap();
        actor.wait_ready("deployment-actor", TIMEOUT).unwrap();
        actors.push(actor);
    }

    let client = async_nats::connect(cluster.nodes[1].url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let timers = js
        .get_stream("SLIPWAY_TIMERS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(timers.config.num_replicas, 3);

    let mut events = client
        .subscribe("slipway.events.proj_1.*.desired_state")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let msg = client
        .request(
            schedule_subject("dep_a"),
            r#"{"delay_ms": 1000, "state": "standby"}"#.into(),
        )
        .await
        .unwrap();
    let a: ScheduleDesiredStateChangeReply = decode_reply(&msg).unwrap();
    let event = tokio::time::timeout(TIMEOUT, events.next())
        .await
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["nonce"], a.nonce.as_str());

    // Lose a node (quorum remains): schedule, fire and apply still work.
    let msg = client
        .request(
            schedule_subject("dep_b"),
            r#"{"delay_ms": 1500, "state": "archived"}"#.into(),
        )
        .await
        .unwrap();
    let b: ScheduleDesiredStateChangeReply = decode_reply(&msg).unwrap();
    cluster.nodes[0].kill();
    let event = tokio::time::timeout(TIMEOUT, events.next())
        .await
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["nonce"], b.nonce.as_str());
    assert_eq!(
        store.deployment("dep_b").await.unwrap().desired_state,
        slipway_core::state::DesiredState::Archived
    );
}
