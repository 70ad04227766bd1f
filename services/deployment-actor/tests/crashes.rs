//! Crashes: the actor SIGKILLed between scheduling and the due time, or aborted at the exact
//! points of an apply (test-only fault points), and nats-server restarted on the same store.
//! Every change is applied exactly once afterwards.

mod common;

use common::{assert_applied_once, ActorCalls, ACTOR, TIMEOUT};

#[tokio::test]
async fn actor_killed_before_the_due_time_and_nats_restarted_applies_every_change_once() {
    let mut env = common::start().await;
    let mut scheduled = Vec::new();
    for _ in 0..20 {
        let (project, dep) = env.seed_deployment().await;
        let reply = env.schedule(&dep, 2500, "standby", "").await;
        scheduled.push((project, dep, reply.nonce));
    }
    env.services[0].kill();
    env.restart_nats().await;
    // The schedules fire into the stream while no actor runs; the one started now applies them.
    env.spawn(ACTOR, &[]);

    for (project, dep, nonce) in &scheduled {
        assert_applied_once(&env, project, dep, nonce).await;
    }
}

/// Crash at `point` while applying, restart nats-server, start a healthy actor.
async fn crash_while_applying(point: &str) {
    let mut env = common::start().await;
    env.services[0].kill();
    env.services.clear();
    let crashing = env.spawn(ACTOR, &[("SLIPWAY_FAULT_POINT", point.to_string())]);
    let (project, dep) = env.seed_deployment().await;
    let reply = env.schedule(&dep, 200, "standby", "").await;

    let actor = &mut env.services[crashing];
    actor
        .wait_for_log(&format!("fault point {point} reached"), TIMEOUT)
        .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while actor.is_running() {
        assert!(std::time::Instant::now() < deadline, "actor did not abort");
        std::thread::yield_now();
    }

    env.restart_nats().await;
    let healthy = env.spawn(ACTOR, &[]);
    assert_applied_once(&env, &project, &dep, &reply.nonce).await;
    assert_eq!(
        env.services[healthy].count_log("completed after a redelivery"),
        1
    );
}

#[tokio::test]
async fn actor_crashing_after_the_database_commit_completes_once_after_restart() {
    crash_while_applying("actor.after_db_commit").await;
}

#[tokio::test]
async fn actor_crashing_before_removing_the_transition_completes_once_after_restart() {
    crash_while_applying("actor.before_transition_removed").await;
}

#[tokio::test]
async fn actor_crashing_between_storing_a_transition_and_writing_its_timer_is_repaired_at_start_up()
{
    let mut env = common::start().await;
    env.services[0].kill();
    env.services.clear();
    let crashing = env.spawn(
        ACTOR,
        &[(
            "SLIPWAY_FAULT_POINT",
            "actor.after_transition_stored".to_string(),
        )],
    );
    let (project, dep) = env.seed_deployment().await;
    // The call dies with the actor: the transition is stored, no timer written. Resent until
    // it reaches the crashing actor (a request can go to the killed one's subscription).
    for _ in 0..10 {
        let request = env.client.request(
            common::schedule_subject(&dep),
            r#"{"delay_ms": 300, "state": "standby"}"#.into(),
        );
        let answered = tokio::time::timeout(std::time::Duration::from_secs(2), request).await;
        assert!(
            answered.map_or(true, |r| r.is_err()),
            "the crashing actor answered"
        );
        if env.services[crashing].count_log("fault point actor.after_transition_stored reached") > 0
        {
            break;
        }
    }
    env.services[crashing]
        .wait_for_log("fault point actor.after_transition_stored reached", TIMEOUT)
        .unwrap();
    // No actor runs now: read the stored transition from the KV itself.
    let raw = env
        .transitions
        .get(&dep)
        .await
        .unwrap()
        .expect("transition stored before the crash");
    let nonce = rmp_serde::from_slice::<deployment_actor::transitions::Transition>(&raw)
        .unwrap()
        .nonce;
    assert!(env.schedule_in_stream(&dep).await.is_none());

    let healthy = env.spawn(ACTOR, &[]);
    env.services[healthy]
        .wait_for_log("timers reconciled", TIMEOUT)
        .unwrap();
    assert_applied_once(&env, &project, &dep, &nonce).await;
}
