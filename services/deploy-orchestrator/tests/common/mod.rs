//! A whole control plane for deploy tests, over real processes: a nats-server, a SQLite
//! database, routing, deployment-actor, krane-agent (running `slipway demo-app`) and one or
//! more deploy-orchestrators (the built binaries), with short timers so tests take seconds.
#![allow(dead_code)]

use std::{path::PathBuf, time::Duration};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde_json::{json, Value};
use slipway_nats::provision;
use slipway_store::Store;
use slipway_testkit::{NatsServer, ServiceProcess, TestDb};
use slipway_workflow::WorkflowRecord;

pub const ORCHESTRATOR: &str = env!("CARGO_BIN_EXE_deploy-orchestrator");
pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const STANDBY_DELAY: &str = "2s";

/// The journaled steps of a production Deploy that replaces a live one, in order.
pub const DEPLOY_STEPS: [&str; 13] = [
    "load",
    "source",
    "deploying",
    "topology",
    "sentinels",
    "wait_instances",
    "record_instances",
    "openapi",
    "routes",
    "assign_routes",
    "ready",
    "live",
    "schedule_standby",
];

/// Another workspace binary, built by `cargo test --workspace` next to ours.
pub fn bin(name: &str) -> PathBuf {
    let path = PathBuf::from(ORCHESTRATOR).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or cargo test --workspace)",
        path.display()
    );
    path
}

pub use slipway_testkit::ErrorReply;

pub struct Plane {
    pub nats: NatsServer,
    pub db: TestDb,
    pub store: Store,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub routes: kv::Store,
    pub instances: kv::Store,
    pub workflows: kv::Store,
    agent_state: tempfile::TempDir,
    pub services: Vec<ServiceProcess>,
    pub orchestrators: Vec<ServiceProcess>,
    pub agent: Option<ServiceProcess>,
    /// Extra environment for every orchestrator started from now on.
    pub orchestrator_env: Vec<(&'static str, String)>,
    /// How long a request waits for its reply before it is sent again: short while a
    /// stopped (SIGSTOP) orchestrator is in the queue group and may take it.
    pub request_timeout: Duration,
    /// With `nats/accounts.conf`: each service connects as its own user.
    secured: bool,
    seq: u32,
}

/// The password every user of `nats/accounts.conf` gets in tests.
pub fn password(user: &str) -> String {
    format!("{user}-secret")
}

/// Connects as `user` of `nats/accounts.conf`, recording the server's errors (permission
/// violations) in the returned receiver.
pub async fn connect_as(
    url: &str,
    user: &str,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    (client, rx)
}

impl Plane {
    /// Everything, with one orchestrator.
    pub async fn start() -> Plane {
        let mut plane = Self::without_orchestrator().await;
        plane.spawn_orchestrator(&[]);
        plane
    }

