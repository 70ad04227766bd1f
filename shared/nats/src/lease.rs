//! Leases in KV `slipway_leases`: a named lock held by one holder at a time, renewed in the
//! background while held, and taken over once its holder stops renewing (it died) and the
//! expiry has passed. Every write is a compare-and-set on the key's revision, so two
//! contenders never both win; a holder that may have lost its lease (its expiry passed
//! without a renewal, so someone may take over any moment) sees `is_lost` and must stop.
//!
//! Every acquisition has an epoch: the KV revision it was written at. Revisions only grow, so
//! a later acquisition always has a larger epoch; writes made under the lease carry it as a
//! fencing token, and a store that has seen a larger one refuses them (BEHAVIOUR.md
//! "Per-project exclusion", fencing).
//!
//! A holder is one run of a workflow (its id and run number): two runs of the same workflow —
//! a resumed one and one that stalled and woke up, or two deliveries at once — fence each
//! other. A later run takes the lease from an earlier run of its own workflow at once (it was
//! handed the workflow, so the earlier run is presumed dead, and if it is not, its writes are
//! refused from now on); an earlier run never takes it from a later one. An acquisition tells
//! whether the lease was its workflow's all along (no other holder wrote or released it since
//! its last holding), so a resumed run knows whether what was decided under it still stands.
//!
//! Expiry times are the holder's clock: hosts should run NTP, and the TTL (seconds) dwarfs
//! any sane skew.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use slipway_core::time::now_ms;
use tokio::task::JoinHandle;

/// Why a lease could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A later run of the same holder holds it: this run is stale.
    #[error("superseded: {0}")]
    Superseded(String),
    #[error("cannot encode a lease: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("JetStream: {0}")]
    Nats(#[source] async_nats::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holding {
    holder: String,
    /// The holder's run: a later run of the same holder may take the lease at once.
    #[serde(default)]
    run: u32,
    expires_at_ms: i64,
}

/// Who holds a lease: a workflow (or any named holder) and its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub run: u32,
}

#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    ttl: Duration,
}

/// A held lease. Dropping it stops the renewal (the lease then expires); [`Lease::release`]
/// frees it at once.
pub struct Lease {
    name: String,
    epoch: u64,
    continuous: bool,
    kv: kv::Store,
    revision: Arc<AtomicU64>,
    tenure: Tenure,
    renewer: JoinHandle<()>,
}

/// Whether a held lease is still its holder's, for tasks that act under it besides the one
/// holding it (a region agent's supervisors): cloned from [`Lease::tenure`], kept up to date
/// by the lease's renewer.
#[derive(Debug, Clone)]
pub struct Tenure {
    /// Another holder took the lease, or a renewal failed past the expiry.
    lost: Arc<AtomicBool>,
    /// The expiry of the last holding written (the holder's clock, ms since the epoch).
    expires_at_ms: Arc<AtomicI64>,
}

impl Tenure {
    fn new(expires_at_ms: i64) -> Self {
        Self {
            lost: Arc::new(AtomicBool::new(false)),
            expires_at_ms: Arc::new(AtomicI64::new(expires_at_ms)),
        }
    }

