//! One supervisor per deployment: makes the running processes match the desired document,
//! health-checks them, and reports them when anything changes.

use std::{path::PathBuf, time::Duration};

use slipway_core::krane::{Desired, DesiredDeployment, InstanceStatus, ReportedInstance};
use slipway_nats::lease::Tenure;
use tokio::{sync::watch, time::Instant};

use crate::{
    container, logs,
    report::Reporter,
    runtime::{self, Instance, Orphan, StartError},
};

#[derive(Clone)]
pub struct Context {
    pub region: String,
    pub state_dir: PathBuf,
    /// Writes the reports to `slipway_instances`, fenced by the region lease.
    pub reports: Reporter,
    pub check_every: Duration,
    pub crash_loop_after: u32,
    pub stable_after: Duration,
    pub stop_grace: Duration,
    pub http: reqwest::Client,
    /// Whether `exec:` images run (`SLIPWAY_AGENT_ALLOW_EXEC`).
    pub allow_exec: bool,
    /// Where other images run, if an engine answered at `docker_host` when the agent started.
    pub engine: Option<container::Engine>,
    pub docker_host: String,
    /// Where instances' output lines go (`SLIPWAY_LOGS`).
    pub client: async_nats::Client,
    /// Whether this agent still holds the region's lease (the current acquisition's view).
    pub tenure: watch::Receiver<Tenure>,
}

impl Context {
    /// Whether this agent may start or stop processes: not once its region lease may be
    /// someone else's (it stalled past the expiry, or cannot renew), since a successor may
    /// have adopted them. Its lease check then takes the lease back, or exits.
    fn acts(&self) -> bool {
        !self.tenure.borrow().is_lost()
    }
}

/// One replica: its process (if running), what we report, and its restart bookkeeping.
struct Slot {
    id: String,
    port: u16,
    process: Option<Instance>,
    status: InstanceStatus,
    message: Option<String>,
    /// Exits since it last ran stably, and how the last one went.
    exits: u32,
    last_exit: Option<String>,
    restart_at: Option<Instant>,
    /// Since when its health check has passed without a break.
    healthy_since: Option<Instant>,
    crash_looping: bool,
    /// This agent cannot run the image at all.
    unrunnable: bool,
    /// Publishes what its log file gets, once it has run.
    tail: Option<logs::Tail>,
}

impl Slot {
    fn new() -> Self {
        Self {
            id: format!("inst_{}", uuid::Uuid::now_v7().simple()),
            port: 0,
            process: None,
            status: InstanceStatus::Pending,
            message: None,
            exits: 0,
            last_exit: None,
            restart_at: None,
            healthy_since: None,
            crash_looping: false,
            unrunnable: false,
            tail: None,
        }
    }

    /// Follows its log file from now on (from before it first starts, or when adopted).
    fn follow_log(&mut self, ctx: &Context, deployment_id: &str) {
        if self.tail.is_none() {
            self.tail = Some(logs::Tail::start(
                ctx.client.clone(),
                ctx.state_dir.join(format!("{}.log", self.id)),
                slipway_core::subjects::logs::of(deployment_id, &self.id),
            ));
        }
    }

    fn report(&self) -> ReportedInstance {
        ReportedInstance {
            id: self.id.clone(),
            address: if self.port == 0 {
                String::new()
            } else {
                format!("127.0.0.1:{}", self.port)
            },
            status: self.status,
            message: self.message.clone(),
            restarts: self.exits,
            crash_looping: self.crash_looping,
            unrunnable: self.unrunnable,
        }
    }
}

/// Doubling from 200 ms, at most 10 s.
fn backoff(exits: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << exits.min(6))).min(Duration::from_secs(10))
}

/// The first probe of a starting instance, and how each next one is spaced out, up to the
/// steady interval: an app is seen running within about a quarter of the time it took to
/// start (an app that starts in 10 ms is seen by 11.5 ms; with doubling it was 15 ms), and a
/// slow one is probed some 20 times in its first second, not harder than that for long.
const FIRST_PROBE: Duration = Duration::from_millis(2);
const PROBE_GROWTH: f64 = 1.25;

