//! Instance reports in `slipway_instances`, fenced by the region lease's epoch.
//!
//! Two agents of a region can both believe they are active for a moment: one that stalled or
//! lost NATS past its lease TTL carries on until it looks at the lease again, while its
//! successor has taken over and adopted the instances. Without a fence, a report the old one
//! writes late (a restart it made, a status it saw) lands over the new one's and stays there,
//! since the new agent writes only when its own view changes: the route table then names an
//! address nobody supervises.
//!
//! So every report carries the epoch of the lease it was written under, and every write is a
//! compare-and-set on the revision the writer last wrote or read. Before writing over a report
//! it has not written, an agent reads it: one written under a later epoch means this agent is
//! no longer the region's active one ([`ReportError::Deposed`]), and it writes nothing. Once
//! the active agent has written a key, an older agent's compare-and-set on that key fails, and
//! its next read finds the later epoch.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use async_nats::jetstream::kv;
use slipway_core::{
    krane::{instances_key, InstancesReport, ReportedInstance},
    time::now_ms,
};
use tokio::sync::Notify;

/// Why a report was not written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The key holds a report of the region's agent under a later lease epoch.
    #[error("the region's agent of lease epoch {theirs} reports it now (this agent's epoch is {ours}): this agent is no longer active")]
    Deposed { ours: u64, theirs: u64 },
    /// Other writes kept coming between the read and the write.
    #[error("the report kept changing between reading and writing it")]
    Contended,
    #[error("cannot encode the report")]
    Encode(#[source] serde_json::Error),
    #[error("JetStream")]
    Nats(#[source] async_nats::Error),
}

/// Writes this agent's reports under its lease epoch; tells the agent when it finds itself
/// deposed.
#[derive(Clone)]
pub struct Reporter {
    kv: kv::Store,
    region: String,
    epoch: Arc<AtomicU64>,
    deposed: Arc<Notify>,
}

impl Reporter {
    pub fn new(kv: kv::Store, region: &str, epoch: u64) -> Self {
        Self {
            kv,
            region: region.to_string(),
            epoch: Arc::new(AtomicU64::new(epoch)),
            deposed: Arc::new(Notify::new()),
        }
    }

    /// The lease was taken again (a later epoch, same agent): later writes carry it.
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// Resolves once a write found a report of a later epoch.
    pub async fn deposed(&self) {
        self.deposed.notified().await
    }

    /// The report of `deployment_id` in this agent's region.
    pub fn of(&self, deployment_id: &str) -> Report {
        Report {
            reporter: self.clone(),
            key: instances_key(deployment_id, &self.region),
            revision: None,
        }
    }
}

/// One deployment's report, as one supervisor writes it.
pub struct Report {
    reporter: Reporter,
    key: String,
    /// The key's revision as this supervisor last wrote or read it (`None`: read it first).
    revision: Option<u64>,
}

/// How many compare-and-set conflicts in a row a write tolerates before it gives up (the
/// supervisor tries again at its next check).
const ATTEMPTS: usize = 3;

impl Report {
    /// Writes `instances`, carried out for document `version`.
    pub async fn put(
        &mut self,
        instances: &[ReportedInstance],
        version: i64,
    ) -> Result<(), ReportError> {
        let report = InstancesReport {
            instances: instances.to_vec(),
            reported_at_ms: now_ms(),
            version,
            epoch: self.epoch(),
        };
        let payload: bytes::Bytes = serde_json::to_vec(&report)
            .map_err(ReportError::Encode)?
            .into();
        for _ in 0..ATTEMPTS {
            let revision = self.base().await?;
            match self
                .reporter
                .kv
                .update(self.key.as_str(), payload.clone(), revision)
                .await
            {
                Ok(written) => {
                    self.revision = Some(written);
                    return Ok(());
                }
                Err(e) => self.failed(e.into())?,
            }
        }
        Err(ReportError::Contended)
    }

    /// Writes an empty report for `version` unless the key holds one already: a supervisor of
    /// a stopped document that stopped nothing leaves the report of what did stop.
    pub async fn put_if_absent(&mut self, version: i64) -> Result<(), ReportError> {
        let entry = self.entry().await?;
        // What was read is the base of the write, if there is one: no second read.
        self.revision = Some(entry.as_ref().map_or(0, |e| e.revision));
        if entry.is_some_and(|e| e.operation == kv::Operation::Put) {
            return Ok(());
        }
        self.put(&[], version).await
    }

    /// Removes the report (the deployment was archived: nothing of it runs).
    pub async fn remove(&mut self) -> Result<(), ReportError> {
        for _ in 0..ATTEMPTS {
            let revision = self.base().await?;
            match slipway_nats::kv::remove_at(&self.reporter.kv, &self.key, revision).await {
                Ok(true) => {
                    // The marker's revision is not returned: read it before a later write.
                    self.revision = None;
                    return Ok(());
                }
                Ok(false) => self.revision = None,
                Err(e) => self.failed(e)?,
            }
        }
        Err(ReportError::Contended)
    }

    fn epoch(&self) -> u64 {
        self.reporter.epoch.load(Ordering::SeqCst)
    }

    /// The revision to write over: the one this supervisor last wrote, else the key's
    /// current one once its report is known not to be a later agent's.
    async fn base(&mut self) -> Result<u64, ReportError> {
        if let Some(revision) = self.revision {
            return Ok(revision);
        }
        let revision = self.entry().await?.map_or(0, |e| e.revision);
        self.revision = Some(revision);
        Ok(revision)
    }

    /// The key's entry, after checking it was not written under a later epoch. A direct get:
    /// a lagging replica may answer an older entry, but then the compare-and-set fails.
    async fn entry(&mut self) -> Result<Option<kv::Entry>, ReportError> {
        let entry = self
            .reporter
            .kv
            .entry(self.key.as_str())
            .await
            .map_err(|e| ReportError::Nats(e.into()))?;
        if let Some(e) = entry.as_ref().filter(|e| e.operation == kv::Operation::Put) {
            let theirs = serde_json::from_slice::<InstancesReport>(&e.value)
                .map(|r| r.epoch)
                .unwrap_or(0);
            let ours = self.epoch();
            if theirs > ours {
                self.reporter.deposed.notify_one();
                return Err(ReportError::Deposed { ours, theirs });
            }
        }
        Ok(entry)
    }

    /// A write failed: a conflict means read the key again; anything else may or may not
    /// have landed, so the key is read again before the next write too.
    fn failed(&mut self, error: async_nats::Error) -> Result<(), ReportError> {
        self.revision = None;
        if slipway_nats::kv::is_conflict(error.as_ref()) {
            Ok(())
        } else {
            Err(ReportError::Nats(error))
        }
    }
}
