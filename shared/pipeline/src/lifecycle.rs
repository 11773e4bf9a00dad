//! Asking for a project's deletion or rollback (the api's side): checks that the caller owns
//! the project and that the operation makes sense, records it on the project's
//! [`Lifecycle`] with who asked and when, and sends the finalize message that has the
//! finalizer carry it out ([`crate::project_ops`]). The api function cannot run it itself:
//! it has no deployer, database cluster or code host, and API Gateway ends a response at
//! 29 s.

use serde::Serialize;
use serde_json::Value;
use tb_core::clock::now_ms;
use tb_core::domain::{ProjectId, RequestId, UserId};
use tb_core::ports::{
    Lifecycle, Operation, OperationFailure, PlatformRecords, PortError, ProjectRecord,
};

use crate::messages::FinalizeMessage;
use crate::requests::RequestError;
use crate::requests::Requests;

/// Requests of a project looked at for cancelling or refusing.
const REQUESTS_SCAN: usize = 100;

/// What a delete or rollback call did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OperationAccepted {
    pub project_id: ProjectId,
    /// `deleting`, `deleted` or `rolling_back`.
    pub state: String,
    /// False when nothing new was started: the project was deleted already, or the same
    /// operation is under way.
    pub started: bool,
    /// Requests that were running on the project and were cancelled first.
    pub cancelled_requests: Vec<RequestId>,
    /// A step that stopped an earlier attempt and is now retried, with its reason.
    pub retrying: Option<OperationFailure>,
    /// For a rollback: the version it goes back to and the one it leaves.
    pub target_version: Option<String>,
    pub from_version: Option<String>,
    /// For a deletion done already: when, and what each step removed.
    pub deleted_at_ms: Option<u64>,
    pub removed: serde_json::Map<String, Value>,
    pub message: String,
}

fn not_found(id: &str) -> RequestError {
    RequestError::NotFound(id.chars().take(80).collect())
}

/// The caller's project record. A project whose first request has not finished has no
/// record yet: one is written for it, so its deletion can be recorded.
async fn owned(
    p: &Requests,
    records: &dyn PlatformRecords,
    user: &UserId,
    id: &str,
) -> Result<ProjectRecord, RequestError> {
    let project = ProjectId::parse(id).map_err(|_| not_found(id))?;
    match records.project(&project).await? {
        Some(r) if &r.owner == user => Ok(r),
        Some(_) => Err(not_found(id)),
        None => {
            let requests = p.store.list_for_project(user, &project, 1).await?;
            if requests.is_empty() {
                return Err(not_found(id));
            }
            let now = now_ms();
            let record = ProjectRecord {
                last_request: Some(requests[0].id.clone()),
                created_at_ms: requests[0].created_at_ms,
                updated_at_ms: now,
                ..ProjectRecord::new(project.clone(), user.clone(), now)
            };
            records.save_project(&record).await?;
            Ok(records.project(&project).await?.unwrap_or(record))
        }
    }
}

/// The project's requests not finished, newest first.
async fn running(
    p: &Requests,
    user: &UserId,
    project: &ProjectId,
) -> Result<Vec<RequestId>, RequestError> {
    Ok(p.store
        .list_for_project(user, project, REQUESTS_SCAN)
        .await?
        .into_iter()
        .filter(|r| !r.phase.is_terminal())
        .map(|r| r.id)
        .collect())
}

/// Writes `lifecycle` as its next version; a concurrent change (another call, the
/// finalizer recording a step) asks the caller to try again.
async fn save(
    records: &dyn PlatformRecords,
    project: &ProjectId,
    lifecycle: &mut Lifecycle,
) -> Result<(), RequestError> {
    lifecycle.next_version();
    match records.save_lifecycle(project, lifecycle).await {
        Err(PortError::Conflict(_)) => Err(RequestError::Invalid(format!(
            "project {project} changed while this was asked (its deletion or rollback made progress): ask again"
        ))),
        other => Ok(other?),
    }
}

async fn send(p: &Requests, message: FinalizeMessage) -> Result<(), RequestError> {
    p.queue.send_finalize(&message).await.map_err(|e| {
        RequestError::Unavailable(format!(
            "recorded, but not handed to the finalizer ({e}); ask again to continue"
        ))
    })
}

