//! What the agent's tests share: the agent's side of KV (desired documents in, reports out)
//! and plain HTTP to an instance.
#![allow(dead_code)]

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use futures::StreamExt;
use slipway_core::krane::{
    desired_deployment_key, instances_key, Desired, DesiredDeployment, InstanceStatus,
    InstancesReport,
};
use slipway_testkit::plane::{bin, Plane as Env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The `slipway` binary (cargo builds every workspace binary before tests run).
pub fn slipway_bin() -> PathBuf {
    bin("slipway")
}

/// The desired document of deployment `id` in region `local` (port 8080, no variables).
pub fn doc(
    id: &str,
    image: String,
    replicas: u32,
    desired: Desired,
    version: i64,
) -> DesiredDeployment {
    DesiredDeployment {
        deployment_id: id.into(),
        workspace_id: "ws_1".into(),
        project_id: "proj_1".into(),
        environment_id: "env_1".into(),
        image,
        replicas,
        port: 8080,
        command: vec![],
        env: BTreeMap::new(),
        limits: Default::default(),
        desired,
        version,
    }
}

/// The agent's side of KV, for its tests.
#[allow(async_fn_in_trait)]
pub trait AgentCalls {
    /// Puts the desired state of deployment `id` in region `local`.
    async fn desire(&self, id: &str, image: String, replicas: u32, desired: Desired, version: i64);
    /// Puts `doc` as the desired state of its deployment in region `local`.
    async fn desire_doc(&self, doc: &DesiredDeployment);
    /// Waits, on a KV watch, for a report that satisfies `ok`.
    async fn report_where(
        &self,
        id: &str,
        ok: impl Fn(&InstancesReport) -> bool,
    ) -> InstancesReport;
}

impl AgentCalls for Env {
    async fn desire(&self, id: &str, image: String, replicas: u32, desired: Desired, version: i64) {
        self.desire_doc(&doc(id, image, replicas, desired, version))
            .await;
    }

    async fn desire_doc(&self, doc: &DesiredDeployment) {
        self.desired
            .put(
                desired_deployment_key("local", &doc.deployment_id),
                serde_json::to_vec(doc).unwrap().into(),
            )
            .await
            .unwrap();
    }

    async fn report_where(
        &self,
        id: &str,
        ok: impl Fn(&InstancesReport) -> bool,
    ) -> InstancesReport {
        let mut watch = self
            .instances
            .watch_with_history(instances_key(id, "local"))
            .await
            .unwrap();
        let mut last = None;
        let found = tokio::time::timeout(TIMEOUT, async {
            while let Some(entry) = watch.next().await {
                let report: InstancesReport =
                    serde_json::from_slice(&entry.unwrap().value).unwrap();
                if ok(&report) {
                    return report;
                }
                last = Some(report);
            }
            panic!("watch ended")
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!("no such report for {id} within {TIMEOUT:?}; the last one: {last:?}")
        })
    }
}

pub fn all(report: &InstancesReport, n: usize, status: InstanceStatus) -> bool {
    report.instances.len() == n && report.instances.iter().all(|i| i.status == status)
}

/// GET over plain HTTP: Some(body) if anything answers on `address`.
pub async fn get(address: &str, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}
