//! `deployment-actor`: one virtual actor per deployment id (BEHAVIOUR.md "Deployment actor").
//!
//! An actor's state is its pending transition in KV `slipway_transitions`; every operation on
//! it is a compare-and-set on that key's revision, so any number of actor processes can serve
//! the same deployment and stay linearizable. The timer is a JetStream message schedule in
//! `SLIPWAY_TIMERS`, which each operation converges on the KV (see [`timers::Timers::sync`]),
//! and held in memory by the process so that it is applied on time ([`timetable`]). A change
//! is applied only if its nonce is still the stored one.

pub mod apply;
pub mod endpoints;
pub mod fired;
pub mod reconcile;
pub mod timers;
pub mod timetable;
pub mod transitions;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use slipway_core::config::{CommonConfig, DatabaseConfig};
use slipway_nats::provision::{self, DESIRED, TRANSITIONS};
use slipway_store::Store;

pub const SERVICE_NAME: &str = "slipway-deployment";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "deployment-actor",
    version,
    about = "Slipway deployment actor: scheduled desired-state changes"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// How many fired changes one process applies at once.
    #[arg(long, env = "SLIPWAY_ACTOR_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// How long an idempotency key is remembered after its change fired or was cleared.
    #[arg(long, env = "SLIPWAY_IDEMPOTENCY_TTL", default_value = "24h", value_parser = slipway_core::config::parse_duration)]
    pub idempotency_ttl: Duration,
    /// How long after a change's due time its JetStream schedule fires, should no process
    /// have applied it from memory by then (the one holding it crashed, or applying failed).
    #[arg(long, env = "SLIPWAY_ACTOR_BACKSTOP_AFTER", default_value = "2s", value_parser = slipway_core::config::parse_duration)]
    pub backstop_after: Duration,
    /// How long after its due time the reconcile settles the claim a timer applied from
    /// memory left stored (removed; its apply completed first if it was not done). Not at
    /// once, so that a restart in the middle of a storm does not look again at what it just
    /// applied.
    #[arg(long, env = "SLIPWAY_ACTOR_TIDY_CLAIMS_AFTER", default_value = "1m", value_parser = slipway_core::config::parse_duration)]
    pub tidy_claims_after: Duration,
    /// How often timers are reconciled with stored transitions (also once at start-up).
    #[arg(long, env = "SLIPWAY_ACTOR_RECONCILE_EVERY", default_value = "5m", value_parser = slipway_core::config::parse_duration)]
    pub reconcile_every: Duration,
    /// How often the leader of `SLIPWAY_TIMERS` is looked at; timers are reconciled as soon
    /// as it changes (a failover on a cluster, a restarted server).
    #[arg(long, env = "SLIPWAY_ACTOR_LEADER_CHECK_EVERY", default_value = "1s", value_parser = slipway_core::config::parse_duration)]
    pub leader_check_every: Duration,
}

impl slipway_core::service::ServiceConfig for Config {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct Actor {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    js: jetstream::Context,
    transitions: transitions::Transitions,
    timers: timers::Timers,
    desired: jetstream::kv::Store,
    tidy_claims_after: Duration,
}

impl Actor {
    pub fn store(&self) -> &Store {
        &self.inner.store
    }
}

/// Connects, provisions, migrates, then serves until the process is stopped.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let client = slipway_nats::connect(&config.common.nats, "deployment-actor").await?;
    let js = jetstream::new(client.clone());
    let c = &config.common;
    let streams = [provision::TIMERS, provision::EVENTS];
    let buckets = [provision::TRANSITIONS, provision::DESIRED];
    provision::ensure(&js, c.js_replicas, c.provision, &streams, &buckets).await?;
    let store = Store::open_configured(&config.database)
        .await
        .context("opening the database")?;

    let actor = Actor {
        inner: Arc::new(Inner {
            store,
            transitions: transitions::Transitions::new(
                js.clone(),
                js.get_key_value(TRANSITIONS).await?,
                config.idempotency_ttl,
            ),
            timers: timers::Timers::new(js.clone(), config.backstop_after).await?,
            desired: js.get_key_value(DESIRED).await?,
            tidy_claims_after: config.tidy_claims_after,
            js: js.clone(),
        }),
    };

    let service = endpoints::serve(&client, actor.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the micro service: {e}"))?;
    let consumer = tokio::spawn(fired::consume(actor.clone(), config.concurrency));
    tokio::spawn(timetable::run(actor.clone(), config.concurrency));
    tokio::spawn(reconcile::run_periodically(
        actor.clone(),
        config.reconcile_every,
    ));
    tokio::spawn(reconcile::on_leader_change(
        actor.clone(),
        config.leader_check_every,
    ));
    service
        .await_reachable(&client)
        .await
        .map_err(|e| anyhow::anyhow!("the micro service is not reachable: {e}"))?;
    slipway_core::service::announce_ready(env!("CARGO_PKG_NAME"));

    tokio::select! {
        _ = slipway_nats::shutdown::signal() => {}
        res = consumer => anyhow::bail!("fired-change consumer stopped: {res:?}"),
    }
    drop(service);
    client.drain().await.ok();
    Ok(())
}
