//! One slice: the claimed request's iterations, each committed on its own.

use std::time::{Duration, Instant};

use tb_core::agent::{
    Agent, AgentError, AgentState, CancelFlag, Outcome, ProjectBase, Slice, last_actions,
};
use tb_core::clock::now_ms;
use tb_core::domain::RequestId;
use tb_core::ports::PortError;

use super::claim::Claim;
use super::{Invocation, SliceStats, WorkDone, WorkError, Worker, ongoing};
use crate::ports::Appended;
use crate::record::AgentHeader;

impl Worker {
    pub(super) async fn slice(
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
        let mut rec = match self.claim(id, seq, inv).await? {
            Claim::Claimed(rec) => *rec,
            Claim::Stale(why) => return stale(why),
        };
        let store = self.requests.store.as_ref();
        let (messages, calls) = store.conversation(&rec).await?;
        let mut state = rec.agent.join(messages, calls);
        if rec.cancel_requested && state.outcome.is_none() {
            state.outcome = Some(Outcome::Cancelled);
        }
        // Every wait of this invocation ends by `hard`; the margin after it is for the
        // commit and the hand-over.
        let hard = crate::settings::hard_deadline(inv.deadline, self.slices.safety_margin);
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
        let sandbox = self
            .sandbox_for_slice(&mut rec, &mut state, limit, began_ms, &mut wait)
            .await;
        let base: Option<ProjectBase> = rec.steps.seed.clone();

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
                config: &self.requests.agent,
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
                } else if state.calls.len() > c0 {
                    // Only an answer from the model ends its outage: a slice that paused at
                    // its deadline before calling says nothing about the model.
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
                        let Some(fresh) = store.load(id).await? else {
                            return stale("the request vanished");
                        };
                        if fresh.cancel_requested
                            && fresh
                                .lease
                                .as_ref()
                                .is_some_and(|l| l.owner == inv.worker_id)
                            && !fresh.phase.is_terminal()
                        {
                            let (messages, calls) = store.conversation(&fresh).await?;
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

        let slice = SliceStats {
            iterations,
            usage: state.usage.since(&usage0),
            cost: state.cost - cost0,
        };
        self.hand_over(rec, &state, slice, wait).await
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
