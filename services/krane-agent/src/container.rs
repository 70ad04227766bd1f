//! Instances as OCI containers, through the Docker Engine API (Docker, Podman's service and
//! most hosted engines speak it). One container per replica, named `slipway-<instance id>` and
//! labelled with its deployment, instance, region, host port and the agents' scope (an id kept
//! in their state directory), so that the next agent of the region finds, adopts or removes
//! what an earlier one started, and leaves alone what other installations run on the engine.
//! The agent restarts exited containers itself (no engine restart policy), so backoff and
//! crash-loop reporting work as for `exec:` instances.

use std::{collections::BTreeMap, collections::HashMap, path::Path, time::Duration};

use bollard::{
    errors::Error as DockerError,
    models::{ContainerCreateBody, HostConfig, PortBinding},
    query_parameters::{
        CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
        LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    },
    Docker,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use slipway_core::krane::labels::{
    DEPLOYMENT as LABEL_DEPLOYMENT, HOST_PORT as LABEL_HOST_PORT, INSTANCE as LABEL_INSTANCE,
    REGION as LABEL_REGION, SCOPE as LABEL_SCOPE,
};
use slipway_core::krane::Limits;
use slipway_core::registry_auth::{AuthFile, Credentials};

/// Why a container could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// It never will be on this agent (the image cannot be pulled, the engine refuses the
    /// container's configuration): the deployment fails at once with this reason.
    #[error("{0}")]
    Unrunnable(String),
    /// The engine could not be reached or failed for now: retried with backoff.
    #[error("container engine: {0}")]
    Engine(#[source] DockerError),
}

/// The container engine of a region agent.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    host: String,
    region: String,
    scope: String,
    /// Credentials for the registries images are pulled from.
    registry_auth: Option<AuthFile>,
}

/// What a new container runs.
pub struct Spec<'a> {
    pub deployment_id: &'a str,
    pub instance_id: &'a str,
    pub image: &'a str,
    /// Replaces the image's `CMD` when not empty.
    pub command: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    /// The port the app listens on inside the container (`PORT`).
    pub port: u16,
    /// The port on 127.0.0.1 it is published on: the instance's address.
    pub host_port: u16,
    pub limits: Limits,
}

