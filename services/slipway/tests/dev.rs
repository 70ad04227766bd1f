//! `slipway dev` (the README's start command) brings up a control plane that answers.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

#[tokio::test]
async fn slipway_dev_starts_a_control_plane_that_answers() {
    dev_answers(&[]).await;
}

/// The same on PostgreSQL, through `--database-url`.
#[tokio::test]
async fn slipway_dev_runs_on_postgresql() {
    let db = slipway_testkit::TestDb::postgres().await.unwrap();
    let banner = dev_answers(&["--database-url", &db.url]).await;
    assert!(
        banner.contains(&format!("database  {}", db.url)),
        "{banner}"
    );
}

/// A `slipway dev` process, stopped (SIGTERM: all it started goes too) should a test fail
/// before it stops it.
struct Dev(Child);

impl std::ops::Deref for Dev {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Dev {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            signal(&self.0, "-TERM");
            let _ = self.0.wait();
        }
    }
}

/// `slipway dev` on `dir` with `extra` arguments, its logs dropped.
fn spawn_dev(dir: &Path, port: u16, extra: &[&str]) -> Dev {
    let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["dev", "--nats-port", &port.to_string(), "--dir"])
        .arg(dir)
        .args(extra)
        .env_remove("SLIPWAY_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Dev(child)
}

/// Reads `slipway dev`'s banner up to its last line; the whole text.
async fn banner(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let read = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.starts_with("Ctrl-C") {
                break;
            }
        }
        text
    });
    let text = tokio::task::spawn_blocking(move || read.join().unwrap())
        .await
        .unwrap();
    assert!(
        text.contains("Ctrl-C"),
        "slipway dev did not come up:\n{text}"
    );
    text
}

/// The processes a run recorded in `<dir>/dev.pids` (its own first), as (pid, name).
fn recorded(dir: &Path) -> Vec<(u32, String)> {
    let text = std::fs::read_to_string(dir.join("dev.pids")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(pid, name)| (pid.parse().unwrap(), name.to_string()))
        .collect()
}

/// Whether process `pid` runs (exists, and is no zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits (up to 20 s) until none of `pids` runs; those still running.
async fn gone(pids: &[u32]) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let running: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if running.is_empty() || std::time::Instant::now() > deadline {
            return running;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A supervisor's stop (SIGTERM) and a closed terminal (SIGHUP), not only Ctrl-C, stop every
/// process `slipway dev` started. They used to end `slipway dev` alone: its nats-server and
/// services ran on, and the next run started a second nats-server on the same store.
#[tokio::test]
async fn sigterm_and_sighup_stop_everything_slipway_dev_started() {
    for stop in ["-TERM", "-HUP"] {
        let dir = tempfile::tempdir().unwrap();
        let port = slipway_testkit::ports::free_port().unwrap();
        let mut dev = spawn_dev(dir.path(), port, &[]);
        banner(&mut dev).await;
        let started = recorded(dir.path());
        let names: Vec<&str> = started.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "slipway",
                "nats-server",
                "deployment-actor",
                "routing",
                "krane-agent",
                "deploy-orchestrator",
                "edge"
            ]
        );
        signal(&dev, stop);
        let status = dev.wait().unwrap();
        assert!(
            status.success(),
            "slipway dev exited with {status} on {stop}"
        );
        let pids: Vec<u32> = started.iter().map(|(p, _)| *p).collect();
        assert_eq!(
            gone(&pids).await,
            Vec::<u32>::new(),
            "still running after {stop}"
        );
        assert!(
            !dir.path().join("dev.pids").exists(),
            "the record is removed"
        );
    }
}

/// A terminal's Ctrl-C or hang-up signals its whole foreground process group: only `slipway
/// dev` gets it (its processes run in groups of their own), and it stops them in order — the
/// agent stops the demo app before it goes. The services used to get the hang-up too and die
/// of it at once, the agent without stopping the demo app, which ran on.
#[tokio::test]
async fn a_closed_terminal_stops_the_plane_in_order() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let port = slipway_testkit::ports::free_port().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["dev", "--nats-port", &port.to_string(), "--dir"])
        .arg(dir.path())
        .env_remove("SLIPWAY_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut dev = Dev(child);
    let text = banner(&mut dev).await;
    let demo = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("demo app"))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|url| {
            url.trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string()
        })
        .expect("the demo app's address");
    assert!(
        std::net::TcpStream::connect(&demo).is_ok(),
        "the demo app answers"
    );
    let started: Vec<u32> = recorded(dir.path()).iter().map(|(p, _)| *p).collect();
    // The terminal's hang-up: to the whole group, as the kernel sends it.
    let sent = Command::new("kill")
        .args(["-HUP", "--", &format!("-{}", dev.id())])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(dev.wait().unwrap().success());
    assert_eq!(gone(&started).await, Vec::<u32>::new());
    assert!(
        std::net::TcpStream::connect(&demo).is_err(),
        "the demo app at {demo} still runs"
    );
}

/// Under `nohup` (SIGHUP ignored) a closed terminal stops nothing.
#[tokio::test]
async fn under_nohup_sighup_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = slipway_testkit::ports::free_port().unwrap();
    let child = Command::new("nohup")
        .arg(env!("CARGO_BIN_EXE_slipway"))
        .args(["dev", "--nats-port", &port.to_string(), "--dir"])
        .arg(dir.path())
        .env_remove("SLIPWAY_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut dev = Dev(child);
    banner(&mut dev).await;
    signal(&dev, "-HUP");
    // Nothing to wait for but time: it must still run a while later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        dev.try_wait().unwrap().is_none(),
        "slipway dev stopped on SIGHUP under nohup"
    );
    let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let answered = client
        .request("slipway.routing.v1.list_routes.proj_demo", "{}".into())
        .await;
    assert!(answered.is_ok(), "{answered:?}");
    signal(&dev, "-TERM");
    assert!(dev.wait().unwrap().success());
}

