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

/// Whether group `pgid` has a process that has not exited. A process that exited and was not
/// reaped (a zombie: its parent is stopped, or cut off and not tending it) still counts as a
/// member for `kill -0`, but runs nothing.
pub fn group_runs(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return signal_group(pgid, "0");
    };
    entries.flatten().any(|entry| {
        // `<pid> (<command>) <state> <ppid> <pgrp> …`; the command may hold spaces.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        let Some((_, fields)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = fields.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
    })
}

/// Every process group recorded in `dir`: (name, group id).
pub fn recorded(dir: &Path) -> Vec<(String, i32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "pid"))
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_string();
            let pgid = std::fs::read_to_string(&path).ok()?.trim().parse().ok()?;
            Some((name, pgid))
        })
        .collect()
}

/// Kills every process group recorded in `dir` and forgets them; returns how many.
pub fn kill_recorded(dir: &Path) -> usize {
    let groups = recorded(dir);
    for (name, pgid) in &groups {
        kill_group(*pgid);
        let _ = std::fs::remove_file(dir.join(format!("{name}.pid")));
    }
    groups.len()
}
