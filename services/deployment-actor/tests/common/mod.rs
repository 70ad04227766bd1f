//! A control plane for actor tests: a real nats-server, a SQLite database, and
//! `deployment-actor` processes (the built binary), plus typed clients for its endpoints.
#![allow(dead_code)]

use std::{collections::BTreeMap, time::Duration};

use async_nats::{
    jetstream::{self, kv},
    HeaderMap,
};
use futures::StreamExt;
use slipway_core::krane::{desired_deployment_key, DesiredDeployment};
use slipway_nats::{codec::ApiMessage, provision};
use slipway_proto::v1::{
    ClearScheduledStateChangesReply, ClearScheduledStateChangesRequest, GetStateReply,
    ScheduleDesiredStateChangeReply, ScheduleDesiredStateChangeRequest,
};
use slipway_store::{NewDeployment, Store};
use slipway_testkit::{NatsServer, ServiceProcess, TestDb};

pub const ACTOR: &str = env!("CARGO_BIN_EXE_deployment-actor");
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Env {
    pub nats: NatsServer,
    pub db: TestDb,
    pub store: Store,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub transitions: kv::Store,
    pub desired: kv::Store,
    pub actors: Vec<ServiceProcess>,
    seq: u32,
}

/// An error reply: the micro-service headers and the body.
pub use slipway_testkit::ErrorReply as ErrorResponse;

impl Env {
    /// nats-server, database and one actor.
    pub async fn start() -> Env {
        let mut env = Self::without_actor().await;
        env.spawn_actor(&[]);
        env
    }

    pub async fn without_actor() -> Env {
        let nats = NatsServer::start().await.expect("nats-server");
        let db = TestDb::sqlite().unwrap();
        let store = Store::open(&db.url).await.unwrap();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        provision::provision(&js, 1).await.unwrap();
        let transitions = js.get_key_value(provision::TRANSITIONS).await.unwrap();
        let desired = js.get_key_value(provision::DESIRED).await.unwrap();
        Env {
            nats,
            db,
            store,
            client,
            js,
            transitions,
            desired,
            actors: vec![],
            seq: 0,
        }
    }

    /// SIGKILLs nats-server and starts it again on the same port and store; reconnects.
    pub async fn restart_nats(&mut self) {
        self.nats.restart().await.unwrap();
        self.client = async_nats::connect(self.nats.url()).await.unwrap();
        self.js = jetstream::new(self.client.clone());
        self.transitions = self.js.get_key_value(provision::TRANSITIONS).await.unwrap();
        self.desired = self.js.get_key_value(provision::DESIRED).await.unwrap();
    }

    /// Starts an actor process and waits until it serves.
    pub fn spawn_actor(&mut self, extra: &[(&str, String)]) -> usize {
        let mut env = vec![
            ("SLIPWAY_NATS_URL", self.nats.url()),
            ("SLIPWAY_DATABASE_URL", self.db.url.clone()),
            ("RUST_LOG", "info,deployment_actor=debug".to_string()),
        ];
        env.extend(extra.iter().cloned());
        let name = format!("actor{}", self.actors.len());
        let actor = ServiceProcess::spawn(&name, ACTOR, &[], &env).unwrap();
        actor.wait_ready("deployment-actor", TIMEOUT).unwrap();
        self.actors.push(actor);
        self.actors.len() - 1
    }

    /// A new workspace/project/production environment (regions eu ×2, us ×1) with one
    /// deployment and its topology. Returns (project_id, deployment_id).
    pub async fn deployment(&mut self) -> (String, String) {
        self.seq += 1;
        let n = self.seq;
        let ws = format!("ws_{n}");
        let proj = format!("proj_{n}");
        let env = format!("env_{n}");
        let dep = slipway_core::ids::new("dep");
        self.store
            .create_workspace(&ws, &format!("w{n}"), "W", 1)
            .await
            .unwrap();
        self.store
            .create_project(&proj, &ws, "app", "App", "main", 1)
            .await
            .unwrap();
        let regions = BTreeMap::from([("eu".to_string(), 2), ("us".to_string(), 1)]);
        self.store
            .create_environment(&env, &proj, "production", &regions, 8080, "{}", 1)
            .await
            .unwrap();
        self.store
            .insert_deployment(
                &NewDeployment {
                    id: dep.clone(),
                    environment_id: env,
                    image: "exec:slipway demo-app".into(),
                    ..Default::default()
                },
                1,
            )
            .await
            .unwrap();
        for (region, replicas) in regions {
            self.store
                .upsert_topology(&dep, &region, replicas, 1)
                .await
                .unwrap();
        }
        (proj, dep)
    }

