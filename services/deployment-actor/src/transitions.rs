//! The actor's state: per deployment in KV `slipway_transitions` (MessagePack), the pending
//! transition and the newest fencing token a schedule or clear carried, read and written by
//! compare-and-set on the key's revision; and the idempotency records that let a repeated
//! schedule call return the first call's nonce.
//!
//! Fencing: the orchestrator's schedules and clears made under a project lease carry its
//! epoch. A call with an older token than the deployment has seen comes from a holder whose
//! lease was taken over (it stalled, then woke up): it is refused, so a late clear or wake
//! never undoes what the newer holder decided. The token outlives the transition: a clear
//! (or an applied transition) leaves a record with the token and no transition.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use slipway_core::transition_keys;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub nonce: String,
    pub state: String,
    pub fires_at_ms: i64,
    #[serde(default)]
    pub idempotency_key: String,
    /// Claimed by an apply, under way or done: a clear or a newer schedule completes the
    /// apply (idempotent) before it replies, so no reply is ever followed by the older
    /// transition. A timer held in memory leaves its claim stored once applied, as the record
    /// that it was (see [`crate::apply::Afterwards`]).
    #[serde(default)]
    pub applying: bool,
}

/// The stored value. Flattened so that records written before fencing (a bare transition)
/// still read.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    transition: Option<Transition>,
    #[serde(default)]
    fencing_token: u64,
}

/// What a key holds now, and the revision to compare-and-set against (0: never written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub transition: Option<Transition>,
    /// The newest fencing token a schedule or clear of this deployment carried (0: none).
    pub fencing_token: u64,
    pub revision: u64,
}

impl Current {
    /// A key never written.
    pub fn none() -> Self {
        Self {
            transition: None,
            fencing_token: 0,
            revision: 0,
        }
    }

    pub fn nonce(&self) -> Option<&str> {
        self.transition.as_ref().map(|t| t.nonce.as_str())
    }

    /// The transition still waiting for its time; not one an apply has claimed (applied, or
    /// being applied).
    pub fn pending(&self) -> Option<&Transition> {
        self.transition.as_ref().filter(|t| !t.applying)
    }

    /// The transition an apply has claimed, if that is what is stored.
    pub fn claimed(&self) -> Option<&Transition> {
        self.transition.as_ref().filter(|t| t.applying)
    }

