//! `krane-agent`: the reference region agent (API.md "Region agents").
//!
//! It watches `slipway_desired` for `deployment.<region>.>` and runs each replica: an OCI image
//! as a container through the Docker Engine API (Docker or Podman; `PORT` set to the
//! environment's port, published on a free port of 127.0.0.1), an `exec:<command line>` image
//! (where allowed) as a local process (`/bin/sh -c`, with `PORT` set to a free port on
//! 127.0.0.1). It health-checks them over HTTP (`GET /healthz`), restarts crashed ones
//! with backoff (reporting them `failed` while they crash-loop), stops them when the desired
//! state is `stopped`, and reports to `slipway_instances`. Every process it starts is recorded
//! in its state directory, so after its own crash it adopts the instances it left behind that
//! are still desired, kills the rest, and converges on the desired state again.
//!
//! Several agents may serve one region (say, on one host sharing the state directory): they
//! elect one active agent through the lease `agent.<region>` in `slipway_leases`. The others
//! wait as its standbys; when it dies, one takes the lease over within a lease TTL and adopts
//! what runs. An active agent that loses its lease (it stalled past the TTL) exits at once,
//! leaving its instances to its successor; until it knows, its reports are fenced by the
//! lease's epoch ([`report`]), so none of them lands over its successor's.

pub mod container;
pub mod desired;
pub mod logs;
pub mod process;
pub mod report;
pub mod runtime;
pub mod supervisor;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;
use slipway_core::{config::CommonConfig, krane::DesiredDeployment, registry_auth::AuthFile};
use slipway_nats::{
    lease::{Holder, Leases},
    provision::{INSTANCES, LEASES},
};
use supervisor::Adopted;
use tokio::sync::watch;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "krane-agent",
    version,
    about = "Slipway reference region agent: runs a region's deployments as containers (or exec: processes)"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    /// The region this agent serves.
    #[arg(long, env = "SLIPWAY_REGION", default_value = "local")]
    pub region: String,
    /// Where the agent records the processes it started (and their logs).
    #[arg(
        long,
        env = "SLIPWAY_AGENT_STATE_DIR",
        default_value = ".slipway-agent"
    )]
    pub state_dir: PathBuf,
    /// How often instances are health-checked.
    #[arg(long, env = "SLIPWAY_AGENT_CHECK_EVERY", default_value = "500ms", value_parser = slipway_core::config::parse_duration)]
    pub check_every: Duration,
    /// Exits, without a stable period between them, after which an instance is reported
    /// crash-looping (and `failed` while it does not answer its health check).
    #[arg(long, env = "SLIPWAY_AGENT_CRASH_LOOP_AFTER", default_value_t = 3)]
    pub crash_loop_after: u32,
    /// How long an instance must stay healthy before its exits are forgotten: an app that
    /// answers its health check and exits seconds later is crash-looping, not recovered.
    #[arg(long, env = "SLIPWAY_AGENT_STABLE_AFTER", default_value = "30s", value_parser = slipway_core::config::parse_duration)]
    pub stable_after: Duration,
    /// How long an instance being stopped gets to finish its requests (SIGTERM, then SIGKILL).
    #[arg(long, env = "SLIPWAY_AGENT_STOP_GRACE", default_value = "10s", value_parser = slipway_core::config::parse_duration)]
    pub stop_grace: Duration,
    /// Run `exec:` images: shell lines run as the agent's user, so whoever may deploy gets a
    /// shell on this host. For development and tests only; off by default.
    #[arg(long, env = "SLIPWAY_AGENT_ALLOW_EXEC")]
    pub allow_exec: bool,
    /// The container engine's Docker Engine API (`unix://…`, `tcp://…`); default `DOCKER_HOST`,
    /// else `unix:///var/run/docker.sock`. Podman serves it too (`podman system service`).
    #[arg(long, env = "SLIPWAY_AGENT_DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Registry credentials for pulls: a Docker `config.json` (what `docker login` or
    /// `podman login --authfile` writes), read at every pull.
    #[arg(long, env = "SLIPWAY_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
    /// How long the region's active agent may go silent before a standby agent takes over.
    #[arg(long, env = "SLIPWAY_AGENT_LEASE_TTL", default_value = "5s", value_parser = slipway_core::config::parse_duration)]
    pub lease_ttl: Duration,
    /// This agent's name in the region's lease (default: random).
    #[arg(long, env = "SLIPWAY_AGENT_ID")]
    pub agent_id: Option<String>,
}

impl slipway_core::service::ServiceConfig for Config {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let registry_auth = config.registry_auth.as_ref().map(AuthFile::new);
    if let Some(auth) = &registry_auth {
        let registries = auth.check().context("SLIPWAY_REGISTRY_AUTH")?;
        tracing::info!(path = %auth.path().display(), registries, "registry credentials for pulls");
    }
    let state_dir = config.state_dir.join(&config.region);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;

