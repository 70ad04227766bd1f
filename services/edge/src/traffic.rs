//! Request counts per deployment: reported every `SLIPWAY_EDGE_TRAFFIC_EVERY` on
//! `slipway.traffic.<deployment_id>` (stream `SLIPWAY_TRAFFIC`, API.md) for each deployment that
//! served a request in the window — what the idle-preview spin-down reads — with a heartbeat
//! of the edge's own (`slipway.traffic.edge.<edge id>`) that says it was watching, and kept
//! as totals for the micro service's stats.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use async_nats::jetstream;
use serde::Serialize;
use slipway_core::{routes::EdgeHeartbeat, time::now_ms};

/// One deployment's requests in the current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    requests: u64,
    start_ms: i64,
}

/// What the edge reports (API.md "SLIPWAY_TRAFFIC").
#[derive(Debug, Serialize)]
pub struct TrafficReport<'a> {
    pub deployment_id: &'a str,
    pub requests: u64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
}

pub struct Traffic {
    windows: Mutex<HashMap<String, Window>>,
    totals: Mutex<BTreeMap<String, u64>>,
    /// This edge's heartbeat: sent with every report.
    heartbeat: Mutex<EdgeHeartbeat>,
}

impl Traffic {
    /// Counting from now, for edge `edge_id` reporting every `every`.
    pub fn new(edge_id: String, every: Duration) -> Self {
        let now = now_ms();
        Self {
            windows: Mutex::default(),
            totals: Mutex::default(),
            heartbeat: Mutex::new(EdgeHeartbeat {
                edge_id,
                up_since_ms: now,
                at_ms: now,
                every_ms: slipway_core::time::millis(every),
            }),
        }
    }

    /// One request for `deployment_id` (no allocation once the deployment has a window).
    pub fn count(&self, deployment_id: &str) {
        {
            let mut windows = lock(&self.windows);
            match windows.get_mut(deployment_id) {
                Some(window) => window.requests += 1,
                None => {
                    let window = Window {
                        requests: 1,
                        start_ms: now_ms(),
                    };
                    windows.insert(deployment_id.to_string(), window);
                }
            }
        }
        let mut totals = lock(&self.totals);
        match totals.get_mut(deployment_id) {
            Some(n) => *n += 1,
            None => {
                totals.insert(deployment_id.to_string(), 1);
            }
        }
    }

    /// Requests per deployment since the edge started.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        lock(&self.totals).clone()
    }

    /// Reports every interval, for ever.
    pub async fn report_every(&self, js: jetstream::Context) {
        let every = Duration::from_millis(lock(&self.heartbeat).every_ms.max(1) as u64);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.report(&js).await;
        }
    }

    /// Publishes the current windows, then the heartbeat; a window that cannot be published is
    /// kept for the next report, so no request goes uncounted.
    pub async fn report(&self, js: &jetstream::Context) {
        let windows = std::mem::take(&mut *lock(&self.windows));
        let end = now_ms();
        let mut all_sent = true;
        for (deployment_id, window) in windows {
            let report = TrafficReport {
                deployment_id: &deployment_id,
                requests: window.requests,
                window_start_ms: window.start_ms,
                window_end_ms: end,
            };
            if let Err(e) = publish(js, &report).await {
                all_sent = false;
                tracing::warn!(deployment_id, error = %e, "cannot report traffic; keeping it for the next report");
                let mut windows = lock(&self.windows);
                let kept = windows.entry(deployment_id.clone()).or_insert(Window {
                    requests: 0,
                    start_ms: window.start_ms,
                });
                kept.requests += window.requests;
                kept.start_ms = kept.start_ms.min(window.start_ms);
            }
        }
        // A heartbeat says every request until now is counted: not after a lost report.
        if !all_sent {
            return;
        }
        let heartbeat = {
            let mut heartbeat = lock(&self.heartbeat);
            heartbeat.at_ms = end;
            heartbeat.clone()
        };
        let sent = async {
            let payload = serde_json::to_vec(&heartbeat)?;
            let subject = slipway_core::subjects::edge_heartbeat(&heartbeat.edge_id);
            js.publish(subject, payload.into()).await?.await?;
            Ok::<(), async_nats::Error>(())
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, "cannot send the edge's heartbeat");
        }
    }
}

async fn publish(
    js: &jetstream::Context,
    report: &TrafficReport<'_>,
) -> Result<(), async_nats::Error> {
    let payload = serde_json::to_vec(report)?;
    js.publish(
        slipway_core::subjects::traffic(report.deployment_id),
        payload.into(),
    )
    .await?
    .await?;
    Ok(())
}

/// The counters stay consistent whatever panicked while holding them (each update is one
/// addition).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
