//! A control plane over real processes, for every service's tests and benches: a nats-server
//! (plain, or running `nats/accounts.conf`), a SQLite or PostgreSQL database, and whichever of
//! routing, deployment-actor, krane-agent (running `slipway demo-app`) and deploy-orchestrators
//! a test asks for (the built binaries), with short timers so tests take seconds.
//!
//! ```ignore
//! let plane = Plane::builder().service(ACTOR).start().await;   // one service
//! let plane = Plane::start().await;                            // everything
//! ```

use std::{path::PathBuf, time::Duration};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use slipway_nats::provision;
use slipway_store::Store;
use slipway_workflow::WorkflowRecord;

use crate::{
    decode_reply, stream_messages, ErrorReply, Invariants, NatsCluster, NatsServer, ServiceProcess,
    TestDb,
};

/// How long a plane waits for anything (a service to be ready, a workflow to finish).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The key a plane's services seal secret variables under.
pub const TEST_SECRETS_KEY: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// The standby delay services get unless a test says otherwise.
pub const STANDBY_DELAY: &str = "2s";

pub const ROUTING: &str = "routing";
pub const ACTOR: &str = "deployment-actor";
pub const AGENT: &str = "krane-agent";
pub const ORCHESTRATOR: &str = "deploy-orchestrator";
pub const EDGE: &str = "edge";

/// Where cargo puts the workspace's binaries: `target/<profile>/`, the parent of the test's
/// own `deps/` directory.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps")
        .to_path_buf()
}

/// A workspace binary, built by `cargo test` (or `cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` (or cargo test --workspace)",
        path.display()
    );
    path
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
        .custom_inbox_prefix(slipway_core::config::inbox_prefix_of(user))
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
        .expect("connecting as a user of accounts.conf");
    (client, rx)
}

