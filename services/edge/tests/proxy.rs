//! The edge on its own: a nats-server with route entries written by hand, a demo app, the
//! edge binary. A route whose first instance refuses connections still answers (the next
//! instance takes it), a deployment that runs nothing is 503 with `Retry-After`, and HTTP/2
//! without TLS (h2c, prior knowledge) is served like HTTP/1.1. A request none of whose
//! instances accepts a connection waits for the table to move on (the agent's report of the
//! new address, the route's standby) rather than failing: 503 only when it never does. Also:
//! connections to instances pooled, timeouts, HTTP/1.1 upgrades, trusted load balancers'
//! forwarded headers, and a nats-server crash ridden out.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{client::conn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use slipway_core::{domains::Sticky, routes::RouteEntry, state::DesiredState};
use slipway_testkit::{plane::bin, ports::free_port, Plane, ServiceProcess};

fn entry(fqdn: &str, deployment: &str, instances: &[String]) -> RouteEntry {
    RouteEntry {
        route_id: format!("flr_{deployment}"),
        fqdn: fqdn.into(),
        project_id: "proj_1".into(),
        environment_id: "env_1".into(),
        deployment_id: deployment.into(),
        sticky: Sticky::Live,
        instances: instances.to_vec(),
        instances_revision: 1,
        desired_state: Some(DesiredState::Running),
        sentinel_config: None,
        version: 1,
    }
}

async fn put(plane: &Plane, entry: &RouteEntry) {
    plane
        .routes
        .put(
            entry.fqdn.as_str(),
            serde_json::to_vec(entry).unwrap().into(),
        )
        .await
        .unwrap();
}

