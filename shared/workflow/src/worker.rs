//! Workers: the shared durable consumer of `SLIPWAY_WORKFLOWS` (`slipway_nats::consumer`),
//! each invocation kept with in-progress acks while it runs; acked once the workflow has
//! finished (completed, or failed with its failure handler done), handed back (nak) when a
//! run aborts.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use backon::BackoffBuilder;
use slipway_nats::{
    consumer::{self, Disposition, Durable},
    provision::WORKFLOWS,
};
use tracing::Instrument;

use crate::{record, Context, EngineError, Erased, Shared, Status, WorkflowError, WorkflowRecord};

/// The workflow's record as the stream leader has it (a lagging replica may not have the
/// record yet, or an older journal; both would be wrong answers here).
pub(crate) async fn read(
    records: &kv::Store,
    workflow_id: &str,
) -> Result<Option<(WorkflowRecord, u64)>, EngineError> {
    let entry = slipway_nats::kv::latest(records, &record::key(workflow_id))
        .await
        .map_err(EngineError::nats)?;
    decode(entry)
}

/// A record and its revision, from its key's latest entry (None: no record, or deleted).
pub(crate) fn decode(
    entry: Option<kv::Entry>,
) -> Result<Option<(WorkflowRecord, u64)>, EngineError> {
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            Ok(Some((rmp_serde::from_slice(&entry.value)?, entry.revision)))
        }
        _ => Ok(None),
    }
}

pub(crate) async fn consume(shared: Arc<Shared>) {
    let durable = Durable {
        stream: WORKFLOWS,
        name: shared.config.consumer.clone(),
        // A long wait in one workflow holds up no other; the consumer's max_ack_pending
        // bounds how many run at once.
        concurrency: None,
        ack_wait: Some(shared.config.ack_wait),
    };
    consumer::run(shared.js.clone(), durable, |message| {
        let workflow_id = message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let delivered = message.info().map_or(1, |info| info.delivered);
        let span = tracing::info_span!("workflow", workflow_id = %workflow_id, kind = tracing::field::Empty, deployment_id = tracing::field::Empty);
        process(shared.clone(), workflow_id, delivered).instrument(span)
    })
    .await
}

/// How often an invocation whose record cannot be found is looked at again before it is
/// dropped. The record is written before the invocation is published and read from the
/// leader, so a missing record means it expired (the workflow finished long ago); the few
/// extra looks cover a leader election between the two.
const UNKNOWN_LOOKS: i64 = 5;

async fn process(shared: Arc<Shared>, workflow_id: String, delivered: i64) -> Disposition {
    let (record, revision) = match read(&shared.records, &workflow_id).await {
        Ok(Some(found)) => found,
        Ok(None) if delivered < UNKNOWN_LOOKS => {
            tracing::warn!(
                delivered,
                "invocation of a workflow without a record; looking again"
            );
            return Disposition::Retry(Duration::from_secs(1));
        }
        Ok(None) => {
            tracing::error!(delivered, "invocation of an unknown workflow; dropping it");
            return Disposition::Drop;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the workflow record; will retry");
            return Disposition::Retry(Duration::from_secs(1));
        }
    };
    let span = tracing::Span::current();
    span.record("kind", record.kind.as_str());
    if let Some(scope) = &record.scope {
        span.record("deployment_id", scope.deployment_id.as_str());
    }
    if record.status.is_finished() {
        return Disposition::Ack;
    }
    let Some(workflow) = shared.workflows.get(record.kind.as_str()).cloned() else {
        tracing::warn!(kind = %record.kind, "no worker here knows this kind; handing it back");
        return Disposition::Retry(Duration::from_secs(5));
    };
    let mut ctx = Context::new(shared.clone(), record, revision);
    if ctx.record.status != Status::Failing {
        match run(&shared, workflow.clone(), ctx).await {
            Ok(Some(failing)) => ctx = failing,
            Ok(None) => return Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "workflow run aborted; it will resume");
                return Disposition::Retry(Duration::from_secs(1));
            }
        }
    }
    failure_handler(&shared, workflow, ctx).await
}

/// Runs (or resumes) the workflow. Ok(None): completed. Ok(Some(ctx)): failed terminally,
/// recorded as failing. Err: aborted.
async fn run(
    shared: &Arc<Shared>,
    workflow: Arc<dyn Erased>,
    mut ctx: Context,
) -> Result<Option<Context>, WorkflowError> {
    ctx.record.status = Status::Running;
    ctx.record.runs += 1;
    ctx.save().await?;
    if ctx.record.runs > 1 {
        tracing::info!(
            runs = ctx.record.runs,
            journaled = ctx.record.steps.len(),
            "resuming workflow"
        );
    }
    ctx.republish_last_steps().await?;
    let workflow_id = ctx.record.id.clone();
    let (mut ctx, result) = match tokio::spawn(workflow.run(ctx).in_current_span()).await {
        Ok(done) => done,
        Err(join) => {
            // A panic is a bug, not a transient failure: fail the workflow from its record.
            tracing::error!(error = %join, "workflow panicked");
            let (record, revision) = read(&shared.records, &workflow_id)
                .await
                .map_err(|e| WorkflowError::Aborted(e.to_string()))?
                .ok_or_else(|| WorkflowError::Aborted("record vanished".into()))?;
            let mut ctx = Context::new(shared.clone(), record, revision);
            ctx.record.status = Status::Failing;
            ctx.record.error = Some(format!("workflow panicked: {join}"));
            ctx.save().await?;
            return Ok(Some(ctx));
        }
    };
    match result {
        Ok(output) => {
            ctx.record.status = Status::Completed;
            ctx.record.output = output;
            ctx.save().await?;
            ctx.release_all().await;
            tracing::info!(steps = ctx.record.steps.len(), "workflow completed");
            Ok(None)
        }
        Err(WorkflowError::Failed(reason)) => {
            ctx.record.status = Status::Failing;
            ctx.record.error = Some(reason.clone());
            // Saved first: a stale run (a later one took over) fails nothing.
            ctx.save().await?;
            tracing::warn!(%reason, "workflow failed");
            ctx.release_all().await;
            Ok(Some(ctx))
        }
        Err(aborted) => Err(aborted),
    }
}

/// The failure handler, retried with backoff; the workflow is `failed` once it has run.
async fn failure_handler(
    shared: &Shared,
    workflow: Arc<dyn Erased>,
    mut ctx: Context,
) -> Disposition {
    let reason = ctx.record.error.clone().unwrap_or_default();
    let mut delays = shared.config.retry.build();
    loop {
        match workflow
            .clone()
            .on_failure(
                ctx.record.id.clone(),
                ctx.record.input.clone(),
                reason.clone(),
            )
            .await
        {
            Ok(()) => break,
            Err(e) => match delays.next() {
                Some(delay) => {
                    tracing::warn!(error = %e, "failure handler failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    tracing::error!(error = %e, "failure handler keeps failing; handing the workflow back");
                    return Disposition::Retry(Duration::from_secs(30));
                }
            },
        }
    }
    ctx.record.status = Status::Failed;
    match ctx.save().await {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the failure; will retry");
            Disposition::Retry(Duration::from_secs(1))
        }
    }
}
