//! A clear that races a fired change: once `clear_scheduled_state_changes` has replied, the
//! change it raced is never applied afterwards. The actor is held (a test-only pause) right
//! after it claimed the fired transition and before it writes it; the clear that comes in
//! then completes that change before it replies, so what the caller sees at the reply is
//! what stays.

mod common;

use common::{ActorCalls, ACTOR, TIMEOUT};

#[tokio::test(flavor = "multi_thread")]
async fn a_clear_that_replied_is_never_followed_by_the_change_it_raced() {
    let mut env = common::without_actor().await;
    let actor = env.spawn(
        ACTOR,
        &[("SLIPWAY_FAULT_PAUSE", "actor.after_claim=3s".into())],
    );
    let (_, dep) = env.seed_deployment().await;
    env.schedule(&dep, 300, "standby", "").await;
    tokio::task::block_in_place(|| {
        env.services[actor]
            .wait_for_log("fault pause actor.after_claim reached", TIMEOUT)
            .unwrap()
    });

    let cleared = env.clear(&dep).await;
    let at_reply = env.store.deployment(&dep).await.unwrap().desired_state;
    // The change was under way: the clear completed it and found nothing left to clear.
    assert!(
        !cleared,
        "the clear claims to have cancelled a change under way"
    );
    assert_eq!(at_reply, slipway_core::state::DesiredState::Standby);
    assert!(env.get_state(&dep).await.pending.is_none());

    // The paused apply wakes up later and finds its work done: nothing changes.
    tokio::task::block_in_place(|| {
        env.services[actor]
            .wait_for_log("desired state change completed after a redelivery", TIMEOUT)
            .unwrap()
    });
    env.wait_transition_done(&dep).await;
    assert_eq!(
        env.store.deployment(&dep).await.unwrap().desired_state,
        at_reply
    );
    let topology = env.store.topology(&dep).await.unwrap();
    assert!(
        topology.iter().all(|t| t.version == 2),
        "applied once: {topology:?}"
    );
}
