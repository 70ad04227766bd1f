//! A durable workflow engine on JetStream only (ARCHITECTURE.md "Durability model").
//!
//! - An invocation is a message on the work-queue stream `SLIPWAY_WORKFLOWS`
//!   (`slipway.workflows.<kind>.<workflow_id>`), deduplicated by workflow id.
//! - Workers share one durable pull consumer; a worker keeps its message with in-progress
//!   acks while the workflow runs, so if it dies the message is redelivered and another
//!   worker resumes it.
//! - The record in KV `slipway_workflows` holds the input and a MessagePack journal of every
//!   completed step's result, written by compare-and-set before the next step runs; a resumed
//!   run replays journaled steps instead of running them again.
//! - Terminal step errors, or retryable ones that exhaust their attempts, fail the workflow,
//!   and only then does its failure handler run (also durably: a crash in it runs it again).
//!
//! A workflow is an async function of a [`Context`] and its input:
//! ```ignore
//! impl Workflow for Hello {
//!     const KIND: &'static str = "hello";
//!     type Input = String;
//!     type Output = String;
//!     async fn run(&self, ctx: &mut Context, name: String) -> Result<String, WorkflowError> {
//!         let id: String = ctx.step("draw_id", || async { Ok(ids::new("x")) }).await?;
//!         Ok(format!("{name} {id}"))
//!     }
//! }
//! ```

mod context;
mod error;
mod finishes;
mod record;
mod worker;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use async_nats::{
    jetstream::{self, kv},
    HeaderMap,
};
use backon::ExponentialBuilder;
use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use slipway_core::time::now_ms;
use slipway_nats::provision::{LEASES, WORKFLOW_RECORDS};

pub use context::Context;
pub use error::{EngineError, StepError, StepResultExt, WorkflowError};
pub use record::{EventScope, Status, StepRecord, StepStatus, WorkflowRecord};
pub use slipway_nats::lease::{Holder, Lease, LeaseError, Leases};

/// A durable workflow. `run` must be deterministic apart from its steps: on resume it runs
/// again from the top, and each completed step returns its journaled result.
pub trait Workflow: Send + Sync + 'static {
    const KIND: &'static str;
    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Output: Serialize + DeserializeOwned + Send + 'static;

    fn run(
        &self,
        ctx: &mut Context,
        input: Self::Input,
    ) -> impl Future<Output = Result<Self::Output, WorkflowError>> + Send;

    /// Runs once the workflow has failed terminally (never on a retried attempt); must be
    /// idempotent, as a crash runs it again.
    fn on_failure(
        &self,
        _input: &Self::Input,
        _failure: &Failure<'_>,
    ) -> impl Future<Output = Result<(), StepError>> + Send {
        async { Ok(()) }
    }
}

/// What a failure handler is told about the failed workflow.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub workflow_id: &'a str,
    pub reason: &'a str,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The durable consumer's name, defined in `nats/consumers/SLIPWAY_WORKFLOWS.<name>.json`.
    pub consumer: String,
    /// How long a worker may go silent before its invocation is redelivered; in-progress
    /// acks go out three times per period.
    pub ack_wait: Duration,
    /// How long a dead holder's lease blocks others.
    pub lease_ttl: Duration,
    /// Retries of a step that fails retryably.
    pub retry: ExponentialBuilder,
    /// The delay between retries of a step past the commit point once `retry` is spent.
    pub retry_cap: Duration,
    /// How long the record of a finished (completed or failed) workflow is kept: its last
    /// write carries this as a per-message TTL, and JetStream removes it then.
    pub record_retention: Duration,
}

