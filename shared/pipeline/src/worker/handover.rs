//! The hand-over at the end of a slice: the request goes on to its next slice (a
//! continuation with the next sequence on the work queue) or, once the agent has ended, to
//! the finalizer (the finalize queue). The commit comes before the send: a lost send is
//! re-driven by the sweeper, a duplicate one is stale.

use std::time::Duration;

use tb_core::agent::AgentState;
use tb_core::clock::now_ms;
use tb_core::domain::Phase;

use super::{SliceStats, WorkDone, WorkError, Worker};
use crate::messages::{FinalizeMessage, WorkMessage};
use crate::ports::Appended;
use crate::record::{AgentHeader, RequestRecord};
use crate::steps::AgentDone;

impl Worker {
    /// Releases the claim and hands the request over; `wait` delays the next slice (an
    /// outage is being waited out).
    pub(super) async fn hand_over(
        &self,
        mut rec: RequestRecord,
        state: &AgentState,
        slice: SliceStats,
        wait: Option<Duration>,
    ) -> Result<WorkDone, WorkError> {
        let id = rec.id.clone();
        let queue = self.requests.queue.as_ref();
        rec.lease = None;
        rec.agent = AgentHeader::of(state);
        if let Some(outcome) = &state.outcome {
            rec.phase = Phase::Finalizing;
            let agent_secs = now_ms().saturating_sub(rec.created_at_ms) as f64 / 1000.0;
            rec.push_activity(format!(
                "agent {} after {agent_secs:.1} s",
                outcome.describe()
            ));
            rec.steps.agent = Some(AgentDone {
                duration_ms: (agent_secs * 1000.0) as u64,
                outcome: outcome.describe(),
            });
            self.save(&mut rec, Appended::default())
                .await
                .map_err(|e| WorkError::Retry(e.to_string()))?;
            let next = FinalizeMessage::Finalize {
                request_id: id.clone(),
            };
            if let Err(e) = queue.send_finalize(&next).await {
                tracing::warn!(request_id = %id, "finalize message not sent ({e}); the sweeper will re-drive it");
            }
            tracing::info!(request_id = %id, iterations = slice.iterations, cost_micros = state.cost.micros(), "agent done: {}", outcome.describe());
            Ok(WorkDone::Finalizing {
                request_id: id,
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
            if let Err(e) = queue.send_work(&next, wait.unwrap_or(Duration::ZERO)).await {
                tracing::warn!(request_id = %id, "continuation not sent ({e}); the sweeper will re-drive it");
            }
            Ok(WorkDone::Continued {
                request_id: id,
                seq: rec.seq,
                slice,
            })
        }
    }
}
