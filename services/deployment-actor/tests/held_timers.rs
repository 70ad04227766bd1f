//! Timers held in memory, with the JetStream schedule as their backstop
//! (`SLIPWAY_ACTOR_BACKSTOP_AFTER` past the due time): a change is applied from memory on time,
//! by a process that starts after its due time, by another process through the backstop when
//! the one holding it died, and once when both paths race for it.

mod common;

use std::time::Duration;

use common::{assert_applied_once, events_of, ActorCalls, ACTOR, TIMEOUT};
use futures::StreamExt;
use slipway_core::time::now_ms;

fn backstop(after: &str) -> [(&'static str, String); 1] {
    [("SLIPWAY_ACTOR_BACKSTOP_AFTER", after.to_string())]
}

/// The `desired_state` event of `dep`, and when it was seen.
async fn applied_at(sub: &mut async_nats::Subscriber) -> (i64, serde_json::Value) {
    let msg = tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .expect("a desired_state event")
        .expect("the subscription is open");
    (now_ms(), serde_json::from_slice(&msg.payload).unwrap())
}

#[tokio::test]
async fn a_change_is_applied_from_memory_on_time_while_its_backstop_is_an_hour_away() {
    let mut env = common::without_actor().await;
    env.spawn(ACTOR, &backstop("1h"));
    let (project, dep) = env.seed_deployment().await;
    let mut events = events_of(&env, &dep).await;

    let reply = env.schedule(&dep, 300, "standby", "").await;
    // The durable schedule is the backstop, an hour after the due time.
    let stream = env
        .js
        .get_stream(slipway_nats::provision::TIMERS)
        .await
        .unwrap();
    let schedule = stream
        .get_last_raw_message_by_subject(&deployment_actor::timers::schedule_subject(&dep))
        .await
        .expect("the backstop schedule");
    let at = schedule
        .headers
        .get(async_nats::header::NATS_SCHEDULE)
        .expect("Nats-Schedule")
        .to_string();
    let backstop_at =
        humantime::parse_rfc3339(at.trim_start_matches("@at ")).expect("an @at schedule");
    let backstop_ms = backstop_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(backstop_ms, reply.fires_at_ms + 3_600_000);

    let (seen_at, event) = applied_at(&mut events).await;
    let lateness = seen_at - reply.fires_at_ms;
    assert!(
        (0..300).contains(&lateness),
        "applied {lateness} ms after its due time"
    );
    assert_eq!(event["nonce"], reply.nonce.as_str());
    assert_applied_once(&env, &project, &dep, &reply.nonce).await;
    // Applied: the backstop is cancelled, so it never fires.
    env.wait_backstop_gone(&dep).await;
}

#[tokio::test]
async fn a_change_due_while_no_actor_ran_is_applied_as_soon_as_one_starts() {
    let mut env = common::without_actor().await;
    let first = env.spawn(ACTOR, &backstop("1h"));
    let (project, dep) = env.seed_deployment().await;
    let mut events = events_of(&env, &dep).await;
    let reply = env.schedule(&dep, 300, "standby", "").await;
    env.kill_service(first);

    // Well past the due time; the backstop is an hour away.
    tokio::time::sleep(Duration::from_millis(
        (reply.fires_at_ms + 500 - now_ms()).max(0) as u64,
    ))
    .await;
    assert!(
        env.transitions.get(&dep).await.unwrap().is_some(),
        "applied by nobody yet"
    );
    let started = now_ms();
    env.spawn(ACTOR, &backstop("1h"));
    let (seen_at, _) = applied_at(&mut events).await;
    assert!(
        seen_at - started < 5_000,
        "applied {} ms after the actor started",
        seen_at - started
    );
    assert_applied_once(&env, &project, &dep, &reply.nonce).await;
}

#[tokio::test]
async fn a_timer_whose_process_died_is_applied_by_another_through_the_backstop() {
    let mut env = common::without_actor().await;
    let a = env.spawn(ACTOR, &backstop("1s"));
    let b = env.spawn(ACTOR, &backstop("1s"));
    let (project, dep) = env.seed_deployment().await;
    let mut events = events_of(&env, &dep).await;
    let reply = env.schedule(&dep, 500, "standby", "").await;

    // Only the process that took the call holds the timer; it dies before the due time.
    let holder = [a, b]
        .into_iter()
        .find(|&i| env.services[i].count_log(&reply.nonce) > 0)
        .expect("a process logged the schedule");
    env.kill_service(holder);

    let (seen_at, event) = applied_at(&mut events).await;
    assert_eq!(event["nonce"], reply.nonce.as_str());
    let lateness = seen_at - reply.fires_at_ms;
    assert!(
        lateness >= 900,
        "applied {lateness} ms after its due time: not by the backstop"
    );
    assert_applied_once(&env, &project, &dep, &reply.nonce).await;
}

/// With no delay before the backstop, every timer fires from memory and from the stream at
/// about the same moment, in two processes: the nonce claim lets one of them apply it.
#[tokio::test]
async fn both_paths_racing_for_every_timer_apply_each_change_once() {
    let mut env = common::without_actor().await;
    env.spawn(ACTOR, &backstop("0s"));
    env.spawn(ACTOR, &backstop("0s"));
    let mut seeded = Vec::new();
    for _ in 0..30 {
        seeded.push(env.seed_deployment().await);
    }
    let mut nonces = Vec::new();
    for (_, dep) in &seeded {
        nonces.push(env.schedule(dep, 800, "standby", "").await.nonce);
    }
    for ((project, dep), nonce) in seeded.iter().zip(&nonces) {
        assert_applied_once(&env, project, dep, nonce).await;
    }
    env.wait_consumer_idle().await;
    for (project, dep) in &seeded {
        assert_eq!(env.project_events(project).await.len(), 1, "{dep}");
    }
}

/// A timer applied from memory leaves its claim stored (a write fewer per timer), shown as
/// nothing pending; the reconcile of an actor started with `SLIPWAY_ACTOR_TIDY_CLAIMS_AFTER`
/// past it tidies the claim away without applying the change a second time.
#[tokio::test]
async fn the_claim_an_applied_timer_leaves_is_tidied_by_the_reconcile_without_a_second_apply() {
    let mut env = common::without_actor().await;
    let first = env.spawn(ACTOR, &backstop("1h"));
    let (project, dep) = env.seed_deployment().await;
    let reply = env.schedule(&dep, 100, "standby", "").await;
    env.wait_transition_done(&dep).await;
    let claim = stored_transition(&env, &dep)
        .await
        .expect("the claim stays");
    assert!(claim.applying, "{claim:?}");
    assert_eq!(claim.nonce, reply.nonce);
    assert!(env.get_state(&dep).await.pending.is_none());
    env.kill_service(first);

    let tidy = [
        ("SLIPWAY_ACTOR_BACKSTOP_AFTER", "1h".to_string()),
        ("SLIPWAY_ACTOR_TIDY_CLAIMS_AFTER", "0s".to_string()),
    ];
    let second = env.spawn(ACTOR, &tidy);
    env.services[second]
        .wait_for_log("timers reconciled", TIMEOUT)
        .unwrap();
    assert_eq!(stored_transition(&env, &dep).await, None, "tidied away");
    assert_applied_once(&env, &project, &dep, &reply.nonce).await;
}

/// A newer schedule written while an apply from memory is finishing (held just before it
/// cancels its backstop) keeps its backstop: the apply replaces only its own schedule with
/// the applied marker (expected last subject sequence).
#[tokio::test]
async fn a_schedule_written_while_a_timer_is_applied_from_memory_keeps_its_backstop() {
    let mut env = common::without_actor().await;
    let pause = [
        ("SLIPWAY_ACTOR_BACKSTOP_AFTER", "1h".to_string()),
        (
            "SLIPWAY_FAULT_PAUSE",
            "actor.before_backstop_cancelled=2s".to_string(),
        ),
    ];
    let actor = env.spawn(ACTOR, &pause);
    let (_, dep) = env.seed_deployment().await;
    // Every message sent to the deployment's schedule subject (those the stream refuses
    // too), and every reply.
    let mut sent = env
        .client
        .subscribe(deployment_actor::timers::schedule_subject(&dep))
        .await
        .unwrap();
    let mut replies = env.client.subscribe("_INBOX.>").await.unwrap();
    env.client.flush().await.unwrap();

    env.schedule(&dep, 100, "standby", "").await;
    env.services[actor]
        .wait_for_log(
            "fault pause actor.before_backstop_cancelled reached",
            TIMEOUT,
        )
        .unwrap();
    // Settles the claimed change first, then stores its own and writes its backstop.
    let newer = env.schedule(&dep, 3_600_000, "archived", "").await;
    assert_eq!(
        env.schedule_in_stream(&dep).await.unwrap()["nonce"],
        newer.nonce.as_str()
    );

    // The paused apply goes on and cancels its backstop: wait for the stream's answer to
    // its applied marker.
    let reply_to = tokio::time::timeout(TIMEOUT, async {
        while let Some(msg) = sent.next().await {
            let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            if body["applied"] == true {
                return msg.reply.expect("a JetStream publish awaits its ack");
            }
        }
        panic!("subscription closed");
    })
    .await
    .expect("the apply from memory cancels its backstop");
    tokio::time::timeout(TIMEOUT, async {
        while let Some(msg) = replies.next().await {
            if msg.subject == reply_to {
                return;
            }
        }
    })
    .await
    .expect("the marker is answered");

    let schedule = env.schedule_in_stream(&dep).await;
    assert_eq!(
        schedule.as_ref().map(|s| s["nonce"].clone()),
        Some(newer.nonce.as_str().into()),
        "the newer schedule's backstop is still there"
    );
    let pending = env.get_state(&dep).await.pending.expect("still pending");
    assert_eq!(pending.nonce, newer.nonce);
}

/// The transition stored for `dep`, if any (`None` also for a record holding only a token).
async fn stored_transition(
    env: &common::Env,
    dep: &str,
) -> Option<deployment_actor::transitions::Transition> {
    let raw = env.transitions.get(dep).await.unwrap()?;
    let value: serde_json::Value = rmp_serde::from_slice(&raw).unwrap();
    value.get("nonce")?;
    Some(rmp_serde::from_slice(&raw).unwrap())
}

/// A clear after a timer applied from memory settles the claim it left without applying the
/// change again: no second `desired_state` publish (past the event stream's duplicate window,
/// it would be a second event).
#[tokio::test]
async fn a_clear_after_a_timer_applied_from_memory_publishes_no_second_event() {
    let mut env = common::without_actor().await;
    env.spawn(ACTOR, &backstop("1h"));
    let (project, dep) = env.seed_deployment().await;
    let mut events = events_of(&env, &dep).await;
    let reply = env.schedule(&dep, 100, "standby", "").await;
    applied_at(&mut events).await;
    env.wait_transition_done(&dep).await;

    assert!(!env.clear(&dep).await, "nothing was pending");
    assert_eq!(
        stored_transition(&env, &dep).await,
        None,
        "the claim is settled"
    );
    // Anything the clear published reached this core subscription before its reply, so
    // before this marker (even a publish the stream drops as a duplicate).
    let marker = format!("slipway.events.marker.{dep}.desired_state");
    env.client
        .publish(marker.clone(), "marker".into())
        .await
        .unwrap();
    let next = tokio::time::timeout(TIMEOUT, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next.subject.as_str(),
        marker,
        "published again by the clear"
    );
    assert_applied_once(&env, &project, &dep, &reply.nonce).await;
}
