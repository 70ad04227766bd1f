//! Test-only crash points. A process started with `SLIPWAY_FAULT_POINT=<name>` aborts the
//! moment it reaches [`point`]`(name)`, as a SIGKILL would at that instant, so crash tests can
//! hit exact step boundaries instead of racing a timer. Unset, a point costs one env lookup.

pub const ENV: &str = "SLIPWAY_FAULT_POINT";

pub fn point(name: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        eprintln!("fault point {name} reached: aborting");
        std::process::abort();
    }
}
