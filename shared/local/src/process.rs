//! Service processes under test: started from their binaries, logs forwarded to the test's
//! output, readiness awaited on a log line, SIGKILLed on demand or when dropped.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub struct ServiceProcess {
    child: Child,
    name: String,
    log: Arc<(Mutex<Log>, Condvar)>,
}

/// A process's stderr lines so far, and whether it has closed (the process exited).
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

impl ServiceProcess {
    /// Starts `bin` with `env`; its stderr lines are kept and echoed with a `[name]` prefix.
    pub fn spawn(
        name: &str,
        bin: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Self> {
        let mut command = Command::new(bin.as_ref());
        command.args(args);
        Self::spawn_command(name, command, env)
    }

    /// [`spawn`](Self::spawn) in a process group of its own, for a supervisor that stops its
    /// processes in its own order: a terminal's Ctrl-C or hang-up reaches only the supervisor.
    pub fn spawn_supervised(
        name: &str,
        bin: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Self> {
        let mut command = Command::new(bin.as_ref());
        command.args(args).process_group(0);
        Self::spawn_command(name, command, env)
    }

    fn spawn_command(name: &str, mut cmd: Command, env: &[(&str, String)]) -> Result<Self> {
        let bin = PathBuf::from(cmd.get_program());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("SLIPWAY_LOG_FORMAT", "text")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let sink = log.clone();
        let prefix = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{prefix}] {line}");
                let (log, cv) = &*sink;
                if let Ok(mut log) = log.lock() {
                    log.lines.push(line);
                }
                cv.notify_all();
            }
            let (log, cv) = &*sink;
            if let Ok(mut log) = log.lock() {
                log.closed = true;
            }
            cv.notify_all();
        });
        Ok(Self {
            child,
            name: name.to_string(),
            log,
        })
    }

    /// Waits until a log line contains `needle` (blocking; call from `spawn_blocking` or
    /// before the runtime is busy); fails at once should the process exit first.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let (log, cv) = &*self.log;
        let deadline = std::time::Instant::now() + timeout;
        let mut guard = log
            .lock()
            .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
        loop {
            if guard.lines.iter().any(|l| l.contains(needle)) {
                return Ok(());
            }
            if guard.closed {
                let last = guard.lines.last().map(String::as_str).unwrap_or_default();
                bail!(
                    "{} exited before logging {needle:?} (its last line: {last})",
                    self.name
                );
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                bail!(
                    "{}: no log line containing {needle:?} within {timeout:?}",
                    self.name
                );
            }
            guard = cv
                .wait_timeout(guard, deadline - now)
                .map_err(|_| anyhow::anyhow!("log lock poisoned"))?
                .0;
        }
    }

    /// Waits until `service` (its binary's name) has logged that it is ready.
    pub fn wait_ready(&self, service: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log(&slipway_core::service::ready_line(service), timeout)
    }

    /// How many log lines contain `needle` so far.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .0
            .lock()
            .map(|log| log.lines.iter().filter(|l| l.contains(needle)).count())
            .unwrap_or(0)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        self.signal("-TERM");
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Resident memory now (Linux `/proc`), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// SIGSTOP: the process freezes (timers, lease renewals and all) until [`cont`](Self::cont),
    /// as in a long GC pause or a VM stall.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`stop`](Self::stop).
    pub fn cont(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        self::signal(self.child.id(), signal);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no clean-up runs, as in a crash.
    pub fn kill(&mut self) {
        self.cont(); // a stopped process dies on SIGKILL too, but is reaped only once it runs
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` (`-STOP`, `-CONT`, `-TERM`…) to process `pid` with kill(1); a process that
/// is gone is ignored.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that exits without the awaited line fails the wait at once, with its last
    /// line, rather than at the timeout.
    #[test]
    fn a_wait_for_a_line_ends_when_the_process_exits() {
        let args = ["-c", "echo 'cannot start: port taken' >&2; exit 1"];
        let process = ServiceProcess::spawn("sh", "sh", &args, &[]).unwrap();
        let started = std::time::Instant::now();
        let waited = process.wait_for_log("ready", Duration::from_secs(60));
        let error = waited.unwrap_err().to_string();
        assert!(error.contains("exited before logging"), "{error}");
        assert!(error.contains("cannot start: port taken"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited for the timeout"
        );
        let process = ServiceProcess::spawn("sh", "sh", &["-c", "echo ready >&2; sleep 5"], &[]);
        let process = process.unwrap();
        process
            .wait_for_log("ready", Duration::from_secs(60))
            .unwrap();
    }
}
