//! `edge`: the HTTP reverse proxy in front of every deployment (API.md "The edge"). It serves
//! the route table (KV `slipway_routes`, kept in memory from a watch) by `Host`, to the
//! running instances of the route's deployment; wakes a deployment in standby on its first
//! request; reports traffic per deployment on `slipway.traffic.<deployment_id>`; and is the
//! NATS micro service `slipway-edge` (its stats count requests per deployment).
//!
//! Built on hyper 1 and hyper-util (HTTP/1.1 and h2c to clients on one port, a pooled HTTP/1.1
//! client to instances): the HTTP stack the workspace already builds, rather than a proxy
//! framework of its own runtime and a few hundred more crates.

mod connector;
mod proxy;
mod table;
mod traffic;
mod wake;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use slipway_core::config::{parse_duration, CommonConfig};
use slipway_nats::{provision::ROUTES, Micro};
use slipway_proto::v1::{EdgeStatsReply, EdgeStatsRequest};

pub use proxy::DEPLOYMENT_HEADER;

use crate::{connector::InstanceConnector, table::Table, traffic::Traffic, wake::Waker};

pub const SERVICE_NAME: &str = "slipway-edge";
/// The micro-service metadata key that holds the address an edge listens on.
pub const LISTEN_METADATA: &str = "listen";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "edge",
    version,
    about = "Slipway edge: serves the route table over HTTP, wakes standby deployments, reports traffic"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    /// Where it listens for HTTP/1.1 and h2c.
    #[arg(long, env = "SLIPWAY_EDGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// How long a request for a deployment in standby is held while it wakes.
    #[arg(long, env = "SLIPWAY_EDGE_WAKE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub wake_timeout: Duration,
    /// How often request counts are reported on `slipway.traffic.<deployment_id>`.
    #[arg(long, env = "SLIPWAY_EDGE_TRAFFIC_EVERY", default_value = "10s", value_parser = parse_duration)]
    pub traffic_every: Duration,
}

impl slipway_core::service::ServiceConfig for Config {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

/// What a request needs.
pub(crate) struct Edge {
    table: Arc<Table>,
    traffic: Arc<Traffic>,
    waker: Arc<Waker>,
    client: Client<InstanceConnector, hyper::body::Incoming>,
    wake_timeout: Duration,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let nats = slipway_nats::connect(&config.common.nats, "edge").await?;
    let js = jetstream::new(nats.clone());
    // The control plane provisions; an edge's NATS user may not.
    let routes = slipway_nats::kv::wait_for_bucket(&js, ROUTES).await;
    let table = Table::new();
    let (loaded, load) = tokio::sync::oneshot::channel();
    tokio::spawn(table::follow(routes, table.clone(), loaded));
    load.await
        .context("the route table watch stopped before loading")?;

    let edge_id = slipway_core::ids::new("edge");
    let traffic = Arc::new(Traffic::new(edge_id.clone(), config.traffic_every));
    tokio::spawn({
        let traffic = traffic.clone();
        let js = js.clone();
        async move { traffic.report_every(js).await }
    });
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(InstanceConnector::new(table.clone()));
    let edge = Arc::new(Edge {
        table: table.clone(),
        traffic: traffic.clone(),
        waker: Waker::new(nats.clone(), config.wake_timeout),
        client,
        wake_timeout: config.wake_timeout,
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let listening = listener.local_addr()?;
    let stats_traffic = traffic.clone();
    let service = Micro::start_with(
        &nats,
        SERVICE_NAME,
        env!("CARGO_PKG_VERSION"),
        "Edge: serves the route table over HTTP; requests per deployment in its stats",
        // Where it listens, for tools that print URLs through it (`slipway deploy`).
        [(LISTEN_METADATA.to_string(), listening.to_string())].into(),
        move |_, _| serde_json::json!({ "requests_per_deployment": stats_traffic.totals() }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start the micro service: {e}"))?;
    let id = service.id().await;
    let stats_edge = edge.clone();
    service
        .endpoint(
            "stats",
            &slipway_core::subjects::edge::STATS.of(&id),
            move |_: slipway_nats::Call<EdgeStatsRequest>| {
                let edge = stats_edge.clone();
                async move {
                    Ok(EdgeStatsReply {
                        routes: u32::try_from(edge.table.len()).unwrap_or(u32::MAX),
                        requests_per_deployment: edge.traffic.totals().into_iter().collect(),
                    })
                }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve stats: {e}"))?;

    service
        .await_reachable(&nats)
        .await
        .map_err(|e| anyhow::anyhow!("the micro service is not reachable: {e}"))?;
    tracing::info!(%listening, %edge_id, routes = table.len(), "edge listening");
    slipway_core::service::announce_ready(env!("CARGO_PKG_NAME"));

    let graceful = GracefulShutdown::new();
    let shutdown = slipway_nats::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a connection");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let edge = edge.clone();
                let service = hyper::service::service_fn(move |req| proxy::handle(edge.clone(), peer, req));
                let conn = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    // Requests in flight finish; new connections are refused.
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after 10 s; stopping anyway");
    }
    traffic.report(&js).await;
    drop(service);
    nats.drain().await.ok();
    Ok(())
}