async fn text(response: Response<hyper::body::Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// A demo app on a free port; its address.
fn demo_app(message: &str) -> (ServiceProcess, String) {
    let port = free_port().unwrap();
    let app = ServiceProcess::spawn(
        "app",
        bin("slipway"),
        &["demo-app", "--message", message],
        &[("PORT", port.to_string())],
    )
    .unwrap();
    app.wait_for_log("demo-app listening", Duration::from_secs(30))
        .unwrap();
    (app, format!("127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_instances_are_skipped_empty_deployments_are_503_and_h2c_is_served() {
    let mut plane = Plane::builder().start().await;
    let (_app, app) = demo_app("direct");
    // Nobody listens on `dead`: a crashed instance the table still lists.
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    put(&plane, &entry("app.example", "dep_app", &[dead, app])).await;
    put(&plane, &entry("down.example", "dep_down", &[])).await;
    plane.start_edge();
    let edge: SocketAddr = plane.edge_address.unwrap();

    // Every request answers, whichever instance the round robin starts with.
    for _ in 0..10 {
        let (status, deployment, body) = plane.through_edge("app.example", "/").await;
        assert_eq!(
            (status, deployment.as_str(), body.as_str()),
            (200, "dep_app", "direct")
        );
    }

    // Nothing runs, and it is not in standby: 503, try again later.
    let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    let (mut http1, connection) = conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("/")
        .header(hyper::header::HOST, "down.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = http1.send_request(request).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(response.headers()["x-slipway-deployment"], "dep_down");

    // h2c with prior knowledge: the authority names the host.
    let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    let (mut http2, connection) =
        conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get("http://APP.example:8080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = http2.send_request(request).await.unwrap();
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-slipway-deployment"], "dep_app");
    assert_eq!(text(response).await, "direct");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_reaches_no_instance_waits_for_the_table_to_move_on() {
    let mut plane = Plane::builder().start().await;
    let (_app, app) = demo_app("restarted");
    // The instance the table lists is gone (crashed, or stopped for standby) and the edge has
    // not heard of it yet.
    let dead = format!("127.0.0.1:{}", free_port().unwrap());
    let mut moving = entry("moving.example", "dep_moving", std::slice::from_ref(&dead));
    put(&plane, &moving).await;
    put(&plane, &entry("gone.example", "dep_gone", &[dead])).await;
    plane.start_edge_with(&[("SLIPWAY_EDGE_WAKE_TIMEOUT", "2s")]);
    let edge = plane.edge_address.unwrap();
    let get = |host: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
        let (mut http1, connection) = conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let request = Request::get("/")
            .header(hyper::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = http1.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        (status, retry_after, text(response).await)
    };

    let mut held = tokio::spawn(get("moving.example"));
    // Held, not answered 502: nothing of it reached an instance.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut held)
            .await
            .is_err(),
        "the request was answered before the table moved on"
    );
    // The agent's report: the instance runs again, on a new port.
    moving.instances = vec![app];
    moving.instances_revision = 2;
    put(&plane, &moving).await;
    let (status, _, body) = held.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "restarted"));

    // A table that never moves on: 503 once the wake timeout passed, to be tried again.
    let (status, retry_after, body) = get("gone.example").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.unwrap(), "5");
    assert!(body.contains("accepts connections"), "{body}");
}

/// An instance written by hand, to see the edge's connections: it counts the connections it
/// accepts and answers `/keep` on a kept-alive connection, `/close` with `Connection: close`,
/// `/big` with a 64 MiB body it writes until the reader goes away (then it says so on `cut`);
/// after `/arm` it closes the connection on the next request instead of answering it (its
/// keep-alive timeout running out just as that request came), counting those in `dropped`;
/// `/hang` is never answered; `/upload` is answered with the length of the body once all of
/// it has come.
struct CountingInstance {
    address: String,
    accepted: tokio::sync::watch::Receiver<usize>,
    cut: tokio::sync::mpsc::UnboundedReceiver<()>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingInstance {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (count, accepted) = tokio::sync::watch::channel(0);
        let (cut_tx, cut) = tokio::sync::mpsc::unbounded_channel();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let dropping = dropped.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.send_modify(|n| *n += 1);
                let (cut_tx, dropping) = (cut_tx.clone(), dropping.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut armed = false;
                    loop {
                        let Some(head) = next_head(&mut stream, &mut buf).await else {
                            return;
                        };
                        let path = head.split(' ').nth(1).unwrap_or_default();
                        if armed {
                            dropping.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        match path {
                            "/hang" => loop {
                                let mut chunk = [0u8; 4096];
                                if let Ok(0) | Err(_) = stream.read(&mut chunk).await {
                                    return;
                                }
                            },
                            "/upload" => {
                                let length: usize = head
                                    .lines()
                                    .find_map(|l| {
                                        let (name, value) = l.split_once(':')?;
                                        name.eq_ignore_ascii_case("content-length")
                                            .then(|| value.trim().parse().ok())?
                                    })
                                    .unwrap_or(0);
                                while buf.len() < length {
                                    let mut chunk = [0u8; 4096];
                                    match stream.read(&mut chunk).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                    }
                                }
                                buf.drain(..length);
                                let body = format!("got {length}");
                                let answer = format!(
                                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                    body.len()
                                );
                                if stream.write_all(answer.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                            "/arm" => {
                                armed = true;
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\narmed";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                            "/keep" => {
                                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nkeep";
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                            "/close" => {
                                let answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nclose";
                                let _ = stream.write_all(answer).await;
                                return;
                            }
                            _ => {
                                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n";
                                let mut written = stream.write_all(head).await;
                                let chunk = vec![b'x'; 64 * 1024];
                                for _ in 0..1024 {
                                    if written.is_err() {
                                        break;
                                    }
                                    written = stream.write_all(&chunk).await;
                                }
                                if written.is_err() {
                                    let _ = cut_tx.send(());
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self {
            address,
            accepted,
            cut,
            dropped,
        }
    }

    fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }
}

/// A plane with one route, `host` to a [`CountingInstance`] of `deployment`, and an edge
/// started with `env`.
async fn edge_before_counting(
    host: &str,
    deployment: &str,
    env: &[(&'static str, &str)],
) -> (Plane, CountingInstance) {
    let mut plane = Plane::builder().start().await;
    let instance = CountingInstance::start().await;
    let address = instance.address.clone();
    put(&plane, &entry(host, deployment, &[address])).await;
    plane.start_edge_with(env);
    (plane, instance)
}

/// One client connection to the edge (so one HTTP worker): `GET path` with `Host: host`.
struct EdgeClient(conn::http1::SendRequest<Empty<Bytes>>);

impl EdgeClient {
    async fn connect(edge: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
        let (http1, connection) = conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Self(http1)
    }

    async fn get(&mut self, host: &str, path: &str) -> Response<hyper::body::Incoming> {
        self.send(hyper::Method::GET, host, path).await
    }

    async fn send(
        &mut self,
        method: hyper::Method,
        host: &str,
        path: &str,
    ) -> Response<hyper::body::Incoming> {
        self.0.ready().await.unwrap();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        self.0.send_request(request).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_to_instances_are_reused_unless_closed_or_cut_short() {
    let (plane, mut instance) = edge_before_counting("pool.example", "dep_pool", &[]).await;
    let mut client = EdgeClient::connect(plane.edge_address.unwrap()).await;

    // One after another on one client connection: one connection to the instance.
    for _ in 0..20 {
        let response = client.get("pool.example", "/keep").await;
        assert_eq!(response.status(), 200);
        assert_eq!(text(response).await, "keep");
    }
    assert_eq!(
        instance.accepted(),
        1,
        "the edge did not reuse its connection"
    );

    // The instance closes its connection after answering: the next request gets a new one.
    let response = client.get("pool.example", "/close").await;
    assert_eq!(text(response).await, "close");
    let response = client.get("pool.example", "/keep").await;
    assert_eq!(
        (response.status().as_u16(), text(response).await.as_str()),
        (200, "keep")
    );
    assert_eq!(instance.accepted(), 2);

    // A client that goes away mid-answer: the edge closes that connection to the instance
    // (half an answer still on it) rather than pooling it, and the next request is served.
    let mut leaving = EdgeClient::connect(plane.edge_address.unwrap()).await;
    let response = leaving.get("pool.example", "/big").await;
    assert_eq!(response.status(), 200);
    drop((response, leaving));
    tokio::time::timeout(Duration::from_secs(10), instance.cut.recv())
        .await
        .expect("the edge kept reading from the instance after its client left");
    let response = client.get("pool.example", "/keep").await;
    assert_eq!(
        (response.status().as_u16(), text(response).await.as_str()),
        (200, "keep")
    );
}

/// An app's keep-alive timeout that runs out just as the edge reuses the connection: the
/// instance closes it on the request instead of answering. A GET (idempotent, no body) is sent
/// again on a new connection and answered; a POST is not repeated: 502.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_on_a_connection_the_instance_closes_is_repeated_only_if_idempotent() {
    let (plane, instance) = edge_before_counting("closing.example", "dep_closing", &[]).await;
    let mut client = EdgeClient::connect(plane.edge_address.unwrap()).await;
    let dropped = || instance.dropped.load(std::sync::atomic::Ordering::SeqCst);

    assert_eq!(
        text(client.get("closing.example", "/arm").await).await,
        "armed"
    );
    // Idle long enough for an instance's keep-alive timeout to be running out (the scenario,
    // not a wait for something to happen).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = client.get("closing.example", "/keep").await;
    assert_eq!(
        (response.status().as_u16(), text(response).await.as_str()),
        (200, "keep")
    );
    assert_eq!((dropped(), instance.accepted()), (1, 2));

    assert_eq!(
        text(client.get("closing.example", "/arm").await).await,
        "armed"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = client
        .send(hyper::Method::POST, "closing.example", "/keep")
        .await;
    assert_eq!(response.status(), 502, "{}", text(response).await);
    assert_eq!(
        dropped(),
        2,
        "the POST did not reach the closing connection"
    );
}

/// An instance that takes a request and never answers: 504 once `SLIPWAY_EDGE_ANSWER_TIMEOUT`
/// has passed since the request went out whole. An upload that takes longer than that, and
/// is answered once it has come, is not cut short: the clock starts when it has all gone out.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_does_not_answer_in_time_is_504_but_a_long_upload_is_not() {
    let (plane, _instance) = edge_before_counting(
        "slow.example",
        "dep_slow",
        &[("SLIPWAY_EDGE_ANSWER_TIMEOUT", "1s")],
    )
    .await;
    let edge = plane.edge_address.unwrap();
    let mut client = EdgeClient::connect(edge).await;

    let response = client.get("slow.example", "/hang").await;
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["x-slipway-deployment"], "dep_slow");
    let body = text(response).await;
    assert!(body.contains("did not answer within 1s"), "{body}");

    // Ten bytes, the second half 1.5 s after the first: longer than the answer timeout.
    let stream = tokio::net::TcpStream::connect(edge).await.unwrap();
    let (mut uploader, connection) = conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let halves = futures::stream::unfold(0, |sent| async move {
        match sent {
            0 => Some((
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                    b"01234",
                ))),
                1,
            )),
            1 => {
                // The client's pace: part of the scenario, not a wait for something.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Some((
                    Ok(hyper::body::Frame::data(Bytes::from_static(b"56789"))),
                    2,
                ))
            }
            _ => None,
        }
    });
    let request = Request::post("/upload")
        .header(hyper::header::HOST, "slow.example")
        .header(hyper::header::CONTENT_LENGTH, "10")
        .body(http_body_util::StreamBody::new(halves))
        .unwrap();
    let response = uploader.send_request(request).await.unwrap();
    assert_eq!(
        (response.status().as_u16(), text(response).await.as_str()),
        (200, "got 10")
    );
}

/// A client that sends half a request head and stops (a slowloris), and one that keeps its
/// connection open after an answer and sends nothing more: the edge closes both once
/// `SLIPWAY_EDGE_HEADER_TIMEOUT` has passed, rather than holding them for ever.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_clients_are_disconnected_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (plane, _instance) = edge_before_counting(
        "idle.example",
        "dep_idle",
        &[("SLIPWAY_EDGE_HEADER_TIMEOUT", "1s")],
    )
    .await;
    let edge = plane.edge_address.unwrap();
    // What the client reads until the edge closes the connection (at most 10 s).
    let until_closed = |mut stream: tokio::net::TcpStream| async move {
        let mut read = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 1024];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the edge kept the connection open");
        String::from_utf8_lossy(&read).into_owned()
    };

    let mut slow = tokio::net::TcpStream::connect(edge).await.unwrap();
    slow.write_all(b"GET /keep HTTP/1.1\r\nHost: idle.exa")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(edge).await.unwrap();
    idle.write_all(b"GET /keep HTTP/1.1\r\nHost: idle.example\r\n\r\n")
        .await
        .unwrap();
    let (slow, idle) = tokio::join!(until_closed(slow), until_closed(idle));
    assert!(!slow.contains("keep"), "{slow}");
    // The idle one was answered first, and kept open until the timeout.
    assert!(
        idle.starts_with("HTTP/1.1 200") && idle.ends_with("keep"),
        "{idle}"
    );
}

/// The next request head that comes on `stream` (what came after it stays in `buf`); None
/// once the stream ends.
async fn next_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An instance that switches a request with `Upgrade: echo` to echoing every byte back, and
/// answers any other request `200 plain` (keeping the connection); the request heads it got.
async fn echo_instance() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (heads_tx, heads) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads_tx = heads_tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(head) = next_head(&mut stream, &mut buf).await else {
                        return;
                    };
                    let head = head.to_ascii_lowercase();
                    let _ = heads_tx.send(head.clone());
                    if !head.contains("\r\nupgrade: echo") {
                        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain";
                        if stream.write_all(plain).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let switched =
                        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n";
                    if stream.write_all(switched).await.is_err() {
                        return;
                    }
                    let (mut from, mut to) = stream.split();
                    let _ = to.write_all(&buf).await;
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    return;
                }
            });
        }
    });
    (address, heads)
}

