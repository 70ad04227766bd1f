//! The records of BEHAVIOUR.md "Records", as read from the store.

use std::collections::BTreeMap;

use slipway_core::{
    domains::Sticky,
    krane::{InstanceStatus, Limits},
    state::{DeploymentStatus, DesiredState, TopologyStatus, UnknownValue},
};
use sqlx::{any::AnyRow, Row};

use crate::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct Workspace {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: String,
    pub workspace_id: String,
    pub slug: String,
    pub name: String,
    pub default_branch: String,
    pub live_deployment_id: Option<String>,
    pub is_rolled_back: bool,
    /// How its generated domains are spelled, for ever.
    pub domain_scheme: slipway_core::domains::Scheme,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    pub id: String,
    pub workspace_id: String,
    pub project_id: String,
    pub slug: String,
    /// region → replicas
    pub regions: BTreeMap<String, u32>,
    pub port: u32,
    /// Per instance (0: none).
    pub limits: Limits,
    pub sentinel_config: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Where a deployment's image is built from (API.md `git_source`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GitSource {
    /// Any URL git understands, local paths and `file://` included.
    pub repository: String,
    pub commit_sha: String,
    /// The build context: a directory of the repository ("" for its root).
    #[serde(default)]
    pub context_path: String,
    /// The Dockerfile, relative to the context ("" for `Dockerfile`).
    #[serde(default)]
    pub dockerfile_path: String,
}

/// What a new deployment is made of; the rest (status, desired state, times) the store sets.
#[derive(Debug, Clone, Default)]
pub struct NewDeployment {
    pub id: String,
    pub environment_id: String,
    pub image: String,
    pub git_branch: String,
    pub git_commit_sha: String,
    pub git_commit_message: String,
    pub git_commit_author_handle: String,
    pub git_commit_author_avatar_url: String,
    pub git_commit_timestamp_ms: Option<i64>,
    pub key_auth_id: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Built from this (its `image` is empty until then).
    pub git_source: Option<GitSource>,
    /// The workflow that deploys it.
    pub workflow_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub id: String,
    pub workspace_id: String,
    pub project_id: String,
    pub environment_id: String,
    pub environment_slug: String,
    pub status: DeploymentStatus,
    pub desired_state: DesiredState,
    pub desired_state_nonce: Option<String>,
    pub image: String,
    pub git_branch: String,
    pub git_commit_sha: String,
    pub git_commit_message: String,
    pub git_commit_author_handle: String,
    pub git_commit_author_avatar_url: String,
    pub git_commit_timestamp_ms: Option<i64>,
    pub key_auth_id: String,
    pub command: Vec<String>,
    /// Plain variables: the environment's when the deployment was created, then its own.
    pub env: BTreeMap<String, String>,
    /// Secret variables, still sealed (see [`crate::Store::desired_for`]).
    pub secret_env: BTreeMap<String, String>,
    /// Built from this: `image` is empty until the build is done.
    pub git_source: Option<GitSource>,
    /// Its environment's when it was created.
    pub limits: Limits,
    pub port: u32,
    pub sentinel_config: String,
    pub openapi_spec: Option<String>,
    pub failure_reason: Option<String>,
    pub workflow_id: Option<String>,
    /// Generated domains (FQDNs).
    pub domains: Vec<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Deployment {
    /// What a region agent should run for this deployment, per its topology row, with its
    /// plain variables only: enough for a document that stops it; one that runs it comes
    /// from [`crate::Store::desired_for`], which adds the secrets.
    pub fn desired_without_secrets(
        &self,
        row: &Topology,
    ) -> slipway_core::krane::DesiredDeployment {
        use slipway_core::krane::Desired;
        slipway_core::krane::DesiredDeployment {
            deployment_id: self.id.clone(),
            workspace_id: self.workspace_id.clone(),
            project_id: self.project_id.clone(),
            environment_id: self.environment_id.clone(),
            image: self.image.clone(),
            replicas: row.replicas,
            port: self.port,
            command: self.command.clone(),
            env: self.env.clone(),
            limits: self.limits,
            desired: match row.desired_status {
                TopologyStatus::Started => Desired::Running,
                TopologyStatus::Stopped => Desired::Stopped,
            },
            version: row.version,
        }
    }
}

/// One (deployment, region) row.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub deployment_id: String,
    pub region: String,
    pub replicas: u32,
    pub desired_status: TopologyStatus,
    pub version: i64,
    /// The KV revision of the instance report the region's instance rows come from.
    pub observed_revision: i64,
}

