//! Deploy steps 6 and 8: waiting, event-driven, for the region agents to report healthy
//! instances (KV `slipway_instances`), and scraping the app's OpenAPI spec from them.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::kv;
use futures::StreamExt;
use slipway_core::{krane::InstancesReport, time::SharedClock};
use slipway_workflow::StepError;

pub(crate) use crate::clients::instance_wait::ReadyInstance;
use crate::clients::instance_wait::{InstanceWait, ReadyTiming, Verdict};

/// The region agents' instance reports (KV `slipway_instances`) and the instances themselves.
#[derive(Clone)]
pub(crate) struct Instances {
    reports: kv::Store,
    /// Asks whether a region has an agent (its micro service answers a ping).
    nats: async_nats::Client,
    http: reqwest::Client,
    timing: ReadyTiming,
    clock: SharedClock,
}

impl Instances {
    pub(crate) fn new(
        reports: kv::Store,
        nats: async_nats::Client,
        http: reqwest::Client,
        timing: ReadyTiming,
        clock: SharedClock,
    ) -> Self {
        Self {
            reports,
            nats,
            http,
            timing,
            clock,
        }
    }

    /// Fails when a region has no agent: none has answered as micro service
    /// `slipway-krane-<region>` for the failed grace (an agent restarting meanwhile is
    /// waited for).
    async fn agents_serve(&self, regions: &BTreeMap<String, u32>) -> Result<(), StepError> {
        for region in regions.keys() {
            let service = slipway_core::subjects::agent_service(region);
            let subject = format!("$SRV.PING.{service}");
            let give_up = tokio::time::Instant::now() + self.timing.failed_grace;
            loop {
                let ping = self.nats.request(subject.clone(), bytes::Bytes::new());
                match tokio::time::timeout(Duration::from_secs(2), ping).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) if e.kind() != async_nats::RequestErrorKind::NoResponders => {
                        return Err(StepError::retryable(format!("cannot ask for agents: {e}")))
                    }
                    _ if tokio::time::Instant::now() >= give_up => {
                        return Err(StepError::terminal(format!(
                            "no agent serves region {region}: none has answered as {service} for {}",
                            crate::clients::instance_wait::humanize(self.timing.failed_grace)
                        )))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        Ok(())
    }

    /// The deadline of a wait that starts now.
    pub(crate) fn deadline(&self) -> i64 {
        self.clock.now_ms() + slipway_core::time::millis(self.timing.ready_timeout)
    }

    /// Waits until every region reports at least its replicas, all `running`, for at least
    /// the desired document `versions` (region → version). Fails at
    /// `deadline_ms`, when an instance reports `failed` again and again, or when one stays
    /// `failed` longer than the grace period (the rules: [`InstanceWait`]).
    pub(crate) async fn wait(
        &self,
        deployment_id: &str,
        replicas: &BTreeMap<String, u32>,
        versions: &BTreeMap<String, i64>,
        deadline_ms: i64,
    ) -> Result<Vec<ReadyInstance>, StepError> {
        self.agents_serve(replicas).await?;
        let mut wait = InstanceWait::new(
            replicas,
            versions,
            deadline_ms,
            self.timing,
            self.clock.clone(),
        );
        let kv = &self.reports;
        // The watch delivers each key's current value first, then every change.
        let mut watch = kv
            .watch_with_history(format!("{deployment_id}.*"))
            .await
            .map_err(|e| StepError::retryable(format!("cannot watch instance reports: {e}")))?;
        // A resumed deploy may find its deadline already passed: it judges what the agents
        // report now, not the absence of a report it has not read yet.
        let regions: Vec<String> = wait.regions().cloned().collect();
        for region in regions {
            // From the leader: a lagging replica's older report could fail a resumed wait.
            let current = slipway_nats::kv::latest(kv, &format!("{deployment_id}.{region}"))
                .await
                .map_err(|e| StepError::retryable(format!("cannot read instance reports: {e}")))?;
            let current = current.filter(|e| e.operation == kv::Operation::Put);
            if let Some(entry) = current {
                if let Ok(report) = serde_json::from_slice::<InstancesReport>(&entry.value) {
                    wait.seed(&region, report, entry.revision);
                }
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            match wait.verdict() {
                Verdict::Ready(instances) => return Ok(instances),
                Verdict::Failed(reason) => return Err(StepError::terminal(reason)),
                Verdict::Wait => {}
            }
            let until_deadline =
                Duration::from_millis((deadline_ms - self.clock.now_ms()).max(0) as u64);
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                        let Some(region) = entry.key.strip_prefix(&format!("{deployment_id}.")) else { continue };
                        let Ok(report) = serde_json::from_slice::<InstancesReport>(&entry.value) else {
                            tracing::warn!(key = %entry.key, "unreadable instance report; ignoring it");
                            continue;
                        };
                        wait.report(region, report, entry.revision);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(StepError::retryable(format!("instance report watch failed: {e}"))),
                    None => return Err(StepError::retryable("instance report watch ended")),
                },
                _ = tick.tick() => {}
                _ = tokio::time::sleep(until_deadline) => {}
            }
        }
    }

    /// `GET http://<instance>/openapi.yaml`, each instance in turn (5 s timeout each); the
    /// first 200 wins. None is not an error.
    pub(crate) async fn scrape_openapi(&self, instances: &[ReadyInstance]) -> Option<String> {
        for instance in instances {
            let url = format!("http://{}/openapi.yaml", instance.address);
            match self.http.get(&url).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => match read_capped(r).await {
                    Ok(spec) => return Some(spec),
                    Err(why) => {
                        tracing::warn!(%url, %why, "the OpenAPI spec is not kept");
                        return None;
                    }
                },
                Ok(r) => tracing::debug!(%url, status = %r.status(), "no OpenAPI spec here"),
                Err(e) => tracing::debug!(%url, error = %e, "cannot fetch the OpenAPI spec"),
            }
        }
        None
    }
}

/// The largest OpenAPI spec kept with a deployment; a larger one is not read past this.
pub(crate) const MAX_OPENAPI_SPEC: usize = 256 * 1024;

/// The body as text, read in chunks and given up on past [`MAX_OPENAPI_SPEC`].
async fn read_capped(mut response: reqwest::Response) -> Result<String, String> {
    let too_large = || format!("larger than {MAX_OPENAPI_SPEC} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > MAX_OPENAPI_SPEC as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_OPENAPI_SPEC {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))
}
