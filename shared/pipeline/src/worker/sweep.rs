//! The sweeper (run on a schedule): re-drives requests whose worker died, and deletes
//! sandboxes that no live request owns.
//!
//! Re-driving only sends a message; the worker's checks (sequence, claim) make a duplicate
//! or unnecessary one harmless, so sweeping too often costs nothing but messages.

use std::time::Duration;

use serde::Serialize;
use tb_core::clock::now_ms;
use tb_core::domain::{Phase, RequestId};

use super::{REQUEST_LABEL, Worker};
use crate::messages::{FinalizeMessage, WorkMessage};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub redriven_work: Vec<RequestId>,
    pub redriven_finalize: Vec<RequestId>,
    pub sandboxes_deleted: Vec<String>,
    pub errors: Vec<String>,
}

impl Worker {
    pub async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        let now = now_ms();
        let stall = self.slices.stall_after.as_millis() as u64;
        match self.requests.store.active().await {
            Ok(active) => {
                for r in active {
                    let claimed = r.lease.as_ref().is_some_and(|l| l.until_ms > now);
                    // Waiting out an outage: its delayed continuation is on the queue.
                    let waiting = r.outage.as_ref().map_or(0, |o| o.retry_at_ms);
                    if claimed || now.saturating_sub(r.updated_at_ms.max(waiting)) < stall {
                        continue;
                    }
                    let sent = match r.phase {
                        Phase::Queued | Phase::Running => {
                            let msg = WorkMessage::Continue {
                                request_id: r.id.clone(),
                                seq: r.seq,
                            };
                            self.requests
                                .queue
                                .send_work(&msg, Duration::ZERO)
                                .await
                                .map(|_| report.redriven_work.push(r.id.clone()))
                        }
                        Phase::Finalizing => {
                            let msg = FinalizeMessage::Finalize {
                                request_id: r.id.clone(),
                            };
                            self.requests
                                .queue
                                .send_finalize(&msg)
                                .await
                                .map(|_| report.redriven_finalize.push(r.id.clone()))
                        }
                        _ => Ok(()),
                    };
                    if let Err(e) = sent {
                        report.errors.push(format!("re-driving {}: {e}", r.id));
                    }
                }
            }
            Err(e) => report.errors.push(format!("listing active requests: {e}")),
        }
        self.sweep_sandboxes(&mut report).await;
        if !report.redriven_work.is_empty()
            || !report.redriven_finalize.is_empty()
            || !report.sandboxes_deleted.is_empty()
        {
            tracing::info!(?report, "sweep");
        }
        report
    }

    async fn sweep_sandboxes(&self, report: &mut SweepReport) {
        let now_secs = now_ms() / 1000;
        let max_age = self.slices.sandbox_max_age.as_secs();
        let sandboxes = match self.sandboxes.list().await {
            Ok(s) => s,
            Err(e) => return report.errors.push(format!("listing sandboxes: {e}")),
        };
        for sb in sandboxes {
            if now_secs.saturating_sub(sb.created_at) < max_age {
                continue;
            }
            // Owned by a request that is still alive → keep.
            if let Some(owner) = sb
                .labels
                .get(REQUEST_LABEL)
                .and_then(|id| RequestId::parse(id).ok())
            {
                match self.requests.store.load(&owner).await {
                    Ok(Some(r)) if !r.phase.is_terminal() => continue,
                    Ok(_) => {}
                    Err(e) => {
                        report
                            .errors
                            .push(format!("checking the owner of sandbox {}: {e}", sb.id));
                        continue;
                    }
                }
            }
            match self.sandboxes.destroy(&sb.id).await {
                Ok(()) => report.sandboxes_deleted.push(sb.id),
                Err(e) => report
                    .errors
                    .push(format!("deleting sandbox {}: {e}", sb.id)),
            }
        }
    }
}
