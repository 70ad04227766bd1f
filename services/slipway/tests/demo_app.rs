//! `slipway demo-app` over real HTTP: its three paths, and the two ways it can misbehave.

use std::time::Duration;

use slipway_testkit::{ports::free_port, ServiceProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SLIPWAY: &str = env!("CARGO_BIN_EXE_slipway");

/// A plain HTTP/1.1 GET: (status, body).
async fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn start(args: &[&str]) -> (ServiceProcess, u16) {
    let port = free_port().unwrap();
    let app =
        ServiceProcess::spawn("demo-app", SLIPWAY, args, &[("PORT", port.to_string())]).unwrap();
    app.wait_for_log("demo-app listening on", Duration::from_secs(10))
        .unwrap();
    (app, port)
}

#[tokio::test]
async fn serves_its_message_health_and_openapi_spec() {
    let (_app, port) = start(&["demo-app", "--message", "v2 is here"]);
    assert_eq!(get(port, "/").await, (200, "v2 is here".to_string()));
    assert_eq!(get(port, "/healthz").await.0, 200);
    let (status, spec) = get(port, "/openapi.yaml").await;
    assert_eq!(status, 200);
    assert!(
        spec.starts_with("openapi: 3.0.3") && spec.contains("v2 is here"),
        "{spec}"
    );
    assert_eq!(get(port, "/nope").await.0, 404);
}

#[tokio::test]
async fn can_be_unhealthy_or_exit() {
    let (_app, port) = start(&["demo-app", "--unhealthy"]);
    assert_eq!(get(port, "/healthz").await.0, 503);

    let (mut app, _) = start(&["demo-app", "--exit-after", "200ms"]);
    app.wait_for_log("exiting as asked", Duration::from_secs(10))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "demo-app did not exit"
        );
        tokio::task::yield_now().await;
    }
}
