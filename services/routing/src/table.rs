//! The route table edges read: KV `slipway_routes`, key = FQDN, value = JSON
//! `{route_id, fqdn, project_id, environment_id, deployment_id, sticky, instances,
//! instances_revision, sentinel_config, version}`. Written from the database's committed
//! state, only forward (compare-and-set) in route versions and, within one version, in the
//! revision of the instance reports the entry's instances come from, so concurrent or late
//! writers converge on the DB.

use std::collections::{BTreeSet, HashMap};

use async_nats::jetstream::kv;
use futures::{StreamExt, TryStreamExt};
use slipway_core::{domains::is_local_host, krane::InstanceStatus, state::DesiredState};
use slipway_store::{Route, Store, StoreError};

pub use slipway_core::routes::{RouteEntry, SentinelAuth, SentinelConfig, SentinelValidation};

/// The parts of a route's entry that come from its target deployment.
struct Target {
    instances: Vec<String>,
    instances_revision: i64,
    desired_state: Option<DesiredState>,
    key_auth_id: Option<String>,
    openapi_spec: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("KV slipway_routes: {0}")]
    Kv(async_nats::Error),
}

fn kv_err(e: impl Into<async_nats::Error>) -> TableError {
    TableError::Kv(e.into())
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ReconcileStats {
    pub routes: usize,
    pub written: usize,
    pub removed: usize,
}

#[derive(Clone)]
pub struct RouteTable {
    kv: kv::Store,
    store: Store,
    apex: String,
}

impl RouteTable {
    pub fn new(kv: kv::Store, store: Store, apex: String) -> Self {
        Self { kv, store, apex }
    }

    /// What an entry needs from its target deployment, loaded once per deployment.
    async fn target(&self, deployment_id: &str) -> Result<Target, TableError> {
        let deployment = self.store.find_deployment(deployment_id).await?;
        // The revision first, then the rows: the rows are at least as new as it says.
        let instances_revision = self
            .store
            .topology(deployment_id)
            .await?
            .iter()
            .map(|t| t.observed_revision)
            .max()
            .unwrap_or(0);
        let instances = self
            .store
            .instances(deployment_id)
            .await?
            .into_iter()
            .filter(|i| i.status == InstanceStatus::Running)
            .map(|i| i.address)
            .collect();
        Ok(Target {
            key_auth_id: deployment
                .as_ref()
                .map(|d| d.key_auth_id.clone())
                .filter(|k| !k.is_empty()),
            desired_state: deployment.as_ref().map(|d| d.desired_state),
            openapi_spec: deployment.and_then(|d| d.openapi_spec),
            instances,
            instances_revision,
        })
    }

    /// The entry the DB says `route` should have now.
    fn entry(&self, route: &Route, target: &Target) -> RouteEntry {
        let sentinel_config = (!is_local_host(&route.fqdn, &self.apex)).then(|| SentinelConfig {
            deployment_id: route.deployment_id.clone(),
            enabled: true,
            instances: target.instances.clone(),
            auth: target
                .key_auth_id
                .clone()
                .map(|key_auth_id| SentinelAuth { key_auth_id }),
            validation: target
                .openapi_spec
                .clone()
                .map(|openapi_spec| SentinelValidation { openapi_spec }),
        });
        RouteEntry {
            route_id: route.id.clone(),
            fqdn: route.fqdn.clone(),
            project_id: route.project_id.clone(),
            environment_id: route.environment_id.clone(),
            deployment_id: route.deployment_id.clone(),
            sticky: route.sticky,
            instances: target.instances.clone(),
            instances_revision: target.instances_revision,
            desired_state: target.desired_state,
            sentinel_config,
            version: route.version,
        }
    }

    /// Brings the entries of `routes` up to date, several writes at a time (each its own
    /// compare-and-set). Returns how many were written.
    pub async fn publish(&self, routes: &[Route]) -> Result<usize, TableError> {
        let mut targets: HashMap<&str, Target> = HashMap::new();
        for route in routes {
            if !targets.contains_key(route.deployment_id.as_str()) {
                let target = self.target(&route.deployment_id).await?;
                targets.insert(&route.deployment_id, target);
            }
        }
        let entries: Vec<RouteEntry> = routes
            .iter()
            .map(|r| self.entry(r, &targets[r.deployment_id.as_str()]))
            .collect();
        let writes = entries.into_iter().map(|entry| {
            let table = self.clone();
            async move { table.write(&entry).await }
        });
        let written: Vec<bool> = futures::stream::iter(writes)
            .buffer_unordered(32)
            .try_collect()
            .await?;
        Ok(written.into_iter().filter(|w| *w).count())
    }

    /// Writes `entry` unless the stored one is newer, or the same.
    async fn write(&self, entry: &RouteEntry) -> Result<bool, TableError> {
        slipway_nats::kv::put_unless(&self.kv, &entry.fqdn, entry, |stored: &RouteEntry| {
            let newer = (stored.version, stored.instances_revision)
                > (entry.version, entry.instances_revision);
            newer || stored == entry
        })
        .await
        .map_err(kv_err)
    }

    /// Brings the entries of every route to `deployment_id` up to date (its instances
    /// changed). Returns how many were written.
    pub async fn publish_deployment(&self, deployment_id: &str) -> Result<usize, TableError> {
        let routes = self.store.routes_to(deployment_id).await?;
        self.publish(&routes).await
    }

    /// Removes the entries of `fqdns` (their routes are gone from the database).
    pub async fn remove(&self, fqdns: &[String]) -> Result<(), TableError> {
        for fqdn in fqdns {
            slipway_nats::kv::remove(&self.kv, fqdn)
                .await
                .map_err(kv_err)?;
        }
        Ok(())
    }

    /// Makes the whole KV table equal to the database: every route written where it
    /// differs, every key without a route removed.
    pub async fn reconcile(&self) -> Result<ReconcileStats, TableError> {
        let mut stats = ReconcileStats::default();
        let mut fqdns = BTreeSet::new();
        let mut after = String::new();
        loop {
            let page = self.store.routes_page(&after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.fqdn.clone();
            stats.routes += page.len();
            stats.written += self.publish(&page).await?;
            fqdns.extend(page.into_iter().map(|r| r.fqdn));
        }
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(kv_err)?
            .try_collect()
            .await
            .map_err(kv_err)?;
        for key in keys.into_iter().filter(|k| !fqdns.contains(k)) {
            if self.remove_stale(&key).await? {
                stats.removed += 1;
            }
        }
        Ok(stats)
    }

    /// Removes the entry of `fqdn`, which had no route when the database was read, unless a
    /// commit created its route since: the entry's revision is read before the database is
    /// asked again, and the removal holds only at that revision, so a commit that wrote the
    /// entry in between keeps it. (Removing on the first read lost the entries of routes
    /// created while a reconcile ran: seen on a cluster, where failovers start reconciles
    /// during deploys.)
    async fn remove_stale(&self, fqdn: &str) -> Result<bool, TableError> {
        let Some(entry) = self.kv.entry(fqdn).await.map_err(kv_err)? else {
            return Ok(false);
        };
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return Ok(false);
        }
        if !self
            .store
            .routes_by_fqdn(&[fqdn.to_string()])
            .await?
            .is_empty()
        {
            return Ok(false);
        }
        slipway_nats::kv::remove_at(&self.kv, fqdn, entry.revision)
            .await
            .map_err(kv_err)
    }
}
