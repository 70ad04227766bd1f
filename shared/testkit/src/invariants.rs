//! The invariant every fault test checks (the issue tracker's "fenced leases and a commit
//! point"): per project, the live pointer, the rolled-back flag, the routes in SQL and in
//! `slipway_routes`, and what actually runs agree.
//!
//! - every route in SQL has its `slipway_routes` entry with the same target, and no entry of
//!   the project lacks its route;
//! - the live routes point at the live pointer (a rollback moves them with the pointer);
//! - every deployment behind a live route or an environment route (but `preview`'s: an idle
//!   preview is spun down behind it, and woken by its next request), and the live deployment, is ready,
//!   desired `running`, and its agents report at least one running instance per region;
//!   its running instances in SQL and in each of its route entries are exactly those its
//!   agents report running now, and each of them accepts connections;
//! - every ready deployment outside `preview` that serves no traffic is in standby (or
//!   archived) or has exactly one pending standby (its transition and one schedule message);
//! - no journal holds a step twice (a step re-decided under a later lease replaces its
//!   earlier entry, it does not repeat it).
//!
//! [`Invariants::settled`] retries for a while, since agents report and timers fire on their
//! own time; what still fails then is a violation.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use serde_json::Value;
use slipway_core::{
    domains::Sticky,
    krane::InstanceStatus,
    state::{DeploymentStatus, DesiredState, PREVIEW_ENVIRONMENT},
};
use slipway_store::Store;
use slipway_workflow::WorkflowRecord;

use crate::stream_messages;