impl Engine {
    /// Connects to the engine at `host` (`unix://…`, `tcp://…`, `http://…`) and checks that it
    /// answers. Its containers are those of `region` and `scope`.
    pub async fn connect(
        host: &str,
        region: &str,
        scope: &str,
        registry_auth: Option<AuthFile>,
    ) -> Result<Self, DockerError> {
        let docker = Docker::connect_with_host(host)?.negotiate_version().await?;
        docker.ping().await?;
        Ok(Self {
            docker,
            host: host.to_string(),
            region: region.to_string(),
            scope: scope.to_string(),
            registry_auth,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Pulls `image` unless the engine has it. A pull that fails is the registry's answer
    /// (unknown image, no such registry, denied): waiting will not change it.
    async fn ensure_image(&self, image: &str) -> Result<(), StartError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(StartError::Engine(e)),
        }
        // The file is read now: credentials rotated since start-up apply.
        let credentials = match &self.registry_auth {
            Some(auth) => auth
                .for_image(image)
                .map_err(|e| StartError::Unrunnable(format!("image {image:?}: {e}")))?,
            None => None,
        };
        tracing::info!(%image, with_credentials = credentials.is_some(), "pulling image");
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let credentials = credentials.map(docker_credentials);
        let mut pull = self.docker.create_image(Some(options), None, credentials);
        while let Some(progress) = pull.next().await {
            match progress {
                Ok(_) => {}
                Err(e @ DockerError::DockerResponseServerError { .. })
                | Err(e @ DockerError::DockerStreamError { .. }) => {
                    return Err(StartError::Unrunnable(format!(
                        "image {image:?} cannot be pulled: {}",
                        engine_message(&e)
                    )))
                }
                Err(e) => return Err(StartError::Engine(e)),
            }
        }
        Ok(())
    }

    /// Creates and starts the container of `spec` (pulling its image if needed), its output
    /// appended to `<instance id>.log` in `log_dir`.
    pub async fn start(&self, spec: &Spec<'_>, log_dir: &Path) -> Result<Container, StartError> {
        self.ensure_image(spec.image).await?;
        let name = container_name(spec.instance_id);
        // What a crashed agent may have left under this name (created, never started).
        let _ = self.remove(&name).await;
        let exposed = format!("{}/tcp", spec.port);
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("PORT={}", spec.port));
        let labels = HashMap::from([
            (LABEL_DEPLOYMENT.to_string(), spec.deployment_id.to_string()),
            (LABEL_INSTANCE.to_string(), spec.instance_id.to_string()),
            (LABEL_REGION.to_string(), self.region.clone()),
            (LABEL_HOST_PORT.to_string(), spec.host_port.to_string()),
            (LABEL_SCOPE.to_string(), self.scope.clone()),
        ]);
        let body = ContainerCreateBody {
            image: Some(spec.image.to_string()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.to_vec()),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: Some(vec![exposed.clone()]),
            host_config: Some(HostConfig {
                memory: (spec.limits.memory_mb > 0)
                    .then(|| i64::from(spec.limits.memory_mb) * 1024 * 1024),
                nano_cpus: (spec.limits.cpu_millis > 0)
                    .then(|| i64::from(spec.limits.cpu_millis) * 1_000_000),
                port_bindings: Some(HashMap::from([(
                    exposed,
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(spec.host_port.to_string()),
                    }]),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| refused(spec.image, e))?;
        let log = crate::process::open_log(log_dir, spec.instance_id, spec.image)
            .map_err(|e| StartError::Engine(DockerError::IOError { err: e }))?;
        if let Err(e) = self.docker.start_container(&name, None).await {
            let _ = self.remove(&name).await;
            return Err(refused(spec.image, e));
        }
        Ok(self.watch(name, log, 0))
    }

    /// The containers this region's agents (of this scope) started, by instance id: those
    /// still running (to adopt), and the rest removed.
    pub async fn recorded(&self) -> Result<BTreeMap<String, Recorded>, DockerError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_REGION}={}", self.region),
                format!("{LABEL_SCOPE}={}", self.scope),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let mut alive = BTreeMap::new();
        for summary in self.docker.list_containers(Some(options)).await? {
            let labels = summary.labels.unwrap_or_default();
            let running = summary.state.is_some_and(|s| s.to_string() == "running");
            let name = summary
                .names
                .and_then(|n| n.into_iter().next())
                .map(|n| n.trim_start_matches('/').to_string())
                .or(summary.id)
                .unwrap_or_default();
            let record = (|| {
                Some(Recorded {
                    instance_id: labels.get(LABEL_INSTANCE)?.clone(),
                    deployment_id: labels.get(LABEL_DEPLOYMENT)?.clone(),
                    host_port: labels.get(LABEL_HOST_PORT)?.parse().ok()?,
                    container: name.clone(),
                })
            })();
            match record {
                Some(record) if running => {
                    alive.insert(record.instance_id.clone(), record);
                }
                _ => {
                    tracing::info!(container = %name, "removing a container left by an earlier run");
                    let _ = self.remove(&name).await;
                }
            }
        }
        Ok(alive)
    }

    /// Takes over the running container `recorded` names, its new output appended to its log.
    pub fn adopt(&self, recorded: &Recorded, log_dir: &Path) -> Container {
        let (name, instance_id) = (recorded.container.clone(), &recorded.instance_id);
        let log = crate::process::open_log(log_dir, instance_id, "(adopted)").ok();
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i32)
            .unwrap_or(0);
        match log {
            Some(log) => self.watch(name, log, since),
            None => Container {
                engine: self.clone(),
                name,
                logs: None,
            },
        }
    }