/// What comes on `stream` up to the end of a response head.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_joins_the_client_and_the_instance_until_either_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plane = Plane::builder().start().await;
    let (instance, mut heads) = echo_instance().await;
    put(&plane, &entry("ws.example", "dep_ws", &[instance])).await;
    plane.start_edge();
    let edge = plane.edge_address.unwrap();

    let mut client = tokio::net::TcpStream::connect(edge).await.unwrap();
    client
        .write_all(b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut client).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: echo\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-slipway-deployment: dep_ws\r\n"),
        "{head}"
    );
    let asked = heads.recv().await.unwrap();
    assert!(asked.contains("\r\nconnection: upgrade"), "{asked}");
    assert!(asked.contains("\r\nx-forwarded-for: 127.0.0.1"), "{asked}");

    // Bytes go both ways, as often as the protocol likes.
    for message in [&b"ping\n"[..], b"a longer second message\n"] {
        client.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message);
    }
    // The client closes its side: the instance's ends too, and so does the client's read.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");

    // An instance that does not switch answers as usual, and the connection stays HTTP.
    let mut client = tokio::net::TcpStream::connect(edge).await.unwrap();
    let refused =
        b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n";
    let plain = b"GET / HTTP/1.1\r\nHost: ws.example\r\n\r\n";
    for request in [&refused[..], plain] {
        client.write_all(request).await.unwrap();
        let head = read_head(&mut client).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let mut body = [0u8; 5];
        client.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"plain");
    }
    let _ = heads.recv().await.unwrap();
    let plain_head = heads.recv().await.unwrap();
    assert!(!plain_head.contains("\r\nupgrade:"), "{plain_head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_trusted_proxies_say_how_the_original_request_came() {
    use tokio::io::AsyncWriteExt;
    let mut plane = Plane::builder().start().await;
    let (instance, mut heads) = echo_instance().await;
    put(&plane, &entry("lb.example", "dep_lb", &[instance])).await;
    plane.start_edge_with(&[("SLIPWAY_EDGE_TRUSTED_PROXIES", "192.0.2.0/24, 127.0.0.1")]);
    let edge = plane.edge_address.unwrap();

    // The same request from the trusted balancer (127.0.0.1) and from anyone else (127.0.0.2).
    let request = b"GET / HTTP/1.1\r\nHost: lb.example\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example.com\r\n\r\n";
    let mut seen = Vec::new();
    for from in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        let mut client = socket.connect(edge).await.unwrap();
        client.write_all(request).await.unwrap();
        assert!(read_head(&mut client).await.starts_with("http/1.1 200"));
        seen.push(heads.recv().await.unwrap());
    }
    // (which request, a header line the instance got)
    for (from, line) in [
        (0, "x-forwarded-proto: https"),
        (0, "x-forwarded-host: shop.example.com"),
        (1, "x-forwarded-proto: http"),
        (1, "x-forwarded-host: lb.example"),
        (1, "x-forwarded-for: 127.0.0.2"),
    ] {
        assert!(
            seen[from].lines().any(|l| l == line),
            "{line}: {}",
            seen[from]
        );
    }

    // A value that names no address is refused before the edge starts.
    let refused = std::process::Command::new(bin("edge"))
        .env("SLIPWAY_EDGE_TRUSTED_PROXIES", "lb.internal")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("\"lb.internal\" is neither an address nor a CIDR range"),
        "{said}"
    );
}