/// A service that dies under `slipway dev` (here SIGKILLed, as in a crash) is started again,
/// and the plane answers through it.
#[tokio::test]
async fn a_service_that_dies_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let port = slipway_testkit::ports::free_port().unwrap();
    let mut dev = spawn_dev(dir.path(), port, &[]);
    banner(&mut dev).await;
    let routing = |recorded: &[(u32, String)]| -> Vec<u32> {
        recorded
            .iter()
            .filter(|(_, n)| n == "routing")
            .map(|(p, _)| *p)
            .collect()
    };
    let first = routing(&recorded(dir.path()));
    assert_eq!(first.len(), 1);
    let killed = Command::new("kill")
        .args(["-KILL", &first[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let again = loop {
        let now = routing(&recorded(dir.path()));
        if let Some(again) = now.get(1).filter(|p| alive(**p)) {
            break *again;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "routing not started again: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(again, first[0]);
    let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    // Answered once the new process is ready.
    let reply = loop {
        match client
            .request("slipway.routing.v1.list_routes.proj_demo", "{}".into())
            .await
        {
            Ok(reply) => break reply,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listed: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(!listed["routes"].as_array().unwrap().is_empty(), "{listed}");
    signal(&dev, "-TERM");
    assert!(dev.wait().unwrap().success());
    assert_eq!(gone(&[again]).await, Vec::<u32>::new());
}

/// A run on a directory another run still uses is refused (one nats-server store, one
/// database); a run on a directory whose run was SIGKILLed first stops what that one left.
#[tokio::test]
async fn a_run_refuses_a_live_run_s_directory_and_clears_a_killed_one_s() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn_dev(
        dir.path(),
        slipway_testkit::ports::free_port().unwrap(),
        &[],
    );
    banner(&mut first).await;
    let left: Vec<u32> = recorded(dir.path())
        .iter()
        .skip(1)
        .map(|(p, _)| *p)
        .collect();

    let mut refused = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["dev", "--dir"])
        .arg(dir.path())
        .env_remove("SLIPWAY_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        match refused.try_wait().unwrap() {
            Some(status) => break status,
            None if std::time::Instant::now() > deadline => {
                signal(&refused, "-TERM");
                panic!("a second `slipway dev` on the same directory started");
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut stderr = String::new();
    use std::io::Read;
    refused
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "another `slipway dev` (pid {}) runs on",
            first.id()
        )),
        "{stderr}"
    );
    assert!(
        left.iter().all(|p| alive(*p)),
        "the refused run touched the first one's processes"
    );

    // SIGKILL: slipway dev gets no chance to stop anything.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        left.iter().all(|p| alive(*p)),
        "left running by a killed run"
    );
    let mut second = spawn_dev(
        dir.path(),
        slipway_testkit::ports::free_port().unwrap(),
        &[],
    );
    let text = banner(&mut second).await;
    assert_eq!(
        gone(&left).await,
        Vec::<u32>::new(),
        "the killed run's processes"
    );
    assert!(text.contains("Slipway dev control plane is up."), "{text}");
    signal(&second, "-INT");
    assert!(second.wait().unwrap().success());
}

/// Runs `slipway dev` with `extra` arguments, checks that it answers, stops it; its banner.
async fn dev_answers(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = slipway_testkit::ports::free_port().unwrap();
    let mut child = spawn_dev(dir.path(), port, extra);
    let stdout = child.stdout.take().unwrap();
    // Read the banner on a thread; the URL line comes before "Ctrl-C".
    let banner = std::thread::spawn(move || {
        let (mut url, mut demo, mut text) = (None, None, String::new());
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if let Some(u) = line.trim().strip_prefix("NATS") {
                url = Some(u.trim().to_string());
            }
            if let Some(rest) = line.trim().strip_prefix("demo app") {
                let mut words = rest.split_whitespace();
                let address = words.next().map(str::to_string);
                // "(deployment dep_…, run by krane-agent)"
                let id = words.nth(1).map(|w| w.trim_end_matches(',').to_string());
                demo = address.zip(id);
            }
            if line.starts_with("Ctrl-C") {
                break;
            }
        }
        (url, demo, text)
    });
    let (url, demo, text) = tokio::task::spawn_blocking(move || banner.join().unwrap())
        .await
        .unwrap();
    async {
        let url = url.expect("slipway dev printed no NATS URL");
        assert_eq!(
            url,
            format!("nats://127.0.0.1:{port}"),
            "the port asked for"
        );
        // The demo app runs (started by krane-agent) and answers over HTTP.
        let (demo, deployment_id) = demo.expect("slipway dev printed no demo app address");
        let address = demo.trim_start_matches("http://").trim_end_matches('/');
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.ends_with("hello"), "{response}");
        let client = async_nats::connect(url).await.unwrap();
        let msg = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(
                format!("slipway.deployment.v1.get_state.{deployment_id}"),
                "{}".into(),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(reply["deployment_id"], deployment_id.as_str());
        assert_eq!(reply["desired_state"], "running");
        let msg = client
            .request("slipway.routing.v1.list_routes.proj_demo", "{}".into())
            .await
            .unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let fqdns: Vec<&str> = listed["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["fqdn"].as_str().unwrap())
            .collect();
        assert!(
            fqdns.contains(&"demo-app--demo.slipway.localhost"),
            "{fqdns:?}"
        );
    }
    .await;
    // Ctrl-C, as a person would: slipway stops its services and nats-server and exits 0.
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "slipway dev exited with {status}");
    text
}
