//! `edge`: the HTTP reverse proxy in front of every deployment (API.md "The edge"). It serves
//! the route table (KV `slipway_routes`, kept in memory from a watch) by `Host`, to the
//! running instances of the route's deployment; wakes a deployment in standby on its first
//! request; reports traffic per deployment on `slipway.traffic.<deployment_id>`; and is the
//! NATS micro service `slipway-edge` (its stats count requests per deployment).
//!
//! Built on hyper 1 and hyper-util (HTTP/1.1 and h2c to clients on one port, HTTP/1.1
//! connections to instances pooled per worker): the HTTP stack the workspace already builds,
//! rather than a proxy framework of its own runtime and a few hundred more crates.

mod proxy;
mod server;
mod table;
mod traffic;
mod upgrade;
mod upstream;
mod wake;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use async_nats::jetstream;
use ipnet::IpNet;
use slipway_core::config::{parse_duration, CommonConfig};
use slipway_nats::{provision::ROUTES, Micro};
use slipway_proto::v1::{EdgeStatsReply, EdgeStatsRequest};

pub use proxy::DEPLOYMENT_HEADER;

use crate::{server::Server, table::Table, traffic::Traffic, wake::Waker};

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
    /// How long an instance may take to start answering a request that reached it (the
    /// response's head; a body may stream for longer): past it, 504.
    #[arg(long, env = "SLIPWAY_EDGE_ANSWER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub answer_timeout: Duration,
    /// How long a client may take to send a request's head, and a kept-alive connection may
    /// wait for its next request: then the connection is closed (slow or idle clients do not
    /// hold connections for ever). `0s` turns it off (behind a load balancer that already
    /// guards against slow clients).
    #[arg(long, env = "SLIPWAY_EDGE_HEADER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// How often request counts are reported on `slipway.traffic.<deployment_id>`.
    #[arg(long, env = "SLIPWAY_EDGE_TRAFFIC_EVERY", default_value = "10s", value_parser = parse_duration)]
    pub traffic_every: Duration,
    /// HTTP worker threads, each with its own listener (default: one per core).
    #[arg(long, env = "SLIPWAY_EDGE_WORKERS")]
    pub workers: Option<usize>,
    /// Load balancers in front of the edge (addresses or CIDR ranges, comma-separated) whose
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` are passed on: a TLS-terminating one says
    /// `https`. From any other client they are replaced (a client could claim anything).
    #[arg(long, env = "SLIPWAY_EDGE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    pub trusted_proxies: Vec<IpNet>,
    /// Logs a line per request (target `slipway::access`): method, host, path, status,
    /// deployment, client and the time to the answer's head.
    #[arg(long, env = "SLIPWAY_EDGE_ACCESS_LOG", default_value_t = false, action = clap::ArgAction::Set)]
    pub access_log: bool,
}

/// An address range (`10.0.0.0/8`), or one address (`10.0.0.1`).
fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither an address nor a CIDR range"))
}

impl slipway_core::service::ServiceConfig for Config {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

/// What every HTTP worker shares.
pub(crate) struct Shared {
    table: Arc<Table>,
    traffic: Arc<Traffic>,
    waker: Arc<Waker>,
    wake_timeout: Duration,
    answer_timeout: Duration,
    header_timeout: Duration,
    trusted_proxies: Vec<IpNet>,
    access_log: bool,
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
    let shared = Arc::new(Shared {
        table: table.clone(),
        traffic: traffic.clone(),
        waker: Waker::new(nats.clone(), config.wake_timeout),
        wake_timeout: config.wake_timeout,
        answer_timeout: config.answer_timeout,
        header_timeout: config.header_timeout,
        trusted_proxies: config.trusted_proxies,
        access_log: config.access_log,
    });
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let server = Server::start(shared, config.listen, workers)?;
    let listening = server.address;
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
    let (stats_table, stats_traffic) = (table.clone(), traffic.clone());
    service
        .endpoint(
            "stats",
            &slipway_core::subjects::edge::STATS.of(&id),
            move |_: slipway_nats::Call<EdgeStatsRequest>| {
                let reply = EdgeStatsReply {
                    routes: u32::try_from(stats_table.len()).unwrap_or(u32::MAX),
                    requests_per_deployment: stats_traffic.totals().into_iter().collect(),
                };
                async move { Ok(reply) }
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

    slipway_nats::shutdown::signal().await;
    // Stops accepting; requests in flight finish; then the last traffic report.
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .context("stopping the HTTP workers")?;
    traffic.report(&js).await;
    drop(service);
    nats.drain().await.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_addresses_or_ranges() {
        assert_eq!(
            parse_network(" 10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(parse_network("::1"), Ok("::1/128".parse().unwrap()));
        assert_eq!(
            parse_network("192.0.2.7"),
            Ok("192.0.2.7/32".parse().unwrap())
        );
        assert!(parse_network("lb.internal").is_err());
    }
}
