//! The key layout of KV `slipway_transitions`, the deployment actor's: a deployment's pending
//! transition under the deployment's id, each idempotency record under `<id>.idem.<hash>`.
//! Read by the actor and by operators' tools (`slipway timers`), written only by the actor.

use sha2::{Digest, Sha256};

/// The key of the idempotency record of `key` (any caller's string; KV keys may not hold
/// every character, so it is hashed).
pub fn idempotency(deployment_id: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{deployment_id}.idem.{hex}")
}

/// The deployment whose transition `key` holds; None for an idempotency record.
pub fn deployment_of(key: &str) -> Option<&str> {
    (!key.contains('.')).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_records_are_not_transitions() {
        let idem = idempotency("dep_1", "any key: with spaces.and dots");
        assert!(idem.starts_with("dep_1.idem."), "{idem}");
        assert_eq!(deployment_of(&idem), None);
        assert_eq!(deployment_of("dep_1"), Some("dep_1"));
    }
}
