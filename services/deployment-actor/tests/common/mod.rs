//! Actor tests run on the test kit's [`Plane`] with only deployment-actor processes started;
//! this adds typed clients for the actor's endpoints and what its tests wait for.
// Each test binary uses a part of it.
#![allow(dead_code, unused_imports)]

use std::{collections::BTreeMap, time::Duration};

use async_nats::{
    jetstream::{self, kv},
    HeaderMap,
};
use futures::StreamExt;
use slipway_core::krane::{desired_deployment_key, DesiredDeployment};
use slipway_nats::provision;
use slipway_proto::v1::{
    ClearScheduledStateChangesReply, ClearScheduledStateChangesRequest, GetStateReply,
    ScheduleDesiredStateChangeReply, ScheduleDesiredStateChangeRequest,
};
use slipway_store::NewDeployment;
pub use slipway_testkit::{
    decode_reply,
    plane::{bin, ACTOR},
    seed, stream_messages, ErrorReply as ErrorResponse, Plane as Env,
};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// nats-server, database and one actor.
pub async fn start() -> Env {
    Env::builder().service(ACTOR).start().await
}

/// nats-server and database; actors come with `env.spawn(ACTOR, …)`.
pub async fn without_actor() -> Env {
    Env::builder().start().await
}

/// The actor's endpoints and state, for its tests.
#[allow(async_fn_in_trait)]
pub trait ActorCalls {
    /// A new workspace/project/production environment (regions eu ×2, us ×1) with one
    /// deployment and its topology. Returns (project_id, deployment_id).
    async fn seed_deployment(&mut self) -> (String, String);
    async fn schedule(
        &self,
        dep: &str,
        delay_ms: i64,
        state: &str,
        key: &str,
    ) -> ScheduleDesiredStateChangeReply;
    async fn clear(&self, dep: &str) -> bool;
    /// A clear carrying a project-lease fencing token.
    async fn clear_fenced(
        &self,
        dep: &str,
        fencing_token: u64,
    ) -> Result<ClearScheduledStateChangesReply, ErrorResponse>;
    /// A schedule carrying a project-lease fencing token.
    async fn schedule_fenced(
        &self,
        dep: &str,
        delay_ms: i64,
        state: &str,
        fencing_token: u64,
    ) -> Result<ScheduleDesiredStateChangeReply, ErrorResponse>;
    /// A clear from a holder of the project's lease (`holds_lease`).
    async fn clear_holding(
        &self,
        dep: &str,
        fencing_token: u64,
    ) -> Result<ClearScheduledStateChangesReply, ErrorResponse>;
    async fn get_state(&self, dep: &str) -> GetStateReply;
    /// The schedule message waiting for `dep`, if any.
    async fn schedule_in_stream(&self, dep: &str) -> Option<serde_json::Value>;
    /// Waits until `dep` has no backstop schedule: none, or the applied marker with which an
    /// apply from memory replaces it as its last step.
    async fn wait_backstop_gone(&self, dep: &str);
    async fn desired_doc(&self, region: &str, dep: &str) -> Option<DesiredDeployment>;
    /// Waits until the deployment's transition is done: the key is deleted or holds only a
    /// fencing token (cleared, or applied from a fired schedule), or it holds the claim an
    /// apply from memory leaves, and that apply's last step, replacing the backstop schedule
    /// with the applied marker, is done (or the schedule fired, and the consumer has
    /// completed the change).
    async fn wait_transition_done(&self, dep: &str);
    /// Waits until the actors' consumer has nothing pending or unacknowledged.
    async fn wait_consumer_idle(&self);
}

impl ActorCalls for Env {
    async fn seed_deployment(&mut self) -> (String, String) {
        let n = self.next_seq().to_string();
        let regions = BTreeMap::from([("eu".to_string(), 2), ("us".to_string(), 1)]);
        let seeded = seed::project(&self.store, &n, "app", "production", &regions).await;
        let dep = slipway_core::ids::new("dep");
        let new = NewDeployment {
            id: dep.clone(),
            environment_id: seeded.environment_id,
            image: "exec:slipway demo-app".into(),
            ..Default::default()
        };
        seed::deployment(&self.store, &new, &regions).await;
        (seeded.project_id, dep)
    }

    async fn schedule(
        &self,
        dep: &str,
        delay_ms: i64,
        state: &str,
        key: &str,
    ) -> ScheduleDesiredStateChangeReply {
        let req = ScheduleDesiredStateChangeRequest {
            delay_ms,
            state: state.into(),
            idempotency_key: key.into(),
            ..Default::default()
        };
        self.request(&schedule_subject(dep), serde_json::to_vec(&req).unwrap())
            .await
            .expect("schedule")
    }

    async fn clear(&self, dep: &str) -> bool {
        self.clear_fenced(dep, 0).await.expect("clear").cleared
    }

