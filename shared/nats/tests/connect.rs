//! `connect` with each credential kind against a real nats-server that requires it, and a
//! clear error without.

use clap::Parser;
use slipway_core::config::NatsConfig;
use slipway_nats::{connect, ConnectError};
use slipway_testkit::NatsServer;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    nats: NatsConfig,
}

/// The configuration a service would build from these environment-style settings.
fn config(url: &str, settings: &[(&str, &str)]) -> NatsConfig {
    let mut argv = vec!["test".to_string(), "--nats-url".into(), url.into()];
    for (flag, value) in settings {
        argv.push(format!("--{flag}"));
        argv.push(value.to_string());
    }
    Args::parse_from(argv).nats
}

async fn assert_refused(url: &str, settings: &[(&str, &str)]) {
    let err = connect(&config(url, settings), "test").await.unwrap_err();
    assert!(matches!(err, ConnectError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(url),
        "the error names the server: {err}"
    );
}

#[tokio::test]
async fn user_and_password() {
    let server = NatsServer::start_with_args(&["--user", "slipway", "--pass", "s3cret"])
        .await
        .unwrap();
    let client = connect(
        &config(
            &server.url(),
            &[("nats-user", "slipway"), ("nats-password", "s3cret")],
        ),
        "test",
    )
    .await
    .unwrap();
    client.flush().await.unwrap();
    assert_refused(
        &server.url(),
        &[("nats-user", "slipway"), ("nats-password", "wrong")],
    )
    .await;
    assert_refused(&server.url(), &[]).await;
}

#[tokio::test]
async fn token() {
    let server = NatsServer::start_with_args(&["--auth", "t0ken"])
        .await
        .unwrap();
    let client = connect(&config(&server.url(), &[("nats-token", "t0ken")]), "test")
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_refused(&server.url(), &[("nats-token", "nope")]).await;
}

#[tokio::test]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = NatsServer::start_with_config(&format!(
        "jetstream: enabled\nauthorization: {{ users: [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    ))
    .await
    .unwrap();
    let client = connect(&config(&server.url(), &[("nats-nkey", &seed)]), "test")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let other = nkeys::KeyPair::new_user().seed().unwrap();
    assert_refused(&server.url(), &[("nats-nkey", &other)]).await;
}

#[tokio::test]
async fn a_current_server_passes_the_version_gate() {
    let server = NatsServer::start().await.unwrap();
    let client = connect(&config(&server.url(), &[]), "test").await.unwrap();
    let version = client.server_info().version;
    assert!(
        slipway_nats::connect::check_version(&version, "u").is_ok(),
        "{version}"
    );
}

#[tokio::test]
async fn several_urls_fall_through_to_a_live_server() {
    let server = NatsServer::start().await.unwrap();
    let dead = format!(
        "nats://127.0.0.1:{}",
        slipway_testkit::ports::free_port().unwrap()
    );
    let urls = format!("{dead},{}", server.url());
    let client = connect(&config(&urls, &[]), "test").await.unwrap();
    client.flush().await.unwrap();
}

#[tokio::test]
async fn tls_verified_against_a_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(path("server-key.pem"), server_key.serialize_pem()).unwrap();

    let server = NatsServer::start_with_args(&[
        "--tls",
        "--tlscert",
        &path("server.pem"),
        "--tlskey",
        &path("server-key.pem"),
    ])
    .await
    .unwrap();
    let client = connect(
        &config(&server.url(), &[("nats-tls-ca", &path("ca.pem"))]),
        "test",
    )
    .await
    .unwrap();
    client.flush().await.unwrap();

    // Another CA does not verify this server.
    let other_key = KeyPair::generate().unwrap();
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(
        path("other.pem"),
        other.self_signed(&other_key).unwrap().pem(),
    )
    .unwrap();
    assert_refused(&server.url(), &[("nats-tls-ca", &path("other.pem"))]).await;
}

/// A server that speaks just enough of the protocol to complete a handshake, claiming 2.9.25.
async fn old_server() -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let info = format!(
                    "INFO {{\"server_id\":\"old\",\"server_name\":\"old\",\"version\":\"2.9.25\",\"proto\":1,\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576}}\r\n"
                );
                write.write_all(info.as_bytes()).await.ok()?;
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") {
                        write.write_all(b"PONG\r\n").await.ok()?;
                    }
                }
                Some(())
            });
        }
    });
    format!("nats://127.0.0.1:{port}")
}

#[tokio::test]
async fn an_old_server_is_refused_with_both_versions_named() {
    let url = old_server().await;
    let err = connect(&config(&url, &[]), "test").await.unwrap_err();
    assert!(matches!(err, ConnectError::ServerTooOld { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("2.9.25") && message.contains("2.14.0"),
        "{message}"
    );
}
