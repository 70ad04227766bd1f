//! Edge benchmark, in one run on this machine: requests/s and latency p50 / p99 of
//!
//! - the app called directly (`slipway demo-app`, the floor),
//! - the edge (release build) in front of it, routed by `Host` through `slipway_routes`,
//! - nginx (Debian's package) configured as the same reverse proxy (HTTP/1.1 keep-alive to the
//!   app), when installed (`scripts/install-bench-tools.sh`),
//!
//! at 1, 16 and 64 concurrent keep-alive connections, each sending one request after another
//! for a few seconds, with the CPU time the proxy spent per request (user + system, from
//! `/proc`: steadier than requests/s on a busy machine, where the load generator and the app
//! share the cores) and how often its threads were switched out per request; then the same
//! at a fixed rate (`SLIPWAY_BENCH_RATE`, default 10,000 requests/s in all, open loop), where
//! the added latency is the proxy's own work rather than queueing behind a saturated proxy;
//! then the edge's RSS with 10,000 routes loaded.
//!
//! `cargo build --release --workspace && cargo bench -p edge --bench edge`
//! (after scripts/install-nats-server.sh and scripts/install-bench-tools.sh);
//! `SLIPWAY_BENCH_CONNS=16` for one row, `SLIPWAY_EDGE_WORKERS=n` for the edge's HTTP threads;
//! `SLIPWAY_BENCH_PIN=1` puts the load generator and the app on CPU 0 and the proxy (one HTTP
//! worker, one nginx worker) on CPU 1 (`taskset`), so that the added latency is the proxy's
//! own work rather than the scheduler's handing of 2 cores to three busy processes.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{client::conn::http1, Request};
use hyper_util::rt::TokioIo;
use slipway_core::{domains::Sticky, routes::RouteEntry, state::DesiredState};
use slipway_testkit::{plane::bin, ports::free_port, Plane, Samples, ServiceProcess};

const HOST: &str = "bench.slipway.localhost";
const RUN_FOR: Duration = Duration::from_secs(4);
const ROUTES: usize = 10_000;
/// With `SLIPWAY_BENCH_PIN=1`: where the load generator and the app run, and the proxy.
const LOAD_CPU: u32 = 0;
const PROXY_CPU: u32 = 1;

