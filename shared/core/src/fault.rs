//! Test-only crash points. A process started with `SLIPWAY_FAULT_POINT=<name>` aborts the
//! moment it reaches [`point`]`(name)`, as a SIGKILL would at that instant, so crash tests can
//! hit exact step boundaries instead of racing a timer. Unset, a point costs one env lookup.

pub const ENV: &str = "SLIPWAY_FAULT_POINT";
/// `<name>=<duration>`: [`pause`]`(name)` tells the caller to wait that long, to widen a race window in a test.
pub const PAUSE_ENV: &str = "SLIPWAY_FAULT_PAUSE";

pub fn point(name: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        eprintln!("fault point {name} reached: aborting");
        std::process::abort();
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
