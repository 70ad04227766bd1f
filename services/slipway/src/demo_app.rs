//! `slipway demo-app`: a small HTTP app to deploy in the demo and the tests. Listens on
//! 127.0.0.1:`$PORT` (default 8080) and serves `/` (the message), `/healthz`, `/slow` (after a
//! second), `/headers` (what reached it), `/env` (its variables named `DEMO_*`, one
//! `NAME=value` per line: only those, so a demo never shows anything else) and
//! `/openapi.yaml`. Switches make it misbehave the
//! ways a deploy must cope with.

use std::time::Duration;

use anyhow::{Context, Result};
use axum::{http::StatusCode, routing::get, Router};

#[derive(Debug, clap::Args)]
pub struct DemoAppArgs {
    /// What `/` answers.
    #[arg(long, default_value = "hello from slipway")]
    message: String,
    /// The port on 127.0.0.1 (region agents set `PORT`).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Answer `/healthz` with 503, as an app that never becomes healthy.
    #[arg(long)]
    unhealthy: bool,
    /// Exit with status 1 after this long (`0s`: at once), as a crashing app.
    #[arg(long, value_parser = slipway_core::config::parse_duration)]
    exit_after: Option<Duration>,
    /// Pad `/openapi.yaml` with a comment to at least this many bytes, as an app with a
    /// very large spec.
    #[arg(long, default_value_t = 0)]
    openapi_bytes: usize,
}

pub async fn run(args: DemoAppArgs) -> Result<()> {
    if let Some(after) = args.exit_after {
        if after.is_zero() {
            // At once means before it listens: exiting from a task raced the first health
            // check, which could find it serving (a deploy of it then went ready).
            eprintln!("demo-app: exiting as asked (--exit-after 0s)");
            std::process::exit(1);
        }
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("demo-app: exiting as asked (--exit-after)");
            std::process::exit(1);
        });
    }
    let message = args.message.clone();
    let health = if args.unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut openapi = openapi(&args.message);
    if openapi.len() < args.openapi_bytes {
        openapi.push('#');
        let pad = args.openapi_bytes - openapi.len();
        openapi.push_str(&"x".repeat(pad));
        openapi.push('\n');
    }
    let app = Router::new()
        .route("/", get(move || async move { message }))
        .route(
            "/healthz",
            get(move || async move {
                (
                    health,
                    if health.is_success() {
                        "ok"
                    } else {
                        "unhealthy"
                    },
                )
            }),
        )
        .route(
            "/slow",
            get(|| async {
                // A request that takes a while: in flight when the app is told to stop.
                tokio::time::sleep(Duration::from_secs(1)).await;
                "slow"
            }),
        )
        .route(
            "/headers",
            get(|headers: axum::http::HeaderMap| async move {
                // What reached the app, one `name: value` per line (tests look at proxies).
                headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("?")))
                    .collect::<String>()
            }),
        )
        .route(
            "/env",
            get(|| async {
                let mut vars: Vec<String> = std::env::vars()
                    .filter(|(k, _)| k.starts_with("DEMO_"))
                    .map(|(k, v)| format!("{k}={v}\n"))
                    .collect();
                vars.sort();
                vars.concat()
            }),
        )
        .route(
            "/openapi.yaml",
            get(move || async move { ([("content-type", "application/yaml")], openapi) }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    eprintln!("demo-app listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(slipway_nats::shutdown::signal())
        .await?;
    Ok(())
}

fn openapi(message: &str) -> String {
    let message = message.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"openapi: 3.0.3
info:
  title: slipway demo app
  version: "1"
  description: "{message}"
paths:
  /:
    get:
      summary: The app's message
      responses:
        "200":
          description: The message, as text
  /healthz:
    get:
      summary: Health check
      responses:
        "200":
          description: Healthy
        "503":
          description: Unhealthy
"#
    )
}
