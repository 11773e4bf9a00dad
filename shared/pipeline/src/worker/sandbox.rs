//! The request's sandbox: attached, or created and recorded before use; seeded before the
//! request's first iteration from its project's current source, or the template.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tb_core::agent::{AgentState, Outcome};
use tb_core::sandbox::{Sandbox, SandboxError, SandboxSpec};

use super::{Worker, ongoing};
use crate::base::SeedError;
use crate::ports::Appended;
use crate::record::RequestRecord;

/// The label that ties a sandbox to its request.
pub const REQUEST_LABEL: &str = "turbobackend-request";

impl Worker {
    /// The sandbox this slice runs in, seeded if the request is a change request. `None`
    /// when the agent has already ended, or when the sandbox could not be had: an outage is
    /// then being waited out (`wait` says how long until the next attempt) or the agent
    /// failed (`state.outcome`). Nothing waits past `limit`.
    pub(super) async fn sandbox_for_slice(
        &self,
        rec: &mut RequestRecord,
        state: &mut AgentState,
        limit: Instant,
        began_ms: u64,
        wait: &mut Option<Duration>,
    ) -> Option<Arc<dyn Sandbox>> {
        if state.outcome.is_some() {
            return None;
        }
        let unavailable = match tokio::time::timeout_at(limit.into(), self.sandbox_for(rec)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) if e.is_model_fault() => {
                state.outcome = Some(Outcome::Failed {
                    reason: format!("sandbox: {e}"),
                });
                Err(None)
            }
            Ok(Err(e)) => Err(Some(e.to_string())),
            Err(_) => Err(Some(ongoing(rec).unwrap_or_else(|| {
                "no sandbox before the invocation's time ran out".to_string()
            }))),
        };
        let sandbox = match unavailable {
            Ok(s) => s,
            Err(None) => return None,
            Err(Some(cause)) => {
                match self.note_outage(rec, "the sandbox provider", &cause, began_ms) {
                    Ok(delay) => *wait = Some(delay),
                    Err(reason) => state.outcome = Some(Outcome::Failed { reason }),
                }
                return None;
            }
        };

        // A request starts from its project's current source, or a new project from the
        // template, seeded before its first iteration (and again if the worker died before
        // that iteration was recorded).
        if state.iteration != 0 || rec.steps.seed.is_some() {
            return Some(sandbox);
        }
        match crate::base::seed(self.archive.as_deref(), &rec.project, sandbox.as_ref()).await {
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
                rec.steps.seed = Some(base);
                Some(sandbox)
            }
            Err(SeedError::Unavailable { service, cause }) => {
                match self.note_outage(rec, service, &cause, began_ms) {
                    Ok(delay) => *wait = Some(delay),
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
            (REQUEST_LABEL.to_string(), rec.id.to_string()),
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
}
