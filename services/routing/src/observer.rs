//! Observed state: what the region agents report (KV `slipway_instances`) is the truth about
//! instances. Every report is applied to the database (never an older one over a newer one:
//! the report's KV revision decides), the route entries of its deployment follow, and a ready
//! deployment's changes are told on the events stream: `instances` when the set of running
//! instances of a region changes, `crash_looping` when one of them starts to crash-loop.
//!
//! One durable consumer (`routing-instances`) shared by every routing process: each report is
//! applied once, and again after a crash (applying is idempotent).

use async_nats::jetstream::{self, kv};
use serde::Serialize;
use slipway_core::{
    events::Event,
    krane::{InstanceStatus, InstancesReport, ReportedInstance},
    state::{DeploymentStatus, DesiredState},
    time::now_ms,
};
use slipway_nats::{
    consumer::{self, Disposition, Durable},
    events,
};
use slipway_store::{Deployment, Instance};

use crate::Routing;

const CONSUMER: &str = "routing-instances";
const SUBJECT_PREFIX: &str = "$KV.slipway_instances.";

/// Consumes every instance report, for ever.
pub async fn run(routing: Routing) {
    let durable = Durable {
        stream: "KV_slipway_instances",
        name: CONSUMER.into(),
        concurrency: Some(16),
        ack_wait: None,
    };
    let js = routing.inner.js.clone();
    consumer::run(js, durable, |message| observe(&routing, message)).await
}

#[tracing::instrument(skip_all, fields(subject = %message.subject))]
async fn observe(routing: &Routing, message: jetstream::Message) -> Disposition {
    let Some((deployment_id, region)) = message
        .subject
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|key| key.split_once('.'))
    else {
        tracing::warn!("not an instance report key; dropping it");
        return Disposition::Drop;
    };
    let revision = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(e) => {
            tracing::warn!(error = %e, "instance report without metadata; dropping it");
            return Disposition::Drop;
        }
    };
    let report = match operation(&message) {
        // A deleted report: the agent runs nothing of it any more.
        kv::Operation::Delete | kv::Operation::Purge => InstancesReport {
            instances: vec![],
            reported_at_ms: now_ms(),
            version: 0,
            epoch: 0,
        },
        kv::Operation::Put => match serde_json::from_slice(&message.payload) {
            Ok(report) => report,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable instance report; dropping it");
                return Disposition::Drop;
            }
        },
    };
    match apply(routing, deployment_id, region, &report, revision).await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(deployment_id, region, error = %e, "cannot apply an instance report; will retry");
            Disposition::Retry(std::time::Duration::from_secs(1))
        }
    }
}

fn operation(message: &jetstream::Message) -> kv::Operation {
    let op = message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .map(|v| v.as_str().to_string());
    match op.as_deref() {
        Some("DEL") => kv::Operation::Delete,
        Some("PURGE") => kv::Operation::Purge,
        _ => kv::Operation::Put,
    }
}

async fn apply(
    routing: &Routing,
    deployment_id: &str,
    region: &str,
    report: &InstancesReport,
    revision: u64,
) -> Result<(), async_nats::Error> {
    let store = &routing.inner.store;
    let applied = store
        .observe_instances(deployment_id, region, &report.instances, revision, now_ms())
        .await?;
    // Even when the report was recorded already (a deploy's or a wake's record step may come
    // first), the route entries must say what the database says.
    let written = routing
        .inner
        .table
        .publish_deployment(deployment_id)
        .await?;
    let Some(before) = applied else {
        // Recorded already, older than what is recorded, or of a deployment not run there.
        return Ok(());
    };
    tracing::debug!(
        deployment_id,
        region,
        revision,
        written,
        "instance report applied"
    );
    let Some(deployment) = store.find_deployment(deployment_id).await? else {
        return Ok(());
    };
    // Before it is ready its deploy tells the story; in standby nothing should run.
    if deployment.status != DeploymentStatus::Ready
        || deployment.desired_state != DesiredState::Running
    {
        return Ok(());
    }
    let change = Change::between(&before, &report.instances);
    let id = format!("{region}.{revision}");
    if change.running_changed {
        #[derive(Serialize)]
        struct Instances<'a> {
            region: &'a str,
            running: Vec<Running<'a>>,
        }
        let running = report
            .instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Running)
            .map(|i| Running {
                id: &i.id,
                address: &i.address,
            })
            .collect();
        let detail = Instances { region, running };
        event(routing, &deployment, "instances", &id, detail).await?;
    }
    if let Some(looping) = change.started_crash_looping {
        #[derive(Serialize)]
        struct CrashLooping<'a> {
            region: &'a str,
            instance_id: &'a str,
            restarts: u32,
            message: Option<&'a str>,
        }
        let detail = CrashLooping {
            region,
            instance_id: &looping.id,
            restarts: looping.restarts,
            message: looping.message.as_deref(),
        };
        tracing::warn!(deployment_id, region, instance = %looping.id, "a ready deployment's instance is crash-looping");
        event(routing, &deployment, "crash_looping", &id, detail).await?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Running<'a> {
    id: &'a str,
    address: &'a str,
}

