//! `slipway dev`: nats-server (≥ 2.14, from `.tools/`) on a free port with its data in
//! `<dir>/nats`, SQLite at `<dir>/slipway.db`, every service, one krane-agent, and a demo
//! workspace / project whose demo app is deployed through the orchestrator, as a user would.

mod record;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use async_nats::jetstream;
use futures::StreamExt;
use slipway_core::{subjects, time::now_ms};
use slipway_local::{NatsServer, ServiceProcess};
use slipway_proto::v1::{
    CreateDeploymentReply, CreateDeploymentRequest, Deployment, ListRoutesReply, ListRoutesRequest,
};
use slipway_store::{Store, StoreError};
use tokio::signal::unix::{signal, Signal, SignalKind};

use self::record::RunRecord;

use crate::{api::Api, commands::get_deployment, deploy::FollowedEvent};

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the control plane keeps its data between runs.
    #[arg(long, default_value = ".slipway-dev")]
    dir: PathBuf,
    /// Standby delay for superseded production deployments (shorter than production's 30m).
    #[arg(long, default_value = "30m")]
    standby_delay: String,
    /// The port of its nats-server (default: a free one).
    #[arg(long)]
    nats_port: Option<u16>,
    /// The database (`postgres://…` works too; default: SQLite in `--dir`).
    #[arg(long, env = "SLIPWAY_DATABASE_URL")]
    database_url: Option<String>,
    /// How long a deploy waits for healthy instances before it fails (production's default
    /// is 10m; an app that does not come up here should say so soon).
    #[arg(long, default_value = "60s")]
    ready_timeout: String,
}

/// The services, in start order.
const SERVICES: &[&str] = &[
    "deployment-actor",
    "routing",
    "krane-agent",
    "deploy-orchestrator",
    "edge",
];
const DEMO_PROJECT: &str = "proj_demo";
/// How long a service may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How often the run looks for a service that exited.
const WATCH_EVERY: Duration = Duration::from_secs(1);

pub async fn run(args: DevArgs) -> Result<()> {
    // Listened for before anything starts: a stop asked for while starting stops what
    // started so far, instead of leaving it running without its parent.
    let mut stop_asked = StopSignals::listen()?;
    std::fs::create_dir_all(&args.dir)?;
    let dir = args.dir.canonicalize()?;
    let mut plane = Plane {
        record: RunRecord::claim(&dir)?,
        nats: None,
        services: Vec::new(),
        bin_dir: PathBuf::new(),
        env: Vec::new(),
    };
    let started = tokio::select! {
        started = start(&args, &dir, &mut plane) => Some(started),
        () = stop_asked.recv() => None,
    };
    match started {
        Some(Ok(())) => loop {
            tokio::select! {
                () = stop_asked.recv() => break,
                () = tokio::time::sleep(WATCH_EVERY) => plane.restart_exited(),
            }
        },
        Some(Err(e)) => {
            plane.stop();
            return Err(e);
        }
        None => {}
    }
    eprintln!("stopping");
    plane.stop();
    Ok(())
}

