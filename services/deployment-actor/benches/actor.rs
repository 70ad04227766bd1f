//! Deployment-actor benchmark, against a real nats-server, SQLite (or PostgreSQL with
//! `SLIPWAY_BENCH_DATABASE=postgres`) and one release-built actor process:
//!
//! 1. schedule + clear round trips with 1, 16 and 64 concurrent clients (each on its own
//!    deployment), beside a bare KV put round trip at the same concurrency (the floor);
//! 2. 10,000 pending schedules falling due within 3 s: lateness (event seen − due time)
//!    p50 / p99 / max, lost, applied twice.
//!
//! `cargo bench -p deployment-actor --bench actor` (after scripts/install-nats-server.sh).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use futures::StreamExt;
use slipway_core::time::now_ms;
use slipway_store::Store;
use slipway_testkit::{
    plane::{Plane, ACTOR},
    ServiceProcess, TestDb,
};
const DUE: usize = 10_000;
const DUE_WINDOW_MS: i64 = 3_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; nothing else to parse.
    // Only warnings and readiness from the actor.
    std::env::set_var("SLIPWAY_TEST_LOG", "warn,slipway::ready=info");
    let db = match std::env::var("SLIPWAY_BENCH_DATABASE").as_deref() {
        Ok("postgres") => TestDb::postgres().await?,
        _ => TestDb::sqlite()?,
    };
    let mut plane = Plane::builder().database(db).service(ACTOR).start().await;
    println!(
        "database: {}",
        plane.db.url.split(':').next().unwrap_or("?")
    );

    let ids = slipway_testkit::seed::bench_deployments(&plane.store, DUE).await?;
    round_trips(&plane.nats, &plane.js, &ids).await?;
    let mut actor = plane.services.pop();
    due_storm(&plane.client, &plane.store, &ids, &mut actor).await?;
    drop(actor);
    Ok(())
}

fn summary(v: Vec<f64>) -> (f64, f64, f64) {
    let v = slipway_testkit::Samples::new(v);
    (v.at(0.5), v.at(0.99), v.max())
}

async fn round_trips(
    nats: &slipway_testkit::plane::Nats,
    js: &jetstream::Context,
    ids: &[String],
) -> anyhow::Result<()> {
    let floor_kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: "bench_floor".into(),
            history: 1,
            ..Default::default()
        })
        .await?;
    println!();
    println!("schedule + clear round trips (each client on its own deployment), beside a KV put");
    println!("clients | pairs/s | schedule p50 / p99 ms | clear p50 / p99 ms | kv put/s | kv put p50 / p99 ms");
    for clients in [1usize, 16, 64] {
        let run_for = Duration::from_secs(5);
        // Actor: schedule then clear, repeatedly, per client.
        let mut tasks = Vec::new();
        let start = Instant::now();
        for dep in ids.iter().take(clients) {
            let client = async_nats::connect(nats.url()).await?;
            let dep = dep.clone();
            tasks.push(tokio::spawn(async move {
                let (mut sched, mut clear) = (Vec::new(), Vec::new());
                while start.elapsed() < run_for {
                    let t = Instant::now();
                    let r = client
                        .request(
                            format!("slipway.deployment.v1.schedule_desired_state_change.{dep}"),
                            r#"{"delay_ms": 600000, "state": "standby"}"#.into(),
                        )
                        .await;
                    assert!(r.is_ok_and(|m| m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Service-Error-Code"))
                        .is_none()));
                    sched.push(t.elapsed().as_secs_f64() * 1e3);
                    let t = Instant::now();
                    client
                        .request(
                            format!("slipway.deployment.v1.clear_scheduled_state_changes.{dep}"),
                            "{}".into(),
                        )
                        .await
                        .expect("clear");
                    clear.push(t.elapsed().as_secs_f64() * 1e3);
                }
                (sched, clear)
            }));
        }
        let (mut sched, mut clear) = (Vec::new(), Vec::new());
        for t in tasks {
            let (s, c) = t.await?;
            sched.extend(s);
            clear.extend(c);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let pairs = clear.len() as f64 / elapsed;

        // Floor: bare KV put round trips at the same concurrency.
        let mut tasks = Vec::new();
        let start = Instant::now();
        for c in 0..clients {
            let kv = floor_kv.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while start.elapsed() < run_for {
                    let t = Instant::now();
                    kv.put(format!("k{c}"), "v".into()).await.expect("kv put");
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            }));
        }
        let mut puts = Vec::new();
        for t in tasks {
            puts.extend(t.await?);
        }
        let put_rate = puts.len() as f64 / start.elapsed().as_secs_f64();
        let (s50, s99, _) = summary(sched);
        let (c50, c99, _) = summary(clear);
        let (p50, p99, _) = summary(puts);
        println!(
            "{clients:7} | {pairs:7.0} | {s50:8.2} / {s99:6.2}      | {c50:6.2} / {c99:6.2}    | {put_rate:8.0} | {p50:6.2} / {p99:6.2}"
        );
    }
    Ok(())
}