/// What a report changes that operators are told about.
#[derive(Debug, PartialEq)]
struct Change<'a> {
    /// The running instances (id and address) are not the same any more.
    running_changed: bool,
    /// An instance crash-loops, and none did before.
    started_crash_looping: Option<&'a ReportedInstance>,
}

impl<'a> Change<'a> {
    fn between(before: &[Instance], now: &'a [ReportedInstance]) -> Self {
        let mut was: Vec<(&str, &str)> = before
            .iter()
            .filter(|i| i.status == InstanceStatus::Running)
            .map(|i| (i.id.as_str(), i.address.as_str()))
            .collect();
        let mut is: Vec<(&str, &str)> = now
            .iter()
            .filter(|i| i.status == InstanceStatus::Running)
            .map(|i| (i.id.as_str(), i.address.as_str()))
            .collect();
        was.sort_unstable();
        is.sort_unstable();
        let looped_before = before.iter().any(|i| i.crash_looping);
        Change {
            running_changed: was != is,
            started_crash_looping: now
                .iter()
                .find(|i| i.crash_looping)
                .filter(|_| !looped_before),
        }
    }
}

async fn event<D: Serialize>(
    routing: &Routing,
    d: &Deployment,
    kind: &'static str,
    id: &str,
    detail: D,
) -> Result<(), async_nats::Error> {
    let event = Event {
        kind,
        at_ms: now_ms(),
        workspace_id: d.workspace_id.clone(),
        project_id: d.project_id.clone(),
        deployment_id: d.id.clone(),
        environment_slug: d.environment_slug.clone(),
        detail,
    };
    let msg_id = events::message_id(kind, &d.id, id);
    events::publish(&routing.inner.js, &event, &msg_id).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, address: &str, status: InstanceStatus, crash_looping: bool) -> Instance {
        Instance {
            id: id.into(),
            deployment_id: "dep_1".into(),
            region: "local".into(),
            address: address.into(),
            status,
            message: None,
            restarts: 0,
            crash_looping,
        }
    }

    fn reported(
        id: &str,
        address: &str,
        status: InstanceStatus,
        crash_looping: bool,
    ) -> ReportedInstance {
        ReportedInstance {
            id: id.into(),
            address: address.into(),
            status,
            message: None,
            restarts: if crash_looping { 3 } else { 0 },
            crash_looping,
            unrunnable: false,
        }
    }

    use InstanceStatus::{Failed, Pending, Running as Up};

    #[test]
    fn a_new_address_or_a_lost_instance_changes_the_running_set() {
        let before = [row("a", "127.0.0.1:1", Up, false)];
        let same = [reported("a", "127.0.0.1:1", Up, false)];
        assert!(!Change::between(&before, &same).running_changed);
        let moved = [reported("a", "127.0.0.1:2", Up, false)];
        assert!(Change::between(&before, &moved).running_changed);
        let restarting = [reported("a", "127.0.0.1:2", Pending, false)];
        assert!(Change::between(&before, &restarting).running_changed);
    }

    #[test]
    fn a_crash_loop_is_told_once_when_it_starts() {
        let calm = [row("a", "127.0.0.1:1", Up, false)];
        let looping = [reported("a", "127.0.0.1:1", Failed, true)];
        let change = Change::between(&calm, &looping);
        assert_eq!(
            change.started_crash_looping.map(|i| i.id.as_str()),
            Some("a")
        );
        let still = [row("a", "127.0.0.1:1", Failed, true)];
        assert_eq!(
            Change::between(&still, &looping).started_crash_looping,
            None
        );
    }
}
