//! nats-server processes (≥ 2.14, installed by `scripts/install-nats-server.sh`).

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::ports::free_port;

/// The nats-server binary: `SLIPWAY_NATS_SERVER_BIN`, else the one the install script put in
/// `.tools/bin`, else a `nats-server` on PATH if it is at least 2.14 (an older one is
/// skipped: it lacks message schedules).
pub fn nats_server_bin() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("SLIPWAY_NATS_SERVER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/nats-server");
    if installed.exists() {
        return Ok(installed);
    }
    if let Some(on_path) = recent_enough_on_path() {
        return Ok(on_path);
    }
    bail!(
        "no nats-server >= 2.14: none at {} and none recent enough on PATH; run scripts/install-nats-server.sh (or set SLIPWAY_NATS_SERVER_BIN)",
        installed.display()
    )
}

/// `nats-server` on PATH when `nats-server --version` says v2.14 or later.
fn recent_enough_on_path() -> Option<PathBuf> {
    let out = Command::new("nats-server").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split('v').nth(1)?.trim();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next()??, parts.next()??);
    if (major, minor) < (2, 14) {
        return None;
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.exists())
    })
}

/// One nats-server with JetStream. Killed when dropped; its store lives as long as it does.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// The HTTP monitoring port, where one is enabled (cluster nodes).
    pub monitor_port: Option<u16>,
    /// Unique `server_name`: readiness checks that the server answering is this one.
    name: String,
    store: Store,
    args: Vec<String>,
}

/// Where a server keeps its JetStream data: a temp dir for tests, a chosen one for `slipway dev`.
enum Store {
    Temp(tempfile::TempDir),
    Dir(PathBuf),
}

impl Store {
    fn path(&self) -> &Path {
        match self {
            Store::Temp(t) => t.path(),
            Store::Dir(d) => d,
        }
    }
}

impl NatsServer {
    /// A single node on a free port.
    pub async fn start() -> Result<Self> {
        Self::start_with(Store::Temp(tempfile::tempdir()?)).await
    }

    /// A single node with extra command-line arguments (`--user`, `--auth`, …).
    pub async fn start_with_args(args: &[&str]) -> Result<Self> {
        let mut server = Self {
            child: None,
            port: free_port()?,
            monitor_port: None,
            name: unique_name("nats"),
            store: Store::Temp(tempfile::tempdir()?),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn_fresh().await?;
        Ok(server)
    }

    /// A single node reading `config` (nats-server configuration text) as its config file.
    pub async fn start_with_config(config: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, config)?;
        let mut server = Self {
            child: None,
            port: free_port()?,
            monitor_port: None,
            name: unique_name("nats"),
            args: vec!["-c".into(), path.display().to_string()],
            store: Store::Temp(dir),
        };
        server.spawn_fresh().await?;
        Ok(server)
    }

    /// A single node on a free port keeping its data in `dir` (kept after it stops).
    pub async fn start_in(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Self::start_with(Store::Dir(dir)).await
    }

