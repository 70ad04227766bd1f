//! The route table in memory, kept from a watch of KV `slipway_routes` (current values first,
//! then every change; re-watched after a disconnect, keys gone meanwhile dropped). Lookups are
//! by host; every change is announced, so held requests (a waking deployment) see new
//! instances at once.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream::kv;
use futures::StreamExt;
use slipway_core::routes::RouteEntry;
use tokio::sync::watch;

#[derive(Default)]
struct Routes {
    by_host: HashMap<String, Arc<RouteEntry>>,
    /// deployment → (instances, the revision they come from): what a connection to the
    /// deployment may use, whichever of its routes said it last.
    instances: HashMap<String, (Arc<Vec<String>>, i64)>,
}

pub struct Table {
    routes: RwLock<Routes>,
    changed: watch::Sender<u64>,
}

impl Table {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            routes: RwLock::new(Routes::default()),
            changed: watch::Sender::new(0),
        })
    }

    /// The entry of `host` (lower case, no port).
    pub fn get(&self, host: &str) -> Option<Arc<RouteEntry>> {
        self.read().by_host.get(host).cloned()
    }

    /// The running instances of `deployment_id` now.
    pub fn instances_of(&self, deployment_id: &str) -> Arc<Vec<String>> {
        self.read()
            .instances
            .get(deployment_id)
            .map(|(i, _)| i.clone())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.read().by_host.len()
    }

    /// Announces every change of the table.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The first `Some` of `check`, asked now and after every change `changed` announces,
    /// until `deadline` (then None). Subscribe before the event that may change the table.
    pub async fn wait_until<T>(
        &self,
        mut changed: watch::Receiver<u64>,
        deadline: tokio::time::Instant,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        loop {
            if let Some(found) = check() {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        // A panic while holding the lock cannot leave the maps half-written (each change is
        // one insert or remove), so a poisoned lock is still a consistent table.
        self.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.routes.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn put(&self, entry: RouteEntry) {
        {
            let mut routes = self.write();
            let newer = routes
                .instances
                .get(&entry.deployment_id)
                .is_none_or(|(_, revision)| entry.instances_revision >= *revision);
            if newer {
                routes.instances.insert(
                    entry.deployment_id.clone(),
                    (Arc::new(entry.instances.clone()), entry.instances_revision),
                );
            }
            routes
                .by_host
                .insert(entry.fqdn.to_ascii_lowercase(), Arc::new(entry));
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn remove(&self, fqdn: &str) {
        self.write().by_host.remove(&fqdn.to_ascii_lowercase());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Drops every host not in `keep` (gone while the watch was down).
    fn retain(&self, keep: &HashSet<String>) {
        self.write().by_host.retain(|host, _| keep.contains(host));
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Follows `kv` into `table` for ever. `loaded` is told once the current values are in.
pub async fn follow(kv: kv::Store, table: Arc<Table>, loaded: tokio::sync::oneshot::Sender<()>) {
    let mut loaded = Some(loaded);
    let mut backoff = slipway_nats::retry::reattach();
    loop {
        match watch_once(&kv, &table, &mut loaded).await {
            Ok(()) => tracing::warn!("the route table watch ended; watching again"),
            Err(e) => tracing::warn!(error = %e, "the route table watch failed; watching again"),
        }
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
    }
}

async fn watch_once(
    kv: &kv::Store,
    table: &Table,
    loaded: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), async_nats::Error> {
    // Keys present at the start; until the initial values are in, what else is in the table
    // may be gone.
    let mut initial = kv.status().await?.values() > 0;
    let mut seen: HashSet<String> = HashSet::new();
    if !initial {
        table.retain(&seen);
        if let Some(loaded) = loaded.take() {
            let _ = loaded.send(());
        }
    }
    let mut watch = kv.watch_with_history(">").await?;
    while let Some(entry) = watch.next().await {
        let entry = entry?;
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<RouteEntry>(&entry.value) {
                Ok(route) => {
                    seen.insert(route.fqdn.to_ascii_lowercase());
                    table.put(route);
                }
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "unreadable route entry; ignoring it")
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => table.remove(&entry.key),
        }
        if initial && entry.delta == 0 {
            initial = false;
            table.retain(&seen);
            if let Some(loaded) = loaded.take() {
                let _ = loaded.send(());
            }
            tracing::info!(routes = table.len(), "route table loaded");
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use slipway_core::domains::Sticky;

    use super::*;

    /// A route entry as the route table holds it (for the edge's unit tests).
    pub(crate) fn entry(
        fqdn: &str,
        deployment: &str,
        instances: &[&str],
        revision: i64,
    ) -> RouteEntry {
        RouteEntry {
            route_id: format!("flr_{fqdn}"),
            fqdn: fqdn.into(),
            project_id: "proj_1".into(),
            environment_id: "env_1".into(),
            deployment_id: deployment.into(),
            sticky: Sticky::Live,
            instances: instances.iter().map(|s| s.to_string()).collect(),
            instances_revision: revision,
            desired_state: None,
            sentinel_config: None,
            version: 1,
        }
    }

    #[test]
    fn hosts_are_case_insensitive_and_instances_follow_the_newest_report() {
        let table = Table::new();
        table.put(entry("Shop-Acme.example", "dep_1", &["127.0.0.1:1"], 5));
        assert_eq!(
            table.get("shop-acme.example").unwrap().deployment_id,
            "dep_1"
        );
        // Another route of the same deployment, written from an older report.
        table.put(entry("b.example", "dep_1", &["127.0.0.1:0"], 4));
        assert_eq!(
            *table.instances_of("dep_1"),
            vec!["127.0.0.1:1".to_string()]
        );
        table.put(entry("b.example", "dep_1", &["127.0.0.1:2"], 6));
        assert_eq!(
            *table.instances_of("dep_1"),
            vec!["127.0.0.1:2".to_string()]
        );
        table.remove("SHOP-ACME.example");
        assert!(table.get("shop-acme.example").is_none());
        table.retain(&HashSet::new());
        assert_eq!(table.len(), 0);
    }
}