/// When to look again: soon while an instance is starting (its `starting`-th probe since it
/// started; None when none is), else at the steady interval.
fn next_check(check_every: Duration, starting: Option<u32>) -> Duration {
    match starting {
        // 1.25^64 is far past any steady interval: the exponent is capped there.
        Some(probes) => FIRST_PROBE
            .mul_f64(PROBE_GROWTH.powi(probes.min(64) as i32))
            .min(check_every),
        None => check_every,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Instances an earlier agent of the region started for a deployment and that still run,
/// taken over as they are: same ids, same addresses, no restart.
#[derive(Default)]
pub struct Adopted(Vec<Slot>);

/// Takes from `orphans` (recorded by an earlier agent of the region in the state directory)
/// the instances of `deployment_id`.
pub fn adopt(
    deployment_id: &str,
    orphans: &mut std::collections::BTreeMap<String, Orphan>,
) -> Adopted {
    let ids: Vec<String> = orphans
        .iter()
        .filter(|(_, r)| r.deployment_id == deployment_id)
        .map(|(id, _)| id.clone())
        .collect();
    let slots: Vec<Slot> = ids
        .into_iter()
        .filter_map(|id| {
            let orphan = orphans.remove(&id)?;
            let mut slot = Slot::new();
            slot.process = Some(orphan.instance);
            slot.id = id;
            slot.port = orphan.port;
            Some(slot)
        })
        .collect();
    if !slots.is_empty() {
        tracing::info!(%deployment_id, instances = slots.len(), "adopted running instances");
    }
    Adopted(slots)
}

#[tracing::instrument(skip(ctx, desired, adopted), fields(region = %ctx.region))]
pub async fn supervise(
    ctx: Context,
    deployment_id: String,
    mut desired: watch::Receiver<Option<DesiredDeployment>>,
    adopted: Adopted,
) -> (String, watch::Receiver<Option<DesiredDeployment>>) {
    let mut slots: Vec<Slot> = adopted.0;
    let mut report = ctx.reports.of(&deployment_id);
    let mut reported: Option<(Vec<ReportedInstance>, i64)> = None;
    // Probes made since an instance began starting (None: none is starting).
    let mut starting: Option<u32> = None;
    // Said once when the lease lapses, and once when it is held again.
    let mut holding = true;
    loop {
        if !ctx.acts() {
            if std::mem::replace(&mut holding, false) {
                tracing::warn!("the region's lease may have lapsed: touching no process until it is held again");
            }
            tokio::select! {
                changed = desired.changed() => if changed.is_err() {
                    return (deployment_id, desired);
                },
                _ = tokio::time::sleep(ctx.check_every) => {}
            }
            continue;
        }
        if !std::mem::replace(&mut holding, true) {
            tracing::info!("the region's lease is held again: supervising");
        }
        let doc = desired.borrow_and_update().clone();
        let runs = matches!(&doc, Some(d) if d.desired == Desired::Running);
        match doc.as_ref() {
            Some(d) if runs => run(&ctx, d, &mut slots).await,
            _ => stop(&ctx, &mut slots).await,
        }
        let told = match doc.as_ref() {
            // Removed (archived): nothing of it runs, and its report goes too.
            None => report.remove().await,
            // Reported with the version of the document it is carried out for, once done.
            Some(d) => {
                let now = (
                    slots.iter().map(Slot::report).collect::<Vec<_>>(),
                    d.version,
                );
                if reported.as_ref() == Some(&now) {
                    Ok(())
                } else if !runs && slots.is_empty() && reported.is_none() {
                    // A new supervisor of a stopped document (the document was written again,
                    // or the agent restarted): it stopped nothing, and the report of the
                    // instances that did stop stands.
                    report.put_if_absent(d.version).await
                } else {
                    let put = report.put(&now.0, now.1).await;
                    if put.is_ok() {
                        reported = Some(now);
                    }
                    put
                }
            }
        };
        match told {
            // Nothing runs and that is told: no health check to make, nothing to wake up
            // for. The supervisor ends and hands its receiver back: the agent starts a new
            // one with it if a document came meanwhile, and forgets the deployment if not,
            // so its idle work does not grow with the documents it has seen.
            Ok(()) if !runs => return (deployment_id, desired),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %anyhow::Error::new(e), "cannot report instances; will retry")
            }
        }
        let any_starting = slots
            .iter()
            .any(|s| s.process.is_some() && s.status == InstanceStatus::Pending);
        starting = any_starting.then(|| starting.map_or(0, |n| n + 1));
        tokio::select! {
            changed = desired.changed() => if changed.is_err() {
                if ctx.acts() {
                    tracing::info!(instances = slots.len(), "agent stopping: stopping instances");
                    stop(&ctx, &mut slots).await;
                }
                return (deployment_id, desired);
            },
            _ = tokio::time::sleep(next_check(ctx.check_every, starting)) => {}
        }
    }
}

