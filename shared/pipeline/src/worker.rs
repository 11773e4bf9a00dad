//! The worker: one work message → at most one slice of agent iterations.
//!
//! 1. Parse the message (ours, or a job in the original system's shape, which creates the
//!    request on first sight).
//! 2. Drop it if it is stale: the request is done, its sequence moved on, or another worker
//!    holds a live claim.
//! 3. Claim the request (a conditional write: version fencing).
//! 4. Load the conversation, attach to (or create) the sandbox.
//! 5. Run iterations one at a time, committing each (its messages, its call, the header)
//!    conditionally; a conflict means someone else wrote (a cancel, or we were fenced out).
//!    Every wait ends by the invocation's deadline less the safety margin ([`hard_deadline`]):
//!    an iteration that would not end by then is not started, a model call still running
//!    then is abandoned (redone by the next invocation, billed once). An outage of the model
//!    or the sandbox provider is recorded on the request and waited out by a delayed
//!    continuation, up to `SliceSettings::outage_retry`; then the agent fails naming it.
//! 6. Hand over: re-enqueue a continuation with the next sequence, or send the request to
//!    the finalizer. The commit comes before the send; a lost send is re-driven by the
//!    sweeper, a duplicate one is dropped at step 2.
//!
//! A crash anywhere loses at most the iteration in flight: its call is not committed, so its
//! cost is not counted, and the next worker redoes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tb_core::agent::{
    Agent, AgentError, AgentState, CancelFlag, Outcome, ProjectBase, Slice, last_actions, now_ms,
};
use tb_core::domain::{Description, Phase, ProjectId, RequestId, UserId};
use tb_core::ports::PortError;
use tb_core::sandbox::{Sandbox, SandboxError, SandboxSpec};
use tracing::Instrument;

use crate::base::{SEED_STEP, SeedError};
use crate::messages::{FinalizeMessage, Incoming, Job, WorkMessage};
use crate::pipeline::Pipeline;
use crate::ports::Appended;
use crate::record::{AgentHeader, Failure, Lease, RequestRecord};
use crate::requests::{NewRequest, RequestError, derived_request_id};

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

/// The tools a job may name, and what each does with it.
const KNOWN_TOOLS: [&str; 1] = ["execute_request"];

