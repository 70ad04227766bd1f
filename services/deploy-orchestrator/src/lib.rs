//! `deploy-orchestrator`: the `slipway-deploy` micro service (API.md) and the durable
//! workflows behind it. Deploy takes a deployment from a request to ready, routed and live
//! (BEHAVIOUR.md "Deploy"), on the engine of `slipway-workflow`.

mod api;
mod clients;
mod workflows;

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use slipway_core::{
    config::{parse_duration, CommonConfig, DatabaseConfig},
    registry_auth::AuthFile,
    time::SystemClock,
};
use slipway_nats::provision::{
    self, DESIRED, EVENTS, INSTANCES, LEASES, TIMERS, TRAFFIC, WORKFLOWS, WORKFLOW_RECORDS,
};
use slipway_store::Store;
use slipway_workflow::{Engine, EngineConfig};

use crate::{
    clients::{
        actor::Actor, builder::Builder, events::Events, instance_wait::ReadyTiming,
        instances::Instances, routing::Routing,
    },
    workflows::handover::Handover,
};

pub use workflows::{
    archive::Archive, deploy::Deploy, promote::Promote, rollback::Rollback, scale_down::ScaleDown,
    wake::Wake,
};

pub const SERVICE_NAME: &str = "slipway-deploy";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "deploy-orchestrator",
    version,
    about = "Slipway deploy-orchestrator: durable deploy workflows"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Regions a deployment runs in when its environment names none (comma-separated).
    #[arg(
        long,
        env = "SLIPWAY_REGIONS",
        default_value = "local",
        value_delimiter = ','
    )]
    pub regions: Vec<String>,
    /// Apex of generated domains.
    #[arg(long, env = "SLIPWAY_APEX_DOMAIN", default_value = slipway_core::domains::DEFAULT_APEX)]
    pub apex_domain: String,
    /// Delay before a deployment that serves nothing (outside `preview`) goes to standby.
    #[arg(long, env = "SLIPWAY_STANDBY_DELAY", default_value = "30m", value_parser = parse_duration)]
    pub standby_delay: Duration,
    /// How long a deploy waits for healthy instances.
    #[arg(long, env = "SLIPWAY_READY_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// How long an instance may stay `failed` before the deploy gives up on it.
    #[arg(long, env = "SLIPWAY_FAILED_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub failed_grace: Duration,
    /// Idle window of preview deployments.
    #[arg(long, env = "SLIPWAY_IDLE_WINDOW", default_value = "6h", value_parser = parse_duration)]
    pub idle_window: Duration,
    /// How long the record of a finished workflow is kept (then JetStream removes it).
    #[arg(long, env = "SLIPWAY_WORKFLOW_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub workflow_retention: Duration,
    /// How long a deployment stays in standby before the lifecycle sweep archives it.
    #[arg(long, env = "SLIPWAY_ARCHIVE_AFTER", default_value = "30d", value_parser = parse_duration)]
    pub archive_after: Duration,
    /// The scale-down cron (a `Nats-Schedule` value: `@every 15m`, a 6-field cron, `@hourly`).
    #[arg(
        long,
        env = "SLIPWAY_SCALE_DOWN_SCHEDULE",
        default_value = "@every 15m"
    )]
    pub scale_down_schedule: String,
    /// How long a silent worker keeps a workflow before another resumes it.
    #[arg(long, env = "SLIPWAY_WORKFLOW_ACK_WAIT", default_value = "3s", value_parser = parse_duration)]
    pub workflow_ack_wait: Duration,
    /// How often a step that fails retryably is retried before its workflow fails (steps
    /// after a commit point retry until they succeed).
    #[arg(long, env = "SLIPWAY_STEP_RETRIES", default_value_t = 6)]
    pub step_retries: usize,
    /// The Docker Engine API that builds images from git sources (`unix://…`, `tcp://…`);
    /// without it, deployments of a `git_source` are refused. The region agents must be able
    /// to run what it builds: the same engine, or a registry both reach (the prefix below).
    #[arg(long, env = "SLIPWAY_BUILDER_DOCKER_HOST")]
    pub builder_docker_host: Option<String>,
    /// Built images are tagged `<prefix>/<project_id>:<deployment_id>`.
    #[arg(
        long,
        env = "SLIPWAY_BUILD_IMAGE_PREFIX",
        default_value = "localhost/slipway"
    )]
    pub build_image_prefix: String,
    /// Push built images (set it when the prefix names a registry the region agents pull
    /// from, `registry.example.com/slipway`; their engines pull what they do not have).
    #[arg(long, env = "SLIPWAY_BUILD_PUSH")]
    pub build_push: bool,
    /// Registry credentials for builds (base images) and pushes: a Docker `config.json` (what
    /// `docker login` or `podman login --authfile` writes), read at every build.
    #[arg(long, env = "SLIPWAY_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
    /// How long a build (fetch included) may take before the deployment fails.
    #[arg(long, env = "SLIPWAY_BUILD_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub build_timeout: Duration,
    /// How long the per-project lease of a dead holder blocks others.
    #[arg(long, env = "SLIPWAY_LEASE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
}