    let client = slipway_nats::connect(&config.common.nats, "krane-agent").await?;
    let js = jetstream::new(client.clone());
    // The control plane provisions the buckets; a region agent's NATS user may not
    // (nats/accounts.conf), so it waits for them.
    let instances = slipway_nats::kv::wait_for_bucket(&js, INSTANCES).await;
    let docker_host = config
        .docker_host
        .clone()
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let scope = scope(&state_dir)?;
    let engine = container::Engine::connect(&docker_host, &config.region, &scope, registry_auth);
    let engine = match engine.await {
        Ok(engine) => {
            tracing::info!(%docker_host, "container engine answers: images run as containers");
            Some(engine)
        }
        Err(e) => {
            tracing::warn!(%docker_host, error = %e, "no container engine answers: only exec: images run here");
            None
        }
    };
    let leases = slipway_nats::kv::wait_for_bucket(&js, LEASES).await;
    // Announces that this region has an agent, active or standby (`nats micro ls`; a deploy
    // to a region without one fails at once).
    let _service = slipway_nats::Micro::start(
        &client,
        &slipway_core::subjects::agent_service(&config.region),
        env!("CARGO_PKG_VERSION"),
        "Region agent: runs the region's desired deployments, reports their instances",
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot announce the agent as a micro service: {e}"))?;
    slipway_core::service::announce_ready(env!("CARGO_PKG_NAME"));

    let holder = Holder {
        name: config.agent_id.clone().unwrap_or_else(|| {
            format!("krane-{}-{}", config.region, uuid::Uuid::new_v4().simple())
        }),
        run: 0,
    };
    tracing::info!(region = %config.region, agent = %holder.name, "waiting for the region's lease (standby while another agent is active)");
    let leases = Leases::new(leases, config.lease_ttl);
    let lease_name = region_lease(&config.region);
    let mut lease = loop {
        match leases.acquire(&lease_name, &holder).await {
            Ok(lease) => break lease,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the region's lease; retrying");
                tokio::time::sleep(config.lease_ttl).await;
            }
        }
    };
    tracing::info!(region = %config.region, agent = %holder.name, epoch = lease.epoch(), "active agent of the region");
    // The supervisors' view of the lease, replaced whenever the lease is taken back.
    let (tenure, tenure_rx) = watch::channel(lease.tenure());
    let ctx = supervisor::Context {
        region: config.region.clone(),
        state_dir: state_dir.clone(),
        reports: report::Reporter::new(instances, &config.region, lease.epoch()),
        tenure: tenure_rx,
        check_every: config.check_every,
        crash_loop_after: config.crash_loop_after,
        stable_after: config.stable_after,
        stop_grace: config.stop_grace,
        allow_exec: config.allow_exec,
        engine,
        docker_host,
        client: client.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?,
    };
    // What an earlier agent started and still runs: adopted by the supervisors of the
    // deployments still desired, killed a lease TTL after the whole desired state has been
    // seen. Not at once: on a cluster, the feed's consumer can report itself caught up while
    // its replica still lags behind the stream (seen after a takeover: desired instances
    // reaped as orphans, then started again), and the rest arrives within moments.
    let mut orphans = Some(runtime::orphans(&state_dir, ctx.engine.as_ref()).await);
    let reap_orphans = tokio::time::sleep(Duration::MAX);
    tokio::pin!(reap_orphans);
    let mut reap_armed = false;

