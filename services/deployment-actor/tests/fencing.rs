//! Schedules and clears made under a project lease carry its epoch as a fencing token: once a
//! deployment has seen a token, a call with an older one (a former lease holder that stalled
//! and woke up) is refused with 409 "stale fencing token" and changes nothing — not while a
//! transition is pending, not after it was cleared, not after it was applied. A call from a
//! holder of the lease is also refused once any later holder took the project's lease. Calls
//! without a token (operators, the idle-preview spin-down) are not fenced.

mod common;

use common::{ActorCalls, ErrorResponse};
use slipway_core::error::STALE_FENCING_TOKEN;

fn assert_stale(result: Result<impl std::fmt::Debug, ErrorResponse>, what: &str) {
    let e = result.expect_err(what);
    assert_eq!(e.status, 409, "{what}: {e:?}");
    assert!(
        e.header_message.starts_with(STALE_FENCING_TOKEN),
        "{what}: {e:?}"
    );
}

#[tokio::test]
async fn an_older_token_changes_nothing() {
    let mut env = common::start().await;
    let (_, dep) = env.seed_deployment().await;

    // A newer holder scheduled the standby; a former one may not clear it or wake the
    // deployment instead.
    let standby = env
        .schedule_fenced(&dep, 600_000, "standby", 7)
        .await
        .expect("schedule with token 7");
    assert_stale(env.clear_fenced(&dep, 5).await, "clear with token 5");
    assert_stale(
        env.schedule_fenced(&dep, 0, "running", 5).await,
        "wake with token 5",
    );
    let state = env.get_state(&dep).await;
    assert_eq!(
        state.pending.map(|p| p.nonce),
        Some(standby.nonce.clone()),
        "a refused call changed the pending transition"
    );

    // The same token is the same holder: accepted. The token outlives the transition.
    assert!(
        env.clear_fenced(&dep, 7)
            .await
            .expect("clear, token 7")
            .cleared
    );
    assert_stale(
        env.schedule_fenced(&dep, 600_000, "standby", 6).await,
        "schedule with token 6 after a clear with 7",
    );
    assert!(env.get_state(&dep).await.pending.is_none());

    // ... and outlives an applied transition.
    env.schedule_fenced(&dep, 0, "standby", 9)
        .await
        .expect("standby now, token 9");
    assert_eq!(env.get_state(&dep).await.desired_state, "standby");
    assert_stale(
        env.schedule_fenced(&dep, 0, "running", 8).await,
        "wake with token 8 after an applied change with 9",
    );
    assert_eq!(env.get_state(&dep).await.desired_state, "standby");

    // Unfenced calls are not refused, and do not lower the token.
    env.schedule(&dep, 600_000, "archived", "").await;
    assert!(env.clear(&dep).await);
    assert_stale(env.clear_fenced(&dep, 8).await, "clear with token 8");
    env.schedule_fenced(&dep, 0, "running", 10)
        .await
        .expect("wake with token 10");
    assert_eq!(env.get_state(&dep).await.desired_state, "running");
}

#[tokio::test]
async fn a_lease_holders_call_is_refused_once_a_later_holder_took_the_lease() {
    let mut env = common::start().await;
    let (project, dep) = env.seed_deployment().await;
    env.schedule_fenced(&dep, 600_000, "standby", 3)
        .await
        .expect("schedule with token 3");
    // A later holder takes the project's lease (epoch 5) and has not called about `dep`.
    env.store.fence(&project, 5).await.unwrap();
    // The former holder, deciding under its lease: refused, nothing changes.
    assert_stale(env.clear_holding(&dep, 3).await, "clear holding lease 3");
    assert!(env.get_state(&dep).await.pending.is_some());
    // A follow-up of a commit made under epoch 3 is still taken: no later holder decided
    // about this deployment.
    assert!(
        env.clear_fenced(&dep, 3)
            .await
            .expect("clear after commit 3")
            .cleared
    );
    // The later holder itself is accepted.
    assert!(
        !env.clear_holding(&dep, 5)
            .await
            .expect("clear holding lease 5")
            .cleared
    );
}
