//! Test-only crash points. A process started with `SLIPWAY_FAULT_POINT=<name>` aborts the
//! moment it reaches [`point`]`(name)`, as a SIGKILL would at that instant, so crash tests can
//! hit exact step boundaries instead of racing a timer. Unset, a point costs one env lookup.

pub const ENV: &str = "SLIPWAY_FAULT_POINT";
/// A process started with `SLIPWAY_FAULT_STOP=<name>` SIGSTOPs itself the first time it
/// reaches [`point`]`(name)`, as a stalled VM would, until the test sends SIGCONT.
pub const STOP_ENV: &str = "SLIPWAY_FAULT_STOP";
/// `<name>=<duration>`: [`pause`]`(name)` tells the caller to wait that long, to widen a race window in a test.
pub const PAUSE_ENV: &str = "SLIPWAY_FAULT_PAUSE";

pub fn point(name: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        eprintln!("fault point {name} reached: aborting");
        std::process::abort();
    }
    // Once: the test that stops the process here continues it later with SIGCONT.
    static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var(STOP_ENV).is_ok_and(|v| v == name)
        && !STOPPED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        eprintln!("fault point {name} reached: stopping");
        let _ = std::process::Command::new("kill")
            .args(["-STOP", &std::process::id().to_string()])
            .status();
        // The group stop can land a moment after `kill` returns (seen: a request sent past
        // this point); do not run on before it has.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// How long to wait at `name`, per `SLIPWAY_FAULT_PAUSE=<name>=<duration>` (a test widening
/// a race window); unset, it costs one env lookup.
pub fn pause(name: &str) -> Option<std::time::Duration> {
    let value = std::env::var(PAUSE_ENV).ok()?;
    let (point, duration) = value.split_once('=')?;
    if point != name {
        return None;
    }
    let d = humantime::parse_duration(duration).ok()?;
    eprintln!("fault pause {name} reached: waiting {duration}");
    Some(d)
}