    let mut feed = Box::pin(desired::attach(&js, &config.region).await);
    tracing::info!(region = %config.region, "serving region");
    let mut lease_check = tokio::time::interval(config.lease_ttl / 6);
    let mut supervisors: HashMap<String, watch::Sender<Option<DesiredDeployment>>> = HashMap::new();
    // Each supervisor hands back its deployment and receiver when it ends.
    let mut running: tokio::task::JoinSet<(String, watch::Receiver<Option<DesiredDeployment>>)> =
        tokio::task::JoinSet::new();
    // One listener for the whole run, so a signal between two entries is not missed.
    let shutdown = slipway_nats::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        let change = tokio::select! {
            change = feed.next() => change,
            Some(ended) = running.join_next() => {
                match ended {
                    // A document came after it decided to end: a new supervisor takes it.
                    Ok((id, rx)) if rx.has_changed().unwrap_or(false) => {
                        running.spawn(supervisor::supervise(ctx.clone(), id, rx, Adopted::default()));
                    }
                    Ok((id, _)) => {
                        supervisors.remove(&id);
                    }
                    Err(e) => tracing::error!(error = %e, "a supervisor failed"),
                }
                continue;
            }
            _ = lease_check.tick() => {
                if lease.is_lost() {
                    // Renewals failed past the expiry (NATS was unreachable), or another agent
                    // took the lease. On a cluster another agent may reach NATS where this one
                    // cannot, and take over: carrying on is safe because reports are fenced
                    // (`report`), so this agent's late reports never land over its successor's.
                    match keep_or_exit(&leases, &lease_name, &holder, &mut lease).await {
                        Ok(()) => {
                            ctx.reports.set_epoch(lease.epoch());
                            tenure.send_replace(lease.tenure());
                        }
                        Err(e) => tracing::warn!(region = %config.region, error = %e, "cannot reach the region's lease; carrying on, looking again"),
                    }
                }
                continue;
            }
            _ = &mut reap_orphans, if reap_armed && !lease.is_lost() => {
                reap_armed = false;
                let left = orphans.take().unwrap_or_default();
                if !left.is_empty() {
                    let count = left.len();
                    for orphan in left.into_values() {
                        orphan.instance.reap().await;
                    }
                    tracing::info!(
                        orphans = count,
                        "stopped instances left by an earlier run that are no longer desired"
                    );
                }
                continue;
            }
            _ = ctx.reports.deposed() => {
                // Its successor reports the region now (it took the lease while this agent
                // could not renew it): leave everything to it, as keep_or_exit does.
                tracing::error!(region = %config.region, "a later active agent of the region writes its reports; exiting without stopping instances");
                std::process::exit(3);
            }
            _ = &mut shutdown => break,
        };
        let Some(change) = change else {
            anyhow::bail!("the slipway_desired feed ended");
        };
        let desired::Change { deployment_id, doc } = match change {
            Ok(desired::Item::Change(c)) => *c,
            Ok(desired::Item::CaughtUp) => {
                // Every desired document has a supervisor: what none adopted by the time the
                // reap is due is not desired.
                if orphans.is_some() && !reap_armed {
                    reap_orphans
                        .as_mut()
                        .reset(tokio::time::Instant::now() + config.lease_ttl);
                    reap_armed = true;
                }
                continue;
            }
            Err(e) => {
                // Its consumer's leader died, or the consumer went with a node, or another
                // agent took the region and made the consumer its own. Still the active agent,
                // read the whole desired state again from a new consumer (supervisors ignore
                // documents they already carry out); else leave. Re-attaching without looking
                // took the consumer back from the agent that had taken over the region.
                tracing::warn!(error = %e, "desired-state feed error");
                match keep_or_exit(&leases, &lease_name, &holder, &mut lease).await {
                    Ok(()) => ctx.reports.set_epoch(lease.epoch()),
                    Err(e) => {
                        tracing::warn!(region = %config.region, error = %e, "cannot reach the region's lease; attaching again all the same")
                    }
                }
                tracing::info!("attaching to the desired state again");
                feed = Box::pin(desired::attach(&js, &config.region).await);
                continue;
            }
        };
        tracing::debug!(%deployment_id, version = doc.as_ref().map(|d| d.version), "desired document");
        match supervisors.get(&deployment_id) {
            Some(tx) if !tx.is_closed() => {
                let _ = tx.send(doc);
            }
            _ => {
                let adopted = match orphans.as_mut() {
                    Some(orphans) => supervisor::adopt(&deployment_id, orphans),
                    None => Adopted::default(),
                };
                let (tx, rx) = watch::channel(doc);
                running.spawn(supervisor::supervise(
                    ctx.clone(),
                    deployment_id.clone(),
                    rx,
                    adopted,
                ));
                supervisors.insert(deployment_id, tx);
            }
        }
    }
    // Stopping the agent stops what it runs: dropping the senders ends every supervisor,
    // which stops its instances first.
    drop(supervisors);
    while running.join_next().await.is_some() {}
    lease.release().await;
    Ok(())
}

/// The id of the agents sharing `state_dir` (made on first start): it labels their containers,
/// so that they adopt their own and leave alone those of other installations on the engine.
fn scope(state_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = state_dir.join("scope");
    if let Ok(scope) = std::fs::read_to_string(&path) {
        if !scope.trim().is_empty() {
            return Ok(scope.trim().to_string());
        }
    }
    let scope = uuid::Uuid::new_v4().simple().to_string();
    // Written whole, then renamed: two agents starting at once agree on one of theirs.
    let tmp = state_dir.join(format!("scope.{scope}"));
    std::fs::write(&tmp, &scope).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(std::fs::read_to_string(&path)?.trim().to_string())
}

/// Makes sure this agent still holds the region's lease: takes it back if nobody else took
/// it meanwhile (renewals failed while NATS was unreachable), and exits if another agent
/// holds it — that one adopts what runs, so this one stops nothing (a clean shutdown would
/// stop the instances). An error: the lease could not be read, nothing is known.
async fn keep_or_exit(
    leases: &Leases,
    name: &str,
    holder: &Holder,
    lease: &mut slipway_nats::lease::Lease,
) -> Result<(), slipway_nats::lease::LeaseError> {
    match leases.try_acquire(name, holder).await? {
        Some(again) if again.is_continuous() => {
            if lease.is_lost() {
                tracing::warn!(epoch = again.epoch(), "could not renew the region's lease for a while; took it back (no other agent had taken it)");
            }
            *lease = again;
            Ok(())
        }
        _ => {
            tracing::error!(
                "another agent of the region is active now; exiting without stopping instances"
            );
            std::process::exit(3);
        }
    }
}

/// The lease the agents of `region` elect their active agent with.
pub fn region_lease(region: &str) -> String {
    format!("agent.{region}")
}