/// `delete_project`: refused unless `confirm` is the project id; cancels the project's
/// running requests, records the deletion and hands it to the finalizer. Deleting a deleted
/// project changes nothing and says so; deleting one whose deletion stopped at a refused
/// step retries from that step.
pub async fn request_delete(
    p: &Requests,
    records: &dyn PlatformRecords,
    user: &UserId,
    id: &str,
    confirm: &str,
) -> Result<OperationAccepted, RequestError> {
    let record = owned(p, records, user, id).await?;
    let project = record.id.clone();
    if confirm != project.as_str() {
        return Err(RequestError::Invalid(format!(
            "deleting a project cannot be undone: pass confirm equal to the project id ({project}) to delete it"
        )));
    }
    let mut lifecycle = record.lifecycle.clone();
    if let Some(at) = lifecycle.deleted_at_ms {
        let removed = lifecycle
            .deletion
            .as_ref()
            .map(|op| op.steps.clone().into_iter().collect())
            .unwrap_or_default();
        return Ok(OperationAccepted {
            project_id: project.clone(),
            state: "deleted".into(),
            started: false,
            cancelled_requests: Vec::new(),
            retrying: None,
            target_version: None,
            from_version: None,
            deleted_at_ms: Some(at),
            removed,
            message: format!("project {project} was deleted already; nothing was done"),
        });
    }

    let mut cancelled = Vec::new();
    for request in running(p, user, &project).await? {
        p.cancel(user, &request).await?;
        cancelled.push(request);
    }
    let now = now_ms();
    let (started, retrying, message) = match &mut lifecycle.deletion {
        Some(op) if op.under_way() => {
            op.cancelled_requests.extend(cancelled.iter().cloned());
            (false, None, "the deletion is under way already".to_string())
        }
        Some(op) => {
            let failure = op.failure.take();
            op.cancelled_requests.extend(cancelled.iter().cloned());
            let detail = failure
                .as_ref()
                .map(|f| format!("retrying step {}: {}", f.step, f.reason))
                .unwrap_or_default();
            lifecycle.record("delete requested", user, now, detail);
            (
                true,
                failure,
                "the deletion continues from the step that stopped it".to_string(),
            )
        }
        None => {
            let mut op = Operation::new(user.clone(), now);
            op.cancelled_requests = cancelled.clone();
            lifecycle.deletion = Some(op);
            lifecycle.record("delete requested", user, now, String::new());
            (true, None, "the deletion has started".to_string())
        }
    };
    save(records, &project, &mut lifecycle).await?;
    tracing::info!(%project, %user, cancelled = cancelled.len(), "project deletion requested");
    send(
        p,
        FinalizeMessage::DeleteProject {
            project_id: project.clone(),
        },
    )
    .await?;
    let cancelled_note = if cancelled.is_empty() {
        String::new()
    } else {
        format!(
            "; {} running request(s) were cancelled first: {}",
            cancelled.len(),
            cancelled
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok(OperationAccepted {
        project_id: project,
        state: "deleting".into(),
        started,
        cancelled_requests: cancelled,
        retrying,
        target_version: None,
        from_version: None,
        deleted_at_ms: None,
        removed: Default::default(),
        message: format!("{message}{cancelled_note}"),
    })
}

/// `rollback_project`: the previous deployed version becomes current again. Refused with a
/// clear reason when there is no previous version, the project is deleted, or a request is
/// running on it.
pub async fn request_rollback(
    p: &Requests,
    records: &dyn PlatformRecords,
    user: &UserId,
    id: &str,
) -> Result<OperationAccepted, RequestError> {
    let record = owned(p, records, user, id).await?;
    let project = record.id.clone();
    let mut lifecycle = record.lifecycle.clone();
    if lifecycle.deletion.is_some() {
        return Err(RequestError::Invalid(format!(
            "project {project} is deleted (or being deleted): there is nothing to roll back"
        )));
    }
    if let Some(op) = &lifecycle.rollback
        && op.under_way()
    {
        let accepted = OperationAccepted {
            project_id: project.clone(),
            state: "rolling_back".into(),
            started: false,
            cancelled_requests: Vec::new(),
            retrying: None,
            target_version: op.target_version.clone(),
            from_version: op.from_version.clone(),
            deleted_at_ms: None,
            removed: Default::default(),
            message: "a rollback is under way already".into(),
        };
        send(
            p,
            FinalizeMessage::RollbackProject {
                project_id: project,
            },
        )
        .await?;
        return Ok(accepted);
    }
    if let Some(request) = running(p, user, &project).await?.first() {
        return Err(RequestError::Invalid(format!(
            "request {request} is running on project {project}: wait until it finishes (or cancel it), then roll back"
        )));
    }
    let (Some(current), Some(previous)) = (&record.deployed_version, &record.previous_version)
    else {
        let why = if record.deployed_version.is_some() {
            "it has been deployed only once"
        } else {
            "it has never been deployed"
        };
        return Err(RequestError::Invalid(format!(
            "project {project} has no previous version to roll back to: {why}"
        )));
    };
    let now = now_ms();
    let mut op = Operation::new(user.clone(), now);
    op.target_version = Some(previous.clone());
    op.from_version = Some(current.clone());
    lifecycle.rollback = Some(op);
    lifecycle.record(
        "rollback requested",
        user,
        now,
        format!("from {current} to {previous}"),
    );
    save(records, &project, &mut lifecycle).await?;
    tracing::info!(%project, %user, "project rollback requested");
    send(
        p,
        FinalizeMessage::RollbackProject {
            project_id: project.clone(),
        },
    )
    .await?;
    Ok(OperationAccepted {
        project_id: project,
        state: "rolling_back".into(),
        started: true,
        cancelled_requests: Vec::new(),
        retrying: None,
        target_version: Some(previous.clone()),
        from_version: Some(current.clone()),
        deleted_at_ms: None,
        removed: Default::default(),
        message: "the rollback has started".into(),
    })
}
