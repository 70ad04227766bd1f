//! `routing`: frontline routes, which deployment answers each hostname (API.md
//! "slipway-routing").
//!
//! The database is the truth: an assignment validates everything, then moves all its routes
//! in one transaction that holds the project's row lock, so one project's assignments never
//! interleave, whatever the number of routing processes. Edges read the route table in KV
//! `slipway_routes`, written after each commit from the committed state and only forward in
//! route versions; a reconcile at start-up and on a timer repairs what a crash between the
//! commit and the KV write left behind.

pub mod endpoints;
mod observer;
pub mod table;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use slipway_core::config::{CommonConfig, DatabaseConfig};
use slipway_nats::provision::{self, ROUTES};
use slipway_store::Store;

pub const SERVICE_NAME: &str = "slipway-routing";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "routing",
    version,
    about = "Slipway routing: atomic route moves, published to edges"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// Apex of generated domains: its hosts always get sentinel configs.
    #[arg(long, env = "SLIPWAY_APEX_DOMAIN", default_value = slipway_core::domains::DEFAULT_APEX)]
    pub apex_domain: String,
    /// How often the KV route table is reconciled with the database (also once at start-up).
    #[arg(long, env = "SLIPWAY_ROUTING_RECONCILE_EVERY", default_value = "1m", value_parser = slipway_core::config::parse_duration)]
    pub reconcile_every: Duration,
}

impl slipway_core::service::ServiceConfig for Config {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

#[derive(Clone)]
pub struct Routing {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    js: jetstream::Context,
    table: table::RouteTable,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = slipway_nats::connect(&config.common.nats, "routing").await?;
    let js = jetstream::new(client.clone());
    let c = &config.common;
    let buckets = [provision::ROUTES, provision::INSTANCES];
    provision::ensure(
        &js,
        c.js_replicas,
        c.provision,
        &[provision::EVENTS],
        &buckets,
    )
    .await?;
    let store = Store::open_configured(&config.database)
        .await
        .context("opening the database")?;
    let table = table::RouteTable::new(
        js.get_key_value(ROUTES).await?,
        store.clone(),
        config.apex_domain.clone(),
    );
    let routing = Routing {
        inner: Arc::new(Inner { store, js, table }),
    };

    let service = endpoints::serve(&client, routing.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the micro service: {e}"))?;
    let reconciler = routing.clone();
    tokio::spawn(async move {
        loop {
            // A failed reconcile (NATS or the database unavailable, a failover) is retried
            // soon: it may be what repairs a publish lost in a crash.
            let next = match reconciler.inner.table.reconcile().await {
                Ok(stats) => {
                    tracing::info!(?stats, "route table reconciled");
                    config.reconcile_every
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reconcile the route table; will retry");
                    config.reconcile_every.min(Duration::from_secs(2))
                }
            };
            tokio::time::sleep(next).await;
        }
    });
    tokio::spawn(observer::run(routing.clone()));
    service
        .await_reachable(&client)
        .await
        .map_err(|e| anyhow::anyhow!("the micro service is not reachable: {e}"))?;
    slipway_core::service::announce_ready(env!("CARGO_PKG_NAME"));

    slipway_nats::shutdown::signal().await;
    drop(service);
    client.drain().await.ok();
    Ok(())
}
