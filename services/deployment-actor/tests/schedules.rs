//! Scheduling, re-scheduling, clearing and applying desired-state changes, end to end:
//! a real nats-server (JetStream message schedules), a real database, the actor binary.

mod common;

use std::time::Duration;

use common::{events_of, ActorCalls, Env, TIMEOUT};
use futures::StreamExt;
use slipway_core::state::TopologyStatus;
use slipway_core::{krane::Desired, time::now_ms};

async fn next_event(
    sub: &mut async_nats::Subscriber,
    within: Duration,
) -> Option<(i64, serde_json::Value)> {
    let msg = tokio::time::timeout(within, sub.next()).await.ok()??;
    Some((now_ms(), serde_json::from_slice(&msg.payload).unwrap()))
}

#[tokio::test]
async fn a_change_scheduled_2s_ahead_is_applied_within_a_second_of_its_due_time() {
    let mut env = common::start().await;
    let (project, dep) = env.seed_deployment().await;
    let mut events = events_of(&env, &dep).await;

    let reply = env.schedule(&dep, 2000, "standby", "").await;
    assert_eq!(reply.state, "standby");
    let pending = env
        .get_state(&dep)
        .await
        .pending
        .expect("pending before due time");
    assert_eq!(
        (pending.nonce.as_str(), pending.fires_at_ms),
        (reply.nonce.as_str(), reply.fires_at_ms)
    );
    assert_eq!(env.get_state(&dep).await.desired_state, "running");
    assert!(env.schedule_in_stream(&dep).await.is_some());

    let (seen_at, event) = next_event(&mut events, TIMEOUT)
        .await
        .expect("desired_state event");
    let lateness = seen_at - reply.fires_at_ms;
    assert!(
        (0..1000).contains(&lateness),
        "applied {lateness} ms after its due time"
    );
    assert_eq!(event["type"], "desired_state");
    assert_eq!(event["desired_state"], "standby");
    assert_eq!(event["nonce"], reply.nonce.as_str());
    assert_eq!(event["project_id"], project.as_str());
    assert_eq!(event["environment_slug"], "production");

    env.wait_transition_done(&dep).await;
    let state = env.get_state(&dep).await;
    assert_eq!(state.desired_state, "standby");
    assert!(state.pending.is_none());
    // The database, the region agents' desired state and the event stream all show it.
    let topology = env.store.topology(&dep).await.unwrap();
    assert!(
        topology
            .iter()
            .all(|t| t.desired_status == TopologyStatus::Stopped && t.version == 2),
        "{topology:?}"
    );
    for (region, replicas) in [("eu", 2), ("us", 1)] {
        let doc = env.desired_doc(region, &dep).await.expect("desired doc");
        assert_eq!(
            (doc.desired, doc.replicas, doc.version),
            (Desired::Stopped, replicas, 2)
        );
    }
    assert_eq!(env.project_events(&project).await.len(), 1);
    // Applied from memory: its backstop schedule is cancelled.
    env.wait_backstop_gone(&dep).await;
}

#[tokio::test]
async fn rescheduling_applies_only_the_newest_at_its_own_time() {
    let mut env = common::start().await;

    // Earlier first, then later: only the later one, at its time.
    let (project_a, a) = env.seed_deployment().await;
    let mut events_a = events_of(&env, &a).await;
    env.schedule(&a, 1000, "archived", "").await;
    let newest = env.schedule(&a, 2500, "standby", "").await;
    let (seen_at, event) = next_event(&mut events_a, TIMEOUT).await.expect("event");
    assert_eq!(event["nonce"], newest.nonce.as_str());
    assert_eq!(event["desired_state"], "standby");
    assert!(
        seen_at >= newest.fires_at_ms && seen_at - newest.fires_at_ms < 1000,
        "{}",
        seen_at - newest.fires_at_ms
    );

    // Later first, then earlier: the earlier one at its time, and the later never fires.
    let (project_b, b) = env.seed_deployment().await;
    let mut events_b = events_of(&env, &b).await;
    let superseded = env.schedule(&b, 3000, "archived", "").await;
    let newest = env.schedule(&b, 1000, "standby", "").await;
    let (seen_at, event) = next_event(&mut events_b, TIMEOUT).await.expect("event");
    assert_eq!(event["nonce"], newest.nonce.as_str());
    assert!(seen_at - newest.fires_at_ms < 1000);
    // Past the superseded one's due time (plus a margin) nothing else arrives.
    let quiet_for = Duration::from_millis((superseded.fires_at_ms - now_ms() + 1500).max(0) as u64);
    assert!(
        next_event(&mut events_b, quiet_for).await.is_none(),
        "a superseded schedule fired"
    );
    assert!(next_event(&mut events_a, Duration::from_millis(10))
        .await
        .is_none());

    assert_eq!(env.project_events(&project_a).await.len(), 1);
    assert_eq!(env.project_events(&project_b).await.len(), 1);
    assert_eq!(env.get_state(&b).await.desired_state, "standby");
}