    /// A project with v1 and v2 deployed to production (v2 live, v1 waiting an hour for
    /// standby), by an orchestrator that is gone again; `orchestrator_env` as `env`.
    /// Returns (plane, project, v1, v2).
    pub async fn two_deployed(env: Vec<(&'static str, String)>) -> (Plane, String, String, String) {
        let mut plane = Plane::without_orchestrator().await;
        plane.orchestrator_env = env;
        plane
            .orchestrator_env
            .push(("SLIPWAY_STANDBY_DELAY", "1h".into()));
        let normal = plane.spawn_orchestrator(&[]);
        let project = plane.project().await;
        let v1 = plane.deployed(&project, "production", "v1").await;
        let v2 = plane.deployed(&project, "production", "v2").await;
        plane.orchestrators[normal].kill();
        (plane, project, v1, v2)
    }

    /// Starts a workflow with request `subject` and waits until it has finished.
    pub async fn workflow(&self, subject: &str, body: Value) -> WorkflowRecord {
        let reply = self.ok(subject, body).await;
        self.workflow_done(reply["workflow_id"].as_str().unwrap())
            .await
    }

    pub async fn without_orchestrator() -> Plane {
        Self::without_orchestrator_on(TestDb::sqlite().unwrap()).await
    }

    /// As [`without_orchestrator`](Self::without_orchestrator), on `db` (PostgreSQL, say).
    pub async fn without_orchestrator_on(db: TestDb) -> Plane {
        let nats = NatsServer::start().await.expect("nats-server");
        let client = async_nats::connect(nats.url()).await.unwrap();
        Self::on(nats, client, db, false).await
    }

    /// A nats-server running `nats/accounts.conf` (passwords from [`password`]); the test
    /// client is `admin`, every service its own user, the agent `krane-agent-local`.
    pub async fn secured() -> Plane {
        for (var, user) in [
            ("SLIPWAY_ORCHESTRATOR_PASSWORD", "deploy-orchestrator"),
            ("SLIPWAY_ACTOR_PASSWORD", "deployment-actor"),
            ("SLIPWAY_ROUTING_PASSWORD", "routing"),
            ("SLIPWAY_AGENT_LOCAL_PASSWORD", "krane-agent-local"),
            ("SLIPWAY_PLATFORM_PASSWORD", "platform"),
            ("SLIPWAY_ADMIN_PASSWORD", "admin"),
        ] {
            // nats-server reads them when it parses its config.
            std::env::set_var(var, password(user));
        }
        // The file itself (an `include` cannot take an absolute path).
        let accounts = include_str!("../../../../nats/accounts.conf");
        let nats = NatsServer::start_with_config(accounts)
            .await
            .expect("nats-server with accounts.conf");
        let (client, _) = connect_as(&nats.url(), "admin").await;
        Self::on(nats, client, TestDb::sqlite().unwrap(), true).await
    }

    async fn on(nats: NatsServer, client: async_nats::Client, db: TestDb, secured: bool) -> Plane {
        let store = Store::open(&db.url).await.unwrap();
        let js = jetstream::new(client.clone());
        provision::provision(&js, 1).await.unwrap();
        let mut plane = Plane {
            routes: js.get_key_value(provision::ROUTES).await.unwrap(),
            instances: js.get_key_value(provision::INSTANCES).await.unwrap(),
            workflows: js.get_key_value(provision::WORKFLOW_RECORDS).await.unwrap(),
            nats,
            db,
            store,
            client,
            js,
            agent_state: tempfile::tempdir().unwrap(),
            services: vec![],
            orchestrators: vec![],
            agent: None,
            orchestrator_env: vec![],
            request_timeout: Duration::from_secs(10),
            secured,
            seq: 0,
        };
        for name in ["routing", "deployment-actor"] {
            plane.respawn_service(name);
        }
        let agent_env = plane.env_for("krane-agent-local");
        let agent = ServiceProcess::spawn("agent", bin("krane-agent"), &[], &agent_env).unwrap();
        agent.wait_ready("krane-agent", TIMEOUT).unwrap();
        plane.agent = Some(agent);
        plane
    }

    /// [`env`](Self::env) plus the NATS user of `user` when secured.
    fn env_for(&self, user: &str) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        if self.secured {
            env.push(("SLIPWAY_NATS_USER", user.to_string()));
            env.push(("SLIPWAY_NATS_PASSWORD", password(user)));
        }
        env
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let bin_dir = PathBuf::from(ORCHESTRATOR).with_file_name("");
        vec![
            ("SLIPWAY_NATS_URL", self.nats.url()),
            ("SLIPWAY_DATABASE_URL", self.db.url.clone()),
            ("SLIPWAY_STANDBY_DELAY", STANDBY_DELAY.into()),
            ("SLIPWAY_READY_TIMEOUT", "20s".into()),
            ("SLIPWAY_FAILED_GRACE", "5s".into()),
            ("SLIPWAY_WORKFLOW_ACK_WAIT", "2s".into()),
            ("SLIPWAY_LEASE_TTL", "2s".into()),
            ("SLIPWAY_AGENT_CHECK_EVERY", "100ms".into()),
            (
                "SLIPWAY_AGENT_STATE_DIR",
                self.agent_state.path().display().to_string(),
            ),
            (
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            (
                "RUST_LOG",
                "info,deploy_orchestrator=debug,slipway_workflow=debug".into(),
            ),
        ]
    }

    /// The invariant checker over this plane's database and NATS.
    pub fn invariants(&self) -> slipway_testkit::Invariants {
        slipway_testkit::Invariants::new(self.store.clone(), self.client.clone())
    }

    /// Waits (without blocking the runtime) until orchestrator `index` logs `needle`.
    pub fn orchestrator_logged(&self, index: usize, needle: &str) {
        tokio::task::block_in_place(|| {
            self.orchestrators[index]
                .wait_for_log(needle, TIMEOUT)
                .unwrap()
        });
    }

    /// Starts service `name` (again, after [`kill_service`](Self::kill_service)) and waits
    /// until it is ready.
    pub fn respawn_service(&mut self, name: &str) {
        let p = ServiceProcess::spawn(name, bin(name), &[], &self.env_for(name)).unwrap();
        p.wait_ready(name, TIMEOUT).unwrap();
        self.services.push(p);
    }

    /// SIGKILLs the routing or actor processes (`name` as spawned).
    pub fn kill_service(&mut self, index: usize) {
        self.services[index].kill();
    }

    pub fn spawn_orchestrator(&mut self, extra: &[(&str, String)]) -> usize {
        let mut env = self.env_for("deploy-orchestrator");
        env.extend(self.orchestrator_env.iter().cloned());
        env.extend(extra.iter().cloned());
        let name = format!("orch{}", self.orchestrators.len());
        let p = ServiceProcess::spawn(&name, ORCHESTRATOR, &[], &env).unwrap();
        p.wait_ready("deploy-orchestrator", TIMEOUT).unwrap();
        self.orchestrators.push(p);
        self.orchestrators.len() - 1
    }

    /// A JSON request: Ok(reply JSON) or Err(error reply). Resent when unanswered (right
    /// after a SIGKILL the server may still hand a request to the dead subscription, and a
    /// stopped process takes requests it answers only once continued).
    pub async fn call(&self, subject: &str, body: Value) -> Result<Value, ErrorReply> {
        let payload: bytes::Bytes = serde_json::to_vec(&body).unwrap().into();
        let attempts = (60_000 / self.request_timeout.as_millis().max(1)).max(6);
        for _ in 0..attempts {
            let request = self.client.request(subject.to_string(), payload.clone());
            let Ok(reply) = tokio::time::timeout(self.request_timeout, request).await else {
                continue;
            };
            let Ok(reply) = reply else {
                // No responders: the service is restarting.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            return slipway_testkit::decode_reply(&reply);
        }
        panic!("no reply to {subject}");
    }

    pub async fn ok(&self, subject: &str, body: Value) -> Value {
        self.call(subject, body)
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e:?}"))
    }

    /// A workspace and project with `production` and `preview` environments.
    /// Returns the project id.
    pub async fn project(&mut self) -> String {
        self.seq += 1;
        let n = self.seq;
        let ws = self
            .ok(
                "slipway.project.v1.create_workspace",
                json!({"slug": format!("acme{n}"), "name": "Acme"}),
            )
            .await;
        let ws_id = ws["workspace"]["id"].as_str().unwrap().to_string();
        let project = self
            .ok(
                "slipway.project.v1.create_project",
                json!({"workspace_id": ws_id, "slug": "shop", "name": "Shop"}),
            )
            .await;
        let project_id = project["project"]["id"].as_str().unwrap().to_string();
        for env in ["production", "preview"] {
            self.ok(
                "slipway.project.v1.create_environment",
                json!({"project_id": project_id, "slug": env}),
            )
            .await;
        }
        project_id
    }

    /// Starts a deploy of the demo app; returns (deployment_id, workflow_id).
    pub async fn deploy(&self, project_id: &str, env: &str, message: &str) -> (String, String) {
        self.deploy_image(
            project_id,
            env,
            &format!("exec:slipway demo-app --message {message}"),
        )
        .await
    }

    pub async fn deploy_image(&self, project_id: &str, env: &str, image: &str) -> (String, String) {
        let reply = self
            .ok(
                "slipway.deploy.v1.create_deployment",
                json!({
                    "project_id": project_id,
                    "environment_slug": env,
                    "docker_image": image,
                    "git_commit": {"commit_sha": "0123456789abcdef0123456789abcdef01234567"},
                    // A resent request (or one a stopped orchestrator answers late) is the
                    // same deployment.
                    "idempotency_key": slipway_core::ids::new("key"),
                }),
            )
            .await;
        (
            reply["deployment_id"].as_str().unwrap().to_string(),
            reply["workflow_id"].as_str().unwrap().to_string(),
        )
    }

    /// Waits (on a KV watch) until the workflow has finished; returns its record.
    pub async fn workflow_done(&self, workflow_id: &str) -> WorkflowRecord {
        let mut watch = self
            .workflows
            .watch_with_history(format!("wf.{workflow_id}"))
            .await
            .unwrap();
        tokio::time::timeout(TIMEOUT, async {
            while let Some(entry) = watch.next().await {
                let entry = entry.unwrap();
                let record: WorkflowRecord = rmp_serde::from_slice(&entry.value).unwrap();
                if record.status.is_finished() {
                    return record;
                }
            }
            panic!("watch ended")
        })
        .await
        .unwrap_or_else(|_| panic!("workflow {workflow_id} not finished within {TIMEOUT:?}"))
    }

    /// Deploys and waits until it is ready; returns its id.
    pub async fn deployed(&self, project_id: &str, env: &str, message: &str) -> String {
        let (dep, wf) = self.deploy(project_id, env, message).await;
        let record = self.workflow_done(&wf).await;
        assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
        dep
    }

    /// Where the route table sends `fqdn` now.
    pub async fn routed_to(&self, fqdn: &str) -> String {
        self.route_table(fqdn).await.expect("no such route")["deployment_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The deployment behind a project's live route, and behind its production
    /// environment route (from routing's list, then the edge table).
    pub async fn live_and_production_routes(&self, project_id: &str) -> (String, String) {
        let routes = self.routes(project_id).await;
        let fqdn_of = |pred: &dyn Fn(&Value) -> bool| {
            routes
                .iter()
                .find(|r| pred(r))
                .map(|r| r["fqdn"].as_str().unwrap().to_string())
                .expect("no such route")
        };
        let live = fqdn_of(&|r| r["sticky"] == "live");
        let production = fqdn_of(&|r| {
            r["sticky"] == "environment" && r["fqdn"].as_str().unwrap().contains("-production-")
        });
        (
            self.routed_to(&live).await,
            self.routed_to(&production).await,
        )
    }

    pub async fn pending(&self, deployment_id: &str) -> Option<Value> {
        let state = self
            .ok(
                &format!("slipway.deployment.v1.get_state.{deployment_id}"),
                json!({}),
            )
            .await;
        state.get("pending").cloned()
    }

    pub async fn deployment(&self, id: &str) -> Value {
        self.ok(
            "slipway.deploy.v1.get_deployment",
            json!({ "deployment_id": id }),
        )
        .await["deployment"]
            .clone()
    }

    pub async fn get_project(&self, id: &str) -> Value {
        self.ok(
            "slipway.project.v1.get_project",
            json!({ "project_id": id }),
        )
        .await
    }

    pub async fn routes(&self, project_id: &str) -> Vec<Value> {
        self.ok(
            &format!("slipway.routing.v1.list_routes.{project_id}"),
            json!({}),
        )
        .await["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every event stored for a deployment, in order.
    pub async fn events(&self, project_id: &str, deployment_id: &str) -> Vec<Value> {
        stream_messages(
            &self.js,
            provision::EVENTS,
            &format!("slipway.events.{project_id}.{deployment_id}.>"),
        )
        .await
    }

    /// Waits for an event of `kind` of a deployment (delivered from the stream's start).
    pub async fn wait_event(&self, project_id: &str, deployment_id: &str, kind: &str) -> Value {
        let stream = self.js.get_stream(provision::EVENTS).await.unwrap();
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("slipway.events.{project_id}.{deployment_id}.{kind}"),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        match tokio::time::timeout(TIMEOUT, messages.next()).await {
            Ok(Some(Ok(m))) => serde_json::from_slice(&m.payload).unwrap(),
            other => panic!("no {kind} event for {deployment_id}: {other:?}"),
        }
    }

    /// Waits until the agent reports every instance of `deployment_id` in `local` with
    /// `status`.
    pub async fn wait_instances(&self, deployment_id: &str, status: &str) {
        let mut watch = self
            .instances
            .watch_with_history(format!("{deployment_id}.local"))
            .await
            .unwrap();
        tokio::time::timeout(TIMEOUT, async {
            while let Some(entry) = watch.next().await {
                let report: Value = serde_json::from_slice(&entry.unwrap().value).unwrap();
                let all = report["instances"].as_array().cloned().unwrap_or_default();
                if !all.is_empty() && all.iter().all(|i| i["status"] == status) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("instances of {deployment_id} never all {status}"));
    }

    pub async fn route_table(&self, fqdn: &str) -> Option<Value> {
        self.routes
            .get(fqdn)
            .await
            .unwrap()
            .map(|v| serde_json::from_slice(&v).unwrap())
    }
}

impl Drop for Plane {
    /// The agent dies with the test; the demo apps it started must not outlive it.
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
        krane_agent::process::kill_recorded(&self.agent_state.path().join("local"));
    }
}

pub use slipway_testkit::stream_messages;

pub fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "step" => format!("step:{}", e["step"].as_str().unwrap()),
            "status" => format!("status:{}", e["status"].as_str().unwrap()),
            other => other.to_string(),
        })
        .collect()
}

/// The deployment a journaled commit step (`assign_routes`) replaced as live.
pub fn replaced_by_commit(step: &slipway_workflow::StepRecord) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Committed {
        previous: Option<String>,
    }
    rmp_serde::from_slice::<Committed>(&step.result)
        .expect("a commit step's result")
        .previous
}
