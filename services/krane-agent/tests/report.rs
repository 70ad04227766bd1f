//! The fence on instance reports (`krane_agent::report`), against a real nats-server: once
//! an agent of a later lease epoch has written a report, an agent of an earlier epoch writes
//! it no more, whichever revision it last knew.

use std::time::Duration;

use krane_agent::report::{ReportError, Reporter};
use slipway_core::krane::{instances_key, InstanceStatus, InstancesReport, ReportedInstance};
use slipway_testkit::plane::Plane as Env;

fn running(address: &str) -> Vec<ReportedInstance> {
    vec![ReportedInstance {
        id: "inst_1".into(),
        address: address.into(),
        status: InstanceStatus::Running,
        message: None,
        restarts: 0,
        crash_looping: false,
        unrunnable: false,
    }]
}

async fn stored(env: &Env, deployment_id: &str) -> Option<InstancesReport> {
    let value = env
        .instances
        .get(instances_key(deployment_id, "local"))
        .await
        .unwrap()?;
    Some(serde_json::from_slice(&value).unwrap())
}

fn deposed(result: Result<(), ReportError>) -> bool {
    matches!(result, Err(ReportError::Deposed { ours: 5, theirs: 9 }))
}

#[tokio::test]
async fn a_report_of_a_later_epoch_fences_out_every_earlier_writer() {
    let env = Env::builder().start().await;
    let old = Reporter::new(env.instances.clone(), "local", 5);
    let new = Reporter::new(env.instances.clone(), "local", 9);

    // The earlier agent wrote first; its successor's first write reads that and goes over it.
    let mut old_a = old.of("dep_a");
    old_a.put(&running("127.0.0.1:1"), 1).await.unwrap();
    assert_eq!(stored(&env, "dep_a").await.unwrap().epoch, 5);
    let mut new_a = new.of("dep_a");
    new_a.put(&running("127.0.0.1:2"), 1).await.unwrap();

    // The earlier agent's next write (on the revision it wrote), a new supervisor's, an
    // empty report and a removal: all refused, and the agent is told.
    assert!(deposed(old_a.put(&running("127.0.0.1:3"), 1).await));
    tokio::time::timeout(Duration::from_secs(1), old.deposed())
        .await
        .expect("the deposed agent is told");
    assert!(deposed(old.of("dep_a").put(&[], 1).await));
    assert!(deposed(old.of("dep_a").put_if_absent(1).await));
    assert!(deposed(old.of("dep_a").remove().await));
    let report = stored(&env, "dep_a").await.unwrap();
    assert_eq!(
        (report.epoch, report.instances),
        (9, running("127.0.0.1:2"))
    );

    // The successor goes on: writes over its own revision, removes, writes again.
    new_a.put(&running("127.0.0.1:4"), 2).await.unwrap();
    new_a.remove().await.unwrap();
    assert!(stored(&env, "dep_a").await.is_none());
    new_a.put(&running("127.0.0.1:5"), 3).await.unwrap();
    assert_eq!(stored(&env, "dep_a").await.unwrap().version, 3);
    // An empty report is written only where there is none.
    new.of("dep_a").put_if_absent(4).await.unwrap();
    assert_eq!(stored(&env, "dep_a").await.unwrap().version, 3);
    new.of("dep_b").put_if_absent(4).await.unwrap();
    assert_eq!(stored(&env, "dep_b").await.unwrap().instances, vec![]);
}

#[tokio::test]
async fn a_write_that_lost_a_race_reads_again_and_writes() {
    let env = Env::builder().start().await;
    let agent = Reporter::new(env.instances.clone(), "local", 7);
    // A report without an epoch (an agent that does not fence, or one from before fencing).
    env.instances
        .put(
            instances_key("dep_a", "local"),
            r#"{"instances":[],"reported_at_ms":0}"#.into(),
        )
        .await
        .unwrap();
    let (mut one, mut other) = (agent.of("dep_a"), agent.of("dep_a"));
    one.put(&running("127.0.0.1:1"), 1).await.unwrap();
    // `other` read nothing yet; then `one` writes again after it: each write's
    // compare-and-set misses once and succeeds on reading again.
    other.put(&running("127.0.0.1:2"), 1).await.unwrap();
    one.put(&running("127.0.0.1:3"), 1).await.unwrap();
    let report = stored(&env, "dep_a").await.unwrap();
    assert_eq!(
        (report.epoch, report.instances),
        (7, running("127.0.0.1:3"))
    );

    // The same agent took the lease again (a later epoch): its writes carry it.
    agent.set_epoch(8);
    other.put(&running("127.0.0.1:4"), 1).await.unwrap();
    assert_eq!(stored(&env, "dep_a").await.unwrap().epoch, 8);
}