#[tokio::test]
async fn clearing_before_the_due_time_changes_nothing_and_leaves_no_schedule() {
    let mut env = common::start().await;
    let (project, dep) = env.seed_deployment().await;
    let mut events = events_of(&env, &dep).await;

    let reply = env.schedule(&dep, 1500, "standby", "").await;
    assert!(env.clear(&dep).await);
    assert!(env.get_state(&dep).await.pending.is_none());
    assert!(
        env.schedule_in_stream(&dep).await.is_none(),
        "a schedule was left in the stream"
    );

    let quiet_for = Duration::from_millis((reply.fires_at_ms - now_ms() + 1500).max(0) as u64);
    assert!(
        next_event(&mut events, quiet_for).await.is_none(),
        "a cleared schedule fired"
    );
    assert_eq!(env.get_state(&dep).await.desired_state, "running");
    assert!(env.project_events(&project).await.is_empty());
    assert!(env.desired_doc("eu", &dep).await.is_none());
    // Clearing again is harmless and says there was nothing.
    assert!(!env.clear(&dep).await);
}

#[tokio::test]
async fn delay_zero_applies_at_once() {
    let mut env = common::start().await;
    let (project, dep) = env.seed_deployment().await;
    let reply = env.schedule(&dep, 0, "standby", "").await;
    // Applied before the reply: no waiting.
    let state = env.get_state(&dep).await;
    assert_eq!(state.desired_state, "standby");
    assert!(state.pending.is_none());
    assert!(env.schedule_in_stream(&dep).await.is_none());
    let events = env.project_events(&project).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["nonce"], reply.nonce.as_str());
    // And back to running the same way.
    env.schedule(&dep, 0, "running", "").await;
    assert_eq!(
        env.desired_doc("us", &dep).await.unwrap().desired,
        Desired::Running
    );
}

