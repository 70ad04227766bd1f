//! What an instance runs as: an `exec:` image as a local process group ([`process`]), any
//! other image as a container ([`container`]). The supervisor sees one [`Instance`] either way.

use std::{collections::BTreeMap, path::Path, time::Duration};

use slipway_core::krane::DesiredDeployment;

use crate::{container, process};

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// It never will be on this agent (an image that cannot be pulled, a container the
    /// engine refuses): the deployment fails at once with this reason.
    #[error("{0}")]
    Unrunnable(String),
    #[error("cannot start its process")]
    Process(#[source] std::io::Error),
    /// The engine failed or could not be reached: retried with backoff.
    #[error("container engine")]
    Engine(#[source] bollard::errors::Error),
}

impl From<container::StartError> for StartError {
    fn from(e: container::StartError) -> Self {
        match e {
            container::StartError::Unrunnable(message) => Self::Unrunnable(message),
            container::StartError::Engine(e) => Self::Engine(e),
        }
    }
}

/// How the instances of one desired document start.
pub enum Launch {
    /// An `exec:` image: this shell line.
    Exec(String),
    /// Anything else: a container.
    Container,
}

/// How `d` runs on this agent, or why it cannot (the deployment fails at once).
pub fn launch(
    d: &DesiredDeployment,
    allow_exec: bool,
    engine: Option<&container::Engine>,
    docker_host: &str,
) -> Result<Launch, String> {
    if d.image.starts_with("exec:") {
        return process::command_line(&d.image, &d.command, allow_exec).map(Launch::Exec);
    }
    match engine {
        Some(_) => Ok(Launch::Container),
        None => Err(format!(
            "image {:?}: this agent has no container engine (none answered at {docker_host}; set SLIPWAY_AGENT_DOCKER_HOST)",
            d.image
        )),
    }
}

/// Starts instance `instance_id` of `d` as `launch` says, listening on `port` on 127.0.0.1.
pub async fn start(
    launch: &Launch,
    d: &DesiredDeployment,
    instance_id: &str,
    port: u16,
    state_dir: &Path,
    engine: Option<&container::Engine>,
) -> Result<Instance, StartError> {
    match (launch, engine) {
        (Launch::Exec(line), _) => {
            process::start(state_dir, &d.deployment_id, instance_id, line, port, &d.env)
                .map(Instance::Process)
                .map_err(StartError::Process)
        }
        (Launch::Container, Some(engine)) => {
            let spec = container::Spec {
                deployment_id: &d.deployment_id,
                instance_id,
                image: &d.image,
                command: &d.command,
                env: &d.env,
                // The environment's port: where the app listens inside its container.
                port: u16::try_from(d.port)
                    .ok()
                    .filter(|p| *p != 0)
                    .unwrap_or(8080),
                host_port: port,
                limits: d.limits,
            };
            Ok(Instance::Container(engine.start(&spec, state_dir).await?))
        }
        (Launch::Container, None) => Err(StartError::Unrunnable(
            "this agent has no container engine".into(),
        )),
    }
}

pub enum Instance {
    Process(process::Instance),
    Container(container::Container),
}

impl Instance {
    /// How it ended, if it has.
    pub async fn exited(&mut self) -> Option<String> {
        match self {
            Self::Process(p) => p.exited(),
            Self::Container(c) => c.exited().await,
        }
    }

    /// Stops it with `grace` to finish (SIGTERM, then SIGKILL), and forgets it.
    pub async fn stop(self, grace: Duration) {
        match self {
            Self::Process(p) => p.stop(grace).await,
            Self::Container(c) => c.stop(grace).await,
        }
    }

    /// Forgets one that exited by itself (killing what it left behind).
    pub async fn reap(self) {
        match self {
            Self::Process(p) => p.reap(),
            Self::Container(c) => c.reap().await,
        }
    }
}

/// An instance an earlier agent of the region left running.
pub struct Orphan {
    pub deployment_id: String,
    pub port: u16,
    pub instance: Instance,
}

/// What earlier agents of the region left running, by instance id: processes recorded in
/// `state_dir` and containers labelled with the region.
pub async fn orphans(
    state_dir: &Path,
    engine: Option<&container::Engine>,
) -> BTreeMap<String, Orphan> {
    let mut orphans: BTreeMap<String, Orphan> = process::recorded(state_dir)
        .into_iter()
        .map(|(id, r)| {
            let instance = Instance::Process(process::Instance::adopted(state_dir, &id, r.pgid));
            let orphan = Orphan {
                deployment_id: r.deployment_id,
                port: r.port,
                instance,
            };
            (id, orphan)
        })
        .collect();
    if let Some(engine) = engine {
        match engine.recorded().await {
            Ok(containers) => {
                for (id, r) in containers {
                    let instance = Instance::Container(engine.adopt(&r, state_dir));
                    let orphan = Orphan {
                        deployment_id: r.deployment_id,
                        port: r.host_port,
                        instance,
                    };
                    orphans.insert(id, orphan);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the region's containers; none adopted")
            }
        }
    }
    orphans
}
