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
    pub child: Child,
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

/// Starts `command_line` with `/bin/sh -c`, `PORT` and `env` set, output to `<id>.log`.
pub fn start(
    state_dir: &Path,
    instance_id: &str,
    command_line: &str,
    port: u16,
    env: &BTreeMap<String, String>,
) -> std::io::Result<Instance> {
    let log = std::fs::File::create(state_dir.join(format!("{instance_id}.log")))?;
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
        child,
        pgid,
        pid_file,
    })
}

impl Instance {
    /// Stops the whole process group (the shell and whatever it started): SIGTERM, SIGKILL
    /// after `grace` to what is left; then forgets it.
    pub async fn stop(mut self, grace: std::time::Duration) {
        if signal_group(self.pgid, "TERM") {
            let drained = async {
                // Reap the shell first: a zombie still counts as a member of the group.
                let _ = self.child.wait().await;
                while signal_group(self.pgid, "0") {
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
        let _ = self.child.wait().await;
        let _ = std::fs::remove_file(&self.pid_file);
    }

    /// Forgets an instance that exited by itself (its group may still hold children).
    pub fn reap(self) {
        kill_group(self.pgid);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

pub use slipway_local::process_groups::kill_recorded;
use slipway_local::process_groups::{kill_group, record, signal_group};

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