async fn due_storm(
    client: &async_nats::Client,
    store: &Store,
    ids: &[String],
    actor: &mut Option<ServiceProcess>,
) -> anyhow::Result<()> {
    let mut events = client
        .subscribe("slipway.events.proj_b.*.desired_state")
        .await?;
    client.flush().await?;
    // Schedule everything first, due in a 3 s window that opens after the last call.
    let scheduling_budget_ms = 20_000;
    let window_opens = now_ms() + scheduling_budget_ms;
    let due: Arc<HashMap<String, i64>> = Arc::new(
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    id.clone(),
                    window_opens + (i as i64 * DUE_WINDOW_MS) / ids.len() as i64,
                )
            })
            .collect(),
    );
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for id in ids {
        let permit = sem.clone().acquire_owned().await?;
        let client = client.clone();
        let id = id.clone();
        let fires_at = due[&id];
        tasks.push(tokio::spawn(async move {
            let body = format!(
                r#"{{"delay_ms": {}, "state": "standby"}}"#,
                fires_at - now_ms()
            );
            let r = client
                .request(
                    format!("slipway.deployment.v1.schedule_desired_state_change.{id}"),
                    body.into(),
                )
                .await
                .expect("schedule");
            drop(permit);
            let reply: serde_json::Value = serde_json::from_slice(&r.payload).expect("reply");
            reply["fires_at_ms"]
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .expect("fires_at_ms")
        }));
    }
    let mut fires_at = HashMap::new();
    for (id, t) in ids.iter().zip(tasks) {
        fires_at.insert(id.clone(), t.await?);
    }
    let scheduling = started.elapsed();
    // SLIPWAY_BENCH_SCHEDULER_ONLY=1: stop the actor, to time the server's scheduler alone.
    if std::env::var("SLIPWAY_BENCH_SCHEDULER_ONLY").is_ok() {
        actor.take();
    }
    anyhow::ensure!(
        now_ms() < window_opens,
        "scheduling took longer than its budget"
    );
    println!();
    println!(
        "{} schedules written in {:.1} s ({:.0}/s); due between +{:.1} s and +{:.1} s",
        ids.len(),
        scheduling.as_secs_f64(),
        ids.len() as f64 / scheduling.as_secs_f64(),
        (window_opens - now_ms()) as f64 / 1e3,
        (window_opens + DUE_WINDOW_MS - now_ms()) as f64 / 1e3
    );

    // When the server fired each schedule (its stream timestamp), to tell the scheduler's
    // lateness from the actor's: an ordered consumer sees every fired message, acks nothing.
    let timers = jetstream::new(client.clone())
        .get_stream("SLIPWAY_TIMERS")
        .await?;
    let fired_watch = timers
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "slipway.timers.fired.deployment.>".into(),
            ..Default::default()
        })
        .await?;
    let fires = fires_at.clone();
    let total = ids.len();
    let fired_lateness = tokio::spawn(async move {
        let mut lateness = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let Ok(mut messages) = fired_watch.messages().await else {
            return lateness;
        };
        while seen.len() < total {
            let Ok(Some(Ok(m))) =
                tokio::time::timeout(Duration::from_secs(150), messages.next()).await
            else {
                break;
            };
            let id = m.subject.rsplit('.').next().unwrap_or_default().to_string();
            let Ok(info) = m.info() else { continue };
            let published_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
            if seen.insert(id.clone()) {
                if let Some(due) = fires.get(&id) {
                    lateness.push((published_ms - due) as f64);
                }
            }
        }
        lateness
    });

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut lateness = Vec::new();
    let give_up = window_opens + DUE_WINDOW_MS + 120_000;
    while seen.len() < ids.len() && now_ms() < give_up {
        let wait = Duration::from_millis((give_up - now_ms()).max(1) as u64);
        let Ok(Some(msg)) = tokio::time::timeout(wait, events.next()).await else {
            break;
        };
        let at = now_ms();
        let event: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        let id = event["deployment_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let count = seen.entry(id.clone()).or_default();
        *count += 1;
        if *count == 1 {
            lateness.push((at - fires_at[&id]) as f64);
        }
    }
    // Applied twice: an extra event, or a topology version past 2.
    let twice_events = seen.values().filter(|c| **c > 1).count();
    let topology_versions: i64 =
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM deployment_topology WHERE version > 2")
            .fetch_one(store.pool())
            .await?;
    let (f50, f99, fmax) = summary(fired_lateness.await?);
    println!(
        "server fired the schedules: lateness p50 {f50:.0} ms, p99 {f99:.0} ms, max {fmax:.0} ms"
    );
    let (p50, p99, max) = summary(lateness);
    println!(
        "{} due: lateness p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms; lost {}; applied twice {} (events) / {} (db)",
        ids.len(),
        ids.len() - seen.len(),
        twice_events,
        topology_versions
    );
    Ok(())
}