pub struct Invariants {
    store: Store,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Invariants {
    pub fn new(store: Store, client: async_nats::Client) -> Self {
        let js = jetstream::new(client.clone());
        Self { store, client, js }
    }

    /// Checks `projects` until they hold, or returns the violations still seen after
    /// `within`.
    pub async fn settled(&self, projects: &[String], within: Duration) -> Result<(), Vec<String>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let violations = self.check(projects).await;
            if violations.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(violations);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Panics with every violation unless `projects` hold within 15 s.
    pub async fn assert(&self, projects: &[String]) {
        if let Err(violations) = self.settled(projects, Duration::from_secs(15)).await {
            panic!("invariants violated:\n  {}", violations.join("\n  "));
        }
    }

    /// One look: the violations seen now.
    pub async fn check(&self, projects: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let table = match self.route_table().await {
            Ok(t) => t,
            Err(e) => return vec![format!("cannot read slipway_routes: {e}")],
        };
        for project in projects {
            if let Err(e) = self.project(project, &table, &mut out).await {
                out.push(format!("{project}: cannot check: {e}"));
            }
        }
        if let Err(e) = self.journals(projects, &mut out).await {
            out.push(format!("cannot read the journals: {e}"));
        }
        out
    }

    async fn route_table(&self) -> Result<BTreeMap<String, Value>, async_nats::Error> {
        let kv = self.js.get_key_value("slipway_routes").await?;
        let keys: Vec<String> = kv.keys().await?.try_collect().await?;
        let mut table = BTreeMap::new();
        for key in keys {
            if let Some(v) = kv.get(key.as_str()).await? {
                table.insert(key, serde_json::from_slice(&v)?);
            }
        }
        Ok(table)
    }

    async fn project(
        &self,
        project_id: &str,
        table: &BTreeMap<String, Value>,
        out: &mut Vec<String>,
    ) -> Result<(), async_nats::Error> {
        let project = self.store.project(project_id).await?;
        let live = project.live_deployment_id.clone();
        let routes = self.store.routes(project_id, None).await?;
        let mut serving: Vec<String> = live.iter().cloned().collect();

        for r in &routes {
            match table.get(&r.fqdn) {
                None => out.push(format!(
                    "{project_id}: route {} is not in slipway_routes",
                    r.fqdn
                )),
                Some(entry) if entry["deployment_id"] != r.deployment_id.as_str() => {
                    out.push(format!(
                        "{project_id}: {} goes to {} in SQL but to {} in slipway_routes",
                        r.fqdn, r.deployment_id, entry["deployment_id"]
                    ))
                }
                Some(_) => {}
            }
            if r.sticky == Sticky::Live && live.as_deref() != Some(r.deployment_id.as_str()) {
                out.push(format!(
                    "{project_id}: live route {} goes to {} but the live pointer is {:?} (rolled back: {})",
                    r.fqdn, r.deployment_id, live, project.is_rolled_back
                ));
            }
            // As the store's `serves_traffic`: a preview behind its environment route may be
            // in standby (spun down while idle; an edge wakes it).
            let keeps_running = match r.sticky {
                Sticky::Live => true,
                Sticky::Environment => {
                    self.store.environment(&r.environment_id).await?.slug != PREVIEW_ENVIRONMENT
                }
                _ => false,
            };
            if keeps_running && !serving.contains(&r.deployment_id) {
                serving.push(r.deployment_id.clone());
            }
        }
        for (fqdn, entry) in table {
            if entry["project_id"] == project_id && !routes.iter().any(|r| &r.fqdn == fqdn) {
                out.push(format!(
                    "{project_id}: slipway_routes has {fqdn}, SQL has no such route"
                ));
            }
        }
        for d in &serving {
            self.runs(project_id, d, table, out).await?;
        }

        // Every deployment gets an end: outside `preview` (spun down when idle), one that
        // serves nothing is on its way to standby.
        for d in self
            .store
            .list_deployments(project_id, None, None, 1000)
            .await?
        {
            if serving.contains(&d.id)
                || d.status != DeploymentStatus::Ready
                || d.desired_state != DesiredState::Running
                || self.store.environment(&d.environment_id).await?.slug == PREVIEW_ENVIRONMENT
            {
                continue;
            }
            let state = self.get_state(&d.id).await?;
            let schedules = stream_messages(
                &self.js,
                "SLIPWAY_TIMERS",
                &slipway_core::subjects::timers::deployment_schedule(&d.id),
            )
            .await;
            if state["pending"]["state"] != "standby" || schedules.len() != 1 {
                out.push(format!(
                    "{project_id}: {} serves nothing and is running, but its pending change is {} with {} schedule(s)",
                    d.id, state["pending"], schedules.len()
                ));
            }
        }
        Ok(())
    }

    /// A deployment that serves traffic is ready, desired running, runs in every region, and
    /// what runs is what the database and the route entries say: the addresses its agents
    /// report running now, each of which accepts connections.
    async fn runs(
        &self,
        project_id: &str,
        id: &str,
        table: &BTreeMap<String, Value>,
        out: &mut Vec<String>,
    ) -> Result<(), async_nats::Error> {
        let d = self.store.deployment(id).await?;
        if d.status != DeploymentStatus::Ready || d.desired_state != DesiredState::Running {
            out.push(format!(
                "{project_id}: {id} serves traffic but is {} / desired {}",
                d.status, d.desired_state
            ));
        }
        let reports = self.js.get_key_value("slipway_instances").await?;
        let mut reported: Vec<String> = Vec::new();
        for t in self.store.topology(id).await? {
            let running: Vec<String> = match reports.get(format!("{id}.{}", t.region)).await? {
                Some(v) => serde_json::from_slice::<Value>(&v)?["instances"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|i| i["status"] == "running")
                            .filter_map(|i| i["address"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
                None => vec![],
            };
            if running.is_empty() {
                out.push(format!(
                    "{project_id}: {id} serves traffic but runs no instance in {}",
                    t.region
                ));
            }
            reported.extend(running);
        }
        reported.sort();
        let mut recorded: Vec<String> = self
            .store
            .instances(id)
            .await?
            .into_iter()
            .filter(|i| i.status == InstanceStatus::Running)
            .map(|i| i.address)
            .collect();
        recorded.sort();
        if recorded != reported {
            out.push(format!(
                "{project_id}: {id} runs {reported:?} as its agents report, but SQL says {recorded:?}"
            ));
        }
        for (fqdn, entry) in table.iter().filter(|(_, e)| e["deployment_id"] == id) {
            let mut routed: Vec<String> = entry["instances"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            routed.sort();
            if routed != reported {
                out.push(format!(
                    "{project_id}: {fqdn} sends traffic to {routed:?}, but {id} runs {reported:?}"
                ));
            }
        }
        for address in &reported {
            let connect = tokio::net::TcpStream::connect(address.as_str());
            if !matches!(
                tokio::time::timeout(Duration::from_secs(1), connect).await,
                Ok(Ok(_))
            ) {
                out.push(format!(
                    "{project_id}: {id}'s instance at {address} is reported running but does not answer"
                ));
            }
        }
        Ok(())
    }

    async fn get_state(&self, deployment_id: &str) -> Result<Value, async_nats::Error> {
        let reply = self
            .client
            .request(
                slipway_core::subjects::deployment::GET_STATE.of(deployment_id),
                "{}".into(),
            )
            .await?;
        Ok(serde_json::from_slice(&reply.payload)?)
    }

    async fn journals(
        &self,
        projects: &[String],
        out: &mut Vec<String>,
    ) -> Result<(), async_nats::Error> {
        let kv = self.js.get_key_value("slipway_workflows").await?;
        let keys: Vec<String> = kv.keys().await?.try_collect().await?;
        for key in keys {
            let Some(entry) = kv.entry(key.as_str()).await? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let record: WorkflowRecord = rmp_serde::from_slice(&entry.value)?;
            let ours = record
                .scope
                .as_ref()
                .is_some_and(|s| projects.contains(&s.project_id));
            if !ours {
                continue;
            }
            let mut seen: Vec<&str> = Vec::new();
            for step in &record.steps {
                if seen.contains(&step.name.as_str()) && !step.name.starts_with("page_") {
                    out.push(format!(
                        "workflow {}: step {} journaled twice",
                        record.id, step.name
                    ));
                }
                seen.push(&step.name);
            }
        }
        Ok(())
    }
}
