//! Instance processes: started in their own process group, recorded in the state directory
//! ([`slipway_local::process_groups`]) until stopped, so a restarted agent can kill what an
//! earlier run left behind.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::process::{Child, Command};

pub struct Instance {
    /// `None` for an instance adopted from an earlier agent: not our child, watched through
    /// its process group.
    child: Option<Child>,
    pub pgid: i32,
    pid_file: PathBuf,
}

/// `exec:<command line>` → the command line, on an agent that allows exec images (an exec
/// image is a shell line run as the agent's user: whoever may deploy has a shell on the
/// host); anything else is not something we can run.
pub fn command_line(image: &str, args: &[String], allow_exec: bool) -> Result<String, String> {
    if image.starts_with("exec:") && !allow_exec {
        return Err(format!(
            "image {image:?}: this agent does not run exec: images (a shell line run as the agent's user); start it with SLIPWAY_AGENT_ALLOW_EXEC=true to allow them"
        ));
    }
    let Some(line) = image.strip_prefix("exec:") else {
        let scheme = image.split(':').next().unwrap_or_default();
        return Err(format!(
            "image {image:?}: this agent runs only exec:<command line> images, not {scheme:?} ones"
        ));
    };
    let mut line = line.trim().to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    Ok(line)
}

fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// An instance's log grows to about this size, then moves to `<id>.log.1` (one earlier file
/// kept) when it next starts.
pub const LOG_ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// The instance's log, opened for appending with a line that marks this start: what a
/// crashed run printed survives its restart.
pub fn open_log(
    state_dir: &Path,
    instance_id: &str,
    command_line: &str,
) -> std::io::Result<std::fs::File> {
    use std::io::Write;
    let path = state_dir.join(format!("{instance_id}.log"));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        std::fs::rename(&path, state_dir.join(format!("{instance_id}.log.1")))?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    writeln!(
        log,
        "--- slipway: {instance_id} started at {at}: {command_line}"
    )?;
    Ok(log)
}

/// What the state directory keeps of an instance beside its process group
/// (`<id>.instance`), so that the next agent of the region can adopt it without asking
/// anyone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recorded {
    pub deployment_id: String,
    pub port: u16,
    #[serde(skip)]
    pub pgid: i32,
}

fn record_path(state_dir: &Path, instance_id: &str) -> PathBuf {
    state_dir.join(format!("{instance_id}.instance"))
}

/// Starts `command_line` with `/bin/sh -c`, `PORT` and `env` set, output appended to
/// `<id>.log` ([`open_log`]).
pub fn start(
    state_dir: &Path,
    deployment_id: &str,
    instance_id: &str,
    command_line: &str,
    port: u16,
    env: &BTreeMap<String, String>,
) -> std::io::Result<Instance> {
    let recorded = Recorded {
        deployment_id: deployment_id.to_string(),
        port,
        pgid: 0,
    };
    std::fs::write(
        record_path(state_dir, instance_id),
        serde_json::to_vec(&recorded).map_err(std::io::Error::other)?,
    )?;
    let log = open_log(state_dir, instance_id, command_line)?;
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command_line)
        .envs(env)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    let pgid = child.id().map(|p| p as i32).unwrap_or_default();
    let pid_file = record(state_dir, instance_id, pgid)?;
    Ok(Instance {
        child: Some(child),
        pgid,
        pid_file,
    })
}

/// The instances an earlier agent recorded in `state_dir` whose process group still runs, by
/// instance id; the records of those that are gone (or that say too little to adopt them:
/// these are killed) are dropped.
pub fn recorded(state_dir: &Path) -> BTreeMap<String, Recorded> {
    let mut alive = BTreeMap::new();
    for (instance_id, pgid) in slipway_local::process_groups::recorded(state_dir) {
        let record = std::fs::read(record_path(state_dir, &instance_id))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Recorded>(&bytes).ok());
        match record {
            Some(record) if group_runs(pgid) => {
                alive.insert(instance_id, Recorded { pgid, ..record });
            }
            Some(_) => Instance::adopted(state_dir, &instance_id, pgid).forget(),
            None => {
                tracing::info!(instance = %instance_id, "killed a process left by an earlier run that says too little to adopt it");
                Instance::adopted(state_dir, &instance_id, pgid).reap();
            }
        }
    }
    alive
}

impl Instance {
    /// An instance an earlier agent started (recorded in `state_dir` as group `pgid`).
    pub fn adopted(state_dir: &Path, instance_id: &str, pgid: i32) -> Self {
        Self {
            child: None,
            pgid,
            pid_file: state_dir.join(format!("{instance_id}.pid")),
        }
    }

    /// How it ended, if it has: its exit status, or for an adopted instance that its process
    /// group is gone.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| format!("exited with {status}")),
            None => (!group_runs(self.pgid)).then(|| "exited".to_string()),
        }
    }

    /// Stops the whole process group (the shell and whatever it started): SIGTERM, SIGKILL
    /// after `grace` to what is left; then forgets it.
    pub async fn stop(mut self, grace: std::time::Duration) {
        if signal_group(self.pgid, "TERM") {
            let drained = async {
                // Reap the shell first: a zombie still counts as a member of the group.
                if let Some(child) = self.child.as_mut() {
                    let _ = child.wait().await;
                }
                while group_runs(self.pgid) {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            };
            if tokio::time::timeout(grace, drained).await.is_err() {
                tracing::info!(
                    pgid = self.pgid,
                    "instance still running after the grace period; killing it"
                );
            }
        }
        kill_group(self.pgid);
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait().await;
        }
        self.forget();
    }

    /// Forgets an instance that exited by itself (its group may still hold children).
    pub fn reap(self) {
        kill_group(self.pgid);
        self.forget();
    }

    /// Removes what the state directory keeps of it.
    fn forget(&self) {
        let _ = std::fs::remove_file(&self.pid_file);
        let _ = std::fs::remove_file(self.pid_file.with_extension("instance"));
    }
}

use slipway_local::process_groups::{group_runs, kill_group, record, signal_group};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_images_and_quoting() {
        assert_eq!(
            command_line("exec:slipway demo-app", &[], true).unwrap(),
            "slipway demo-app"
        );
        assert_eq!(
            command_line("exec:app", &["it's".into(), "a b".into()], true).unwrap(),
            r#"app 'it'\''s' 'a b'"#
        );
        let err = command_line("docker.io/library/nginx:1", &[], true).unwrap_err();
        assert!(
            err.contains("exec:") && err.contains("docker.io/library/nginx"),
            "{err}"
        );
        let err = command_line("exec:sh -c 'id'", &[], false).unwrap_err();
        assert!(err.contains("SLIPWAY_AGENT_ALLOW_EXEC=true"), "{err}");
    }
}
