//! Deploy steps 6 and 8: waiting, event-driven, for the region agents to report healthy
//! instances (KV `slipway_instances`), and scraping the app's OpenAPI spec from them.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use slipway_core::{
    krane::{InstanceStatus, InstancesReport},
    time::now_ms,
};
use slipway_workflow::{StepError, StepResultExt};

use crate::Orchestrator;

/// An instance as the deployment records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyInstance {
    pub id: String,
    pub region: String,
    pub address: String,
}

/// Reports in which one instance is `failed` before the deploy gives up on it (an app that
/// exits is restarted and fails again; three times is a crash loop, not bad luck).
const FAILED_REPORTS: u32 = 3;

#[derive(Default)]
struct Region {
    wanted: u32,
    report: Option<InstancesReport>,
}

impl Region {
    fn ready(&self) -> bool {
        self.report.as_ref().is_some_and(|r| {
            r.instances.len() >= self.wanted as usize
                && r.instances
                    .iter()
                    .all(|i| i.status == InstanceStatus::Running)
        })
    }

    fn describe(&self, region: &str) -> String {
        let Some(report) = &self.report else {
            return format!("region {region}: no report from its agent");
        };
        let running = report
            .instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Running)
            .count();
        let others: Vec<String> = report
            .instances
            .iter()
            .filter(|i| i.status != InstanceStatus::Running)
            .map(|i| {
                let status = serde_json::to_value(i.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                match &i.message {
                    Some(m) => format!("{} {status} ({m})", i.id),
                    None if i.status == InstanceStatus::Pending => {
                        format!("{} {status} (not healthy yet)", i.id)
                    }
                    None => format!("{} {status}", i.id),
                }
            })
            .collect();
        format!(
            "region {region}: {running} of {} running{}{}",
            self.wanted,
            if others.is_empty() { "" } else { "; " },
            others.join(", ")
        )
    }
}

impl Orchestrator {
    /// Waits until every region reports at least its replicas, all `running`. Fails at
    /// `deadline_ms`, when an instance reports `failed` again and again, or when one stays
    /// `failed` longer than the grace period.
    pub(crate) async fn wait_for_instances(
        &self,
        deployment_id: &str,
        replicas: &BTreeMap<String, u32>,
        deadline_ms: i64,
    ) -> Result<Vec<ReadyInstance>, StepError> {
        let kv = &self.inner.instances;
        let mut regions: BTreeMap<String, Region> = replicas
            .iter()
            .map(|(r, n)| {
                (
                    r.clone(),
                    Region {
                        wanted: *n,
                        report: None,
                    },
                )
            })
            .collect();
        // The watch delivers each key's current value first, then every change.
        let mut watch = kv
            .watch_with_history(format!("{deployment_id}.*"))
            .await
            .map_err(|e| StepError::retryable(format!("cannot watch instance reports: {e}")))?;
        // A resumed deploy may find its deadline already passed: it judges what the agents
        // report now, not the absence of a report it has not read yet.
        for (region, slot) in regions.iter_mut() {
            let current = kv
                .entry(format!("{deployment_id}.{region}"))
                .await
                .map_err(|e| StepError::retryable(format!("cannot read instance reports: {e}")))?;
            if let Some(entry) = current.filter(|e| e.operation == kv::Operation::Put) {
                slot.report = serde_json::from_slice::<InstancesReport>(&entry.value).ok();
            }
        }
        let mut failed_reports: HashMap<String, u32> = HashMap::new();
        let mut failed_since: HashMap<String, i64> = HashMap::new();
        let grace_ms =
            i64::try_from(self.inner.config.failed_grace.as_millis()).unwrap_or(i64::MAX);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if regions.values().all(Region::ready) {
                break;
            }
            let now = now_ms();
            let summary = || {
                regions
                    .iter()
                    .map(|(name, r)| r.describe(name))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            if now >= deadline_ms {
                return Err(StepError::terminal(format!(
                    "instances did not become healthy within the ready timeout ({}): {}",
                    humanize(self.inner.config.ready_timeout),
                    summary()
                )));
            }
            if let Some((id, _)) = failed_since
                .iter()
                .find(|(_, since)| now - **since >= grace_ms)
            {
                return Err(StepError::terminal(format!(
                    "instance {id} stayed failed for {}: {}",
                    humanize(self.inner.config.failed_grace),
                    summary()
                )));
            }
            if let Some((id, n)) = failed_reports.iter().find(|(_, n)| **n >= FAILED_REPORTS) {
                return Err(StepError::terminal(format!(
                    "instance {id} failed {n} times: {}",
                    summary()
                )));
            }
            let wait = Duration::from_millis((deadline_ms - now).max(0) as u64);
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                        let Some(region) = entry.key.strip_prefix(&format!("{deployment_id}.")) else { continue };
                        let Some(slot) = regions.get_mut(region) else { continue };
                        let Ok(report) = serde_json::from_slice::<InstancesReport>(&entry.value) else {
                            tracing::warn!(key = %entry.key, "unreadable instance report; ignoring it");
                            continue;
                        };
                        for i in &report.instances {
                            if i.status == InstanceStatus::Failed {
                                *failed_reports.entry(i.id.clone()).or_default() += 1;
                                failed_since.entry(i.id.clone()).or_insert(now);
                            } else {
                                failed_since.remove(&i.id);
                            }
                        }
                        slot.report = Some(report);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(StepError::retryable(format!("instance report watch failed: {e}"))),
                    None => return Err(StepError::retryable("instance report watch ended")),
                },
                _ = tick.tick() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Ok(regions
            .iter()
            .flat_map(|(region, r)| {
                r.report.iter().flat_map(move |report| {
                    report.instances.iter().map(move |i| ReadyInstance {
                        id: i.id.clone(),
                        region: region.clone(),
                        address: i.address.clone(),
                    })
                })
            })
            .collect())
    }

    /// Records the ready instances on the deployment, region by region.
    pub(crate) async fn record_instances(
        &self,
        deployment_id: &str,
        regions: impl Iterator<Item = &String>,
        instances: &[ReadyInstance],
    ) -> Result<(), StepError> {
        for region in regions {
            let rows: Vec<(String, String, InstanceStatus)> = instances
                .iter()
                .filter(|i| &i.region == region)
                .map(|i| (i.id.clone(), i.address.clone(), InstanceStatus::Running))
                .collect();
            self.inner
                .store
                .record_instances(deployment_id, region, &rows, now_ms())
                .await
                .step_err()?;
        }
        Ok(())
    }

    /// `GET http://<instance>/openapi.yaml`, each instance in turn (5 s timeout each); the
    /// first 200 wins. None is not an error.
    pub(crate) async fn scrape_openapi(&self, instances: &[ReadyInstance]) -> Option<String> {
        for instance in instances {
            let url = format!("http://{}/openapi.yaml", instance.address);
            match self.inner.http.get(&url).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => match r.text().await {
                    Ok(spec) => return Some(spec),
                    Err(e) => tracing::debug!(%url, error = %e, "cannot read the OpenAPI spec"),
                },
                Ok(r) => tracing::debug!(%url, status = %r.status(), "no OpenAPI spec here"),
                Err(e) => tracing::debug!(%url, error = %e, "cannot fetch the OpenAPI spec"),
            }
        }
        None
    }
}

fn humanize(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