/// Pins every thread of process `pid` to `cpu`.
fn pin(pid: u32, cpu: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| anyhow::anyhow!("taskset (util-linux): {e}"))?;
    anyhow::ensure!(status.success(), "taskset could not pin {pid} to CPU {cpu}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    std::env::set_var("SLIPWAY_TEST_LOG", "warn,slipway::ready=info");
    let pinned = std::env::var("SLIPWAY_BENCH_PIN").is_ok_and(|v| v == "1");
    if pinned {
        // Every thread of this process; what it starts from now on inherits CPU 0.
        pin(std::process::id(), LOAD_CPU)?;
    }
    let app_port = free_port()?;
    let app = ServiceProcess::spawn(
        "app",
        bin("slipway"),
        &["demo-app", "--message", "bench"],
        &[("PORT", app_port.to_string())],
    )?;
    app.wait_for_log("demo-app listening", Duration::from_secs(30))?;
    let app_addr = SocketAddr::from(([127, 0, 0, 1], app_port));

    let mut plane = Plane::builder().start().await;
    plane
        .routes
        .put(HOST, serde_json::to_vec(&entry(HOST, app_addr))?.into())
        .await?;
    match pinned {
        true => plane.start_edge_with(&[("SLIPWAY_EDGE_WORKERS", "1")]),
        false => plane.start_edge(),
    }
    let edge_addr = plane.edge_address.expect("the edge's address");
    let nginx = Nginx::start(app_addr, pinned)?;
    if pinned {
        if let Some(edge) = &plane.edge {
            pin(edge.pid(), PROXY_CPU)?;
        }
        if let Some(nginx) = &nginx {
            pin(nginx.process.pid(), PROXY_CPU)?;
            for worker in nginx.workers()? {
                pin(worker, PROXY_CPU)?;
            }
        }
    }

    println!("GET / of `slipway demo-app` ({RUN_FOR:?} per row, keep-alive connections, this machine: 2 cores, everything on it)");
    if pinned {
        println!("pinned: load generator and app on CPU {LOAD_CPU}, the proxy (one worker) on CPU {PROXY_CPU}");
    }
    println!(
        "target     conns   req/s     p50 ms   p99 ms   added p50 / p99 ms   proxy CPU µs/req   switches/req"
    );
    // SLIPWAY_BENCH_CONNS=16 runs one row (for repeated runs).
    let rows: Vec<usize> = std::env::var("SLIPWAY_BENCH_CONNS")
        .ok()
        .and_then(|v| v.split(',').map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64]);
    let edge_pid = plane.edge.as_ref().map(|e| e.pid());
    let mut targets = vec![("direct", app_addr, None), ("edge", edge_addr, edge_pid)];
    if let Some(nginx) = &nginx {
        targets.push(("nginx", nginx.addr, Some(nginx.process.pid())));
    }
    for &conns in &rows {
        compare(&targets, conns, None).await?;
    }
    // The rows above saturate the proxy (each connection sends its next request as soon as
    // the answer is in), so their added latency is mostly queueing: at 16 connections
    // 16 ÷ requests/s. At a fixed rate well below what either proxy can do, the added
    // latency is the proxy's own work.
    let rate: f64 = std::env::var("SLIPWAY_BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10_000.0);
    println!("at a fixed {rate:.0} requests/s in all (open loop; requests leave on tokio's 1 ms timer ticks):");
    for &conns in &rows {
        compare(&targets, conns, Some(rate)).await?;
    }
    if nginx.is_none() {
        println!("(nginx is not installed: scripts/install-bench-tools.sh installs it)");
    }

    // RSS with 10,000 routes.
    let idle = plane.edge.as_ref().and_then(|e| e.rss_kib()).unwrap_or(0);
    for i in 0..ROUTES {
        let host = format!("r{i}.bench.slipway.localhost");
        plane
            .routes
            .put(
                host.as_str(),
                serde_json::to_vec(&entry(&host, app_addr))?.into(),
            )
            .await?;
    }
    // The edge loads them from its watch; a request for the last one says when it has.
    let last = format!("r{}.bench.slipway.localhost", ROUTES - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while plane.through_edge(&last, "/").await.0 != 200 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the edge never loaded {ROUTES} routes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loaded = plane.edge.as_ref().and_then(|e| e.rss_kib()).unwrap_or(0);
    println!(
        "edge RSS: {:.1} MiB with 1 route, {:.1} MiB with {} routes",
        idle as f64 / 1024.0,
        loaded as f64 / 1024.0,
        ROUTES + 1
    );
    drop(app);
    Ok(())
}

fn entry(fqdn: &str, app: SocketAddr) -> RouteEntry {
    RouteEntry {
        route_id: format!("flr_{}", fqdn.len()),
        fqdn: fqdn.into(),
        project_id: "proj_bench".into(),
        environment_id: "env_bench".into(),
        deployment_id: "dep_bench".into(),
        sticky: Sticky::Live,
        instances: vec![app.to_string()],
        instances_revision: 1,
        desired_state: Some(DesiredState::Running),
        sentinel_config: None,
        version: 1,
    }
}

struct Run {
    requests: usize,
    elapsed: Duration,
    latencies_ms: Samples,
    /// CPU time the proxy spent, and how often its threads were switched out (voluntarily:
    /// they waited; or not), where there is one.
    proxy_cpu: Option<(Duration, u64)>,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self, target: &str, conns: usize, against: Option<&Run>) {
        let (p50, p99) = (self.latencies_ms.at(0.5), self.latencies_ms.at(0.99));
        let added = match against {
            Some(d) => format!(
                "{:+.3} / {:+.3}",
                p50 - d.latencies_ms.at(0.5),
                p99 - d.latencies_ms.at(0.99)
            ),
            None => String::new(),
        };
        let cpu = match self.proxy_cpu {
            Some((cpu, switches)) => format!(
                "{:>6.1}   {:>6.2}",
                cpu.as_secs_f64() * 1e6 / self.requests as f64,
                switches as f64 / self.requests as f64
            ),
            None => String::new(),
        };
        println!(
            "{target:<10} {conns:>5} {:>8.0} {p50:>9.3} {p99:>8.3}   {added:<18}   {cpu}",
            self.per_second()
        );
    }
}

/// One row per target (the first: the app directly, which the others are compared with).
async fn compare(
    targets: &[(&str, SocketAddr, Option<u32>)],
    conns: usize,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let mut direct = None;
    for &(target, addr, pid) in targets {
        let run = load(addr, conns, pid, rate).await?;
        run.print(target, conns, direct.as_ref());
        direct.get_or_insert(run);
    }
    Ok(())
}