impl EngineConfig {
    pub fn new(consumer: &str) -> Self {
        Self {
            consumer: consumer.to_string(),
            ack_wait: Duration::from_secs(3),
            lease_ttl: Duration::from_secs(15),
            retry: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_max_times(6)
                .with_jitter(),
            retry_cap: Duration::from_secs(10),
            record_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// A type-erased workflow: input and output travel as MessagePack.
trait Erased: Send + Sync {
    fn run(
        self: Arc<Self>,
        ctx: Context,
    ) -> BoxFuture<'static, (Context, Result<Vec<u8>, WorkflowError>)>;
    fn on_failure(
        self: Arc<Self>,
        workflow_id: String,
        input: Vec<u8>,
        reason: String,
    ) -> BoxFuture<'static, Result<(), StepError>>;
}

struct Typed<W>(W);

impl<W: Workflow> Erased for Typed<W> {
    fn run(
        self: Arc<Self>,
        mut ctx: Context,
    ) -> BoxFuture<'static, (Context, Result<Vec<u8>, WorkflowError>)> {
        Box::pin(async move {
            let result = match rmp_serde::from_slice::<W::Input>(&ctx.record.input) {
                Err(e) => Err(WorkflowError::Failed(format!("undecodable input: {e}"))),
                Ok(input) => match self.0.run(&mut ctx, input).await {
                    Ok(output) => rmp_serde::to_vec_named(&output)
                        .map_err(|e| WorkflowError::Failed(format!("unencodable output: {e}"))),
                    Err(e) => Err(e),
                },
            };
            (ctx, result)
        })
    }

    fn on_failure(
        self: Arc<Self>,
        workflow_id: String,
        input: Vec<u8>,
        reason: String,
    ) -> BoxFuture<'static, Result<(), StepError>> {
        Box::pin(async move {
            let failure = Failure {
                workflow_id: &workflow_id,
                reason: &reason,
            };
            match rmp_serde::from_slice::<W::Input>(&input) {
                Ok(input) => self.0.on_failure(&input, &failure).await,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable input: the failure handler cannot run");
                    Ok(())
                }
            }
        })
    }
}

pub(crate) struct Shared {
    js: jetstream::Context,
    records: kv::Store,
    leases: Leases,
    config: EngineConfig,
    workflows: HashMap<&'static str, Arc<dyn Erased>>,
    finishes: Arc<finishes::Finishes>,
}

/// Runs `op` until it succeeds or [`slipway_nats::retry::failover`] is spent: a stream with no
/// leader for a few seconds (an election on a cluster) answers "no responders" or not at all.
/// `op` must be safe to repeat.
async fn riding_out_failover<T, F, Fut>(mut op: F) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, async_nats::Error>>,
{
    let mut delays = slipway_nats::retry::failover();
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) => match delays.next() {
                Some(delay) => {
                    tracing::debug!(error = %e, "JetStream unavailable; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(EngineError::Nats(e)),
            },
        }
    }
}

/// Starts workflows, reads their records, and (with [`Engine::run_workers`]) runs them.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

pub struct EngineBuilder {
    js: jetstream::Context,
    config: EngineConfig,
    workflows: HashMap<&'static str, Arc<dyn Erased>>,
}

impl EngineBuilder {
    pub fn register<W: Workflow>(mut self, workflow: W) -> Self {
        self.workflows.insert(W::KIND, Arc::new(Typed(workflow)));
        self
    }

    /// Needs the streams and buckets of `nats/` provisioned.
    pub async fn build(self) -> Result<Engine, EngineError> {
        let records = self
            .js
            .get_key_value(WORKFLOW_RECORDS)
            .await
            .map_err(EngineError::nats)?;
        let leases = self
            .js
            .get_key_value(LEASES)
            .await
            .map_err(EngineError::nats)?;
        Ok(Engine {
            shared: Arc::new(Shared {
                leases: Leases::new(leases, self.config.lease_ttl),
                js: self.js,
                records,
                config: self.config,
                workflows: self.workflows,
                finishes: Arc::default(),
            }),
        })
    }
}

impl Engine {
    pub fn builder(js: jetstream::Context, config: EngineConfig) -> EngineBuilder {
        EngineBuilder {
            js,
            config,
            workflows: HashMap::new(),
        }
    }

