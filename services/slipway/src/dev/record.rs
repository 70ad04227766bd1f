//! What a `slipway dev` run started, recorded in its directory (`dev.pids`: a `<pid> <name>`
//! line per process, its own first), so that the next run on that directory can tell a run
//! that still lives (refused: two control planes would share one nats-server store and one
//! database) from processes a run killed with SIGKILL left behind (stopped, then started
//! afresh).

use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use slipway_local::process::signal;

const FILE: &str = "dev.pids";
/// What the run itself is recorded as.
const SELF: &str = "slipway";
/// How long a leftover process gets to stop after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// The record of this run; removed by [`RunRecord::release`] once everything is stopped.
pub struct RunRecord {
    path: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
struct Recorded {
    pid: u32,
    name: String,
}

impl RunRecord {
    /// Claims `dir` for this run. Refuses while the run that recorded it still lives; stops
    /// what a dead one left running (newest first, as a run stops them), then records this
    /// run's own process.
    pub fn claim(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let recorded = parse(&text);
            if let Some(run) = recorded.first().filter(|r| r.name == SELF && runs_as(r)) {
                anyhow::bail!(
                    "another `slipway dev` (pid {}) runs on {}: stop it first (Ctrl-C in its \
                     terminal, or `kill {}`), or give this one another --dir",
                    run.pid,
                    dir.display(),
                    run.pid
                );
            }
            let left: Vec<&Recorded> = recorded.iter().skip(1).filter(|r| runs_as(r)).collect();
            if !left.is_empty() {
                let names: Vec<String> = left
                    .iter()
                    .map(|r| format!("{} (pid {})", r.name, r.pid))
                    .collect();
                eprintln!(
                    "stopping what an earlier `slipway dev` on {} left running: {}",
                    dir.display(),
                    names.join(", ")
                );
                for process in left.into_iter().rev() {
                    stop(process);
                }
            }
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        // create_new: of two runs started at once on one directory, one gets it.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot claim {} (another `slipway dev` starting there?)",
                    path.display()
                )
            })?;
        writeln!(file, "{} {SELF}", std::process::id())?;
        Ok(Self { path })
    }

    /// Records a process this run started.
    pub fn add(&self, name: &str, pid: u32) -> Result<()> {
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(file, "{pid} {name}")?;
        Ok(())
    }

    /// Forgets the run: everything it started has stopped.
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn parse(text: &str) -> Vec<Recorded> {
    text.lines()
        .filter_map(|line| {
            let (pid, name) = line.trim().split_once(' ')?;
            Some(Recorded {
                pid: pid.parse().ok()?,
                name: name.trim().to_string(),
            })
        })
        .collect()
}

/// Whether `process` still runs as what was recorded: a pid reused by anything else since
/// (another program, a zombie) is not it, and is left alone.
fn runs_as(process: &Recorded) -> bool {
    let proc = PathBuf::from(format!("/proc/{}", process.pid));
    let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else {
        return false;
    };
    // `<pid> (<command>) <state> …`; the command may hold spaces.
    if stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
        return false;
    };
    let mut args = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let program = args.next().unwrap_or_default();
    let is_named = Path::new(&program)
        .file_name()
        .is_some_and(|f| f.to_string_lossy() == process.name);
    is_named && (process.name != SELF || args.any(|a| a == "dev"))
}

/// SIGTERM, then SIGKILL after [`GRACE`].
fn stop(process: &Recorded) {
    signal(process.pid, "-TERM");
    let deadline = Instant::now() + GRACE;
    while runs_as(process) {
        if Instant::now() >= deadline {
            signal(process.pid, "-KILL");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_skips_what_it_cannot_read() {
        let recorded = parse("12 slipway\n34 nats-server\n\nx routing\n56\n78 edge\n");
        let names: Vec<(u32, &str)> = recorded.iter().map(|r| (r.pid, r.name.as_str())).collect();
        assert_eq!(names, [(12, "slipway"), (34, "nats-server"), (78, "edge")]);
    }

    #[test]
    fn a_pid_running_something_else_is_not_what_was_recorded() {
        let me = std::process::id();
        // This test binary runs as itself, not as an edge nor as `slipway dev`.
        assert!(!runs_as(&Recorded {
            pid: me,
            name: "edge".into()
        }));
        assert!(!runs_as(&Recorded {
            pid: me,
            name: SELF.into()
        }));
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert!(runs_as(&Recorded { pid: me, name }));
        assert!(!runs_as(&Recorded {
            pid: u32::MAX,
            name: "edge".into()
        }));
    }
}
