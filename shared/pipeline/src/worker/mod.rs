//! The worker: one work message → at most one slice of agent iterations, then the
//! hand-over. One file per stage, in the order a message goes through them:
//!
//! 1. `mod.rs`: parse the message (ours, or a job in the original system's shape).
//! 2. `job.rs`: a job creates its request on first sight, through the same admission as
//!    the front door ([`crate::Requests::create_job`]).
//! 3. `claim.rs`: drop the message if it is stale (the request is done, its sequence moved
//!    on, or another worker holds a live claim); else claim the request (a conditional
//!    write: version fencing).
//! 4. `sandbox.rs`: attach to (or create) the request's sandbox; seed a change request's
//!    sandbox from its project's current source.
//! 5. `slice.rs`: run iterations one at a time, committing each (its messages, its call,
//!    the header) conditionally; a conflict means someone else wrote (a cancel, or we were
//!    fenced out). Every wait ends by the invocation's deadline less the safety margin
//!    ([`crate::settings::hard_deadline`]): an iteration that would not end by then is not
//!    started, a model call still running then is abandoned (redone by the next invocation,
//!    billed once). An outage of the model or the sandbox provider is recorded on the
//!    request and waited out by a delayed continuation, up to `SliceSettings::outage_retry`;
//!    then the agent fails naming it.
//! 6. `handover.rs`: hand the request over: re-enqueue a continuation with the next
//!    sequence (the next slice), or send the request to the finalizer. The commit comes
//!    before the send; a lost send is re-driven by the sweeper, a duplicate one is dropped
//!    at stage 3.
//!
//! `sweep.rs` is the sweeper the worker runs on its schedule.
//!
//! A crash anywhere loses at most the iteration in flight: its call is not committed, so its
//! cost is not counted, and the next worker redoes it.

mod claim;
mod handover;
mod job;
mod sandbox;
mod slice;
pub mod sweep;

pub use sandbox::REQUEST_LABEL;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tb_core::clock::now_ms;
use tb_core::domain::{Phase, RequestId};
use tb_core::model::Model;
use tb_core::ports::{Archive, DevDatabases, PortError};
use tb_core::pricing::PriceTable;
use tb_core::sandbox::SandboxProvider;
use tracing::Instrument;

use crate::messages::{Incoming, WorkMessage};
use crate::ports::Appended;
use crate::record::{Failure, Lease, RequestRecord};
use crate::requests::Requests;
use crate::settings::SliceSettings;

/// What the worker needs: the requests (state store, queue, admission of jobs) and what
/// runs the agent.
pub struct Worker {
    pub requests: Arc<Requests>,
    pub sandboxes: Arc<dyn SandboxProvider>,
    pub model: Arc<dyn Model>,
    /// The projects' development databases for the agent's `query_database` tool.
    pub dev_databases: Option<Arc<dyn DevDatabases>>,
    /// Where the projects' snapshots are: a change request's sandbox is seeded from its
    /// project's current source (`None`: every request starts from an empty sandbox).
    pub archive: Option<Arc<dyn Archive>>,
    pub prices: PriceTable,
    pub slices: SliceSettings,
}

/// The invocation a message is handled in.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// Unique per invocation (the Lambda request id): the lease owner.
    pub worker_id: String,
    /// When the invocation must have returned.
    pub deadline: Instant,
}

/// How handling a message ended (all of these acknowledge it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkDone {
    /// Slice committed; a continuation with `seq` was enqueued.
    Continued {
        request_id: RequestId,
        seq: u64,
        slice: SliceStats,
    },
    /// The agent is done; the request went to the finalizer.
    Finalizing {
        request_id: RequestId,
        slice: SliceStats,
    },
    /// Nothing to do: a duplicate, late or superseded message.
    Stale {
        request_id: RequestId,
        why: &'static str,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// Try again later (report a batch item failure; SQS redelivers).
    #[error("retry later: {0}")]
    Retry(String),
    /// Can never succeed: parked on the dead-letter queue with the reason (and the request,
    /// if known, marked failed).
    #[error("poison message: {reason}")]
    Poison {
        request: Option<RequestId>,
        reason: String,
    },
}

impl From<PortError> for WorkError {
    fn from(e: PortError) -> Self {
        WorkError::Retry(e.to_string())
    }
}

/// What one slice did, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceStats {
    pub iterations: u32,
    pub usage: tb_core::TokenUsage,
    pub cost: tb_core::MicroUsd,
}

impl Worker {
    /// Handles one work-queue message body. Poison messages are parked on the dead-letter
    /// queue here, with their reason, and acknowledged.
    pub async fn handle_work(&self, body: &str, inv: &Invocation) -> Result<WorkDone, WorkError> {
        match self.work(body, inv).await {
            Err(WorkError::Poison { request, reason }) => {
                tracing::warn!(request_id = ?request, "poison work message: {reason}");
                if let Some(id) = &request {
                    self.give_up(id, "queue", &reason).await;
                }
                self.requests.queue.dead_letter(body, &reason).await?;
                Err(WorkError::Poison { request, reason })
            }
            other => other,
        }
    }

    async fn work(&self, body: &str, inv: &Invocation) -> Result<WorkDone, WorkError> {
        let incoming = Incoming::parse(body).map_err(|e| WorkError::Poison {
            // A malformed message that still names a request fails that request.
            request: serde_json::from_str::<Value>(body).ok().and_then(|v| {
                v.get("request_id")
                    .and_then(Value::as_str)
                    .and_then(|s| RequestId::parse(s).ok())
            }),
            reason: e.to_string(),
        })?;
        let (id, seq) = match incoming {
            Incoming::Work(WorkMessage::Continue { request_id, seq }) => (request_id, seq),
            Incoming::Job(job) => (self.accept_job(job).await?, 0),
        };
        let span = tracing::info_span!("slice", request_id = %id, seq);
        self.slice(&id, seq, inv).instrument(span).await
    }

    async fn save(&self, rec: &mut RequestRecord, appended: Appended<'_>) -> Result<(), PortError> {
        crate::ports::save_next(self.requests.store.as_ref(), rec, appended).await
    }

    fn lease(&self, owner: &str) -> Lease {
        Lease {
            owner: owner.to_string(),
            until_ms: now_ms() + self.slices.lease.as_millis() as u64,
        }
    }

    fn note_outage(
        &self,
        rec: &mut RequestRecord,
        service: &str,
        cause: &str,
        began_ms: u64,
    ) -> Result<Duration, String> {
        rec.note_outage(service, cause, began_ms, self.slices.outage_retry)
    }

    /// Marks a request failed at `step` with `reason` (best effort): for poison messages, and
    /// for hosts that give up on a message after its last delivery.
    pub async fn give_up(&self, id: &RequestId, step: &str, reason: &str) {
        let store = self.requests.store.as_ref();
        for _ in 0..3 {
            let Ok(Some(mut rec)) = store.load(id).await else {
                return;
            };
            if rec.phase.is_terminal() {
                return;
            }
            rec.phase = Phase::Failed;
            rec.lease = None;
            rec.failure = Some(Failure {
                step: step.into(),
                reason: reason.into(),
            });
            match self.save(&mut rec, Appended::default()).await {
                Err(PortError::Conflict(_)) => continue,
                Ok(()) => return crate::ports::give_back_slot(store, &mut rec).await,
                Err(_) => return,
            }
        }
    }
}

/// The cause of the outage the request is waiting out, if any.
fn ongoing(rec: &RequestRecord) -> Option<String> {
    rec.outage.as_ref().map(|o| o.cause.clone())
}
