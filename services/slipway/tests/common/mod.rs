//! What the CLI's tests share: `slipway dev` started and read from its banner, the CLI run
//! as a user would, and HTTP through the edge as curl does.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Output, Stdio},
};

use serde_json::Value;

pub const SLIPWAY: &str = env!("CARGO_BIN_EXE_slipway");

/// The CLI, as `program` (the binary's path, or `slipway` found on `path`), against `url`.
pub struct Cli {
    pub url: String,
    pub program: String,
    /// `PATH` for the CLI, when it is found there.
    pub path: Option<String>,
}

impl Cli {
    pub fn at(url: String) -> Self {
        Self {
            url,
            program: SLIPWAY.into(),
            path: None,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command.args(args).env("SLIPWAY_NATS_URL", &self.url);
        if let Some(path) = &self.path {
            command.env("PATH", path);
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", self.program))
    }

    /// Runs with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs, expects success; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "slipway {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs, expects failure; stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "slipway {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    /// Runs with `--json`, expects success, parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "slipway {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "slipway {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// `slipway dev`, interrupted (as Ctrl-C would) if the test fails before it does.
pub struct Dev {
    pub child: std::process::Child,
    /// What it printed up to "Ctrl-C stops everything".
    pub banner: String,
}

impl Dev {
    /// Starts `slipway dev --dir <dir> <extra>` and reads its banner.
    pub async fn start(dir: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = Command::new(SLIPWAY)
            .args(["dev", "--dir"])
            .arg(dir)
            .args(extra)
            .env_remove("SLIPWAY_DATABASE_URL")
            .env_remove("SLIPWAY_SECRETS_KEY")
            // No container engine, whatever the machine runs: the tests deploy exec: images.
            .env(
                "SLIPWAY_AGENT_DOCKER_HOST",
                "unix:///nonexistent/docker.sock",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let banner = tokio::task::spawn_blocking(move || {
            let mut banner = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                banner.push_str(&line);
                banner.push('\n');
                if line.starts_with("Ctrl-C") {
                    break;
                }
            }
            banner
        })
        .await
        .unwrap();
        Self { child, banner }
    }

    /// The value after `prefix` on the banner's first line that starts with it (trimmed).
    pub fn line(&self, prefix: &str) -> Option<String> {
        self.banner
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    }

    pub fn nats_url(&self) -> String {
        self.line("NATS")
            .unwrap_or_else(|| panic!("no NATS URL in the banner:\n{}", self.banner))
    }

    /// The edge's port, from the banner's curl line.
    pub fn edge_port(&self) -> u16 {
        let curl = self
            .line("curl ")
            .unwrap_or_else(|| panic!("no curl line in the banner:\n{}", self.banner));
        host_and_port(&curl).1
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// `http://<host>:<port>/` → (host, port).
pub fn host_and_port(url: &str) -> (String, u16) {
    let rest = url.trim_start_matches("http://").trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').expect("a port in the URL");
    (host.to_string(), port.parse().expect("a port number"))
}

/// GET `path` from 127.0.0.1:`port` with `Host: host`, as curl does for `*.localhost`: the
/// status code and the body.
pub async fn http(host: &str, port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the edge accepts connections");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, body.to_string())
}

/// The body of a 200 answer.
pub async fn http_get(host: &str, port: u16, path: &str) -> String {
    let (status, body) = http(host, port, path).await;
    assert_eq!(status, 200, "GET {host}{path}: {body}");
    body
}
