//! The context a workflow runs with: `step` journals each result before the next step runs
//! and replays journaled results on resume; `lease` takes a lease held until the run ends or
//! the workflow commits.
//!
//! Leases and replay: the steps journaled after a `lease` call were decided under that
//! holding. Each run is its own holder. A resumed run that takes the lease after another
//! holder had it must not replay them (the state they were decided on may be gone), so they
//! are dropped from the journal and run again under the new epoch; one that takes it straight
//! from an earlier run of its workflow replays them, but only if its journal is the newest
//! (an earlier run that is still alive may have saved more since) — unless the workflow had
//! reached its commit point ([`Context::commit`]): a committed workflow never takes its lease
//! again, and the steps after the commit are retried until they succeed instead of failing
//! the workflow.

use std::{future::Future, sync::Arc, time::Duration};

use backon::BackoffBuilder;
use serde::{de::DeserializeOwned, Serialize};
use slipway_core::{events::Event, fault, time::now_ms};
use slipway_nats::lease::{Holder, Lease};

use crate::{
    record::{self, StepRecord, StepStatus, WorkflowRecord},
    Shared, Status, StepError, WorkflowError,
};

pub struct Context {
    pub(crate) shared: Arc<Shared>,
    pub(crate) record: WorkflowRecord,
    /// The KV revision the record was read or last written at: every write compares and
    /// sets against it, so two runs of one workflow can never both advance it.
    pub(crate) revision: u64,
    cursor: usize,
    leases: Vec<Lease>,
    /// Past the commit point: steps retry until they succeed.
    committed: bool,
    /// The last journaled step's event, sent (before the next step runs, so the events of
    /// what that step does come after it) but not yet known stored: the next journal write
    /// waits for it alongside its own, so the two fsyncs overlap instead of adding up. At most
    /// one step's event is ever unconfirmed, and a resumed run publishes the last two again.
    event_in_flight: Option<slipway_nats::events::Sent>,
}

impl Context {
    pub(crate) fn new(shared: Arc<Shared>, record: WorkflowRecord, revision: u64) -> Self {
        Self {
            shared,
            record,
            revision,
            cursor: 0,
            leases: Vec::new(),
            committed: false,
            event_in_flight: None,
        }
    }

    pub fn workflow_id(&self) -> &str {
        &self.record.id
    }

    /// The deployment the workflow tells its events about, as given at start.
    pub fn scope(&self) -> Option<&crate::EventScope> {
        self.record.scope.as_ref()
    }

