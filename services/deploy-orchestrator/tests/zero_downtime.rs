//! No request lost (issue 13): a constant load through the edge on the live domain while
//! deploys, rollbacks and promotes move it from deployment to deployment (the ones left go to
//! standby meanwhile, and a rollback wakes its target), then on a preview spun down to standby
//! and woken by the load itself. Every request must be answered 2xx, by the deployment the
//! domain named when the request started (or the one it was moving to). Prints the switch time:
//! from the request to the orchestrator to the first answer from the new deployment.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::Plane;
use serde_json::json;
use slipway_testkit::Samples;

/// Concurrent clients, each sending one request after another.
const CLIENTS: usize = 4;

#[derive(Debug, Clone)]
struct Answer {
    started: Instant,
    done: Instant,
    status: u16,
    deployment: String,
}

/// Clients sending requests for `host` through the edge until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(edge: std::net::SocketAddr, host: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..CLIENTS)
            .map(|_| {
                let (stop, answers, host) = (stop.clone(), answers.clone(), host.to_string());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let response = client
                            .get(format!("http://{edge}/"))
                            .header(reqwest::header::HOST, &host)
                            .timeout(Duration::from_secs(60))
                            .send()
                            .await;
                        let (status, deployment) = match response {
                            Ok(r) => (
                                r.status().as_u16(),
                                r.headers()
                                    .get("x-slipway-deployment")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string(),
                            ),
                            Err(e) => (0, e.to_string()),
                        };
                        answers.lock().unwrap().push(Answer {
                            started,
                            done: Instant::now(),
                            status,
                            deployment,
                        });
                    }
                })
            })
            .collect();
        Load {
            stop,
            answers,
            tasks,
        }
    }

    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let answers = self.answers.lock().unwrap().clone();
        answers
    }

    /// Waits until an answer from `deployment` to a request started after `since` arrives;
    /// returns when it arrived.
    async fn first_from(&self, deployment: &str, since: Instant) -> Instant {
        let deadline = Instant::now() + common::TIMEOUT;
        loop {
            let found = self
                .answers
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.started >= since && a.deployment == deployment)
                .map(|a| a.done)
                .min();
            if let Some(at) = found {
                return at;
            }
            assert!(Instant::now() < deadline, "no answer from {deployment}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One move of the live domain: `from` → `to`.
struct Move {
    from: String,
    to: String,
    asked: Instant,
    finished: Instant,
}

impl Move {
    /// A move asked at `asked` that has just finished; its switch time (to the first answer
    /// from `to`) goes to `switch_ms`.
    async fn done(
        from: &str,
        to: &str,
        asked: Instant,
        load: &Load,
        switch_ms: &mut Vec<f64>,
    ) -> Move {
        let finished = Instant::now();
        switch_ms.push(ms(load.first_from(to, asked).await - asked));
        Move {
            from: from.into(),
            to: to.into(),
            asked,
            finished,
        }
    }
}

fn completed(record: slipway_workflow::WorkflowRecord) {
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_request_is_lost_while_live_moves_and_a_preview_sleeps_and_wakes() {
    let mut plane = Plane::builder()
        .services()
        .orchestrator_env("SLIPWAY_IDLE_WINDOW", "2s")
        .orchestrators(1)
        .edge()
        .start()
        .await;
    let edge = plane.edge_address.unwrap();
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    let live = plane.serving_domain(&project, "live", "").await;

    let load = Load::start(edge, &live);
    let mut moves: Vec<Move> = Vec::new();
    let mut switch_ms: Vec<f64> = Vec::new();
    let mut current = v1.clone();
    for round in 0..3 {
        // Deploy: the new version takes live.
        let asked = Instant::now();
        let version = format!("v{}", round + 2);
        let next = plane.deployed(&project, "production", &version).await;
        moves.push(Move::done(&current, &next, asked, &load, &mut switch_ms).await);
        // Roll back to the one before (in standby by now, or about to be: woken first).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let asked = Instant::now();
        let body = json!({"source_deployment_id": next, "target_deployment_id": current});
        completed(plane.workflow("slipway.deploy.v1.rollback", body).await);
        moves.push(Move::done(&next, &current, asked, &load, &mut switch_ms).await);
        // Promote the new one again.
        let asked = Instant::now();
        let body = json!({ "target_deployment_id": next });
        completed(plane.workflow("slipway.deploy.v1.promote", body).await);
        moves.push(Move::done(&current, &next, asked, &load, &mut switch_ms).await);
        current = next;
    }
    let live_answers = load.stop().await;
    check(&live_answers, &v1, &moves);

    // A preview, idle past its window: spun down, then woken by the load on its domain.
    let preview_project = plane.project().await;
    let preview = plane.deployed(&preview_project, "preview", "p").await;
    let preview_host = plane
        .serving_domain(&preview_project, "environment", "")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reply = plane
        .ok(
            "slipway.deploy.v1.scale_down_idle_previews",
            json!({ "wait_ms": 60_000 }),
        )
        .await;
    assert!(
        reply["scaled_down"].to_string().contains(&preview),
        "{reply}"
    );
    plane.wait_instances(&preview, "inactive").await;
    plane
        .route_entry_where(&preview_host, |e| e["instances"] == json!([]))
        .await;
    let asked = Instant::now();
    let load = Load::start(edge, &preview_host);
    let woken = load.first_from(&preview, asked).await - asked;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answers = load.stop().await;
    let failed: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status != 200 || a.deployment != preview)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        answers.len()
    );

    let switches = Samples::new(switch_ms);
    println!(
        "zero downtime: {} moves of the live domain under {CLIENTS} clients, {} requests, 0 failed; switch time p50 {:.0} ms, p99 {:.0} ms; a standby preview answered its first held request {} ms after it came ({} requests, 0 failed)",
        moves.len(),
        live_answers.len(),
        switches.at(0.5),
        switches.at(0.99),
        woken.as_millis(),
        answers.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Every answer 2xx, and from the deployment the live domain named when its request started:
/// before a move was asked, the one it moved from; once it finished, the one it moved to;
/// in between, either.
fn check(answers: &[Answer], first: &str, moves: &[Move]) {
    assert!(answers.len() > 100, "only {} requests", answers.len());
    let mut wrong = Vec::new();
    for a in answers {
        if a.status != 200 {
            wrong.push(format!("{a:?}"));
            continue;
        }
        let mut allowed = vec![first];
        for m in moves {
            if a.started >= m.finished {
                allowed = vec![m.to.as_str()];
            } else if a.started >= m.asked {
                allowed = vec![m.from.as_str(), m.to.as_str()];
            }
        }
        if !allowed.contains(&a.deployment.as_str()) {
            wrong.push(format!("{a:?} (expected one of {allowed:?})"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} requests went wrong:\n{}",
        wrong.len(),
        answers.len(),
        wrong.join("\n")
    );
}