pub(crate) fn workspace(row: &AnyRow) -> Result<Workspace, StoreError> {
    Ok(Workspace {
        id: row.try_get("id")?,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

pub(crate) fn project(row: &AnyRow) -> Result<Project, StoreError> {
    Ok(Project {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
        default_branch: row.try_get("default_branch")?,
        live_deployment_id: row.try_get("live_deployment_id")?,
        is_rolled_back: row.try_get::<i64, _>("is_rolled_back")? != 0,
        domain_scheme: {
            let stored: i64 = row.try_get("domain_scheme")?;
            slipway_core::domains::Scheme::from_db(stored).ok_or_else(|| {
                StoreError::Corrupt(format!("projects.domain_scheme: unknown scheme {stored}"))
            })?
        },
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

pub(crate) fn environment(
    row: &AnyRow,
    regions: BTreeMap<String, u32>,
) -> Result<Environment, StoreError> {
    Ok(Environment {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        project_id: row.try_get("project_id")?,
        slug: row.try_get("slug")?,
        regions,
        port: u32_of(row, "port")?,
        limits: limits_of(row)?,
        sentinel_config: row.try_get("sentinel_config")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn limits_of(row: &AnyRow) -> Result<Limits, StoreError> {
    Ok(Limits {
        memory_mb: u32_of(row, "memory_mb")?,
        cpu_millis: u32_of(row, "cpu_millis")?,
    })
}

/// Columns of `deployments d JOIN environments e` that [`deployment`] reads.
pub(crate) const DEPLOYMENT_COLUMNS: &str =
    "d.id, d.workspace_id, d.project_id, d.environment_id, \
    e.slug AS environment_slug, d.status, d.desired_state, d.desired_state_nonce, d.image, \
    d.git_branch, d.git_commit_sha, d.git_commit_message, d.git_commit_author_handle, \
    d.git_commit_author_avatar_url, d.git_commit_timestamp_ms, d.key_auth_id, d.command, d.env, \
    d.secret_env, d.git_source, d.memory_mb, d.cpu_millis, d.port, d.sentinel_config, d.openapi_spec, d.failure_reason, d.workflow_id, d.domains, \
    d.created_at_ms, d.updated_at_ms";

pub(crate) fn deployment(row: &AnyRow) -> Result<Deployment, StoreError> {
    let command: String = row.try_get("command")?;
    let env: String = row.try_get("env")?;
    let secret_env: String = row.try_get("secret_env")?;
    let git_source: Option<String> = row.try_get("git_source")?;
    let domains: String = row.try_get("domains")?;
    Ok(Deployment {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        project_id: row.try_get("project_id")?,
        environment_id: row.try_get("environment_id")?,
        environment_slug: row.try_get("environment_slug")?,
        status: parsed(row, "status")?,
        desired_state: parsed(row, "desired_state")?,
        desired_state_nonce: row.try_get("desired_state_nonce")?,
        image: row.try_get("image")?,
        git_branch: row.try_get("git_branch")?,
        git_commit_sha: row.try_get("git_commit_sha")?,
        git_commit_message: row.try_get("git_commit_message")?,
        git_commit_author_handle: row.try_get("git_commit_author_handle")?,
        git_commit_author_avatar_url: row.try_get("git_commit_author_avatar_url")?,
        git_commit_timestamp_ms: row.try_get("git_commit_timestamp_ms")?,
        key_auth_id: row.try_get("key_auth_id")?,
        command: serde_json::from_str(&command)
            .map_err(|e| StoreError::Corrupt(format!("deployments.command: {e}")))?,
        env: serde_json::from_str(&env)
            .map_err(|e| StoreError::Corrupt(format!("deployments.env: {e}")))?,
        secret_env: serde_json::from_str(&secret_env)
            .map_err(|e| StoreError::Corrupt(format!("deployments.secret_env: {e}")))?,
        git_source: git_source
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("deployments.git_source: {e}")))?,
        limits: limits_of(row)?,
        port: u32_of(row, "port")?,
        sentinel_config: row.try_get("sentinel_config")?,
        openapi_spec: row.try_get("openapi_spec")?,
        failure_reason: row.try_get("failure_reason")?,
        workflow_id: row.try_get("workflow_id")?,
        domains: serde_json::from_str(&domains)
            .map_err(|e| StoreError::Corrupt(format!("deployments.domains: {e}")))?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

pub(crate) fn topology(row: &AnyRow) -> Result<Topology, StoreError> {
    Ok(Topology {
        deployment_id: row.try_get("deployment_id")?,
        region: row.try_get("region")?,
        replicas: u32_of(row, "replicas")?,
        desired_status: parsed(row, "desired_status")?,
        version: row.try_get("version")?,
        observed_revision: row.try_get("observed_revision")?,
    })
}

/// A wire-string column, as its enum.
pub(crate) fn parsed<T>(row: &AnyRow, column: &str) -> Result<T, StoreError>
where
    T: std::str::FromStr<Err = UnknownValue>,
{
    let text: String = row.try_get(column)?;
    text.parse()
        .map_err(|e: UnknownValue| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn u32_of(row: &AnyRow, column: &str) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(column)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} = {v} out of range")))
}

/// A frontline route: one FQDN and the deployment that answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub id: String,
    pub fqdn: String,
    pub sticky: Sticky,
    pub project_id: String,
    pub environment_id: String,
    pub deployment_id: String,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// An instance as reported by a region agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub deployment_id: String,
    pub region: String,
    pub address: String,
    pub status: InstanceStatus,
    /// What the agent says about it (why it failed, a crash loop).
    pub message: Option<String>,
    /// Exits since it last ran stably.
    pub restarts: u32,
    pub crash_looping: bool,
}

pub(crate) fn route(row: &AnyRow) -> Result<Route, StoreError> {
    Ok(Route {
        id: row.try_get("id")?,
        fqdn: row.try_get("fqdn")?,
        sticky: parsed(row, "sticky")?,
        project_id: row.try_get("project_id")?,
        environment_id: row.try_get("environment_id")?,
        deployment_id: row.try_get("deployment_id")?,
        version: row.try_get("version")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

pub(crate) fn instance(row: &AnyRow) -> Result<Instance, StoreError> {
    Ok(Instance {
        id: row.try_get("id")?,
        deployment_id: row.try_get("deployment_id")?,
        region: row.try_get("region")?,
        address: row.try_get("address")?,
        status: parsed(row, "status")?,
        message: row.try_get("message")?,
        restarts: u32_of(row, "restarts")?,
        crash_looping: row.try_get::<i64, _>("crash_looping")? != 0,
    })
}