    /// Runs `f` as step `name`, or returns its journaled result when an earlier run
    /// completed it. A retryable error is retried with backoff until the step's attempts
    /// run out; then, or on a terminal error, the workflow fails. Past the commit point,
    /// every error is retried (with capped backoff) until the step succeeds.
    ///
    /// Anything random or time-based belongs inside a step, so that a replay sees the same
    /// value; side effects must be idempotent, because a crash after the effect and before
    /// the journal write runs the step again.
    pub async fn step<T, F, Fut>(&mut self, name: &str, f: F) -> Result<T, WorkflowError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        self.run_step(name, f, false).await
    }

    /// The workflow's commit point: step `name`, after which the new state is what users see.
    /// Once it is journaled the workflow's leases are released (what follows needs none, and a
    /// resumed run does not take them again) and every later step retries until it succeeds.
    pub async fn commit<T, F, Fut>(&mut self, name: &str, f: F) -> Result<T, WorkflowError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let value = self.run_step(name, f, true).await?;
        self.committed = true;
        self.release_all().await;
        Ok(value)
    }

    async fn run_step<T, F, Fut>(
        &mut self,
        name: &str,
        mut f: F,
        commit: bool,
    ) -> Result<T, WorkflowError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let index = self.cursor;
        self.cursor += 1;
        if let Some(done) = self.record.steps.get(index) {
            if done.name != name {
                return Err(WorkflowError::Failed(format!(
                    "journal mismatch at step {index}: the journal has {:?}, the workflow asks for {name:?}",
                    done.name
                )));
            }
            if done.status == StepStatus::Completed {
                self.committed |= done.commit;
                return rmp_serde::from_slice(&done.result).map_err(|e| {
                    WorkflowError::Failed(format!("journaled result of step {name}: {e}"))
                });
            }
            self.record.steps.truncate(index);
        }

        self.check_leases()?;
        let started_at_ms = now_ms();
        let mut delays = self.shared.config.retry.build();
        let mut attempts = 0u32;
        let outcome = loop {
            attempts += 1;
            let error = match f().await {
                Ok(value) => break Ok(value),
                Err(StepError::Fenced(message)) => {
                    return Err(WorkflowError::Aborted(format!(
                        "step {name}: the lease was taken over: {message}"
                    )))
                }
                Err(e) => e,
            };
            if self.committed {
                // Past the commit point the workflow cannot fail any more: it completes.
                let delay = delays.next().unwrap_or(self.shared.config.retry_cap);
                if matches!(error, StepError::Terminal(_)) {
                    tracing::error!(step = name, attempts, %error, retry_in = ?delay, "step after the commit point failed; retrying until it succeeds");
                } else {
                    tracing::warn!(step = name, attempts, %error, retry_in = ?delay, "step failed; retrying");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
            match error {
                StepError::Terminal(message) | StepError::Fenced(message) => break Err(message),
                StepError::Retryable(message) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(step = name, attempts, error = %message, retry_in = ?delay, "step failed; retrying");
                        tokio::time::sleep(delay).await;
                        self.check_leases()?;
                    }
                    None => {
                        break Err(format!(
                            "step {name} failed after {attempts} attempts: {message}"
                        ))
                    }
                },
            }
        };

        let kind = self.record.kind.clone();
        let epoch = self.leases.iter().map(Lease::epoch).max().unwrap_or(0);
        match outcome {
            Ok(value) => {
                let result = rmp_serde::to_vec_named(&value)
                    .map_err(|e| WorkflowError::Failed(format!("result of step {name}: {e}")))?;
                fault::point(&format!("{kind}.{name}.before_journal"));
                self.record.steps.push(StepRecord {
                    name: name.to_string(),
                    status: StepStatus::Completed,
                    attempts,
                    started_at_ms,
                    finished_at_ms: now_ms(),
                    result,
                    error: None,
                    epoch,
                    commit,
                });
                self.save().await?;
                fault::point(&format!("{kind}.{name}.after_journal"));
                self.event_in_flight = self.send_step_event(index).await?;
                tracing::debug!(step = name, attempts, "step completed");
                Ok(value)
            }
            Err(message) => {
                self.record.steps.push(StepRecord {
                    name: name.to_string(),
                    status: StepStatus::Failed,
                    attempts,
                    started_at_ms,
                    finished_at_ms: now_ms(),
                    result: Vec::new(),
                    error: Some(message.clone()),
                    epoch,
                    commit,
                });
                Err(WorkflowError::Failed(message))
            }
        }
    }

    /// Takes the lease `name` for this workflow, waiting while another holds it; held until
    /// the commit point or the end of the run. Returns the
    /// acquisition's epoch, the fencing token every write made under the lease must carry;
    /// `None` when the journal shows the workflow past its commit point (the lease is not
    /// taken again: only journaled results and post-commit steps remain).
    ///
    /// A resumed run takes the lease from an earlier run of its workflow at once and replays
    /// what that run decided, if its journal is still the newest (else it stops here, before
    /// it acts: another run saved since). If another holder had the lease in between, the
    /// steps journaled after this point are dropped and run again: they were decided on a
    /// state that may no longer hold. The shortened journal is written at once.
    ///
    /// `register` is called with the new epoch right after the lease is taken, before
    /// anything else, so the stores that fence writes refuse a former holder's from then on —
    /// also when this run stops right here.
    pub async fn lease<F, Fut>(
        &mut self,
        name: &str,
        register: F,
    ) -> Result<Option<u64>, WorkflowError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<(), WorkflowError>>,
    {
        let later = self.record.steps.get(self.cursor..).unwrap_or_default();
        if later
            .iter()
            .any(|s| s.commit && s.status == StepStatus::Completed)
        {
            return Ok(None);
        }
        let lease = self
            .shared
            .leases
            .acquire(name, &self.holder())
            .await
            .map_err(|e| WorkflowError::Aborted(format!("cannot take lease {name}: {e}")))?;
        let (epoch, continuous) = (lease.epoch(), lease.is_continuous());
        self.leases.push(lease);
        register(epoch).await?;
        if self.record.steps.len() > self.cursor {
            if continuous {
                self.check_journal_is_newest().await?;
            } else {
                let dropped: Vec<&str> = self.record.steps[self.cursor..]
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                tracing::warn!(
                    lease = name,
                    epoch,
                    ?dropped,
                    "another holder had the lease since these steps were decided; deciding them again"
                );
                self.record.steps.truncate(self.cursor);
                self.save().await?;
            }
        }
        Ok(Some(epoch))
    }

    /// Stops this run if another run of the workflow saved the journal since this one read
    /// it: what this run would replay may not be all that was decided.
    async fn check_journal_is_newest(&self) -> Result<(), WorkflowError> {
        let key = record::key(&self.record.id);
        let entry = slipway_nats::kv::latest(&self.shared.records, &key)
            .await
            .map_err(|e| WorkflowError::Aborted(format!("cannot read the journal: {e}")))?;
        match entry {
            Some(e) if e.revision == self.revision => Ok(()),
            _ => Err(WorkflowError::Aborted(
                "another run of this workflow advanced its journal".into(),
            )),
        }
    }

    /// This run as a lease holder.
    fn holder(&self) -> Holder {
        Holder {
            name: self.record.id.clone(),
            run: self.record.runs,
        }
    }

    pub(crate) async fn release_all(&mut self) {
        for lease in self.leases.drain(..) {
            lease.release().await;
        }
    }

    fn check_leases(&self) -> Result<(), WorkflowError> {
        match self.leases.iter().find(|l| l.is_lost()) {
            Some(l) => Err(WorkflowError::Aborted(format!(
                "lease {} was lost",
                l.name()
            ))),
            None => Ok(()),
        }
    }

    /// Writes the record ([`write_record`](Self::write_record)) while the previous step's
    /// event is being stored; fails if either does.
    pub(crate) async fn save(&mut self) -> Result<(), WorkflowError> {
        let in_flight = self.event_in_flight.take();
        let told = async move {
            match in_flight {
                Some(sent) => sent
                    .stored()
                    .await
                    .map_err(|e| WorkflowError::Aborted(e.to_string())),
                None => Ok(()),
            }
        };
        let (saved, told) = tokio::join!(self.write_record(), told);
        saved.and(told)
    }

    /// Writes the record by compare-and-set. Errors a cluster throws for a few seconds (a
    /// leader election, a timeout) are retried; as a write that timed out may have landed, a
    /// conflict after one is checked against what the leader holds: our own record there is
    /// a success.
    async fn write_record(&mut self) -> Result<(), WorkflowError> {
        self.record.updated_at_ms = now_ms();
        let payload: bytes::Bytes = rmp_serde::to_vec_named(&self.record)
            .map_err(|e| WorkflowError::Aborted(format!("cannot encode the record: {e}")))?
            .into();
        let key = record::key(&self.record.id);
        let finished = matches!(self.record.status, Status::Completed | Status::Failed);
        let ttl = finished.then_some(self.shared.config.record_retention);
        let mut delays = slipway_nats::retry::failover();
        let mut ambiguous = false;
        loop {
            match self.write(&key, payload.clone(), ttl).await {
                Ok(revision) => {
                    self.revision = revision;
                    return Ok(());
                }
                Err(Write::Conflict) if ambiguous => {
                    match slipway_nats::kv::latest(&self.shared.records, &key).await {
                        Ok(Some(e)) if e.value == payload => {
                            self.revision = e.revision;
                            return Ok(());
                        }
                        Ok(_) => {
                            return Err(WorkflowError::Aborted(
                                "another run of this workflow advanced its journal".into(),
                            ))
                        }
                        Err(e) => self.pause(&mut delays, e.to_string()).await?,
                    }
                }
                Err(Write::Conflict) => {
                    return Err(WorkflowError::Aborted(
                        "another run of this workflow advanced its journal".into(),
                    ))
                }
                Err(Write::Other(e)) => {
                    ambiguous = true;
                    self.pause(&mut delays, e).await?;
                }
            }
        }
    }

    async fn pause(
        &self,
        delays: &mut impl Iterator<Item = Duration>,
        error: String,
    ) -> Result<(), WorkflowError> {
        match delays.next() {
            Some(delay) => {
                tracing::warn!(%error, "cannot write the journal; retrying");
                tokio::time::sleep(delay).await;
                Ok(())
            }
            None => Err(WorkflowError::Aborted(format!(
                "cannot write the journal: {error}"
            ))),
        }
    }

    /// One compare-and-set write of the record at `key` over revision `self.revision`; with
    /// `ttl`, JetStream removes the record that long after (`Nats-TTL`: a finished workflow's
    /// record is kept for the record retention, then goes without a sweep).
    async fn write(
        &self,
        key: &str,
        payload: bytes::Bytes,
        ttl: Option<Duration>,
    ) -> Result<u64, Write> {
        let shared = &self.shared;
        slipway_nats::kv::write_if(
            &shared.js,
            &shared.records,
            key,
            payload,
            self.revision,
            ttl,
        )
        .await
        .map_err(|e| match e {
            slipway_nats::kv::WriteError::Conflict => Write::Conflict,
            slipway_nats::kv::WriteError::Other(e) => Write::Other(e.to_string()),
        })
    }

    /// Sends the `step` event of journaled step `index` (None: the workflow tells no
    /// deployment's story, or the step did not complete), deduplicated by workflow, index and
    /// epoch, so a resumed run can publish it again safely.
    async fn send_step_event(
        &self,
        index: usize,
    ) -> Result<Option<slipway_nats::events::Sent>, WorkflowError> {
        let Some(scope) = self.record.scope.as_ref() else {
            return Ok(None);
        };
        let Some(step) = self
            .record
            .steps
            .get(index)
            .filter(|s| s.status == StepStatus::Completed)
        else {
            return Ok(None);
        };
        #[derive(Serialize)]
        struct StepDone<'a> {
            workflow_id: &'a str,
            kind: &'a str,
            step: &'a str,
            index: usize,
            attempts: u32,
        }
        let event = Event {
            kind: "step",
            at_ms: step.finished_at_ms,
            workspace_id: scope.workspace_id.clone(),
            project_id: scope.project_id.clone(),
            deployment_id: scope.deployment_id.clone(),
            environment_slug: scope.environment_slug.clone(),
            detail: StepDone {
                workflow_id: &self.record.id,
                kind: &self.record.kind,
                step: &step.name,
                index,
                attempts: step.attempts,
            },
        };
        // A step decided again under a later holding is a new event.
        let msg_id = match step.epoch {
            0 => format!("step.{}.{index}", self.record.id),
            epoch => format!("step.{}.{index}.{epoch}", self.record.id),
        };
        slipway_nats::events::send(&self.shared.js, &event, &msg_id)
            .await
            .map(Some)
            .map_err(|e| WorkflowError::Aborted(e.to_string()))
    }

    /// Publishes the events of the last two journaled steps again: a crash may have cut off
    /// the last one's, and the one before it was still unconfirmed while the last was
    /// journaled.
    pub(crate) async fn republish_last_steps(&self) -> Result<(), WorkflowError> {
        let n = self.record.steps.len();
        for index in n.saturating_sub(2)..n {
            if let Some(sent) = self.send_step_event(index).await? {
                sent.stored()
                    .await
                    .map_err(|e| WorkflowError::Aborted(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// Why a record write did not go through.
enum Write {
    /// Another run wrote the record since we read it.
    Conflict,
    Other(String),
}
