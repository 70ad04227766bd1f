//! Named retry policies (backon delays, as iterators), so each loop that waits and tries again says which kind of
//! trouble it rides out instead of carrying its own numbers.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A server-side resource that is away (a consumer, a bucket not yet provisioned, a server
/// restarting): 100 ms, doubling to 5 s, for ever.
pub fn reattach() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .build()
}

/// A single write or call that a NATS blip or a concurrent provisioning may fail: 50 ms,
/// doubling, four retries.
pub fn blip() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(4)
        .build()
}

/// A write or read that a stream-leader election may fail for a few seconds on a cluster
/// (timeouts, "no responders", a new leader catching up): 100 ms, doubling to 2 s, for about
/// 20 s in all.
pub fn failover() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(14)
        .build()
}

/// No retry at all: for a caller that tries again on its own schedule.
pub fn none() -> ExponentialBackoff {
    ExponentialBuilder::default().with_max_times(0).build()
}
