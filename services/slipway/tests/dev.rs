//! `slipway dev` (the README's start command) brings up a control plane that answers.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
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

/// Runs `slipway dev` with `extra` arguments, checks that it answers, stops it; its banner.
async fn dev_answers(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = slipway_testkit::ports::free_port().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["dev", "--nats-port", &port.to_string(), "--dir"])
        .arg(dir.path())
        .args(extra)
        .env_remove("SLIPWAY_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
