//! The finalizer function: SQS batches of finalize messages → [`tb_pipeline::Finalizer`].

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::Context;
use tb_aws::metrics::{self, Unit};
use tb_pipeline::{FinalizeDone, FinalizeError, FinalizeMessage, Finalizer, Queue};

/// One record at a time (the event source mapping's batch size is 1: a finalization takes
/// minutes), within the invocation's deadline. A retryable failure is reported so SQS
/// redelivers it; a poison message is reported too and reaches the dead-letter queue after
/// the redrive limit. A finalization that continues in the next invocation (its progress is
/// recorded) is sent to `queue` again and acknowledged.
pub async fn handle_batch(
    finalizer: &Finalizer,
    queue: &dyn Queue,
    batch: SqsEvent,
    ctx: &Context,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    let deadline = (ctx.deadline > 0).then(|| {
        let left = ctx.deadline.saturating_sub(tb_core::clock::now_ms());
        Instant::now() + Duration::from_millis(left)
    });
    for record in &batch.records {
        let id = record.message_id.clone().unwrap_or_default();
        let started = Instant::now();
        let body = record.body.as_deref().unwrap_or_default();
        let result = finalizer
            .handle_until(body, &format!("{}/{id}", ctx.request_id), deadline)
            .await;
        let ms = started.elapsed().as_millis() as f64;
        match &result {
            Ok(FinalizeDone::Finished { phase, failure }) => {
                let step = failure.as_ref().map(|f| f.step.as_str()).unwrap_or("none");
                metrics::emit(
                    &[("Function", "finalizer"), ("FailedStep", step)],
                    &[
                        ("Finalized", Unit::Count, 1.0),
                        ("Failures", Unit::Count, failure.is_some() as u8 as f64),
                        ("FinalizeDuration", Unit::Milliseconds, ms),
                    ],
                );
                tracing::info!(message_id = %id, ?phase, "finalized");
            }
            Ok(FinalizeDone::Stale(why)) => {
                tracing::info!(message_id = %id, "stale finalize message: {why}")
            }
            Ok(FinalizeDone::Repairing { round }) => {
                tracing::info!(message_id = %id, round, "verification failed; back to the agent")
            }
            Ok(FinalizeDone::Continue) => {
                let sent = match serde_json::from_str::<FinalizeMessage>(body) {
                    Ok(message) => queue
                        .send_finalize(&message)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = sent {
                    // Redelivered after the visibility timeout instead.
                    tracing::warn!(message_id = %id, "continuation not sent: {e}");
                    response.add_failure(id.clone());
                }
            }
            Err(FinalizeError::Retry(reason)) => {
                tracing::warn!(message_id = %id, "finalize will be retried: {reason}");
                response.add_failure(id.clone());
            }
            Err(FinalizeError::Poison(reason)) => {
                tracing::error!(message_id = %id, "poison finalize message: {reason}");
                response.add_failure(id.clone());
            }
        }
    }
    response
}
