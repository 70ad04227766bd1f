//! Opaque ids with a type prefix (`dep_…`). Time-ordered (UUIDv7) so they sort by creation.

use crate::ApiError;

pub const WORKSPACE: &str = "ws";
pub const PROJECT: &str = "proj";
pub const ENVIRONMENT: &str = "env";
pub const DEPLOYMENT: &str = "dep";
pub const WORKFLOW: &str = "wf";
pub const ROUTE: &str = "flr";
pub const SENTINEL: &str = "sen";
pub const INSTANCE: &str = "inst";

/// The longest id we accept from a caller.
pub const MAX_LEN: usize = 64;

/// A new id such as `dep_0193c6a1f0b27c3e9d1a2b3c4d5e6f70`.
pub fn new(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Checks an id a caller sent: the right prefix, then `[A-Za-z0-9_-]`, so it is also a
/// single NATS subject token and a KV key token.
pub fn validate(prefix: &str, field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid_argument(format!("{field} is required")));
    }
    let well_formed = id.len() <= MAX_LEN
        && id
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
    if well_formed {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "{field} {id:?} is not a valid id: expected {prefix}_ followed by letters, digits, '_' or '-' (at most {MAX_LEN} characters)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_validate() {
        let id = new(DEPLOYMENT);
        assert!(id.starts_with("dep_"));
        validate(DEPLOYMENT, "deployment_id", &id).unwrap();
    }

    #[test]
    fn rejects_wrong_prefix_and_subject_characters() {
        for bad in [
            "", "dep_", "proj_x", "dep_a.b", "dep_*", "dep_>", "dep_a b", "depx",
        ] {
            assert!(validate(DEPLOYMENT, "deployment_id", bad).is_err(), "{bad}");
        }
        assert!(validate(DEPLOYMENT, "deployment_id", &"dep_".repeat(20)).is_err());
    }
}