impl Pipeline {
    /// Handles one work-queue message body. Poison messages are parked on the dead-letter
    /// queue here, with their reason, and acknowledged.
    pub async fn handle_work(&self, body: &str, inv: &Invocation) -> Result<WorkDone, WorkError> {
        match self.work(body, inv).await {
            Err(WorkError::Poison { request, reason }) => {
                tracing::warn!(request_id = ?request, "poison work message: {reason}");
                if let Some(id) = &request {
                    self.give_up(id, "queue", &reason).await;
                }
                self.queue.dead_letter(body, &reason).await?;
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

    /// Creates the request a job asks for (once: the id derives from the job id).
    async fn accept_job(&self, job: Job) -> Result<RequestId, WorkError> {
        let poison = |reason: String| WorkError::Poison {
            request: None,
            reason,
        };
        if !KNOWN_TOOLS.contains(&job.tool_name.as_str()) {
            return Err(poison(format!(
                "job {}: unknown tool `{}`; known tools: {}",
                job.job_id,
                job.tool_name,
                KNOWN_TOOLS.join(", ")
            )));
        }
        let owner =
            UserId::parse(&job.user_id).map_err(|e| poison(format!("job {}: {e}", job.job_id)))?;
        let project = match &job.project_id {
            Some(p) => {
                Some(ProjectId::parse(p).map_err(|e| poison(format!("job {}: {e}", job.job_id)))?)
            }
            None => None,
        };
        let text = job
            .request_params
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let description = Description::parse(text)
            .map_err(|e| poison(format!("job {}: request_params.{e}", job.job_id)))?;
        let id = derived_request_id("job", &job.job_id);
        let new = NewRequest {
            owner,
            key_id: job.mcp_key_id,
            description,
            project,
            idempotency_key: None,
            callback_url: None,
            holds_slot: false,
        };
        match self.create_with_id(id.clone(), new).await {
            Ok(_) => Ok(id),
            Err(RequestError::Invalid(r)) => Err(poison(r)),
            Err(e) => Err(WorkError::Retry(e.to_string())),
        }
    }

    async fn slice(
        &self,
        id: &RequestId,
        seq: u64,
        inv: &Invocation,
    ) -> Result<WorkDone, WorkError> {
        let stale = |why| {
            Ok(WorkDone::Stale {
                request_id: id.clone(),
                why,
            })
        };
        let Some(mut rec) = self.store.load(id).await? else {
            return Err(WorkError::Poison {
                request: None,
                reason: format!("no request {id}"),
            });
        };
        if rec.phase.is_terminal() || rec.phase == Phase::Finalizing {
            return stale("the request is past its agent phase");
        }
        if rec.seq != seq {
            return stale("superseded sequence");
        }
        if rec.leased_by_other(&inv.worker_id, now_ms()) {
            return stale("another worker holds the request");
        }
        // Claim.
        rec.phase = Phase::Running;
        rec.lease = Some(self.lease(&inv.worker_id));
        if let Err(e) = self.save(&mut rec, Appended::default()).await {
            return match e {
                PortError::Conflict(_) => stale("another worker claimed it first"),
                e => Err(e.into()),
            };
        }
        let (messages, calls) = self.store.conversation(&rec).await?;
        let mut state = rec.agent.join(messages, calls);
        if rec.cancel_requested && state.outcome.is_none() {
            state.outcome = Some(Outcome::Cancelled);
        }
        // Every wait of this invocation ends by `hard`; the margin after it is for the
        // commit and the hand-over.
        let hard = crate::pipeline::hard_deadline(inv.deadline, self.slices.safety_margin);
        // Set when an outage is being waited out: the continuation is delayed this long.
        let mut wait = None;
        // During an outage no attempt outlasts its bound: it ends the request by then.
        let began_ms = now_ms();
        let limit = match &rec.outage {
            Some(o) => {
                let end_ms = o.since_ms + self.slices.outage_retry.as_millis() as u64;
                hard.min(Instant::now() + Duration::from_millis(end_ms.saturating_sub(began_ms)))
            }
            None => hard,
        };
        let ongoing = |rec: &RequestRecord| rec.outage.as_ref().map(|o| o.cause.clone());
        let sandbox = if state.outcome.is_none() {
            let unavailable =
                match tokio::time::timeout_at(limit.into(), self.sandbox_for(&mut rec)).await {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) if e.is_model_fault() => {
                        state.outcome = Some(Outcome::Failed {
                            reason: format!("sandbox: {e}"),
                        });
                        Err(None)
                    }
                    Ok(Err(e)) => Err(Some(e.to_string())),
                    Err(_) => Err(Some(ongoing(&rec).unwrap_or_else(|| {
                        "no sandbox before the invocation's time ran out".to_string()
                    }))),
                };
            match unavailable {
                Ok(s) => Some(s),
                Err(None) => None,
                Err(Some(cause)) => {
                    match self.note_outage(&mut rec, "the sandbox provider", &cause, began_ms) {
                        Ok(delay) => wait = Some(delay),
                        Err(reason) => state.outcome = Some(Outcome::Failed { reason }),
                    }
                    None
                }
            }
        } else {
            None
        };

        // A request starts from its project's current source, or a new project from the
        // template, seeded before its first iteration (and again if the worker died before
        // that iteration was recorded).
        let sandbox = match sandbox {
            Some(s) if state.iteration == 0 && !rec.steps.contains_key(SEED_STEP) => {
                match crate::base::seed(self.archive.as_deref(), &rec.project, s.as_ref()).await {
                    Ok(base) => {
                        rec.push_activity(match &base.template {
                            Some(name) => format!(
                                "started from the template {name} ({} files)",
                                base.files.len()
                            ),
                            None => format!(
                                "started from the project's current source ({} files, from {})",
                                base.files.len(),
                                base.from_request
                            ),
                        });
                        rec.steps.insert(
                            SEED_STEP.into(),
                            serde_json::to_value(base).expect("serialisable"),
                        );
                        Some(s)
                    }
                    Err(SeedError::Unavailable { service, cause }) => {
                        match self.note_outage(&mut rec, service, &cause, began_ms) {
                            Ok(delay) => wait = Some(delay),
                            Err(reason) => state.outcome = Some(Outcome::Failed { reason }),
                        }
                        None
                    }
                    Err(SeedError::Broken(reason)) => {
                        state.outcome = Some(Outcome::Failed { reason });
                        None
                    }
                }
            }
            s => s,
        };
        let base: Option<ProjectBase> = rec
            .steps
            .get(SEED_STEP)
            .and_then(|v| serde_json::from_value(v.clone()).ok());

        let dev_db = self
            .dev_databases
            .as_ref()
            .map(|d| d.for_project(&rec.project));
        let mut iterations = 0;
        let (usage0, cost0) = (state.usage, state.cost);
        if let Some(sandbox) = &sandbox {
            let agent = Agent {
                model: self.model.as_ref(),
                sandbox: sandbox.as_ref(),
                db: dev_db.as_deref(),
                prices: &self.prices,
                config: &self.agent,
                cancel: CancelFlag::default(),
                base: base.as_ref(),
            };
            // How long an iteration takes: the longest seen in this invocation, at first the
            // last model call's. One that would not finish by `hard` is left to the next
            // invocation (the first of an invocation is always tried: none will have longer).
            let mut estimate = state
                .calls
                .last()
                .map(|c| Duration::from_millis(c.latency_ms))
                .unwrap_or_default();
            while state.outcome.is_none()
                && iterations < self.slices.iterations_per_slice
                && Instant::now() < hard
                && (iterations == 0 || Instant::now() + estimate < hard)
            {
                let (m0, c0) = (state.messages.len(), state.calls.len());
                let started = Instant::now();
                let slice = Slice {
                    max_iterations: 1,
                    deadline: Some(limit),
                };
                let unavailable = match agent.run(&mut state, slice).await {
                    Ok(_) => None,
                    Err(AgentError::Pricing(e)) => {
                        state.outcome = Some(Outcome::Failed {
                            reason: e.to_string(),
                        });
                        None
                    }
                    // Abandoned, nothing applied: the next invocation redoes it.
                    Err(AgentError::OutOfTime) if iterations > 0 && rec.outage.is_none() => {
                        tracing::info!(request_id = %id, "the invocation's time ran out during a model call; handing over");
                        break;
                    }
                    // The outage's bound came, or even a whole invocation was too short for
                    // the model's answer.
                    Err(AgentError::OutOfTime) => Some((
                        "the model",
                        ongoing(&rec).unwrap_or_else(|| {
                            format!(
                                "no answer within {:.0} s, the time one invocation has",
                                started.elapsed().as_secs_f64()
                            )
                        }),
                    )),
                    Err(AgentError::Model(e)) => Some(("the model", e.to_string())),
                    Err(AgentError::Sandbox(e)) => Some(("the sandbox provider", e.to_string())),
                };
                if let Some((service, cause)) = unavailable {
                    match self.note_outage(&mut rec, service, &cause, began_ms) {
                        Ok(delay) => {
                            wait = Some(delay);
                            break;
                        }
                        Err(reason) => state.outcome = Some(Outcome::Failed { reason }),
                    }
                } else {
                    rec.outage_over();
                }
                estimate = estimate.max(started.elapsed());
                iterations += 1;
                rec.agent = AgentHeader::of(&state);
                rec.lease = Some(self.lease(&inv.worker_id));
                if state.calls.len() > c0 {
                    rec.push_activity(activity_line(&state));
                }
                let appended = Appended {
                    first_index: m0,
                    messages: &state.messages[m0..],
                    calls: &state.calls[c0..],
                };
                match self.save(&mut rec, appended).await {
                    Ok(()) => {}
                    Err(PortError::Conflict(_)) => {
                        // Someone wrote since our claim: a cancel (act on it), or a worker that
                        // took over an expired claim (stop). This iteration is not recorded.
                        let Some(fresh) = self.store.load(id).await? else {
                            return stale("the request vanished");
                        };
                        if fresh.cancel_requested
                            && fresh
                                .lease
                                .as_ref()
                                .is_some_and(|l| l.owner == inv.worker_id)
                            && !fresh.phase.is_terminal()
                        {
                            let (messages, calls) = self.store.conversation(&fresh).await?;
                            state = fresh.agent.join(messages, calls);
                            state.outcome = Some(Outcome::Cancelled);
                            rec = fresh;
                            break;
                        }
                        return stale("fenced out by a newer writer");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }

        // Hand over.
        let slice = SliceStats {
            iterations,
            usage: state.usage.since(&usage0),
            cost: state.cost - cost0,
        };
        rec.lease = None;
        rec.agent = AgentHeader::of(&state);
        if let Some(outcome) = &state.outcome {
            rec.phase = Phase::Finalizing;
            let agent_secs =
                tb_core::agent::now_ms().saturating_sub(rec.created_at_ms) as f64 / 1000.0;
            rec.push_activity(format!(
                "agent {} after {agent_secs:.1} s",
                outcome.describe()
            ));
            rec.steps.insert("agent".into(), serde_json::json!({"duration_ms": (agent_secs * 1000.0) as u64, "outcome": outcome.describe()}));
            self.save(&mut rec, Appended::default())
                .await
                .map_err(|e| WorkError::Retry(e.to_string()))?;
            if let Err(e) = self
                .queue
                .send_finalize(&FinalizeMessage::Finalize {
                    request_id: id.clone(),
                })
                .await
            {
                tracing::warn!(request_id = %id, "finalize message not sent ({e}); the sweeper will re-drive it");
            }
            tracing::info!(request_id = %id, iterations, cost_micros = state.cost.micros(), "agent done: {}", outcome.describe());
            Ok(WorkDone::Finalizing {
                request_id: id.clone(),
                slice,
            })
        } else {
            rec.seq += 1;
            self.save(&mut rec, Appended::default())
                .await
                .map_err(|e| WorkError::Retry(e.to_string()))?;
            let next = WorkMessage::Continue {
                request_id: id.clone(),
                seq: rec.seq,
            };
            if let Err(e) = self
                .queue
                .send_work(&next, wait.unwrap_or(Duration::ZERO))
                .await
            {
                tracing::warn!(request_id = %id, "continuation not sent ({e}); the sweeper will re-drive it");
            }
            Ok(WorkDone::Continued {
                request_id: id.clone(),
                seq: rec.seq,
                slice,
            })
        }
    }

    async fn save(&self, rec: &mut RequestRecord, appended: Appended<'_>) -> Result<(), PortError> {
        crate::ports::save_next(self.store.as_ref(), rec, appended).await
    }

    fn lease(&self, owner: &str) -> Lease {
        Lease {
            owner: owner.to_string(),
            until_ms: now_ms() + self.slices.lease.as_millis() as u64,
        }
    }

    /// The request's sandbox: reattached, or created and recorded before use.
    async fn sandbox_for(&self, rec: &mut RequestRecord) -> Result<Arc<dyn Sandbox>, SandboxError> {
        if let Some(sid) = &rec.sandbox_id {
            return self.sandboxes.connect(sid).await.map_err(|e| match e {
                SandboxError::NotFound(_) => {
                    SandboxError::Invalid(format!("the sandbox {sid} of this request is gone"))
                }
                e => e,
            });
        }
        let labels = [
            (
                crate::sweeper::REQUEST_LABEL.to_string(),
                rec.id.to_string(),
            ),
            ("turbobackend-project".to_string(), rec.project.to_string()),
        ];
        let sandbox = self
            .sandboxes
            .create(&SandboxSpec {
                name: rec.id.to_string(),
                labels: labels.into_iter().collect(),
            })
            .await?;
        rec.sandbox_id = Some(sandbox.id().to_string());
        if let Err(e) = self.save(rec, Appended::default()).await {
            // Not recorded: the sweeper deletes unowned sandboxes after their maximum age.
            return Err(SandboxError::Unavailable(format!(
                "recording the new sandbox: {e}"
            )));
        }
        Ok(sandbox)
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
        for _ in 0..3 {
            let Ok(Some(mut rec)) = self.store.load(id).await else {
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
                Ok(()) => return crate::ports::give_back_slot(self.store.as_ref(), &mut rec).await,
                Err(_) => return,
            }
        }
    }
}

/// One line about the last iteration, for status pages.
fn activity_line(state: &AgentState) -> String {
    let actions = last_actions(state);
    let actions = if actions.is_empty() {
        "no tool call".to_string()
    } else {
        actions.join(", ")
    };
    format!("iteration {}: {actions} ({})", state.iteration, state.cost)
}
