//! A job in the original system's shape on the work queue: it creates its request on first
//! sight, through the same admission as the front door's requests.

use serde_json::Value;
use tb_core::domain::{Description, ProjectId, RequestId, UserId};

use super::{WorkError, Worker};
use crate::admission::Refusal;
use crate::messages::Job;
use crate::requests::NewRequest;

/// The tools a job may name, and what each does with it.
const KNOWN_TOOLS: [&str; 1] = ["execute_request"];

impl Worker {
    /// Creates the request a job asks for (once: the id derives from the job id). A job
    /// the user may not run now waits (over the concurrency limit: it is retried) or is
    /// parked with the reason (another user's project, over the spending cap).
    pub(super) async fn accept_job(&self, job: Job) -> Result<RequestId, WorkError> {
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
        let new = NewRequest {
            owner,
            key_id: job.mcp_key_id,
            description,
            project,
            idempotency_key: None,
            callback_url: None,
        };
        match self.requests.create_job(&job.job_id, new).await {
            Ok(accepted) => Ok(accepted.request_id),
            Err(r @ (Refusal::TooManyRunning { .. } | Refusal::Unavailable)) => {
                Err(WorkError::Retry(format!("job {}: {r}", job.job_id)))
            }
            Err(r) => Err(poison(format!("job {}: {r}", job.job_id))),
        }
    }
}