    /// Starts workflow `W` with id `workflow_id` unless it exists already (then this is a
    /// no-op, however often it is called): the record is created first, then the invocation
    /// is published with the workflow id as its message id.
    pub async fn start<W: Workflow>(
        &self,
        workflow_id: &str,
        key: &str,
        input: &W::Input,
        scope: Option<EventScope>,
    ) -> Result<(), EngineError> {
        let now = now_ms();
        let record = WorkflowRecord {
            id: workflow_id.to_string(),
            kind: W::KIND.to_string(),
            key: key.to_string(),
            status: Status::Pending,
            input: rmp_serde::to_vec_named(input)?,
            scope,
            steps: Vec::new(),
            output: Vec::new(),
            error: None,
            runs: 0,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let encoded: bytes::Bytes = rmp_serde::to_vec_named(&record)?.into();
        let key = record::key(workflow_id);
        riding_out_failover(|| {
            let shared = &self.shared;
            slipway_nats::kv::create(&shared.js, &shared.records, &key, encoded.clone(), None)
        })
        .await?;
        self.publish(W::KIND, workflow_id, workflow_id).await
    }

    /// Publishes the invocation of workflow `W` again, under a message id of its own, so it is
    /// delivered even inside the stream's duplicate window (a second `start` is deduplicated):
    /// for a workflow whose record exists but that no worker has run, its first invocation
    /// lost. A redundant invocation is harmless: a worker acks that of a finished workflow,
    /// and two runs of one workflow fence each other.
    pub async fn redeliver<W: Workflow>(&self, workflow_id: &str) -> Result<(), EngineError> {
        let message_id = format!("{workflow_id}.redelivered.{}", now_ms());
        self.publish(W::KIND, workflow_id, &message_id).await
    }

    async fn publish(
        &self,
        kind: &str,
        workflow_id: &str,
        message_id: &str,
    ) -> Result<(), EngineError> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        let subject = slipway_core::subjects::workflow(kind, workflow_id);
        // Deduplicated by its message id: publishing again after an unanswered attempt is safe.
        riding_out_failover(|| async {
            self.shared
                .js
                .publish_with_headers(subject.clone(), headers.clone(), bytes::Bytes::new())
                .await?
                .await?;
            Ok(())
        })
        .await
    }

    /// The workflow's record as the stream leader has it; a leader election on a cluster is
    /// ridden out (a wait's reads came back "timed out" while the records' leader was away).
    pub async fn get(&self, workflow_id: &str) -> Result<Option<WorkflowRecord>, EngineError> {
        let key = record::key(workflow_id);
        let records = &self.shared.records;
        let entry = riding_out_failover(|| slipway_nats::kv::latest(records, &key)).await?;
        Ok(worker::decode(entry)?.map(|(record, _)| record))
    }

    /// The record once the workflow has finished, or as it is when `timeout` has passed.
    /// Waits share one watch of finished records (see `finishes`): any number may run at once.
    pub async fn wait(
        &self,
        workflow_id: &str,
        timeout: Duration,
    ) -> Result<WorkflowRecord, EngineError> {
        let shared = &self.shared;
        let waiter = shared
            .finishes
            .register(&shared.js, &shared.records, &record::key(workflow_id))
            .await
            .map_err(EngineError::Nats)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut timed_out = false;
        loop {
            // Listening before reading: a finish written after the read is not missed.
            let finished = waiter.notify.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let record = self
                .get(workflow_id)
                .await?
                .ok_or_else(|| EngineError::NotFound(workflow_id.to_string()))?;
            if record.status.is_finished() || timed_out {
                return Ok(record);
            }
            timed_out = tokio::time::timeout_at(deadline, finished).await.is_err();
        }
    }

    /// Runs the registered workflows for ever, on the shared durable consumer.
    pub async fn run_workers(self) {
        worker::consume(self.shared).await
    }
}