/// What a run has started, and how it starts a service.
struct Plane {
    record: RunRecord,
    nats: Option<NatsServer>,
    /// In start order.
    services: Vec<(&'static str, ServiceProcess)>,
    bin_dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Plane {
    /// Starts service `name`, records it, and waits until it says it is ready.
    fn start_service(&mut self, name: &'static str) -> Result<()> {
        let bin = self.bin_dir.join(name);
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace` first",
            bin.display()
        );
        let process = ServiceProcess::spawn_supervised(name, &bin, &[], &self.env)?;
        self.record.add(name, process.pid())?;
        let started = tokio::task::block_in_place(|| process.wait_ready(name, READY_WITHIN));
        match self.services.iter_mut().find(|(n, _)| *n == name) {
            Some((_, exited)) => *exited = process,
            None => self.services.push((name, process)),
        }
        started.with_context(|| format!("{name} did not start"))
    }

    /// Starts again every service that exited (a crash, a `kill -9`), as a supervisor would:
    /// what it was doing resumes from what it stored.
    fn restart_exited(&mut self) {
        let exited: Vec<&'static str> = self
            .services
            .iter_mut()
            .filter_map(|(name, process)| (!process.is_running()).then_some(*name))
            .collect();
        for name in exited {
            eprintln!("{name} exited; starting it again");
            if let Err(e) = self.start_service(name) {
                eprintln!("{e:#}; trying again in {WATCH_EVERY:?}");
            }
        }
    }

    /// SIGTERM, newest first: the agent stops the demo apps before it goes; then the
    /// nats-server.
    fn stop(mut self) {
        for (_, process) in self.services.iter_mut().rev() {
            process.terminate(Duration::from_secs(10));
        }
        drop(self.nats.take());
        self.record.release();
    }
}

/// Ctrl-C, SIGTERM (`kill`, a supervisor) and SIGHUP (its terminal closed): each stops the
/// control plane, rather than ending `slipway dev` alone and leaving its services running.
/// SIGHUP only where it is not ignored: under `nohup` a closed terminal stops nothing.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Option<Signal>,
}

impl StopSignals {
    fn listen() -> Result<Self> {
        let hangup = match hangup_ignored() {
            true => None,
            false => Some(signal(SignalKind::hangup())?),
        };
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup,
        })
    }

    async fn recv(&mut self) {
        let hangup = async {
            match &mut self.hangup {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            _ = hangup => {}
        }
    }
}

/// Whether this process ignores SIGHUP (`nohup`), from the ignored-signals mask in
/// `/proc/self/status` (SIGHUP is signal 1, its lowest bit).
fn hangup_ignored() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 == 1)
}

/// Starts everything, recording each process as it starts, deploys the demo app and prints
/// how to use the plane.
async fn start(args: &DevArgs, dir: &Path, plane: &mut Plane) -> Result<()> {
    let nats = match args.nats_port {
        Some(port) => NatsServer::start_in_on(dir.join("nats"), port).await,
        None => NatsServer::start_in(dir.join("nats")).await,
    }
    .context("starting nats-server")?;
    if let Some(pid) = nats.pid() {
        plane.record.add("nats-server", pid)?;
    }
    let nats_url = plane.nats.insert(nats).url();
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("slipway.db").display()));
    let store = Store::open(&database_url).await?;
    seed(&store).await?;
    let secrets_key = secrets_key(dir)?;

    let bin_dir = std::env::current_exe()?
        .parent()
        .context("no directory for the slipway binary")?
        .to_path_buf();
    // The agent runs `exec:slipway demo-app …`: put this slipway first on its PATH.
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let edge_port = slipway_local::ports::free_port().context("no free port for the edge")?;
    plane.env = vec![
        ("SLIPWAY_EDGE_LISTEN", format!("127.0.0.1:{edge_port}")),
        ("SLIPWAY_NATS_URL", nats_url.clone()),
        ("SLIPWAY_DATABASE_URL", database_url.clone()),
        ("SLIPWAY_SECRETS_KEY", secrets_key),
        ("SLIPWAY_STANDBY_DELAY", args.standby_delay.clone()),
        ("SLIPWAY_READY_TIMEOUT", args.ready_timeout.clone()),
        // One agent, the same after a restart: it takes its region's lease back at once
        // instead of waiting out the lease a crashed run left.
        ("SLIPWAY_AGENT_ID", "krane-local-dev".into()),
        // The demo app is an exec: image (a development machine's own user runs it).
        ("SLIPWAY_AGENT_ALLOW_EXEC", "true".into()),
        (
            "SLIPWAY_AGENT_STATE_DIR",
            dir.join("agent").display().to_string(),
        ),
        ("PATH", path),
    ];
    plane.bin_dir = bin_dir.clone();
    for name in SERVICES {
        plane.start_service(name)?;
    }

    let demo = deploy_demo(&nats_url)
        .await
        .context("deploying the demo app")?;
    let demo_address = demo
        .instances
        .first()
        .map(|i| i.address.as_str())
        .unwrap_or_default();
    let demo_id = demo.id.as_str();

    println!();
    println!("Slipway dev control plane is up.");
    println!("  NATS      {nats_url}");
    println!("  database  {database_url}");
    println!("  services  {}", SERVICES.join(", "));
    println!("  demo app  http://{demo_address}/  (deployment {demo_id}, run by krane-agent)");
    for domain in &demo.domains {
        println!("  domain    {domain}");
    }
    println!("  edge      http://127.0.0.1:{edge_port}/  (serves every route by its Host)");
    println!();
    println!("Try it (curl resolves *.localhost to this machine):");
    match live_domain(&nats_url).await {
        Ok(live) => println!("  curl http://{live}:{edge_port}/"),
        Err(e) => println!("  (cannot tell the live domain: {e:#})"),
    }
    println!();
    let slipway = bin_dir.join("slipway");
    println!(
        "Deploy a new version, with this CLI ({}):",
        slipway.display()
    );
    println!("  export SLIPWAY_NATS_URL={nats_url}");
    println!("  export PATH=\"{}:$PATH\"", bin_dir.display());
    println!(
        "  slipway deploy --project {DEMO_PROJECT} --image 'exec:slipway demo-app --message v2'"
    );
    println!("  slipway ls --project {DEMO_PROJECT}");
    println!("  slipway status <deployment_id>");
    println!("  slipway rollback <deployment_id> {demo_id}");
    println!("  slipway promote <deployment_id>");
    println!("  slipway routes --project {DEMO_PROJECT}");
    println!("  slipway timers");
    println!();
    println!("Or with the nats CLI (optional: https://github.com/nats-io/natscli):");
    println!("  export NATS_URL={nats_url}");
    println!(
        "  nats req slipway.deploy.v1.create_deployment '{{\"project_id\":\"{DEMO_PROJECT}\",\"environment_slug\":\"production\",\"docker_image\":\"exec:slipway demo-app --message v2\"}}'"
    );
    println!(
        "  nats req slipway.deploy.v1.get_deployment '{{\"deployment_id\":\"<deployment_id>\"}}'"
    );
    println!(
        "  nats req slipway.deploy.v1.rollback '{{\"source_deployment_id\":\"<deployment_id>\",\"target_deployment_id\":\"{demo_id}\"}}'"
    );
    println!(
        "  nats req slipway.deploy.v1.promote '{{\"target_deployment_id\":\"<deployment_id>\"}}'"
    );
    println!("  nats req slipway.project.v1.get_project '{{\"project_id\":\"{DEMO_PROJECT}\"}}'");
    println!("  nats req slipway.routing.v1.list_routes.{DEMO_PROJECT} '{{}}'");
    println!("  nats micro ls");
    println!("  nats kv watch slipway_routes");
    println!("  nats sub 'slipway.events.>'");
    println!();
    println!(
        "Ctrl-C (or SIGTERM) stops everything; data stays in {}.",
        dir.display()
    );
    Ok(())
}

/// Deploys the demo app through the orchestrator (idempotent across runs within a day)
/// and follows its events until it is ready; returns the deployment.
async fn deploy_demo(nats_url: &str) -> Result<Deployment> {
    let api = Api {
        client: async_nats::connect(nats_url).await?,
    };
    let request = CreateDeploymentRequest {
        project_id: DEMO_PROJECT.into(),
        environment_slug: "production".into(),
        docker_image: Some("exec:slipway demo-app --message hello".into()),
        idempotency_key: "slipway-dev-demo".into(),
        ..Default::default()
    };
    let created: CreateDeploymentReply = api
        .request(subjects::deploy::CREATE_DEPLOYMENT, &request)
        .await?;
    let id = created.deployment_id.as_str();
    // Its ready or failed event, from the stream's start (an earlier run's deploy is there).
    let stream = jetstream::new(api.client.clone())
        .get_stream(slipway_nats::provision::EVENTS)
        .await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subjects: vec![
                subjects::events::event(DEMO_PROJECT, id, "ready"),
                subjects::events::event(DEMO_PROJECT, id, "failed"),
            ],
            ..Default::default()
        })
        .await?;
    let mut events = consumer.messages().await?;
    let event = tokio::time::timeout(Duration::from_secs(120), events.next())
        .await
        .context("the demo deploy did not finish within 120 s")?
        .context("the events stream ended")??;
    let event: FollowedEvent = serde_json::from_slice(&event.payload)?;
    if event.kind == "failed" {
        anyhow::bail!("the demo deploy failed: {}", event.failure_reason);
    }
    get_deployment(&api, id).await
}

/// The demo project's live domain.
async fn live_domain(nats_url: &str) -> Result<String> {
    let api = Api {
        client: async_nats::connect(nats_url).await?,
    };
    let routes: ListRoutesReply = api
        .request(
            subjects::routing::LIST.of(DEMO_PROJECT),
            &ListRoutesRequest::default(),
        )
        .await?;
    routes
        .routes
        .into_iter()
        .find(|r| r.sticky == slipway_core::domains::Sticky::Live.as_str())
        .map(|r| r.fqdn)
        .context("the demo project has no live route")
}

/// A demo workspace, project, production and preview environments; kept across runs.
async fn seed(store: &Store) -> Result<()> {
    let now = now_ms();
    match store.create_workspace("ws_demo", "demo", "Demo", now).await {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match store
        .create_project("proj_demo", "ws_demo", "demo-app", "Demo app", "main", now)
        .await
    {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let regions = BTreeMap::from([("local".to_string(), 1)]);
    match store
        .create_environment(
            "env_demo_production",
            "proj_demo",
            "production",
            &regions,
            8080,
            "{}",
            // The demo's domains are separated: no other project can spell them.
            &[],
            now,
        )
        .await
    {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match store
        .create_environment(
            "env_demo_preview",
            DEMO_PROJECT,
            "preview",
            &regions,
            8080,
            "{}",
            // The demo's domains are separated: no other project can spell them.
            &[],
            now,
        )
        .await
    {
        Ok(_) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The key secret variables are sealed under: `SLIPWAY_SECRETS_KEY` when set, else one kept
/// in the state directory (made on the first run, readable by its owner only), so that a
/// restarted dev plane still opens the secrets it sealed.
fn secrets_key(dir: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(key) = std::env::var("SLIPWAY_SECRETS_KEY") {
        return Ok(key);
    }
    let path = dir.join("secrets.key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(key.trim().to_string());
    }
    let key = slipway_store::SecretsKey::generate()?;
    std::fs::write(&path, &key).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(key)
}
