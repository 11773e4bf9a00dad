//! The worker function: SQS batches of work messages → agent slices; and, on its schedule
//! (`{"sweep": true}`), the sweeper. The logic is [`tb_pipeline::Worker`]; this is the
//! Lambda-shaped edge around it.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;
use tb_aws::metrics::{self, Unit};
use tb_pipeline::{Invocation, WorkDone, WorkError, Worker};

/// Everything the worker gets: a scheduled sweep or an SQS batch.
pub async fn handle(
    worker: &Worker,
    event: LambdaEvent<Value>,
) -> Result<Value, lambda_runtime::Error> {
    let (payload, ctx) = event.into_parts();
    if payload.get("sweep").and_then(Value::as_bool) == Some(true) {
        let report = worker.sweep().await;
        metrics::emit(
            &[("Function", "sweeper")],
            &[
                (
                    "Redriven",
                    Unit::Count,
                    (report.redriven_work.len() + report.redriven_finalize.len()) as f64,
                ),
                (
                    "SandboxesDeleted",
                    Unit::Count,
                    report.sandboxes_deleted.len() as f64,
                ),
                ("SweepErrors", Unit::Count, report.errors.len() as f64),
            ],
        );
        return Ok(serde_json::to_value(report)?);
    }
    let batch: SqsEvent = serde_json::from_value(payload)?;
    Ok(serde_json::to_value(
        handle_batch(worker, batch, &ctx).await,
    )?)
}

/// Runs the records of a batch concurrently (they share the invocation's deadline) and
/// reports the ones to retry. Poison messages were parked on the dead-letter queue by the
/// pipeline with their reason, so they are acknowledged here.
pub async fn handle_batch(worker: &Worker, batch: SqsEvent, ctx: &Context) -> SqsBatchResponse {
    let deadline = deadline(ctx);
    let runs = batch.records.iter().map(|record| async move {
        let id = record.message_id.clone().unwrap_or_default();
        let body = record.body.as_deref().unwrap_or_default();
        let inv = Invocation {
            worker_id: format!("{}/{id}", ctx.request_id),
            deadline,
        };
        let started = Instant::now();
        let result = worker.handle_work(body, &inv).await;
        report(&result, started.elapsed());
        match result {
            Err(WorkError::Retry(reason)) => {
                tracing::warn!(message_id = %id, "work message will be retried: {reason}");
                Some(id)
            }
            _ => None,
        }
    });
    let mut response = SqsBatchResponse::default();
    for failed in futures::future::join_all(runs).await.into_iter().flatten() {
        response.add_failure(failed);
    }
    response
}

fn deadline(ctx: &Context) -> Instant {
    let now = tb_core::clock::now_ms();
    let left = ctx.deadline.saturating_sub(now);
    // Without a deadline (a test context) allow the standard 5 minutes.
    let left = if ctx.deadline == 0 { 300_000 } else { left };
    Instant::now() + Duration::from_millis(left)
}

fn report(result: &Result<WorkDone, WorkError>, elapsed: Duration) {
    let ms = elapsed.as_millis() as f64;
    match result {
        Ok(WorkDone::Continued { slice, .. }) | Ok(WorkDone::Finalizing { slice, .. }) => {
            metrics::emit(
                &[("Function", "worker")],
                &[
                    ("Iterations", Unit::Count, slice.iterations as f64),
                    ("CostMicroUsd", Unit::None, slice.cost.micros() as f64),
                    ("InputTokens", Unit::Count, slice.usage.input as f64),
                    ("OutputTokens", Unit::Count, slice.usage.output as f64),
                    (
                        "CacheWriteTokens",
                        Unit::Count,
                        slice.usage.cache_write as f64,
                    ),
                    (
                        "CacheReadTokens",
                        Unit::Count,
                        slice.usage.cache_read as f64,
                    ),
                    ("SliceDuration", Unit::Milliseconds, ms),
                    (
                        "AgentsFinished",
                        Unit::Count,
                        matches!(result, Ok(WorkDone::Finalizing { .. })) as u8 as f64,
                    ),
                ],
            )
        }
        Ok(WorkDone::Stale { .. }) => metrics::emit(
            &[("Function", "worker")],
            &[("StaleMessages", Unit::Count, 1.0)],
        ),
        Err(WorkError::Retry(_)) => metrics::emit(
            &[("Function", "worker")],
            &[("RetriedMessages", Unit::Count, 1.0)],
        ),
        Err(WorkError::Poison { .. }) => metrics::emit(
            &[("Function", "worker")],
            &[("PoisonMessages", Unit::Count, 1.0)],
        ),
    }
}
