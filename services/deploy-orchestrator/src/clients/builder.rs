//! Images built from a deployment's git source (API.md `git_source`) through the Docker
//! Engine API's build endpoint. The repository is fetched at exactly `commit_sha` into a bare
//! repository of its own; `git archive` of the context directory at that commit is the build
//! context (nothing else of the repository, nothing of a working tree); the image is tagged
//! `<prefix>/<project_id>:<deployment_id>`, and pushed when the prefix names a registry that
//! the region agents pull from (`push`).
//!
//! A build is idempotent by deployment: an image already tagged for it is reused, so a build
//! step resumed after a crash either builds again (the first never finished) or takes the
//! image the first build made, and a deployment never runs two images.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    time::Duration,
};

use bollard::{
    auth::DockerCredentials,
    errors::Error as DockerError,
    query_parameters::{BuildImageOptionsBuilder, PushImageOptionsBuilder},
    Docker,
};
use futures::StreamExt;
use slipway_core::registry_auth::{AuthFile, AuthFileError, Credentials};
use slipway_store::GitSource;
use tokio::process::Command;

/// How many of the build's last output lines a failure reports.
const LAST_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot fetch {repository} at {commit_sha}: {detail}")]
    Fetch {
        repository: String,
        commit_sha: String,
        detail: String,
    },
    #[error("the build failed: {0}")]
    Failed(String),
    #[error("the build took longer than {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("cannot push {tag}: {detail}")]
    Push { tag: String, detail: String },
    #[error(transparent)]
    Credentials(#[from] AuthFileError),
    #[error("cannot reach the build engine")]
    Engine(#[source] DockerError),
    #[error("cannot run git")]
    Git(#[source] std::io::Error),
}

impl BuildError {
    /// Whether building again would give the same answer (the deployment fails with it).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Fetch { .. } | Self::Failed(_) | Self::TimedOut(_)
        )
    }
}

#[derive(Clone)]
pub struct Builder {
    docker: Docker,
    /// The tag prefix: `<prefix>/<project_id>:<deployment_id>`.
    prefix: String,
    timeout: Duration,
    /// Push each image after it is built (the prefix names a registry).
    push: bool,
    /// Where fetches happen (a directory per build, removed after it).
    work_dir: PathBuf,
    /// Credentials for the registries pushed to and pulled from (base images).
    registry_auth: Option<AuthFile>,
}

impl Builder {
    /// A builder on the engine at `host` (`unix://…`, `tcp://…`); it is reached only when a
    /// build runs.
    pub fn new(
        host: &str,
        prefix: &str,
        timeout: Duration,
        push: bool,
        registry_auth: Option<AuthFile>,
    ) -> Result<Self, DockerError> {
        Ok(Self {
            docker: Docker::connect_with_host(host)?,
            prefix: prefix.trim_end_matches('/').to_string(),
            timeout,
            push,
            work_dir: std::env::temp_dir(),
            registry_auth,
        })
    }

    /// The image a deployment's build is tagged with.
    pub fn tag(&self, project_id: &str, deployment_id: &str) -> String {
        format!("{}/{project_id}:{deployment_id}", self.prefix)
    }

    /// Builds (or finds already built) the image of `deployment_id`; `progress` gets each
    /// line of the build's output.
    pub async fn build(
        &self,
        project_id: &str,
        deployment_id: &str,
        source: &GitSource,
        mut progress: impl FnMut(&str),
    ) -> Result<String, BuildError> {
        let tag = self.tag(project_id, deployment_id);
        let docker = self.docker.clone().negotiate_version().await;
        let docker = docker.map_err(BuildError::Engine)?;
        if docker.inspect_image(&tag).await.is_ok() {
            progress(&format!("reusing {tag}, built before"));
            // Its push may not have finished: pushing again is harmless.
            self.push(&docker, &tag, &mut progress).await?;
            return Ok(tag);
        }
        let work = self.work_dir.join(format!("slipway-build-{deployment_id}"));
        // Read now: credentials rotated since start-up apply.
        let credentials: HashMap<String, DockerCredentials> = match &self.registry_auth {
            Some(auth) => auth
                .all()?
                .into_iter()
                .map(|c| (c.registry.clone(), docker_credentials(c)))
                .collect(),
            None => HashMap::new(),
        };
        let built = tokio::time::timeout(self.timeout, async {
            let context = fetch_context(&work, source).await?;
            progress(&format!(
                "fetched {} at {}",
                source.repository, source.commit_sha
            ));
            let dockerfile = &source.dockerfile_path;
            build(
                &docker,
                &tag,
                dockerfile,
                context,
                credentials,
                &mut progress,
            )
            .await
        })
        .await;
        let _ = tokio::fs::remove_dir_all(&work).await;
        built.map_err(|_| BuildError::TimedOut(self.timeout))??;
        self.push(&docker, &tag, &mut progress).await?;
        Ok(tag)
    }

    /// Pushes `tag` to its registry, where configured.
    async fn push(
        &self,
        docker: &Docker,
        tag: &str,
        progress: &mut impl FnMut(&str),
    ) -> Result<(), BuildError> {
        if !self.push {
            return Ok(());
        }
        let (name, version) = tag.rsplit_once(':').unwrap_or((tag, "latest"));
        let options = PushImageOptionsBuilder::default().tag(version).build();
        let credentials = match &self.registry_auth {
            Some(auth) => auth.for_image(tag)?.map(docker_credentials),
            None => None,
        };
        let mut pushing = docker.push_image(name, Some(options), credentials);
        while let Some(item) = pushing.next().await {
            match item {
                Ok(info) => {
                    if let Some(status) = info.status.as_deref() {
                        progress(status);
                    }
                }
                Err(DockerError::DockerStreamError { error })
                | Err(DockerError::DockerResponseServerError { message: error, .. }) => {
                    return Err(BuildError::Push {
                        tag: tag.to_string(),
                        detail: error,
                    })
                }
                Err(e) => return Err(BuildError::Engine(e)),
            }
        }
        progress(&format!("pushed {tag}"));
        Ok(())
    }
}