    /// A JSON request; Ok(reply) or Err(error reply). Resent when unanswered: right after
    /// a SIGKILL the server may still hand a request to the dead process's subscription.
    pub async fn request<Rep: ApiMessage>(
        &self,
        subject: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Result<Rep, ErrorResponse> {
        let body = body.into();
        for _ in 0..4 {
            let request = self.client.request(subject.to_string(), body.clone());
            if let Ok(reply) = tokio::time::timeout(Duration::from_secs(5), request).await {
                return decode_reply(&reply.expect("request failed"));
            }
        }
        panic!("no reply to {subject}");
    }

    pub async fn schedule(
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
            fencing_token: 0,
        };
        self.request(&schedule_subject(dep), serde_json::to_vec(&req).unwrap())
            .await
            .expect("schedule")
    }

    pub async fn clear(&self, dep: &str) -> bool {
        self.clear_fenced(dep, 0).await.expect("clear").cleared
    }

    /// A clear carrying a project-lease fencing token.
    pub async fn clear_fenced(
        &self,
        dep: &str,
        fencing_token: u64,
    ) -> Result<ClearScheduledStateChangesReply, ErrorResponse> {
        let req = ClearScheduledStateChangesRequest { fencing_token };
        self.request(
            &format!("slipway.deployment.v1.clear_scheduled_state_changes.{dep}"),
            serde_json::to_vec(&req).unwrap(),
        )
        .await
    }

    /// A schedule carrying a project-lease fencing token.
    pub async fn schedule_fenced(
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

    pub async fn get_state(&self, dep: &str) -> GetStateReply {
        self.request(&format!("slipway.deployment.v1.get_state.{dep}"), "{}")
            .await
            .expect("get_state")
    }

    /// Every event stored for a project, in order.
    pub async fn events(&self, project_id: &str) -> Vec<serde_json::Value> {
        stream_messages(
            &self.js,
            provision::EVENTS,
            &format!("slipway.events.{project_id}.>"),
        )
        .await
    }

    /// The schedule message waiting for `dep`, if any.
    pub async fn schedule_in_stream(&self, dep: &str) -> Option<serde_json::Value> {
        let stream = self.js.get_stream(provision::TIMERS).await.unwrap();
        stream
            .get_last_raw_message_by_subject(&format!("slipway.timers.schedule.deployment.{dep}"))
            .await
            .ok()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
    }

    pub async fn desired_doc(&self, region: &str, dep: &str) -> Option<DesiredDeployment> {
        self.desired
            .get(desired_deployment_key(region, dep))
            .await
            .unwrap()
            .map(|v| serde_json::from_slice(&v).unwrap())
    }

    /// Waits (on a KV watch, not a timer) until `dep` has no stored transition.
    /// Waits until the deployment has no pending transition (the key is deleted, or holds
    /// only a fencing token).
    pub async fn wait_transition_gone(&self, dep: &str) {
        let mut watch = self.transitions.watch_with_history(dep).await.unwrap();
        tokio::time::timeout(TIMEOUT, async {
            while let Some(entry) = watch.next().await {
                let entry = entry.unwrap();
                if entry.operation != kv::Operation::Put {
                    return;
                }
                let stored: serde_json::Value = rmp_serde::from_slice(&entry.value).unwrap();
                if stored.get("nonce").is_none() {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("transition of {dep} still there after {TIMEOUT:?}"));
    }

    /// Waits until the actors' consumer has nothing pending or unacknowledged.
    pub async fn wait_consumer_idle(&self) {
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

pub use slipway_testkit::decode_reply;

pub fn protobuf_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Content-Type", "application/protobuf");
    h
}

pub use slipway_testkit::stream_messages;