/// What to start; [`start`](Self::start) starts it.
#[must_use]
pub struct PlaneBuilder {
    db: Option<TestDb>,
    secured: bool,
    cluster: bool,
    services: Vec<&'static str>,
    agent: bool,
    edge: bool,
    orchestrators: usize,
    env: Vec<(&'static str, String)>,
    service_env: Vec<(&'static str, String)>,
    docker_host: Option<String>,
    sync_always: bool,
}

impl PlaneBuilder {
    /// The nats-server fsyncs every write before acknowledging it (`sync_interval: always`),
    /// the durability tier benchmarks compare in; by default it syncs every two minutes, as
    /// nats-server does, and a write is durable once replicated.
    pub fn sync_always(mut self) -> Self {
        self.sync_always = true;
        self
    }

    /// Starts an edge on a free port (traffic reported every second).
    pub fn edge(mut self) -> Self {
        self.edge = true;
        self
    }

    /// On `db` (PostgreSQL, say) instead of a fresh SQLite database.
    pub fn database(mut self, db: TestDb) -> Self {
        self.db = Some(db);
        self
    }

    /// A nats-server running `nats/accounts.conf` (passwords from [`password`]); the test
    /// client is `admin`, every service its own user, the agent `krane-agent-local`.
    pub fn secured(mut self) -> Self {
        self.secured = true;
        self
    }

    /// A 3-node JetStream cluster instead of one server; every stream and bucket at 3
    /// replicas (`SLIPWAY_JS_REPLICAS=3`), every client given all three nodes.
    pub fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Starts one process of `name` ([`ROUTING`], [`ACTOR`]); call again for another.
    pub fn service(mut self, name: &'static str) -> Self {
        self.services.push(name);
        self
    }

    /// Starts the region agent of region `local`.
    pub fn agent(mut self) -> Self {
        self.agent = true;
        self
    }

    /// Agents run images as containers, and orchestrators build git sources, on the engine at
    /// `host` ([`crate::Podman::host`]); without it there is no container engine.
    pub fn docker_host(mut self, host: String) -> Self {
        self.docker_host = Some(host);
        self
    }

    /// Starts `n` deploy-orchestrators.
    pub fn orchestrators(mut self, n: usize) -> Self {
        self.orchestrators = n;
        self
    }

    /// Routing, the actor and the agent: everything but orchestrators.
    pub fn services(self) -> Self {
        self.service(ROUTING).service(ACTOR).agent()
    }

    /// Extra environment for every service (and orchestrator) the plane starts.
    pub fn service_env(mut self, var: &'static str, value: impl Into<String>) -> Self {
        self.service_env.push((var, value.into()));
        self
    }

    /// Extra environment for the orchestrators (they start last, after the others).
    pub fn orchestrator_env(mut self, var: &'static str, value: impl Into<String>) -> Self {
        self.env.push((var, value.into()));
        self
    }

    pub async fn start(self) -> Plane {
        let db = self
            .db
            .unwrap_or_else(|| TestDb::sqlite().expect("a SQLite test database"));
        let (nats, client) = if self.secured {
            let (server, client) = secured_nats().await;
            (Nats::Server(server), client)
        } else {
            let nats = if self.cluster {
                Nats::Cluster(NatsCluster::start().await.expect("a nats-server cluster"))
            } else if self.sync_always {
                let config = "jetstream { sync_interval: always }";
                Nats::Server(
                    NatsServer::start_with_config(config)
                        .await
                        .expect("nats-server"),
                )
            } else {
                Nats::Server(NatsServer::start().await.expect("nats-server"))
            };
            let client = async_nats::connect(nats.addrs())
                .await
                .expect("connecting to the test nats-server");
            (nats, client)
        };
        let mut plane = Plane::on(nats, client, db, self.secured).await;
        if let Some(host) = self.docker_host {
            // Orchestrators build git sources on the engine the agents run containers on
            // (unless the test's orchestrator environment says otherwise: it comes after).
            plane
                .orchestrator_env
                .push(("SLIPWAY_BUILDER_DOCKER_HOST", host.clone()));
            plane.docker_host = host;
        }
        plane.service_env = self.service_env;
        plane.orchestrator_env.extend(self.env);
        for name in self.services {
            plane.spawn(name, &[]);
        }
        if self.agent {
            plane.start_agent();
        }
        for _ in 0..self.orchestrators {
            plane.spawn_orchestrator(&[]);
        }
        if self.edge {
            plane.start_edge();
        }
        plane
    }
}

async fn secured_nats() -> (NatsServer, async_nats::Client) {
    for (var, user) in [
        ("SLIPWAY_ORCHESTRATOR_PASSWORD", "deploy-orchestrator"),
        ("SLIPWAY_ACTOR_PASSWORD", "deployment-actor"),
        ("SLIPWAY_ROUTING_PASSWORD", "routing"),
        ("SLIPWAY_AGENT_LOCAL_PASSWORD", "krane-agent-local"),
        ("SLIPWAY_PLATFORM_PASSWORD", "platform"),
        ("SLIPWAY_EDGE_PASSWORD", "edge"),
        ("SLIPWAY_ADMIN_PASSWORD", "admin"),
    ] {
        // nats-server reads them when it parses its config.
        std::env::set_var(var, password(user));
    }
    // The file itself (an `include` cannot take an absolute path).
    let accounts = include_str!("../../../nats/accounts.conf");
    let nats = NatsServer::start_with_config(accounts)
        .await
        .expect("nats-server with accounts.conf");
    let (client, _) = connect_as(&nats.url(), "admin").await;
    (nats, client)
}

/// The plane's NATS: one server, or a 3-node cluster.
pub enum Nats {
    Server(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// What `SLIPWAY_NATS_URL` takes: the server's URL, or every node's, comma-separated.
    pub fn url(&self) -> String {
        match self {
            Nats::Server(s) => s.url(),
            Nats::Cluster(c) => c.urls(),
        }
    }

    pub fn addrs(&self) -> Vec<async_nats::ServerAddr> {
        match self {
            Nats::Server(s) => s.url().parse().into_iter().collect(),
            Nats::Cluster(c) => c.addrs(),
        }
    }

    /// Replicas of every stream and bucket.
    pub fn replicas(&self) -> usize {
        match self {
            Nats::Server(_) => 1,
            Nats::Cluster(c) => c.nodes.len(),
        }
    }

    /// The cluster, for tests that stall or kill its nodes.
    pub fn cluster(&mut self) -> &mut NatsCluster {
        match self {
            Nats::Cluster(c) => c,
            Nats::Server(_) => panic!("this plane runs one nats-server, not a cluster"),
        }
    }

    /// SIGKILLs every server and starts it again on the same port and store.
    async fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            Nats::Server(s) => s.restart().await,
            Nats::Cluster(c) => {
                for i in 0..c.nodes.len() {
                    c.restart(i).await?;
                }
                Ok(())
            }
        }
    }
}

pub struct Plane {
    pub nats: Nats,
    pub db: TestDb,
    pub store: Store,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub routes: kv::Store,
    pub instances: kv::Store,
    pub workflows: kv::Store,
    pub transitions: kv::Store,
    pub desired: kv::Store,
    /// The region agent's state directory (its instances' pid files and logs).
    pub agent_state: tempfile::TempDir,
    /// Routing and actor processes, in the order started.
    pub services: Vec<ServiceProcess>,
    pub orchestrators: Vec<ServiceProcess>,
    pub agent: Option<ServiceProcess>,
    /// Further agents of region `local`, standbys of the active one.
    pub standby_agents: Vec<ServiceProcess>,
    pub edge: Option<ServiceProcess>,
    /// Where the edge listens.
    pub edge_address: Option<std::net::SocketAddr>,
    /// Extra environment for every orchestrator started from now on.
    pub orchestrator_env: Vec<(&'static str, String)>,
    /// Extra environment for every service started from now on (orchestrators too).
    pub service_env: Vec<(&'static str, String)>,
    /// How long a request waits for its reply before it is sent again: short while a
    /// stopped (SIGSTOP) orchestrator is in the queue group and may take it.
    pub request_timeout: Duration,
    /// The container engine agents use (`SLIPWAY_AGENT_DOCKER_HOST`): by default a socket
    /// nothing listens on, so that no test depends on a Docker the machine may have.
    pub docker_host: String,
    /// With `nats/accounts.conf`: each service connects as its own user.
    secured: bool,
    seq: u32,
}

impl Plane {
    /// Nothing started yet but what the builder is told.
    pub fn builder() -> PlaneBuilder {
        PlaneBuilder {
            db: None,
            secured: false,
            cluster: false,
            services: vec![],
            agent: false,
            edge: false,
            orchestrators: 0,
            env: vec![],
            service_env: vec![],
            docker_host: None,
            sync_always: false,
        }
    }

    /// Everything, with one orchestrator.
    pub async fn start() -> Plane {
        Self::builder().services().orchestrators(1).start().await
    }

    /// Everything but orchestrators.
    pub async fn without_orchestrator() -> Plane {
        Self::builder().services().start().await
    }

    /// As [`without_orchestrator`](Self::without_orchestrator), on `db` (PostgreSQL, say).
    pub async fn without_orchestrator_on(db: TestDb) -> Plane {
        Self::builder().database(db).services().start().await
    }

    /// Everything but orchestrators, on `nats/accounts.conf`.
    pub async fn secured() -> Plane {
        Self::builder().secured().services().start().await
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

    async fn on(nats: Nats, client: async_nats::Client, db: TestDb, secured: bool) -> Plane {
        let store = Store::open(&db.url)
            .await
            .expect("opening the test database")
            .with_secrets_key(Some(TEST_SECRETS_KEY))
            .expect("the test secrets key");
        let js = jetstream::new(client.clone());
        provision::provision(&js, nats.replicas())
            .await
            .expect("provisioning streams and buckets");
        let bucket = |name: &'static str| {
            let js = js.clone();
            async move { js.get_key_value(name).await.expect("a provisioned bucket") }
        };
        let agent_state = tempfile::tempdir().expect("a temporary directory");
        Plane {
            routes: bucket(provision::ROUTES).await,
            instances: bucket(provision::INSTANCES).await,
            workflows: bucket(provision::WORKFLOW_RECORDS).await,
            transitions: bucket(provision::TRANSITIONS).await,
            desired: bucket(provision::DESIRED).await,
            nats,
            db,
            store,
            client,
            js,
            docker_host: format!(
                "unix://{}/no-container-engine.sock",
                agent_state.path().display()
            ),
            agent_state,
            services: vec![],
            orchestrators: vec![],
            agent: None,
            standby_agents: vec![],
            edge: None,
            edge_address: None,
            orchestrator_env: vec![],
            service_env: vec![],
            request_timeout: Duration::from_secs(10),
            secured,
            seq: 0,
        }
    }

    /// [`env`](Self::env) plus the NATS user of `user` when secured.
    pub fn env_for(&self, user: &str) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        if self.secured {
            env.push(("SLIPWAY_NATS_USER", user.to_string()));
            env.push(("SLIPWAY_NATS_PASSWORD", password(user)));
            // No service may create streams there: the plane provisioned them as admin.
            env.push(("SLIPWAY_PROVISION", "false".into()));
        }
        env
    }

    /// What every service gets: this plane's NATS and database, short timers.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let bin_dir = bin_dir();
        let mut env = vec![
            ("SLIPWAY_NATS_URL", self.nats.url()),
            ("SLIPWAY_JS_REPLICAS", self.nats.replicas().to_string()),
            ("SLIPWAY_DATABASE_URL", self.db.url.clone()),
            ("SLIPWAY_SECRETS_KEY", TEST_SECRETS_KEY.into()),
            // A cluster test runs seven processes on one PostgreSQL (max_connections 100):
            // at 16 each they took every slot, and the test's own checks got none.
            ("SLIPWAY_DATABASE_MAX_CONNECTIONS", "8".into()),
            ("SLIPWAY_STANDBY_DELAY", STANDBY_DELAY.into()),
            ("SLIPWAY_READY_TIMEOUT", "20s".into()),
            ("SLIPWAY_FAILED_GRACE", "5s".into()),
            ("SLIPWAY_WORKFLOW_ACK_WAIT", "2s".into()),
            ("SLIPWAY_LEASE_TTL", "2s".into()),
            ("SLIPWAY_AGENT_CHECK_EVERY", "100ms".into()),
            ("SLIPWAY_AGENT_LEASE_TTL", "2s".into()),
            // The demo app is an exec: image.
            ("SLIPWAY_AGENT_ALLOW_EXEC", "true".into()),
            ("SLIPWAY_AGENT_DOCKER_HOST", self.docker_host.clone()),
            (
                "SLIPWAY_AGENT_STATE_DIR",
                self.agent_state.path().display().to_string(),
            ),
            // The demo app (`exec:slipway demo-app`) is found on the PATH.
            (
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            // Benches quiet the services with SLIPWAY_TEST_LOG (`warn,slipway::ready=info`).
            (
                "RUST_LOG",
                std::env::var("SLIPWAY_TEST_LOG").unwrap_or_else(|_| {
                    "info,deploy_orchestrator=debug,slipway_workflow=debug,deployment_actor=debug"
                        .into()
                }),
            ),
        ];
        env.extend(self.service_env.iter().cloned());
        env
    }

    /// The invariant checker over this plane's database and NATS.
    pub fn invariants(&self) -> Invariants {
        Invariants::new(self.store.clone(), self.client.clone())
    }

    /// Starts a process of service `name` (again, after a kill), with `extra` environment,
    /// and waits until it is ready; returns its index in [`services`](Self::services).
    pub fn spawn(&mut self, name: &str, extra: &[(&str, String)]) -> usize {
        let mut env = self.env_for(name);
        env.extend(extra.iter().cloned());
        let label = format!("{name}{}", self.services.len());
        let p = ServiceProcess::spawn(&label, bin(name), &[], &env).expect("spawning a service");
        p.wait_ready(name, TIMEOUT).expect("the service is ready");
        self.services.push(p);
        self.services.len() - 1
    }

    /// Starts service `name` again (after [`kill_service`](Self::kill_service)).
    pub fn respawn_service(&mut self, name: &str) {
        self.spawn(name, &[]);
    }

    /// SIGKILLs the routing or actor process `index`.
    pub fn kill_service(&mut self, index: usize) {
        self.services[index].kill();
    }

    /// Starts the region agent (again), and waits until it is ready.
    pub fn start_agent(&mut self) {
        let env = self.env_for("krane-agent-local");
        let agent =
            ServiceProcess::spawn("agent", bin(AGENT), &[], &env).expect("spawning the agent");
        agent
            .wait_ready(AGENT, TIMEOUT)
            .expect("the agent is ready");
        self.agent = Some(agent);
    }

    /// Starts another agent of region `local` (same state directory): it waits as the
    /// active agent's standby.
    pub fn start_standby_agent(&mut self) {
        let env = self.env_for("krane-agent-local");
        let label = format!("agent-standby{}", self.standby_agents.len());
        let agent =
            ServiceProcess::spawn(&label, bin(AGENT), &[], &env).expect("spawning an agent");
        agent
            .wait_ready(AGENT, TIMEOUT)
            .expect("the agent is ready");
        self.standby_agents.push(agent);
    }

    /// Starts the edge (again, on the same port after the first time) and waits until it
    /// is ready.
    pub fn start_edge(&mut self) {
        self.start_edge_with(&[]);
    }

    /// [`start_edge`](Self::start_edge), with `extra` settings (they win).
    pub fn start_edge_with(&mut self, extra: &[(&'static str, &str)]) {
        let address = *self.edge_address.get_or_insert_with(|| {
            let port = crate::ports::free_port().expect("a free port");
            std::net::SocketAddr::from(([127, 0, 0, 1], port))
        });
        let mut env = self.env_for(EDGE);
        env.push(("SLIPWAY_EDGE_LISTEN", address.to_string()));
        env.push(("SLIPWAY_EDGE_TRAFFIC_EVERY", "1s".into()));
        env.push(("SLIPWAY_EDGE_WAKE_TIMEOUT", "20s".into()));
        env.extend(extra.iter().map(|(var, value)| (*var, value.to_string())));
        let edge = ServiceProcess::spawn("edge", bin(EDGE), &[], &env).expect("spawning the edge");
        edge.wait_ready(EDGE, TIMEOUT).expect("the edge is ready");
        self.edge = Some(edge);
    }

    /// `GET http://<host><path>` through the edge: (status, `x-slipway-deployment`, body).
    pub async fn through_edge(&self, host: &str, path: &str) -> (u16, String, String) {
        let address = self.edge_address.expect("no edge in this plane");
        let response = reqwest::Client::new()
            .get(format!("http://{address}{path}"))
            .header(reqwest::header::HOST, host)
            .timeout(TIMEOUT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {host}{path} through the edge: {e}"));
        let status = response.status().as_u16();
        let deployment = response
            .headers()
            .get("x-slipway-deployment")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.text().await.unwrap_or_default();
        (status, deployment, body)
    }

    pub fn spawn_orchestrator(&mut self, extra: &[(&str, String)]) -> usize {
        let mut env = self.env_for(ORCHESTRATOR);
        env.extend(self.orchestrator_env.iter().cloned());
        env.extend(extra.iter().cloned());
        let name = format!("orch{}", self.orchestrators.len());
        let p = ServiceProcess::spawn(&name, bin(ORCHESTRATOR), &[], &env)
            .expect("spawning an orchestrator");
        p.wait_ready(ORCHESTRATOR, TIMEOUT)
            .expect("the orchestrator is ready");
        self.orchestrators.push(p);
        self.orchestrators.len() - 1
    }

    /// Waits (without blocking the runtime) until orchestrator `index` logs `needle`.
    pub fn orchestrator_logged(&self, index: usize, needle: &str) {
        tokio::task::block_in_place(|| {
            self.orchestrators[index]
                .wait_for_log(needle, TIMEOUT)
                .expect("the orchestrator's log line")
        });
    }

    /// SIGKILLs nats-server and starts it again on the same port and store; reconnects.
    pub async fn restart_nats(&mut self) {
        self.nats.restart().await.expect("restarting nats-server");
        let client = async_nats::connect(self.nats.addrs())
            .await
            .expect("reconnecting");
        let plane_js = jetstream::new(client.clone());
        self.client = client;
        for (slot, name) in [
            (&mut self.routes, provision::ROUTES),
            (&mut self.instances, provision::INSTANCES),
            (&mut self.workflows, provision::WORKFLOW_RECORDS),
            (&mut self.transitions, provision::TRANSITIONS),
            (&mut self.desired, provision::DESIRED),
        ] {
            *slot = plane_js
                .get_key_value(name)
                .await
                .expect("a provisioned bucket");
        }
        self.js = plane_js;
    }

    /// A request with a raw body: Ok(the typed reply) or Err(the error reply). Resent when
    /// unanswered (right after a SIGKILL the server may still hand a request to the dead
    /// subscription, and a stopped process takes requests it answers only once continued).
    pub async fn request<T: DeserializeOwned>(
        &self,
        subject: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Result<T, ErrorReply> {
        let payload: bytes::Bytes = body.into();
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
            return decode_reply(&reply);
        }
        panic!("no reply to {subject}");
    }

    /// A JSON request: Ok(reply JSON) or Err(error reply).
    pub async fn call(&self, subject: &str, body: Value) -> Result<Value, ErrorReply> {
        let payload = serde_json::to_vec(&body).expect("JSON");
        self.request(subject, payload).await
    }

    pub async fn ok(&self, subject: &str, body: Value) -> Value {
        self.call(subject, body)
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e:?}"))
    }

    /// Starts a workflow with request `subject` and waits until it has finished.
    pub async fn workflow(&self, subject: &str, body: Value) -> WorkflowRecord {
        let reply = self.ok(subject, body).await;
        self.workflow_done(reply["workflow_id"].as_str().expect("a workflow id"))
            .await
    }

    /// A workspace and project with `production` and `preview` environments, through the
    /// API. Returns the project id.
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

    /// The next number for names that must not collide within this plane.
    pub fn next_seq(&mut self) -> u32 {
        self.seq += 1;
        self.seq
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
            .expect("watching the workflow record");
        tokio::time::timeout(TIMEOUT, async {
            while let Some(entry) = watch.next().await {
                let entry = entry.expect("a watch entry");
                let record: WorkflowRecord =
                    rmp_serde::from_slice(&entry.value).expect("a workflow record");
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

    /// Runs the cron workflow (idle spin-down and lifecycle sweep) now; its reply.
    pub async fn sweep(&self) -> Value {
        self.ok(
            slipway_core::subjects::deploy::SCALE_DOWN_IDLE_PREVIEWS,
            json!({"wait_ms": 60000}),
        )
        .await
    }

    /// The deployment's pending transition, as the actor tells it.
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

    /// The project's routes, as routing lists them.
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

    /// Every event stored for a project, in order.
    pub async fn project_events(&self, project_id: &str) -> Vec<Value> {
        stream_messages(
            &self.js,
            provision::EVENTS,
            &format!("slipway.events.{project_id}.>"),
        )
        .await
    }

    /// Waits for an event of `kind` of a deployment (delivered from the stream's start).
    pub async fn wait_event(&self, project_id: &str, deployment_id: &str, kind: &str) -> Value {
        self.wait_event_where(project_id, deployment_id, kind, |_| true)
            .await
    }

    /// Waits for an event of `kind` of a deployment that satisfies `ok` (delivered from the
    /// stream's start).
    pub async fn wait_event_where(
        &self,
        project_id: &str,
        deployment_id: &str,
        kind: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let stream = self
            .js
            .get_stream(provision::EVENTS)
            .await
            .expect("the events stream");
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("slipway.events.{project_id}.{deployment_id}.{kind}"),
                ..Default::default()
            })
            .await
            .expect("an ordered consumer");
        let mut messages = consumer.messages().await.expect("its messages");
        tokio::time::timeout(TIMEOUT, async {
            while let Some(Ok(m)) = messages.next().await {
                let event: Value = serde_json::from_slice(&m.payload).expect("a JSON event");
                if ok(&event) {
                    return event;
                }
            }
            panic!("the events stream ended")
        })
        .await
        .unwrap_or_else(|_| panic!("no such {kind} event for {deployment_id}"))
    }

    /// Asks `get_deployment` until its answer satisfies `ok` (nothing tells when a report
    /// has been applied but the answer itself); returns it.
    pub async fn deployment_where(&self, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let d = self.deployment(id).await;
            if ok(&d) {
                return d;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never became as expected: {d}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the agent reports every instance of `deployment_id` in `local` with
    /// `status`.
    pub async fn wait_instances(&self, deployment_id: &str, status: &str) {
        let mut watch = self
            .instances
            .watch_with_history(format!("{deployment_id}.local"))
            .await
            .expect("watching instance reports");
        tokio::time::timeout(TIMEOUT, async {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                let report: Value = serde_json::from_slice(&entry.value).unwrap_or_default();
                let all = report["instances"].as_array().cloned().unwrap_or_default();
                if !all.is_empty() && all.iter().all(|i| i["status"] == status) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("instances of {deployment_id} never all {status}"));
    }

    /// SIGKILLs instance `instance_id` (its process group), as a crash would: the agent sees
    /// it exit and starts it again, on a new port.
    pub fn kill_instance(&self, instance_id: &str) {
        let pid_file = self
            .agent_state
            .path()
            .join("local")
            .join(format!("{instance_id}.pid"));
        let pgid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
            .trim()
            .parse()
            .expect("a process group id");
        slipway_local::process_groups::kill_group(pgid);
    }

    /// Waits (on a KV watch) until the `slipway_routes` entry of `fqdn` satisfies `ok`;
    /// returns it.
    pub async fn route_entry_where(&self, fqdn: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut watch = self
            .routes
            .watch_with_history(fqdn)
            .await
            .expect("watching slipway_routes");
        tokio::time::timeout(TIMEOUT, async {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { continue };
                let Ok(value) = serde_json::from_slice::<Value>(&entry.value) else {
                    continue;
                };
                if ok(&value) {
                    return value;
                }
            }
            panic!("watch ended")
        })
        .await
        .unwrap_or_else(|_| panic!("the route entry of {fqdn} never became as expected"))
    }

    /// The FQDN of the project's first route of `sticky` (`live`, `environment`, …) whose
    /// name contains `part`, once its route entry lists a running instance.
    pub async fn serving_domain(&self, project_id: &str, sticky: &str, part: &str) -> String {
        let routes = self.routes(project_id).await;
        let fqdn = routes
            .iter()
            .filter(|r| r["sticky"] == sticky)
            .filter_map(|r| r["fqdn"].as_str())
            .find(|fqdn| fqdn.contains(part))
            .unwrap_or_else(|| panic!("no {sticky} route with {part:?}: {routes:?}"))
            .to_string();
        self.route_entry_where(&fqdn, |e| {
            e["instances"].as_array().is_some_and(|i| !i.is_empty())
        })
        .await;
        fqdn
    }

    /// The `slipway_routes` entry of `fqdn`.
    pub async fn route_table(&self, fqdn: &str) -> Option<Value> {
        self.routes
            .get(fqdn)
            .await
            .expect("reading slipway_routes")
            .map(|v| serde_json::from_slice(&v).expect("a JSON route entry"))
    }
}

impl Drop for Plane {
    /// The agent dies with the test; the demo apps it started must not outlive it.
    fn drop(&mut self) {
        if let Some(mut edge) = self.edge.take() {
            edge.kill();
        }
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
        // Standby agents too, before the sweep: one that has taken over would otherwise
        // start instances again after it (field drops come after this body).
        for agent in &mut self.standby_agents {
            agent.kill();
        }
        let state = self.agent_state.path().join("local");
        slipway_local::process_groups::kill_recorded(&state);
        // And no container it started (on a podman service: testkit::Podman).
        if let Ok(scope) = std::fs::read_to_string(state.join("scope")) {
            crate::podman::remove_scope(&self.docker_host, scope.trim());
        }
    }
}