    /// The token to store with a write that carries `token` (0: unfenced), or the newer token
    /// this deployment has seen when `token` is older: the caller lost its lease.
    pub fn fence(&self, token: u64) -> Result<u64, u64> {
        match token {
            0 => Ok(self.fencing_token),
            t if t < self.fencing_token => Err(self.fencing_token),
            t => Ok(t),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    /// Someone else wrote first: re-read and try again.
    #[error("the transition changed meanwhile")]
    Conflict,
    #[error("KV slipway_transitions: {0}")]
    Kv(async_nats::Error),
    #[error("corrupt transition for {key}: {source}")]
    Corrupt {
        key: String,
        source: rmp_serde::decode::Error,
    },
}

#[derive(Clone)]
pub struct Transitions {
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    idempotency_ttl: Duration,
}

impl Transitions {
    pub fn new(
        js: async_nats::jetstream::Context,
        kv: kv::Store,
        idempotency_ttl: Duration,
    ) -> Self {
        Self {
            js,
            kv,
            idempotency_ttl,
        }
    }

    pub async fn get(&self, deployment_id: &str) -> Result<Current, TransitionError> {
        // From the leader: the revision read here is the base of a compare-and-set, and the
        // transition decides what a timer does.
        let entry = slipway_nats::kv::latest(&self.kv, deployment_id)
            .await
            .map_err(TransitionError::Kv)?;
        current_of(deployment_id, entry)
    }

    /// What every deployment has stored, in one pass over the bucket (an ordered consumer
    /// delivering the last value of each key) instead of a read per key, taken a chunk at a
    /// time: the reconcile's view, which may lag the leader a little (a compare-and-set based
    /// on it conflicts, and its writer reads again).
    pub async fn all(&self) -> Result<AllStored, TransitionError> {
        let snapshot = slipway_nats::kv::Snapshot::of(&self.kv)
            .await
            .map_err(TransitionError::Kv)?;
        Ok(AllStored { snapshot })
    }

    /// Stores `transition` with `fencing_token` if the key is still at `revision`.
    pub async fn put(
        &self,
        deployment_id: &str,
        transition: &Transition,
        fencing_token: u64,
        revision: u64,
    ) -> Result<u64, TransitionError> {
        self.write(deployment_id, Some(transition), fencing_token, revision)
            .await
    }

    /// Removes the transition if the key is still at `revision`, keeping `fencing_token`.
    pub async fn remove(
        &self,
        deployment_id: &str,
        fencing_token: u64,
        revision: u64,
    ) -> Result<(), TransitionError> {
        if fencing_token > 0 {
            return self
                .write(deployment_id, None, fencing_token, revision)
                .await
                .map(drop);
        }
        self.kv
            .delete_expect_revision(deployment_id, Some(revision))
            .await
            .map_err(|e| match slipway_nats::kv::is_conflict(&e) {
                true => TransitionError::Conflict,
                false => TransitionError::Kv(e.into()),
            })
    }

    async fn write(
        &self,
        deployment_id: &str,
        transition: Option<&Transition>,
        fencing_token: u64,
        revision: u64,
    ) -> Result<u64, TransitionError> {
        let stored = Stored {
            transition: transition.cloned(),
            fencing_token,
        };
        let value = rmp_serde::to_vec_named(&stored)
            .map_err(|e| TransitionError::Kv(e.into()))?
            .into();
        self.kv
            .update(deployment_id, value, revision)
            .await
            .map_err(|e| match slipway_nats::kv::is_conflict(&e) {
                true => TransitionError::Conflict,
                false => TransitionError::Kv(e.into()),
            })
    }

    /// The transition first scheduled with this idempotency key, if remembered.
    pub async fn remembered(
        &self,
        deployment_id: &str,
        key: &str,
    ) -> Result<Option<Transition>, TransitionError> {
        let k = transition_keys::idempotency(deployment_id, key);
        match slipway_nats::kv::latest(&self.kv, &k)
            .await
            .map_err(TransitionError::Kv)?
        {
            Some(e) if e.operation == kv::Operation::Put && !e.value.is_empty() => {
                Ok(Some(decode(&k, &e.value)?))
            }
            _ => Ok(None),
        }
    }

    /// Remembers the transition an idempotency key produced; the first writer wins and the
    /// record expires after the idempotency TTL.
    pub async fn remember(
        &self,
        deployment_id: &str,
        transition: &Transition,
    ) -> Result<(), TransitionError> {
        let k = transition_keys::idempotency(deployment_id, &transition.idempotency_key);
        let value = rmp_serde::to_vec_named(transition)
            .map_err(|e| TransitionError::Kv(e.into()))?
            .into();
        slipway_nats::kv::create(&self.js, &self.kv, &k, value, Some(self.idempotency_ttl))
            .await
            .map(drop)
            .map_err(TransitionError::Kv)
    }
}

/// Every deployment's stored state, from [`Transitions::all`].
pub struct AllStored {
    snapshot: slipway_nats::kv::Snapshot,
}

impl AllStored {
    /// The deployments of the next (at most) `n` keys (a chunk may hold none: idempotency
    /// records only); `None` at the end.
    pub async fn next_chunk(
        &mut self,
        n: usize,
    ) -> Result<Option<Vec<(String, Current)>>, TransitionError> {
        let entries = self
            .snapshot
            .next_batch(n)
            .await
            .map_err(TransitionError::Kv)?;
        if entries.is_empty() {
            return Ok(None);
        }
        let mut chunk = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(deployment_id) = transition_keys::deployment_of(&entry.key) {
                let deployment_id = deployment_id.to_string();
                let current = current_of(&deployment_id, Some(entry))?;
                chunk.push((deployment_id, current));
            }
        }
        Ok(Some(chunk))
    }
}

/// What a key's last entry (`None`: never written) holds.
fn current_of(deployment_id: &str, entry: Option<kv::Entry>) -> Result<Current, TransitionError> {
    Ok(match entry {
        None => Current::none(),
        Some(e) if e.operation != kv::Operation::Put => Current {
            transition: None,
            fencing_token: 0,
            revision: e.revision,
        },
        Some(e) => {
            let stored: Stored = decode(deployment_id, &e.value)?;
            Current {
                transition: stored.transition,
                fencing_token: stored.fencing_token,
                revision: e.revision,
            }
        }
    })
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, TransitionError> {
    rmp_serde::from_slice(value).map_err(|source| TransitionError::Corrupt {
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition() -> Transition {
        Transition {
            nonce: "n1".into(),
            state: "standby".into(),
            fires_at_ms: 5,
            idempotency_key: "k".into(),
            applying: false,
        }
    }

    /// Records written before fencing (a bare transition) still read, with no token; a
    /// cleared record keeps only its token.
    #[test]
    fn stored_records_old_and_new() {
        let old = rmp_serde::to_vec_named(&transition()).unwrap();
        let stored: Stored = decode("dep", &old).unwrap();
        assert_eq!(stored.transition, Some(transition()));
        assert_eq!(stored.fencing_token, 0);

        let cleared = Stored {
            transition: None,
            fencing_token: 7,
        };
        let stored: Stored = decode("dep", &rmp_serde::to_vec_named(&cleared).unwrap()).unwrap();
        assert_eq!((stored.transition, stored.fencing_token), (None, 7));
    }

    #[test]
    fn an_older_token_is_refused_and_none_is_unfenced() {
        let current = Current {
            transition: None,
            fencing_token: 7,
            revision: 3,
        };
        assert_eq!(current.fence(0), Ok(7));
        assert_eq!(current.fence(7), Ok(7));
        assert_eq!(current.fence(9), Ok(9));
        assert_eq!(current.fence(6), Err(7));
    }
}