    /// [`start_in`](Self::start_in) on a given port (no other is tried if it is taken).
    pub async fn start_in_on(dir: impl Into<PathBuf>, port: u16) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            child: None,
            port,
            monitor_port: None,
            name: unique_name("nats"),
            args: vec![],
            store: Store::Dir(dir),
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn start_with(store: Store) -> Result<Self> {
        let mut server = Self {
            child: None,
            port: free_port()?,
            monitor_port: None,
            name: unique_name("nats"),
            args: vec![],
            store,
        };
        server.spawn_fresh().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's `server_name` (what JetStream names a stream's leader by).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SIGSTOP: the server freezes (as in a VM stall) until [`cont`](Self::cont).
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`stop`](Self::stop).
    pub fn cont(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            crate::process::signal(pid, signal);
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.cont(); // a stopped process is reaped only once it runs
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill, then start again on the same port and store directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<()> {
        self.launch()?;
        self.wait_ready(Duration::from_secs(20)).await
    }

    /// Like [`spawn`](Self::spawn), on another free port if this one was taken meanwhile
    /// (a free port is only free until someone binds it).
    async fn spawn_fresh(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 3 && self.exited() => {
                    attempt += 1;
                    eprintln!(
                        "nats-server could not start on port {} ({e}); trying another",
                        self.port
                    );
                    self.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the process without waiting for it (a cluster starts every node first).
    fn launch(&mut self) -> Result<()> {
        let bin = nats_server_bin()?;
        let mut command = Command::new(&bin);
        if let Store::Dir(_) = self.store {
            // A kept store's server belongs to a long-lived owner (`slipway dev`) that stops it
            // last: in a process group of its own, a terminal's Ctrl-C or hang-up reaches only
            // the owner.
            command.process_group(0);
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(["--name", &self.name])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether this server (by name, not whoever holds the port) greets a new connection:
    /// every server sends INFO first, whatever auth or TLS it wants.
    async fn greets(&self) -> bool {
        use tokio::io::AsyncBufReadExt;
        let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(stream);
        let read = tokio::time::timeout(Duration::from_secs(1), reader.read_line(&mut line)).await;
        matches!(read, Ok(Ok(_)))
            && line.starts_with("INFO ")
            && line.contains(&format!("\"server_name\":\"{}\"", self.name))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "nats-server on port {} exited at start: {status}",
                        self.port
                    );
                }
            }
            // Any server greets a new connection with INFO, whatever auth or TLS it wants.
            if self.greets().await {
                match async_nats::connect(self.url()).await {
                    // Ready once JetStream answers (a cluster needs its meta leader first).
                    Ok(client) => {
                        if async_nats::jetstream::new(client)
                            .query_account()
                            .await
                            .is_ok()
                        {
                            return Ok(());
                        }
                    }
                    // Up, but wants credentials or TLS this probe does not have.
                    Err(_) => return Ok(()),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server on port {} not ready after {timeout:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Why a cluster did not start: a node exited (its ports may have been taken), or not.
enum StartError {
    Exited(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Other(e.into())
    }
}

/// A 3-node JetStream cluster on free ports.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a cluster on free ports; again on other ones if a node could not start (a free
    /// port is only free until someone binds it: seen once in CI, "exited at start").
    pub async fn start() -> Result<Self> {
        let mut attempt = 0;
        loop {
            match Self::try_start().await {
                Ok(cluster) => return Ok(cluster),
                Err(StartError::Exited(e)) if attempt < 3 => {
                    attempt += 1;
                    eprintln!(
                        "a nats-server of the cluster could not start ({e}); trying other ports"
                    );
                }
                Err(StartError::Exited(e) | StartError::Other(e)) => return Err(e),
            }
        }
    }

    async fn try_start() -> Result<Self, StartError> {
        let cluster_ports = [free_port()?, free_port()?, free_port()?];
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_name = unique_name("slipway-test");
        let mut nodes = Vec::new();
        for (i, cluster_port) in cluster_ports.iter().enumerate() {
            let store = Store::Temp(tempfile::tempdir()?);
            let port = free_port()?;
            let monitor_port = free_port()?;
            nodes.push(NatsServer {
                child: None,
                port,
                monitor_port: Some(monitor_port),
                name: unique_name(&format!("n{i}")),
                store,
                args: vec![
                    "-m".into(),
                    monitor_port.to_string(),
                    "--cluster_name".into(),
                    cluster_name.clone(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.clone(),
                ],
            });
        }
        // Start all before waiting: JetStream needs a quorum to answer. Dropped on an
        // error, the nodes started are killed.
        for node in &mut nodes {
            node.launch()?;
        }
        for node in &mut nodes {
            if let Err(e) = node.wait_ready(Duration::from_secs(30)).await {
                return Err(match node.exited() {
                    true => StartError::Exited(e),
                    false => StartError::Other(e),
                });
            }
        }
        Ok(Self { nodes })
    }

    /// The index of the node named `server_name`.
    pub fn node_named(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    /// The index of the node leading `stream`, as the JetStream API reports it.
    pub async fn stream_leader(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> Result<usize> {
        let info = js.get_stream(stream).await?.get_info().await?;
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .context("the stream has no leader now")?;
        self.node_named(&leader)
            .with_context(|| format!("leader {leader} is not a node of this cluster"))
    }

    /// The index of the JetStream meta leader, from a node's monitoring endpoint (`/jsz`).
    pub async fn meta_leader(&self) -> Result<usize> {
        for node in &self.nodes {
            let Some(port) = node.monitor_port else {
                continue;
            };
            let Ok(jsz) = http_get_json(port, "/jsz").await else {
                continue;
            };
            if let Some(leader) = jsz["meta_cluster"]["leader"].as_str() {
                return self.node_named(leader).with_context(|| {
                    format!("meta leader {leader} is not a node of this cluster")
                });
            }
        }
        bail!("no node names a meta leader")
    }

    /// Kills node `index` and starts it again on its port and store; waits until it serves.
    pub async fn restart(&mut self, index: usize) -> Result<()> {
        self.nodes[index].restart().await
    }

    /// Every node's address, for a client that may use any of them.
    pub fn addrs(&self) -> Vec<async_nats::ServerAddr> {
        self.nodes
            .iter()
            .filter_map(|n| n.url().parse().ok())
            .collect()
    }

    /// Every node's URL, comma-separated (the form `SLIPWAY_NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A monitoring endpoint's JSON (plain HTTP/1.0 over a TCP socket: no HTTP client needed).
async fn http_get_json(port: u16, path: &str) -> Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .context("no HTTP body")?;
    Ok(serde_json::from_str(body)?)
}