    /// Whether the lease may be someone else's: taken over, or past its expiry without a
    /// renewal — then another holder may take it any moment, so work under it must stop even
    /// before the renewer has noticed (the renewer itself may be stalled, or waiting on NATS).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || now_ms() >= self.expires_at_ms.load(Ordering::SeqCst)
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl Leases {
    pub fn new(kv: kv::Store, ttl: Duration) -> Self {
        Self { kv, ttl }
    }

    /// Waits until `name` is free, expired, or held by an earlier run of `holder`, and takes
    /// it. Fails with [`LeaseError::Superseded`] if a later run of `holder` holds it.
    ///
    /// Reads go to the stream leader and every write is a compare-and-set on the revision
    /// read; errors a cluster throws for a few seconds (a leader election, a timeout) are
    /// retried. A write that timed out may have landed: if the next read finds this run's
    /// own holding, the lease is taken, but not as continuous (what was there before is no
    /// longer known).
    pub async fn acquire(&self, name: &str, holder: &Holder) -> Result<Lease, LeaseError> {
        let taken = self.take(name, holder, true).await?;
        taken.ok_or_else(|| LeaseError::Superseded(format!("lease {name} is held")))
    }

    /// One look, no waiting: takes `name` as [`acquire`](Self::acquire) would, or `None` if
    /// another holder has it now. A read or write that fails is an error at once.
    pub async fn try_acquire(
        &self,
        name: &str,
        holder: &Holder,
    ) -> Result<Option<Lease>, LeaseError> {
        self.take(name, holder, false).await
    }

    async fn take(
        &self,
        name: &str,
        holder: &Holder,
        wait: bool,
    ) -> Result<Option<Lease>, LeaseError> {
        let key = format!("lease.{name}");
        let mut watch = None;
        let mut transient = if wait {
            crate::retry::failover()
        } else {
            crate::retry::none()
        };
        let mut ambiguous = false;
        loop {
            let entry = match crate::kv::latest(&self.kv, &key).await {
                Ok(entry) => {
                    // A waiter may wait for hours: only errors in a row count.
                    transient = crate::retry::failover();
                    entry
                }
                Err(e) => {
                    pause(&mut transient, &key, e).await?;
                    continue;
                }
            };
            let now = now_ms();
            // `ours`: the last write was this workflow's holding (nobody else held it since).
            let (revision, busy_until, ours) = match entry {
                None => (0, None, false),
                Some(e) if e.operation != kv::Operation::Put => (e.revision, None, false),
                Some(e) => match serde_json::from_slice::<Holding>(&e.value) {
                    Ok(h) if h.holder == holder.name && h.run == holder.run && ambiguous => {
                        // Our own write that timed out landed after all.
                        let held = (e.revision, h.expires_at_ms);
                        return Ok(Some(self.held(key, holder, held, false)));
                    }
                    Ok(h) if h.holder != holder.name && h.expires_at_ms > now => {
                        (e.revision, Some(h.expires_at_ms), false)
                    }
                    Ok(h) if h.holder == holder.name && h.run > holder.run => {
                        return Err(LeaseError::Superseded(format!(
                            "run {} of {} holds lease {name}",
                            h.run, h.holder
                        )))
                    }
                    Ok(h) => (e.revision, None, h.holder == holder.name),
                    Err(_) => (e.revision, None, false),
                },
            };
            if let Some(until) = busy_until {
                if !wait {
                    return Ok(None);
                }
                // Wake on any change of the key (a release), or at the expiry.
                if watch.is_none() {
                    match self.kv.watch(key.as_str()).await {
                        Ok(w) => watch = Some(w),
                        Err(e) => pause(&mut transient, &key, e.into()).await?,
                    }
                    continue; // re-read: it may have changed before the watch started
                }
                let wait = Duration::from_millis((until - now).max(0) as u64 + 5);
                if let Some(w) = watch.as_mut() {
                    let _ = tokio::time::timeout(wait, w.next()).await;
                }
                continue;
            }
            // Revision 0 expects no message at all for the key: a create that a lagging
            // replica cannot mislead.
            let (value, expires_at_ms) = self.holding(holder)?;
            match self.kv.update(key.as_str(), value, revision).await {
                Ok(revision) => {
                    let held = (revision, expires_at_ms);
                    return Ok(Some(self.held(key, holder, held, ours && !ambiguous)));
                }
                Err(e) if crate::kv::is_conflict(&e) => {} // lost a race
                Err(e) => {
                    ambiguous = true;
                    pause(&mut transient, &key, e.into()).await?;
                }
            }
        }
    }

    /// The holding to write for `holder`, and its expiry.
    fn holding(&self, holder: &Holder) -> Result<(bytes::Bytes, i64), LeaseError> {
        let h = Holding {
            holder: holder.name.clone(),
            run: holder.run,
            expires_at_ms: now_ms() + ttl_ms(self.ttl),
        };
        let value = serde_json::to_vec(&h).map_err(LeaseError::Encode)?;
        Ok((value.into(), h.expires_at_ms))
    }

    fn held(
        &self,
        key: String,
        holder: &Holder,
        (epoch, expires_at_ms): (u64, i64),
        continuous: bool,
    ) -> Lease {
        let revision = Arc::new(AtomicU64::new(epoch));
        let tenure = Tenure::new(expires_at_ms);
        let renewer = tokio::spawn(renew(
            self.clone(),
            key.clone(),
            holder.clone(),
            revision.clone(),
            tenure.clone(),
        ));
        Lease {
            name: key,
            epoch,
            continuous,
            kv: self.kv.clone(),
            revision,
            tenure,
            renewer,
        }
    }
}

/// Waits before trying again after an error a cluster may throw for a few seconds; the error
/// once the retries are spent.
async fn pause(
    delays: &mut impl Iterator<Item = Duration>,
    key: &str,
    error: async_nats::Error,
) -> Result<(), LeaseError> {
    match delays.next() {
        Some(delay) => {
            tracing::debug!(lease = %key, %error, "lease read or write failed; retrying");
            tokio::time::sleep(delay).await;
            Ok(())
        }
        None => Err(LeaseError::Nats(error)),
    }
}

/// Renews three times per TTL; gives up (lost) when someone else wrote the key, or when it
/// could not renew before the expiry.
async fn renew(
    leases: Leases,
    key: String,
    holder: Holder,
    revision: Arc<AtomicU64>,
    tenure: Tenure,
) {
    let every = leases.ttl / 3;
    let lost = &tenure.lost;
    loop {
        tokio::time::sleep(every).await;
        let Ok((value, next_expiry)) = leases.holding(&holder) else {
            continue;
        };
        match leases
            .kv
            .update(key.as_str(), value, revision.load(Ordering::SeqCst))
            .await
        {
            Ok(r) => {
                revision.store(r, Ordering::SeqCst);
                tenure.expires_at_ms.store(next_expiry, Ordering::SeqCst);
            }
            Err(e) if crate::kv::is_conflict(&e) => {
                // An earlier renewal that timed out may have landed: then the holding there
                // is still ours.
                if let Some((r, expires_at_ms)) = own_holding(&leases.kv, &key, &holder).await {
                    revision.store(r, Ordering::SeqCst);
                    tenure.expires_at_ms.store(expires_at_ms, Ordering::SeqCst);
                    continue;
                }
                tracing::warn!(lease = %key, "lease taken over by another holder");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) if now_ms() >= tenure.expires_at_ms.load(Ordering::SeqCst) => {
                tracing::warn!(lease = %key, error = %e, "could not renew the lease before it expired");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => tracing::debug!(lease = %key, error = %e, "lease renewal failed; retrying"),
        }
    }
}

/// The revision and expiry of `key` if the leader has this holder's holding there.
async fn own_holding(kv: &kv::Store, key: &str, holder: &Holder) -> Option<(u64, i64)> {
    let entry = crate::kv::latest(kv, key).await.ok()??;
    let h: Holding = serde_json::from_slice(&entry.value).ok()?;
    (entry.operation == kv::Operation::Put && h.holder == holder.name && h.run == holder.run)
        .then_some((entry.revision, h.expires_at_ms))
}

impl Lease {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This acquisition's epoch, the fencing token of writes made under it: larger than the
    /// epoch of every earlier acquisition of the same lease.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether this workflow (this run or an earlier one) held the lease last: nobody else
    /// took it (or released it) in between. False on a first acquisition.
    pub fn is_continuous(&self) -> bool {
        self.continuous
    }

    /// Whether the lease may be someone else's ([`Tenure::is_lost`]): work under it must stop.
    pub fn is_lost(&self) -> bool {
        self.tenure.is_lost()
    }

    /// A view of whether the lease is still held, for other tasks acting under it.
    pub fn tenure(&self) -> Tenure {
        self.tenure.clone()
    }

    /// Frees the lease now (unless it was lost meanwhile).
    pub async fn release(self) {
        self.renewer.abort();
        let revision = self.revision.load(Ordering::SeqCst);
        // Past its expiry but not taken over, it is still deleted (compare-and-set): whoever
        // waits for it need not wait out the expiry.
        if !self.tenure.lost.load(Ordering::SeqCst) {
            if let Err(e) = self
                .kv
                .delete_expect_revision(self.name.as_str(), Some(revision))
                .await
            {
                tracing::debug!(lease = %self.name, error = %e, "lease not released; it expires");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
