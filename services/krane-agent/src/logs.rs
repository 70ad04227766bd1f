//! An instance's output, line by line, to the logs stream (`slipway.logs.<deployment_id>.
//! <instance_id>`, stream `SLIPWAY_LOGS`). Processes and containers both append to the
//! instance's log file ([`crate::process::open_log`]); one tail per instance follows that file
//! (across restarts and rotations, and after an agent restart, from where the file ends) and
//! publishes what is appended. Publishing is fire-and-forget: logs are never worth holding
//! up an instance, and a line lost while NATS is away is still in the file.

use std::{
    io::{Read, Seek, SeekFrom},
    path::PathBuf,
    time::Duration,
};

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(200);
/// A line longer than this is published in pieces.
const MAX_LINE: usize = 16 * 1024;

/// Follows one instance's log file while it lives; dropped, it stops.
pub struct Tail(tokio::task::JoinHandle<()>);

impl Tail {
    /// Starts following `path` from its current end, publishing each new line on `subject`.
    pub fn start(client: async_nats::Client, path: PathBuf, subject: String) -> Self {
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Tail(tokio::spawn(follow(client, path, subject, offset)))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn follow(client: async_nats::Client, path: PathBuf, subject: String, mut offset: u64) {
    let mut partial: Vec<u8> = Vec::new();
    loop {
        tokio::time::sleep(POLL).await;
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_from(&path, offset)).await
        };
        let Ok(Some((bytes, end))) = read else {
            continue;
        };
        if end < offset {
            // Rotated (or truncated): the new file from its start.
            partial.clear();
        }
        offset = end;
        partial.extend_from_slice(&bytes);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        while let Some(newline) = partial.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = partial.drain(..=newline).collect();
            line.pop();
            lines.push(line);
        }
        while partial.len() >= MAX_LINE {
            lines.push(partial.drain(..MAX_LINE).collect());
        }
        for line in lines {
            let _ = client.publish(subject.clone(), line.into()).await;
        }
    }
}

/// What the file holds past `offset` (all of it if it is now shorter: a new file), and where
/// it ends.
fn read_from(path: &std::path::Path, offset: u64) -> Option<(Vec<u8>, u64)> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = if len < offset { 0 } else { offset };
    if len == start {
        return Some((Vec::new(), len));
    }
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::with_capacity((len - start).min(1 << 20) as usize);
    file.take(1 << 20).read_to_end(&mut bytes).ok()?;
    let end = start + bytes.len() as u64;
    Some((bytes, end))
}
