//! Linearizability: two actor processes, 200 concurrent schedule / clear calls on one
//! deployment from several clients. The final state is that of a call that finished last in
//! real-time order (no call began after it ended), and the stream's schedule agrees with it.

mod common;

use std::time::Instant;

use common::{decode_reply, schedule_subject, ActorCalls, ACTOR};
use slipway_proto::v1::{ClearScheduledStateChangesReply, ScheduleDesiredStateChangeReply};

#[derive(Debug, Clone)]
struct Done {
    start: Instant,
    end: Instant,
    /// The nonce a schedule stored, or None for a clear.
    effect: Option<String>,
}

const CLIENTS: usize = 8;
const CALLS: usize = 200;

#[tokio::test]
async fn two_actors_and_200_concurrent_calls_end_in_the_last_writers_state() {
    let mut env = common::start().await;
    env.spawn(ACTOR, &[]);
    let (_, dep) = env.seed_deployment().await;

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = env.nats.url();
        let dep = dep.clone();
        tasks.push(tokio::spawn(async move {
            let client = async_nats::connect(url).await.unwrap();
            let mut done = Vec::new();
            for i in 0..CALLS / CLIENTS {
                let start = Instant::now();
                let effect = if (i + c) % 3 == 2 {
                    let msg = client
                        .request(
                            format!("slipway.deployment.v1.clear_scheduled_state_changes.{dep}"),
                            "{}".into(),
                        )
                        .await
                        .unwrap();
                    decode_reply::<ClearScheduledStateChangesReply>(&msg).unwrap();
                    None
                } else {
                    let state = ["standby", "archived"][i % 2];
                    let body = format!(r#"{{"delay_ms": 600000, "state": "{state}"}}"#);
                    let msg = client
                        .request(schedule_subject(&dep), body.into())
                        .await
                        .unwrap();
                    Some(
                        decode_reply::<ScheduleDesiredStateChangeReply>(&msg)
                            .unwrap()
                            .nonce,
                    )
                };
                done.push(Done {
                    start,
                    end: Instant::now(),
                    effect,
                });
            }
            done
        }));
    }
    let mut calls = Vec::new();
    for t in tasks {
        calls.extend(t.await.unwrap());
    }
    assert_eq!(calls.len(), CALLS);

    let state = env.get_state(&dep).await;
    let final_nonce = state.pending.map(|p| p.nonce);
    // Calls no other call began after: any of them may legitimately be the last writer.
    let last_writers: Vec<&Done> = calls
        .iter()
        .filter(|c| !calls.iter().any(|d| d.start > c.end))
        .collect();
    assert!(
        last_writers.iter().any(|c| c.effect == final_nonce),
        "final state {final_nonce:?} is not the effect of any last call: {last_writers:?}"
    );
    // Every schedule reply carried a distinct nonce: no two calls were merged.
    let mut nonces: Vec<_> = calls.iter().filter_map(|c| c.effect.clone()).collect();
    let scheduled = nonces.len();
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), scheduled);

    // The stream holds exactly the schedule the KV says is pending.
    let in_stream = env
        .schedule_in_stream(&dep)
        .await
        .map(|s| s["nonce"].as_str().unwrap().to_string());
    assert_eq!(in_stream, final_nonce);

    // Both actors served requests.
    for actor in &env.services {
        assert!(actor.count_log("schedule_desired_state_change") + actor.count_log("cleared") > 0);
    }
}