    async fn clear_holding(
        &self,
        dep: &str,
        fencing_token: u64,
    ) -> Result<ClearScheduledStateChangesReply, ErrorResponse> {
        let req = ClearScheduledStateChangesRequest {
            fencing_token,
            holds_lease: true,
        };
        self.request(
            &format!("slipway.deployment.v1.clear_scheduled_state_changes.{dep}"),
            serde_json::to_vec(&req).unwrap(),
        )
        .await
    }

    async fn clear_fenced(
        &self,
        dep: &str,
        fencing_token: u64,
    ) -> Result<ClearScheduledStateChangesReply, ErrorResponse> {
        let req = ClearScheduledStateChangesRequest {
            fencing_token,
            holds_lease: false,
        };
        self.request(
            &format!("slipway.deployment.v1.clear_scheduled_state_changes.{dep}"),
            serde_json::to_vec(&req).unwrap(),
        )
        .await
    }

    async fn schedule_fenced(
        &self,
        dep: &str,
        delay_ms: i64,
        state: &str,
        fencing_token: u64,
    ) -> Result<ScheduleDesiredStateChangeReply, ErrorResponse> {
        let req = ScheduleDesiredStateChangeRequest {
            delay_ms,
            state: state.into(),
            fencing_token,
            ..Default::default()
        };
        self.request(&schedule_subject(dep), serde_json::to_vec(&req).unwrap())
            .await
    }

    async fn get_state(&self, dep: &str) -> GetStateReply {
        self.request(&format!("slipway.deployment.v1.get_state.{dep}"), "{}")
            .await
            .expect("get_state")
    }

    async fn schedule_in_stream(&self, dep: &str) -> Option<serde_json::Value> {
        let stream = self.js.get_stream(provision::TIMERS).await.unwrap();
        stream
            .get_last_raw_message_by_subject(&format!("slipway.timers.schedule.deployment.{dep}"))
            .await
            .ok()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
    }

    async fn wait_backstop_gone(&self, dep: &str) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self
            .schedule_in_stream(dep)
            .await
            .is_some_and(|s| s["applied"] != true)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{dep}: its schedule is still there"
            );
            // A purge has no event to wait for: look again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn desired_doc(&self, region: &str, dep: &str) -> Option<DesiredDeployment> {
        self.desired
            .get(desired_deployment_key(region, dep))
            .await
            .unwrap()
            .map(|v| serde_json::from_slice(&v).unwrap())
    }

    async fn wait_transition_done(&self, dep: &str) {
        let mut watch = self.transitions.watch_with_history(dep).await.unwrap();
        let claimed = tokio::time::timeout(TIMEOUT, async {
            while let Some(entry) = watch.next().await {
                let entry = entry.unwrap();
                if entry.operation != kv::Operation::Put {
                    return false;
                }
                let stored: serde_json::Value = rmp_serde::from_slice(&entry.value).unwrap();
                if stored.get("nonce").is_none() {
                    return false;
                }
                if stored["applying"] == true {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or_else(|_| panic!("transition of {dep} still pending after {TIMEOUT:?}"));
        if claimed {
            // Gone once marked applied, or once fired: then the consumer completes it.
            self.wait_backstop_gone(dep).await;
            self.wait_consumer_idle().await;
        }
    }

    async fn wait_consumer_idle(&self) {
        let stream = self.js.get_stream(provision::TIMERS).await.unwrap();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let mut consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer("deployment-actor").await.unwrap();
            let info = consumer.info().await.unwrap();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumer still busy: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn schedule_subject(dep: &str) -> String {
    format!("slipway.deployment.v1.schedule_desired_state_change.{dep}")
}

pub fn protobuf_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Content-Type", "application/protobuf");
    h
}

/// Subscribes to a deployment's desired_state events before anything is scheduled.
pub async fn events_of(env: &Env, dep: &str) -> async_nats::Subscriber {
    let sub = env
        .client
        .subscribe(format!("slipway.events.*.{dep}.desired_state"))
        .await
        .unwrap();
    env.client.flush().await.unwrap();
    sub
}

/// Change `nonce` (to standby) applied exactly once: one event, the database written once,
/// desired state published, nothing left pending.
pub async fn assert_applied_once(env: &Env, project: &str, dep: &str, nonce: &str) {
    use slipway_core::{
        krane::Desired,
        state::{DesiredState, TopologyStatus},
    };
    env.wait_transition_done(dep).await;
    let events = env.project_events(project).await;
    assert_eq!(events.len(), 1, "{dep}: {events:?}");
    assert_eq!(events[0]["nonce"], nonce);
    let d = env.store.deployment(dep).await.unwrap();
    assert_eq!(d.desired_state, DesiredState::Standby);
    let topology = env.store.topology(dep).await.unwrap();
    assert!(
        topology
            .iter()
            .all(|t| t.version == 2 && t.desired_status == TopologyStatus::Stopped),
        "{dep}: {topology:?}"
    );
    assert_eq!(
        env.desired_doc("eu", dep).await.unwrap().desired,
        Desired::Stopped
    );
    assert!(env.get_state(dep).await.pending.is_none());
}
