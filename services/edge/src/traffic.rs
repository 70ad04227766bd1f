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

use async_nats::{header::NATS_MESSAGE_ID, jetstream, HeaderMap};
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
    /// Reports not yet stored, oldest first: each is sent again as it was, with the same
    /// message id, so that one that reached the stream after all (its acknowledgement lost,
    /// or sent by the client only once it reconnected) is stored once, not counted twice.
    unsent: Mutex<Vec<Unsent>>,
    /// This edge's heartbeat: sent with every report.
    heartbeat: Mutex<EdgeHeartbeat>,
}

/// A window's report, until the stream has stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unsent {
    deployment_id: String,
    requests: u64,
    window_start_ms: i64,
    window_end_ms: i64,
    /// Published at least once: it may be stored, so it is only ever sent again as it is.
    tried: bool,
}

/// Holds `report` back behind `held`'s reports: merged into the last one of its deployment
/// if neither was ever published (nothing of either can be stored), so that a long outage
/// holds at most two reports per deployment.
fn hold_back(held: &mut Vec<Unsent>, report: Unsent) {
    let last = held
        .iter_mut()
        .rev()
        .find(|h| h.deployment_id == report.deployment_id);
    match last {
        Some(last) if !last.tried && !report.tried => {
            last.requests += report.requests;
            last.window_start_ms = last.window_start_ms.min(report.window_start_ms);
            last.window_end_ms = last.window_end_ms.max(report.window_end_ms);
        }
        _ => held.push(report),
    }
}

impl Unsent {
    /// Names the report, for the stream's duplicate detection.
    fn message_id(&self, edge_id: &str) -> String {
        let Self {
            deployment_id,
            window_start_ms,
            window_end_ms,
            ..
        } = self;
        format!("traffic:{edge_id}:{deployment_id}:{window_start_ms}:{window_end_ms}")
    }
}

impl Traffic {
    /// Counting from now, for edge `edge_id` reporting every `every`.
    pub fn new(edge_id: String, every: Duration) -> Self {
        let now = now_ms();
        Self {
            counts: Mutex::default(),
            unsent: Mutex::default(),
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

    /// Publishes the reports not yet stored, then the current windows, then the heartbeat. A
    /// report that cannot be published is sent again next time, as it was — and so are the
    /// later ones of its deployment, so that the stream's last report of a deployment (what
    /// the idle spin-down reads) is always its newest.
    pub async fn report(&self, js: &jetstream::Context) {
        let end = now_ms();
        let windows = self
            .take_windows()
            .into_iter()
            .map(|(deployment_id, requests, start)| Unsent {
                deployment_id,
                requests,
                window_start_ms: start,
                window_end_ms: end,
                tried: false,
            });
        let due: Vec<Unsent> = std::mem::take(&mut *lock(&self.unsent))
            .into_iter()
            .chain(windows)
            .collect();
        let edge_id = lock(&self.heartbeat).edge_id.clone();
        let mut failed: Vec<Unsent> = Vec::new();
        for mut report in due {
            let behind = failed
                .iter()
                .any(|f| f.deployment_id == report.deployment_id);
            if !behind {
                report.tried = true;
                match publish(js, &edge_id, &report).await {
                    Ok(()) => continue,
                    Err(e) => {
                        let deployment_id = &report.deployment_id;
                        tracing::warn!(deployment_id, error = %e, "cannot report traffic; sending it again with the next report");
                    }
                }
            }
            hold_back(&mut failed, report);
        }
        if !failed.is_empty() {
            // Before anything a concurrent report (the last one, at shutdown) left there.
            let mut unsent = lock(&self.unsent);
            failed.append(&mut unsent);
            *unsent = failed;
            // A heartbeat says every request until now is counted: not while one is unsent.
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

/// Publishes `report` of edge `edge_id` and waits until the stream has stored it.
async fn publish(
    js: &jetstream::Context,
    edge_id: &str,
    report: &Unsent,
) -> Result<(), async_nats::Error> {
    let payload = serde_json::to_vec(&TrafficReport {
        deployment_id: &report.deployment_id,
        requests: report.requests,
        window_start_ms: report.window_start_ms,
        window_end_ms: report.window_end_ms,
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, report.message_id(edge_id).as_str());
    let subject = slipway_core::subjects::traffic(&report.deployment_id);
    js.publish_with_headers(subject, headers, payload.into())
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

    fn window(deployment_id: &str, requests: u64, start: i64, end: i64, tried: bool) -> Unsent {
        Unsent {
            deployment_id: deployment_id.into(),
            requests,
            window_start_ms: start,
            window_end_ms: end,
            tried,
        }
    }

    #[test]
    fn reports_held_back_are_merged_only_if_never_published() {
        let mut held = Vec::new();
        hold_back(&mut held, window("d1", 1, 0, 10, true));
        hold_back(&mut held, window("d2", 2, 0, 10, false));
        hold_back(&mut held, window("d1", 3, 10, 20, false));
        hold_back(&mut held, window("d1", 4, 20, 30, false));
        hold_back(&mut held, window("d2", 5, 10, 20, false));
        assert_eq!(
            held,
            [
                // Published once: it may be stored, so it stays as it was.
                window("d1", 1, 0, 10, true),
                window("d2", 7, 0, 20, false),
                window("d1", 7, 10, 30, false),
            ]
        );
    }

    #[test]
    fn a_report_is_named_by_its_edge_deployment_and_window() {
        let report = window("d1", 3, 100, 200, false);
        assert_eq!(report.message_id("e1"), "traffic:e1:d1:100:200");
        // The same window sent again is the same message; the next window is another.
        let next = Unsent {
            window_start_ms: 250,
            window_end_ms: 300,
            ..report.clone()
        };
        assert_ne!(report.message_id("e1"), next.message_id("e1"));
        assert_ne!(report.message_id("e1"), report.message_id("e2"));
    }
}