#[tokio::test]
async fn a_fired_message_delivered_twice_is_applied_once() {
    let mut env = common::start().await;
    let (project, dep) = env.seed_deployment().await;
    let reply = env.schedule(&dep, 300, "standby", "").await;
    env.wait_transition_done(&dep).await;
    env.wait_consumer_idle().await;

    // The same fired message again, twice, as a redelivery would bring it.
    let fired = serde_json::json!({"deployment_id": dep, "nonce": reply.nonce, "state": "standby"});
    for _ in 0..2 {
        env.js
            .publish(
                format!("slipway.timers.fired.deployment.{dep}"),
                fired.to_string().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    env.wait_consumer_idle().await;

    assert_eq!(env.project_events(&project).await.len(), 1);
    let topology = env.store.topology(&dep).await.unwrap();
    assert!(
        topology.iter().all(|t| t.version == 2),
        "applied more than once: {topology:?}"
    );
}

#[tokio::test]
async fn the_live_deployment_is_never_changed_by_a_fired_standby() {
    let mut env = common::start().await;
    let (project, dep) = env.seed_deployment().await;
    env.store
        .set_live_deployment(&project, Some(&dep), 2)
        .await
        .unwrap();

    env.schedule(&dep, 300, "standby", "").await;
    env.wait_transition_done(&dep).await;
    // An immediate stop of a serving deployment is refused to the caller at once.
    let refused = env
        .schedule_fenced(&dep, 0, "archived", 0)
        .await
        .expect_err("an immediate archive of the live deployment is refused");
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (400, "failed_precondition")
    );

    let d = env.store.deployment(&dep).await.unwrap();
    assert_eq!((d.desired_state.as_str(), d.updated_at_ms), ("running", 1));
    assert!(env
        .store
        .topology(&dep)
        .await
        .unwrap()
        .iter()
        .all(|t| t.version == 1));
    assert!(env.project_events(&project).await.is_empty());
    assert!(env.get_state(&dep).await.pending.is_none());
    assert!(env.services[0].count_log("refusing to stop a deployment that serves traffic") >= 1);
}

#[tokio::test]
async fn a_deployment_deleted_before_its_due_time_is_a_no_op_and_leaves_no_state() {
    let mut env = common::start().await;
    let (project, dep) = env.seed_deployment().await;
    env.schedule(&dep, 500, "standby", "").await;
    assert!(env.store.delete_deployment(&dep).await.unwrap());

    env.wait_transition_done(&dep).await;
    env.wait_consumer_idle().await;
    assert!(env.project_events(&project).await.is_empty());
    assert!(env.desired_doc("eu", &dep).await.is_none());
    env.wait_backstop_gone(&dep).await;
    // Nothing pending: no record, or the claim the apply from memory left.
    let stored = env.transitions.get(&dep).await.unwrap();
    let pending = stored.map(|raw| {
        rmp_serde::from_slice::<deployment_actor::transitions::Transition>(&raw).unwrap()
    });
    assert!(pending.as_ref().is_none_or(|t| t.applying), "{pending:?}");
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_first_nonce_and_schedules_nothing_new() {
    let mut env = common::start().await;
    let (project, dep) = env.seed_deployment().await;
    let first = env.schedule(&dep, 60_000, "standby", "dep_successor").await;
    let again = env.schedule(&dep, 1_000, "archived", "dep_successor").await;
    assert_eq!(first, again);
    assert_eq!(
        env.get_state(&dep).await.pending.unwrap().nonce,
        first.nonce
    );

    // A different key replaces it (last writer wins)...
    let other = env.schedule(&dep, 0, "standby", "dep_other").await;
    assert_ne!(other.nonce, first.nonce);
    assert_eq!(env.project_events(&project).await.len(), 1);
    // ...and the first key, retried later, still schedules nothing.
    let retried = env.schedule(&dep, 0, "archived", "dep_successor").await;
    assert_eq!(retried, first);
    assert!(env.get_state(&dep).await.pending.is_none());
    assert_eq!(env.get_state(&dep).await.desired_state, "standby");
    assert_eq!(env.project_events(&project).await.len(), 1);
}

/// Found by the cluster test: a schedule replaced just as the one it replaces fires. The
/// fired message of the old one is stale (its nonce is not the stored one), and the new
/// schedule was gone with it: its transition stayed pending with no schedule, until the
/// periodic reconcile. Each of 40 deployments is rescheduled within ±40 ms of its first
/// schedule's due time; every one ends in standby with nothing pending, soon after.
#[tokio::test]
async fn a_schedule_replaced_as_the_old_one_fires_still_fires() {
    replaced_as_the_old_one_fires(common::start().await).await;
}

/// The same on a 3-node cluster (R3), where the cluster test saw it.
#[tokio::test]
async fn a_schedule_replaced_as_the_old_one_fires_still_fires_on_a_cluster() {
    let env = Env::builder()
        .cluster()
        .service(common::ACTOR)
        .start()
        .await;
    replaced_as_the_old_one_fires(env).await;
}

async fn replaced_as_the_old_one_fires(mut env: Env) {
    let mut deployments = Vec::new();
    for _ in 0..40 {
        deployments.push(env.seed_deployment().await.1);
    }
    let env = std::sync::Arc::new(env);
    let mut replaced = tokio::task::JoinSet::new();
    for (i, dep) in deployments.iter().enumerate() {
        let first = env.schedule(dep, 1500, "standby", "").await;
        let offset = (i as i64 * 2) - 40;
        let (env, dep) = (env.clone(), dep.clone());
        replaced.spawn(async move {
            let wait = (first.fires_at_ms + offset - now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            env.schedule(&dep, 500, "standby", "").await;
        });
    }
    while let Some(done) = replaced.join_next().await {
        done.unwrap();
    }
    for dep in &deployments {
        tokio::time::timeout(Duration::from_secs(10), env.wait_transition_done(dep))
            .await
            .unwrap_or_else(|_| panic!("{dep}: its newest transition never fired"));
        assert_eq!(env.get_state(dep).await.desired_state, "standby", "{dep}");
    }
}
