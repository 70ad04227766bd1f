//! Process groups recorded in a directory (`<name>.pid`, holding the group id) until they are
//! stopped, so whoever comes next (a restarted region agent, a test's teardown) can kill what
//! an earlier run left behind.

use std::{path::Path, process::Stdio};

/// Records group `pgid` as `<dir>/<name>.pid`.
pub fn record(dir: &Path, name: &str, pgid: i32) -> std::io::Result<std::path::PathBuf> {
    let pid_file = dir.join(format!("{name}.pid"));
    std::fs::write(&pid_file, pgid.to_string())?;
    Ok(pid_file)
}

/// SIGKILLs a whole process group.
pub fn kill_group(pgid: i32) {
    signal_group(pgid, "KILL");
}

/// Sends `signal` (`TERM`, `KILL`, `0` to probe) to a whole process group; whether it
/// reached any process.
pub fn signal_group(pgid: i32, signal: &str) -> bool {
    pgid > 0
        && std::process::Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Kills every process group recorded in `dir` and forgets them; returns how many.
pub fn kill_recorded(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pid") {
            if let Some(pgid) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                kill_group(pgid);
                killed += 1;
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    killed
}