    /// A handle on container `name` whose output from `since` (seconds since the epoch, 0
    /// for all) is copied to `log`.
    fn watch(&self, name: String, log: std::fs::File, since: i32) -> Container {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .since(since)
            .build();
        let mut output = self.docker.logs(&name, Some(options));
        let logs = tokio::spawn(async move {
            let mut log = tokio::fs::File::from_std(log);
            while let Some(Ok(chunk)) = output.next().await {
                if log.write_all(&chunk.into_bytes()).await.is_err() {
                    break;
                }
            }
            let _ = log.flush().await;
        });
        Container {
            engine: self.clone(),
            name,
            logs: Some(logs),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        self.docker.remove_container(name, Some(options)).await
    }
}

/// A running container found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub instance_id: String,
    pub deployment_id: String,
    pub host_port: u16,
    /// Its name (`slipway-<instance id>` when this agent made it).
    pub container: String,
}

pub struct Container {
    engine: Engine,
    name: String,
    logs: Option<tokio::task::JoinHandle<()>>,
}

impl Container {
    /// How it ended, if it has.
    pub async fn exited(&mut self) -> Option<String> {
        match self.engine.docker.inspect_container(&self.name, None).await {
            Ok(c) => {
                let state = c.state?;
                if state.running == Some(true) {
                    return None;
                }
                let mut how = format!("exited with code {}", state.exit_code.unwrap_or(-1));
                if state.oom_killed == Some(true) {
                    how.push_str(" (killed: out of memory)");
                }
                Some(how)
            }
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Some("its container was removed".into()),
            // The engine did not answer: nothing is known; look again at the next check.
            Err(e) => {
                tracing::warn!(container = %self.name, error = %e, "cannot inspect container");
                None
            }
        }
    }

    /// Stops it (SIGTERM, SIGKILL after `grace`) and removes it.
    pub async fn stop(self, grace: Duration) {
        let seconds = grace.as_secs_f64().ceil() as i32;
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        if let Err(e) = self
            .engine
            .docker
            .stop_container(&self.name, Some(options))
            .await
        {
            tracing::debug!(container = %self.name, error = %e, "stopping container");
        }
        self.reap().await;
    }

    /// Removes it (killing it if it still runs).
    pub async fn reap(self) {
        if let Err(e) = self.engine.remove(&self.name).await {
            tracing::debug!(container = %self.name, error = %e, "removing container");
        }
        if let Some(logs) = self.logs {
            // The log stream ends with the container; do not wait on an engine that hangs.
            let _ = tokio::time::timeout(Duration::from_secs(2), logs).await;
        }
    }
}

fn container_name(instance_id: &str) -> String {
    format!("slipway-{instance_id}")
}

/// A create or start the engine refused because of what was asked (4xx: bad image, bad
/// configuration) will be refused again; anything else may pass later.
fn refused(image: &str, e: DockerError) -> StartError {
    match e {
        DockerError::DockerResponseServerError { status_code, .. }
            if (400..500).contains(&status_code) =>
        {
            StartError::Unrunnable(format!(
                "image {image:?}: the container engine refused it: {}",
                engine_message(&e)
            ))
        }
        // An OCI runtime failure ("executable file not found") is a 500 but no less final.
        DockerError::DockerResponseServerError { ref message, .. }
            if message.contains("executable file not found")
                || message.contains("no such file or directory") =>
        {
            StartError::Unrunnable(format!(
                "image {image:?}: cannot start: {}",
                engine_message(&e)
            ))
        }
        e => StartError::Engine(e),
    }
}

/// The engine's own words, without bollard's wrapping.
/// What the engine's API takes with a pull.
fn docker_credentials(c: Credentials) -> bollard::auth::DockerCredentials {
    bollard::auth::DockerCredentials {
        username: Some(c.username),
        password: Some(c.password),
        serveraddress: Some(c.registry),
        ..Default::default()
    }
}

fn engine_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        e => e.to_string(),
    }
}