/// The context directory of `source` at its commit, as a tar.
async fn fetch_context(work: &Path, source: &GitSource) -> Result<Vec<u8>, BuildError> {
    let fetch_error = |detail: String| BuildError::Fetch {
        repository: source.repository.clone(),
        commit_sha: source.commit_sha.clone(),
        detail,
    };
    let _ = tokio::fs::remove_dir_all(work).await;
    tokio::fs::create_dir_all(work)
        .await
        .map_err(BuildError::Git)?;
    if let Err(detail) = git(work, &["init", "--quiet", "--bare"]).await? {
        return Err(BuildError::Git(std::io::Error::other(detail)));
    }
    // The commit alone where the server allows it; else everything, then the commit in it.
    let shallow = git(
        work,
        &[
            "fetch",
            "--quiet",
            "--depth=1",
            "--",
            &source.repository,
            &source.commit_sha,
        ],
    )
    .await?;
    if let Err(first) = shallow {
        let all = git(
            work,
            &[
                "fetch",
                "--quiet",
                "--",
                &source.repository,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ],
        )
        .await?;
        if let Err(detail) = all {
            return Err(fetch_error(if detail.is_empty() { first } else { detail }));
        }
    }
    let commit = format!("{}^{{commit}}", source.commit_sha);
    if let Err(detail) = git(work, &["cat-file", "-e", &commit]).await? {
        return Err(fetch_error(format!("no such commit ({detail})")));
    }
    let tree = if source.context_path.trim_matches('/').is_empty() {
        source.commit_sha.clone()
    } else {
        format!(
            "{}:{}",
            source.commit_sha,
            source.context_path.trim_matches('/')
        )
    };
    let out = git_command(work)
        .args(["archive", "--format=tar", &tree])
        .output()
        .await
        .map_err(BuildError::Git)?;
    if !out.status.success() {
        return Err(fetch_error(format!(
            "no context directory {:?} in that commit: {}",
            source.context_path,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// `git` in `work` with transports that run commands refused.
fn git_command(work: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(work)
        .args(["-c", "protocol.ext.allow=never"])
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs git: Err when it cannot run at all, Ok(Err(stderr)) when it fails.
async fn git(work: &Path, args: &[&str]) -> Result<Result<(), String>, BuildError> {
    let out = git_command(work)
        .args(args)
        .output()
        .await
        .map_err(BuildError::Git)?;
    if out.status.success() {
        Ok(Ok(()))
    } else {
        Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// What the engine's API takes with a push or a build.
fn docker_credentials(c: Credentials) -> DockerCredentials {
    DockerCredentials {
        username: Some(c.username),
        password: Some(c.password),
        serveraddress: Some(c.registry),
        ..Default::default()
    }
}

async fn build(
    docker: &Docker,
    tag: &str,
    dockerfile: &str,
    context: Vec<u8>,
    credentials: HashMap<String, DockerCredentials>,
    progress: &mut impl FnMut(&str),
) -> Result<(), BuildError> {
    let dockerfile = if dockerfile.is_empty() {
        "Dockerfile"
    } else {
        dockerfile
    };
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(dockerfile)
        .t(tag)
        .rm(true)
        .forcerm(true)
        .build();
    let credentials = (!credentials.is_empty()).then_some(credentials);
    let context = Some(bollard::body_full(context.into()));
    let mut output = docker.build_image(options, credentials, context);
    let mut last: VecDeque<String> = VecDeque::new();
    let mut keep = |line: &str, last: &mut VecDeque<String>| {
        for line in line.lines().filter(|l| !l.trim().is_empty()) {
            progress(line);
            if last.len() == LAST_LINES {
                last.pop_front();
            }
            last.push_back(line.to_string());
        }
    };
    let failed = |error: String, last: &VecDeque<String>| {
        let mut lines: Vec<&str> = last.iter().map(String::as_str).collect();
        if !lines.iter().any(|l| l.contains(error.trim())) {
            lines.push(error.trim());
        }
        BuildError::Failed(lines.join("\n"))
    };
    while let Some(item) = output.next().await {
        match item {
            Ok(info) => {
                if let Some(stream) = info.stream.as_deref() {
                    keep(stream, &mut last);
                }
                if let Some(error) = info.error_detail.and_then(|d| d.message) {
                    return Err(failed(error, &last));
                }
            }
            Err(DockerError::DockerStreamError { error }) => return Err(failed(error, &last)),
            Err(DockerError::DockerResponseServerError {
                status_code,
                message,
            }) if status_code < 500 || !last.is_empty() => {
                return Err(failed(message, &last));
            }
            Err(e) => return Err(BuildError::Engine(e)),
        }
    }
    // An engine may end the stream without an error and without the image (podman did,
    // for a Dockerfile it could not parse): only the tag says it was built.
    match docker.inspect_image(tag).await {
        Ok(_) => Ok(()),
        Err(_) => Err(failed("no image was produced".into(), &last)),
    }
}
