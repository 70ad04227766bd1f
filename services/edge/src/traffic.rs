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

/// One deployment's requests: in the current window, and since the edge started.
#[derive(Debug, Clone, Copy)]
struct Count {
    window: u64,
    window_start_ms: i64,
    total: u64,
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
    /// One map under one lock: a request takes it once.
    counts: Mutex<HashMap<String, Count>>,
    /// This edge's heartbeat: sent with every report.
    heartbeat: Mutex<EdgeHeartbeat>,
}

impl Traffic {
    /// Counting from now, for edge `edge_id` reporting every `every`.
    pub fn new(edge_id: String, every: Duration) -> Self {
        let now = now_ms();
        Self {
            counts: Mutex::default(),
            heartbeat: Mutex::new(EdgeHeartbeat {
                edge_id,
                up_since_ms: now,
                at_ms: now,
                every_ms: slipway_core::time::millis(every),
            }),
        }
    }

    /// One request for `deployment_id` (no allocation once the deployment was counted).
    pub fn count(&self, deployment_id: &str) {
        let mut counts = lock(&self.counts);
        match counts.get_mut(deployment_id) {
            Some(count) => {
                if count.window == 0 {
                    count.window_start_ms = now_ms();
                }
                count.window += 1;
                count.total += 1;
            }
            None => {
                let count = Count {
                    window: 1,
                    window_start_ms: now_ms(),
                    total: 1,
                };
                counts.insert(deployment_id.to_string(), count);
            }
        }
    }

    /// Requests per deployment since the edge started.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        lock(&self.counts)
            .iter()
            .map(|(id, count)| (id.clone(), count.total))
            .collect()
    }

    /// The current windows (deployments with requests in them), each reset.
    fn take_windows(&self) -> Vec<(String, u64, i64)> {
        lock(&self.counts)
            .iter_mut()
            .filter(|(_, count)| count.window > 0)
            .map(|(id, count)| {
                let window = (id.clone(), count.window, count.window_start_ms);
                count.window = 0;
                window
            })
            .collect()
    }

    /// Puts back a window that could not be reported, merged with what came since.
    fn keep_window(&self, deployment_id: &str, requests: u64, start_ms: i64) {
        let mut counts = lock(&self.counts);
        if let Some(count) = counts.get_mut(deployment_id) {
            count.window_start_ms = if count.window == 0 {
                start_ms
            } else {
                count.window_start_ms.min(start_ms)
            };
            count.window += requests;
        }
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
        let windows = self.take_windows();
        let end = now_ms();
        let mut all_sent = true;
        for (deployment_id, requests, start_ms) in windows {
            let report = TrafficReport {
                deployment_id: &deployment_id,
                requests,
                window_start_ms: start_ms,
                window_end_ms: end,
            };
            if let Err(e) = publish(js, &report).await {
                all_sent = false;
                tracing::warn!(deployment_id, error = %e, "cannot report traffic; keeping it for the next report");
                self.keep_window(&deployment_id, requests, start_ms);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_holds_the_requests_since_the_last_report_and_totals_all() {
        let traffic = Traffic::new("e1".into(), Duration::from_secs(10));
        traffic.count("d1");
        traffic.count("d1");
        traffic.count("d2");
        let mut windows = traffic.take_windows();
        windows.sort();
        let counts: Vec<_> = windows.iter().map(|(id, n, _)| (id.as_str(), *n)).collect();
        assert_eq!(counts, [("d1", 2), ("d2", 1)]);
        // Reported: nothing in the next window until a request comes.
        assert!(traffic.take_windows().is_empty());
        traffic.count("d2");
        let counts: Vec<_> = traffic
            .take_windows()
            .into_iter()
            .map(|(id, n, _)| (id, n))
            .collect();
        assert_eq!(counts, [("d2".to_string(), 1)]);
        assert_eq!(
            traffic.totals().into_iter().collect::<Vec<_>>(),
            [("d1".to_string(), 2), ("d2".to_string(), 2)]
        );
    }

    #[test]
    fn a_window_that_was_not_reported_is_merged_into_the_next() {
        let traffic = Traffic::new("e1".into(), Duration::from_secs(10));
        traffic.count("d1");
        let [(id, requests, start_ms)] = traffic.take_windows().try_into().unwrap();
        traffic.count("d1");
        traffic.keep_window(&id, requests, start_ms - 5);
        let [(_, merged, merged_start)] = traffic.take_windows().try_into().unwrap();
        assert_eq!(merged, 2);
        assert_eq!(
            merged_start,
            start_ms - 5,
            "the window starts at the older start"
        );
        // Kept with nothing new: the kept window alone.
        traffic.keep_window(&id, 3, start_ms);
        let [(_, kept, kept_start)] = traffic.take_windows().try_into().unwrap();
        assert_eq!((kept, kept_start), (3, start_ms));
    }
}