async fn run(ctx: &Context, d: &DesiredDeployment, slots: &mut Vec<Slot>) {
    let launch = match runtime::launch(d, ctx.allow_exec, ctx.engine.as_ref(), &ctx.docker_host) {
        Ok(launch) => launch,
        Err(message) => return unrunnable(ctx, d, slots, message).await,
    };
    while slots.len() < d.replicas as usize {
        slots.push(Slot::new());
    }
    while slots.len() > d.replicas as usize {
        if let Some(p) = slots.pop().and_then(|s| s.process) {
            p.stop(ctx.stop_grace).await;
        }
    }
    let now = Instant::now();
    // This agent cannot run the image after all (its pull failed, say).
    let mut refused = None;
    for slot in slots.iter_mut() {
        // Exited by itself: count it and schedule a restart.
        let exited = match slot.process.as_mut() {
            Some(p) => p.exited().await,
            None => None,
        };
        if let Some(status) = exited {
            if let Some(p) = slot.process.take() {
                p.reap().await;
            }
            slot.exits += 1;
            slot.healthy_since = None;
            slot.last_exit = Some(status.clone());
            slot.status = InstanceStatus::Failed;
            slot.message = slot.last_exit.clone();
            slot.restart_at = Some(now + backoff(slot.exits));
            tracing::warn!(instance = %slot.id, exits = slot.exits, %status, "instance exited");
        }
        slot.follow_log(ctx, &d.deployment_id);
        if slot.process.is_none() {
            let due = *slot.restart_at.get_or_insert(now);
            if now >= due {
                let port = free_port();
                let started = runtime::start(
                    &launch,
                    d,
                    &slot.id,
                    port,
                    &ctx.state_dir,
                    ctx.engine.as_ref(),
                );
                match started.await {
                    Ok(p) => {
                        slot.process = Some(p);
                        slot.port = port;
                        slot.restart_at = None;
                        if slot.exits < ctx.crash_loop_after {
                            slot.status = InstanceStatus::Pending;
                        }
                    }
                    Err(StartError::Unrunnable(message)) => {
                        refused = Some(message);
                        break;
                    }
                    Err(e) => {
                        slot.exits += 1;
                        slot.status = InstanceStatus::Failed;
                        slot.message = Some(format!("cannot start: {:#}", anyhow::Error::new(e)));
                        slot.restart_at = Some(now + backoff(slot.exits));
                    }
                }
            }
        }
        if slot.process.is_some() {
            let url = format!("http://127.0.0.1:{}/healthz", slot.port);
            let seen = health_check(&ctx.http, &url).await;
            let healthy = seen.is_none();
            slot.crash_looping = slot.exits >= ctx.crash_loop_after;
            let crash_loop = format!(
                "crash-looping: exited {} times in a row, last {}",
                slot.exits,
                slot.last_exit.as_deref().unwrap_or("unknown")
            );
            if healthy {
                slot.status = InstanceStatus::Running;
                let since = *slot.healthy_since.get_or_insert(now);
                if now.duration_since(since) >= ctx.stable_after {
                    // Ran stably: its earlier exits were bad luck, not a loop.
                    slot.exits = 0;
                    slot.last_exit = None;
                    slot.crash_looping = false;
                }
                slot.message = slot.crash_looping.then_some(crash_loop);
            } else if slot.crash_looping {
                slot.healthy_since = None;
                slot.status = InstanceStatus::Failed;
                slot.message = Some(crash_loop);
            } else if slot.status != InstanceStatus::Failed {
                slot.healthy_since = None;
                slot.status = InstanceStatus::Pending;
                // What the check saw, so that waiting (and a deploy that times out) says why.
                slot.message = seen;
            } else {
                slot.healthy_since = None;
            }
        }
    }
    if let Some(message) = refused {
        unrunnable(ctx, d, slots, message).await;
    }
}

/// Every replica of `d` `failed` for good with `message`: this agent cannot run it.
async fn unrunnable(ctx: &Context, d: &DesiredDeployment, slots: &mut Vec<Slot>, message: String) {
    stop(ctx, slots).await;
    slots.resize_with(d.replicas as usize, Slot::new);
    for slot in slots.iter_mut() {
        slot.status = InstanceStatus::Failed;
        slot.message = Some(message.clone());
        slot.unrunnable = true;
    }
}

/// One health check: `None` when it passed, else what it saw, worded for the instance's
/// report (and so for `slipway deploy` and a deploy's failure reason).
async fn health_check(http: &reqwest::Client, url: &str) -> Option<String> {
    match http.get(url).send().await {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => Some(format!("GET /healthz answered {}", r.status())),
        Err(e) if e.is_timeout() => Some("GET /healthz timed out".into()),
        Err(e) if e.is_connect() => {
            Some("GET /healthz: connection refused (nothing listens on $PORT yet)".into())
        }
        Err(e) => Some(format!("GET /healthz failed: {e}")),
    }
}

/// Stops every process (at once, each with the grace period); the instances stay listed as
/// `inactive`.
async fn stop(ctx: &Context, slots: &mut [Slot]) {
    let running = slots.iter_mut().filter_map(|s| s.process.take());
    futures::future::join_all(running.map(|p| p.stop(ctx.stop_grace))).await;
    for slot in slots.iter_mut() {
        slot.status = InstanceStatus::Inactive;
        slot.message = None;
        slot.exits = 0;
        slot.last_exit = None;
        slot.restart_at = None;
        slot.healthy_since = None;
        slot.crash_looping = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_instance_is_probed_soon_then_less_often_up_to_the_steady_interval() {
        let every = Duration::from_millis(500);
        let delays: Vec<u64> = (0..30)
            .step_by(3)
            .map(|n| next_check(every, Some(n)).as_millis() as u64)
            .collect();
        assert_eq!(delays, [2, 3, 7, 14, 29, 56, 111, 216, 423, 500]);
        assert_eq!(next_check(every, Some(u32::MAX)), every);
        assert_eq!(next_check(every, None), every);
        // A steady interval shorter than the first probe wins.
        let fast = Duration::from_millis(1);
        assert_eq!(next_check(fast, Some(0)), fast);
    }
}