impl slipway_core::service::ServiceConfig for Config {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.regions.is_empty() && config.regions.iter().all(|r| !r.trim().is_empty()),
        "SLIPWAY_REGIONS must name at least one region"
    );
    let registry_auth = config.registry_auth.as_ref().map(AuthFile::new);
    if let Some(auth) = &registry_auth {
        let registries = auth.check().context("SLIPWAY_REGISTRY_AUTH")?;
        tracing::info!(path = %auth.path().display(), registries, "registry credentials for builds");
    }
    let client = slipway_nats::connect(&config.common.nats, "deploy-orchestrator").await?;
    let js = jetstream::new(client.clone());
    let c = &config.common;
    let streams = [WORKFLOWS, TIMERS, TRAFFIC, EVENTS];
    let buckets = [DESIRED, WORKFLOW_RECORDS, LEASES, INSTANCES];
    provision::ensure(&js, c.js_replicas, c.provision, &streams, &buckets).await?;
    let store = Store::open_configured(&config.database)
        .await
        .context("opening the database")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let clock = SystemClock::shared();
    let timing = ReadyTiming {
        ready_timeout: config.ready_timeout,
        failed_grace: config.failed_grace,
    };
    let reports = js.get_key_value(INSTANCES).await?;
    let actor = Actor::new(client.clone());
    let routing = Routing::new(client.clone());
    let events = Events::new(js.clone(), clock.clone());
    let handover = Handover {
        store: store.clone(),
        actor: actor.clone(),
        instances: Instances::new(reports, client.clone(), http, timing, clock.clone()),
        standby_delay: config.standby_delay,
    };
    let builder = match &config.builder_docker_host {
        Some(host) => Some(
            Builder::new(
                host,
                &config.build_image_prefix,
                config.build_timeout,
                config.build_push,
                registry_auth,
            )
            .with_context(|| format!("SLIPWAY_BUILDER_DOCKER_HOST {host}"))?,
        ),
        None => None,
    };
    let deploy = Deploy {
        builder: builder.clone(),
        nats: client.clone(),
        store: store.clone(),
        handover: handover.clone(),
        routing: routing.clone(),
        events: events.clone(),
        desired: js.get_key_value(DESIRED).await?,
        apex_domain: config.apex_domain.clone(),
        default_regions: config.regions.clone(),
    };
    let rollback = Rollback {
        store: store.clone(),
        handover: handover.clone(),
        routing: routing.clone(),
        events: events.clone(),
    };
    let wake = Wake {
        handover: handover.clone(),
    };
    let archive = Archive {
        handover: handover.clone(),
        routing: routing.clone(),
    };
    let promote = Promote {
        store: store.clone(),
        handover: handover.clone(),
        routing: routing.clone(),
        events: events.clone(),
    };
    let scale_down = ScaleDown {
        store: store.clone(),
        handover,
        routing,
        js: js.clone(),
        idle_window: config.idle_window,
        archive_after: config.archive_after,
        workflow_retention: config.workflow_retention,
        clock,
    };
    let mut engine_config = EngineConfig::new("deploy-orchestrator");
    engine_config.ack_wait = config.workflow_ack_wait;
    engine_config.lease_ttl = config.lease_ttl;
    engine_config.retry = engine_config.retry.with_max_times(config.step_retries);
    engine_config.record_retention = config.workflow_retention;
    let engine = Engine::builder(js.clone(), engine_config)
        .register(deploy)
        .register(rollback)
        .register(promote)
        .register(scale_down)
        .register(wake)
        .register(archive)
        .build()
        .await?;
    let api = api::Api {
        store,
        engine: engine.clone(),
        events,
        apex_domain: config.apex_domain.clone(),
        desired: js.get_key_value(DESIRED).await?,
        builds: builder.is_some(),
    };

    let service = api::serve(&client, api.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the micro service: {e}"))?;
    let workers = tokio::spawn(engine.run_workers());
    tokio::spawn(api::restart_orphans(api.clone()));
    api::cron::ensure_schedule(&js, &config.scale_down_schedule)
        .await
        .context("writing the scale-down schedule")?;
    tokio::spawn(api::cron::consume_fires(js, api));
    service
        .await_reachable(&client)
        .await
        .map_err(|e| anyhow::anyhow!("the micro service is not reachable: {e}"))?;
    slipway_core::service::announce_ready(env!("CARGO_PKG_NAME"));

    slipway_nats::shutdown::signal().await;
    workers.abort();
    drop(service);
    client.drain().await.ok();
    Ok(())
}