/// The edge rides out a nats-server crash: it serves from the table it holds while the server
/// is down, reports the requests it served meanwhile once the server is back (once: none goes
/// uncounted, none is stored twice), and follows the table again.
#[tokio::test(flavor = "multi_thread")]
async fn the_edge_serves_through_a_nats_crash_and_follows_the_table_after_it() {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    use futures::StreamExt;
    let mut plane = Plane::builder().start().await;
    let (_before, before) = demo_app("before");
    let (_after, after) = demo_app("after");
    put(&plane, &entry("crash.example", "dep_before", &[before])).await;
    plane.start_edge_with(&[("SLIPWAY_EDGE_TRAFFIC_EVERY", "1s")]);
    let served = async |plane: &Plane| {
        let (status, deployment, _) = plane.through_edge("crash.example", "/").await;
        assert_eq!(status, 200);
        deployment
    };
    // The reports the stream stores from now on: (stream sequence, requests, window start,
    // window end).
    let stored = async |plane: &Plane| {
        let stream = plane.js.get_stream("SLIPWAY_TRAFFIC").await.unwrap();
        let config = OrderedConfig {
            filter_subject: "slipway.traffic.dep_before".into(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.unwrap();
        consumer.messages().await.unwrap().map(|message| {
            let message = message.unwrap();
            let sequence = message.info().unwrap().stream_sequence;
            let report: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            let field = |name: &str| report[name].as_i64().unwrap();
            (
                sequence,
                field("requests"),
                field("window_start_ms"),
                field("window_end_ms"),
            )
        })
    };
    let mut reports = stored(&plane).await;
    assert_eq!(served(&plane).await, "dep_before");
    assert_eq!(reports.next().await.unwrap().1, 1);

    let slipway_testkit::Nats::Server(server) = &mut plane.nats else {
        unreachable!("one nats-server")
    };
    server.kill();
    for _ in 0..5 {
        assert_eq!(
            served(&plane).await,
            "dep_before",
            "served while NATS is down"
        );
    }
    // A report falls due while the server is down; the edge then stalls until the server
    // is back and this test reads the stream again.
    let edge = plane.edge.as_ref().unwrap();
    edge.wait_for_log("cannot report traffic", Duration::from_secs(30))
        .unwrap();
    edge.stop();
    plane.restart_nats().await;
    let mut reports = stored(&plane).await;
    let mut stream = plane.js.get_stream("SLIPWAY_TRAFFIC").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    plane.edge.as_ref().unwrap().cont();
    // The next message the stream stores: the edge may have sent the report before the crash
    // (its acknowledgement lost) and again since; stored twice, the second would replace the
    // first (one message per deployment) under the next sequence.
    let (sequence, requests, _, outage_end) = reports.next().await.unwrap();
    assert_eq!(requests, 5, "the requests served while NATS was down");
    assert_eq!(sequence, last + 1, "the report was stored more than once");

    let mut moved = entry("crash.example", "dep_after", &[after]);
    moved.version = 2;
    put(&plane, &moved).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while served(&plane).await != "dep_after" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge never saw the route move"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Requests served from the old table after the restart are reported in their turn;
    // the outage's are not reported again.
    while let Ok(Some((_, requests, start, _))) =
        tokio::time::timeout(Duration::from_secs(3), reports.next()).await
    {
        assert!(
            requests > 0 && start >= outage_end,
            "stored again: {requests} from {start}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_has_a_line_per_request() {
    let mut plane = Plane::builder().start().await;
    let (_app, app) = demo_app("logged");
    put(&plane, &entry("log.example", "dep_log", &[app])).await;
    plane.start_edge_with(&[("SLIPWAY_EDGE_ACCESS_LOG", "true")]);
    let (status, _, _) = plane.through_edge("log.example", "/?x=1").await;
    assert_eq!(status, 200);
    let (status, _, _) = plane.through_edge("nowhere.example", "/").await;
    assert_eq!(status, 404);
    let edge = plane.edge.as_ref().unwrap();
    for line in [
        "slipway::access: request method=GET host=log.example path=/?x=1 status=200 deployment=dep_log client=127.0.0.1 ms=",
        "slipway::access: request method=GET host=nowhere.example path=/ status=404 deployment=- client=127.0.0.1 ms=",
    ] {
        edge.wait_for_log(line, Duration::from_secs(10)).unwrap();
    }
}