/// `conns` keep-alive connections to `addr`, each sending `GET /` (Host: the bench host) for
/// [`RUN_FOR`]: one after another, or at `rate` requests/s in all (spread evenly over the
/// connections and in time); with the CPU time of `proxy` (a pid) meanwhile.
async fn load(
    addr: SocketAddr,
    conns: usize,
    proxy: Option<u32>,
    rate: Option<f64>,
) -> anyhow::Result<Run> {
    let cpu_before = proxy.map(|pid| (cpu_time(pid), context_switches(pid)));
    let started = Instant::now();
    let until = started + RUN_FOR;
    let every = rate.map(|rate| Duration::from_secs_f64(conns as f64 / rate));
    let tasks: Vec<_> = (0..conns)
        .map(|n| {
            let pace = every.map(|every| Pace {
                first: started + every * n as u32 / conns as u32,
                every,
            });
            tokio::spawn(connection(addr, until, pace))
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    let proxy_cpu = proxy.zip(cpu_before).map(|(pid, (cpu, switches))| {
        (
            cpu_time(pid).saturating_sub(cpu),
            context_switches(pid).saturating_sub(switches),
        )
    });
    Ok(Run {
        requests: latencies.len(),
        elapsed,
        latencies_ms: Samples::new(latencies),
        proxy_cpu,
    })
}

/// User + system CPU time of process `pid` and of its child processes (nginx's workers), as
/// `/proc/<pid>/stat` counts it (in clock ticks, 100 per second on Linux).
fn cpu_time(pid: u32) -> Duration {
    const TICKS_PER_SECOND: u64 = 100;
    // Fields after the command's closing parenthesis: state, ppid, …; utime and stime are
    // fields 14 and 15 of the line, 12th and 13th of these.
    let ticks = |pid: u32| -> u64 {
        let ticks = || -> Option<u64> {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        };
        ticks().unwrap_or(0)
    };
    let all = ticks(pid) + children_of(pid).into_iter().map(ticks).sum::<u64>();
    Duration::from_millis(all * 1000 / TICKS_PER_SECOND)
}

/// Context switches of every thread of process `pid` and of its child processes, as
/// `/proc/<pid>/task/<tid>/status` counts them (voluntary and not).
fn context_switches(pid: u32) -> u64 {
    let of_process = |pid: u32| -> u64 {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
            .flat_map(|status| {
                status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    let children: u64 = children_of(pid).into_iter().map(of_process).sum();
    of_process(pid) + children
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid: u32 = text
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// When a connection sends at a fixed rate: its first request, then one `every`.
struct Pace {
    first: Instant,
    every: Duration,
}

async fn connection(
    addr: SocketAddr,
    until: Instant,
    pace: Option<Pace>,
) -> anyhow::Result<Vec<f64>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut latencies = Vec::new();
    let mut next = pace.as_ref().map(|p| p.first);
    while Instant::now() < until {
        if let (Some(at), Some(pace)) = (next.as_mut(), &pace) {
            tokio::time::sleep_until((*at).into()).await;
            // A connection that fell behind sends at once rather than in a burst.
            *at = (*at + pace.every).max(Instant::now());
        }
        let request = Request::get("/")
            .header(hyper::header::HOST, HOST)
            .body(Empty::<Bytes>::new())?;
        let t = Instant::now();
        let response = sender.send_request(request).await?;
        anyhow::ensure!(response.status() == 200, "{}", response.status());
        response.into_body().collect().await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

/// nginx as the same reverse proxy: keep-alive HTTP/1.1 to the app, one worker per core, the
/// same forwarded headers and response header as the edge.
struct Nginx {
    process: ServiceProcess,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(app: SocketAddr, one_worker: bool) -> anyhow::Result<Option<Nginx>> {
        let Some(nginx) = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = format!(
            "worker_processes {workers};\n\
             error_log stderr warn;\n\
             pid {dir}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               keepalive_requests 10000000;\n\
               client_body_temp_path {dir}/body;\n\
               proxy_temp_path {dir}/proxy;\n\
               fastcgi_temp_path {dir}/fastcgi;\n\
               uwsgi_temp_path {dir}/uwsgi;\n\
               scgi_temp_path {dir}/scgi;\n\
               upstream app {{ server {app}; keepalive 64; keepalive_requests 10000000; }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{\n\
                   proxy_pass http://app;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $host;\n\
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_set_header X-Forwarded-Host $host;\n\
                   proxy_set_header X-Forwarded-Proto $scheme;\n\
                   add_header x-slipway-deployment dep_bench;\n\
                 }}\n\
               }}\n\
             }}\n",
            dir = dir.path().display(),
            workers = if one_worker { "1" } else { "auto" },
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config)?;
        let conf = conf.display().to_string();
        let process =
            ServiceProcess::spawn("nginx", nginx, &["-c", &conf, "-g", "daemon off;"], &[])?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(Nginx {
            process,
            addr,
            _dir: dir,
        }))
    }

    /// Its worker processes, once it has started them.
    fn workers(&self) -> anyhow::Result<Vec<u32>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let workers = children_of(self.process.pid());
            if !workers.is_empty() {
                return Ok(workers);
            }
            anyhow::ensure!(Instant::now() < deadline, "nginx started no worker");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.process.terminate(Duration::from_secs(5));
    }
}
