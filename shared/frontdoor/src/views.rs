//! What callers see of requests and projects: compact, bounded views (MCP tool results stay far
//! below 25k tokens) built from the pipeline's status and the platform records. Each is
//! serialised as the tool's `structuredContent` and described by its output schema.

use schemars::JsonSchema;
use serde::Serialize;
use serde_with::skip_serializing_none;
use tb_core::domain::{Phase, ProjectId, UserId};
use tb_core::ports::{Lifecycle, Operation, ProjectRecord};
use tb_pipeline::lifecycle::OperationAccepted;
use tb_pipeline::{Accepted, RequestRecord, Status};

use crate::FrontDoor;
use crate::create::clip;
use tb_pipeline::admission::ACTIVE_SCAN;

/// Activity lines shown in a status, newest last.
pub const ACTIVITY_SHOWN: usize = 5;
const LINE_CHARS: usize = 240;
const REASON_CHARS: usize = 2000;
/// Projects listed at most.
pub const PROJECTS_SHOWN: usize = 50;
/// Recent requests shown per project.
pub const PROJECT_REQUESTS_SHOWN: usize = 5;

pub const POLL_HINT: &str = "poll get_request_status with request_id every 10-30 s";

/// The answer to `execute_request`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ExecuteView {
    /// The request's id: pass it to get_request_status and cancel_request.
    pub request_id: String,
    /// The project being built or changed.
    pub project_id: String,
    /// queued, running, finalizing, succeeded, failed or cancelled.
    pub phase: String,
    /// False when the idempotency_key matched an earlier request (that one is returned).
    pub created: bool,
    /// What to do next.
    pub next: String,
}

impl From<&Accepted> for ExecuteView {
    fn from(a: &Accepted) -> Self {
        ExecuteView {
            request_id: a.request_id.to_string(),
            project_id: a.project_id.to_string(),
            phase: phase_name(a.phase),
            created: a.created,
            next: POLL_HINT.into(),
        }
    }
}

/// Where a request failed.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ErrorView {
    /// `agent`, `queue`, or a finalizer step (archive, repository, database, build, deploy).
    pub step: String,
    pub reason: String,
}

/// The answer to `get_request_status` and `cancel_request`.
#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct StatusView {
    pub request_id: String,
    pub project_id: String,
    /// The start of the request's description.
    pub description: String,
    /// queued, running, finalizing, succeeded, failed or cancelled.
    pub phase: String,
    /// True once the phase is succeeded, failed or cancelled: stop polling.
    pub done: bool,
    /// Agent iterations so far.
    pub iteration: u32,
    pub max_iterations: u32,
    /// Model cost so far, in US dollars.
    pub cost_usd: f64,
    /// The same cost in integer micro-dollars (exact).
    pub cost_micro_usd: i64,
    /// The last few lines of activity, oldest first.
    pub recent_activity: Vec<String>,
    /// How the agent ended, once it has.
    pub outcome: Option<String>,
    /// The project's git repository, once pushed.
    pub repository_url: Option<String>,
    /// The live backend (its `/api/health` answers), once deployed; after a verification
    /// that failed for good, where the project's last verified version runs again.
    pub deployment_url: Option<String>,
    /// Whether the app at `deployment_url` passed its checks, once verified (false: it
    /// failed them and no earlier version had passed, so it stays up, unverified).
    pub verified: Option<bool>,
    /// The project's database name, once provisioned.
    pub database: Option<String>,
    /// Where and why it failed, if it did.
    pub error: Option<ErrorView>,
    pub cancel_requested: bool,
    /// What to do next.
    pub next: String,
}

pub fn phase_name(p: Phase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{p:?}").to_lowercase())
}

impl From<&Status> for StatusView {
    fn from(s: &Status) -> Self {
        let done = s.phase.is_terminal();
        let deployment_url = s.result.live_deployment().map(|d| d.url.clone());
        let next = match s.phase {
            Phase::Succeeded => match &deployment_url {
                Some(url) => format!("done: the backend is live at {url} (try {url}/api/health)"),
                None => "done".into(),
            },
            Phase::Failed => {
                "done: the request failed (see error); send a new execute_request with the project_id to try again".into()
            }
            Phase::Cancelled => "done: the request was cancelled".into(),
            _ => POLL_HINT.into(),
        };
        let skip = s.activity.len().saturating_sub(ACTIVITY_SHOWN);
        StatusView {
            request_id: s.request_id.to_string(),
            project_id: s.project_id.to_string(),
            description: clip(&s.description, 200),
            phase: phase_name(s.phase),
            done,
            iteration: s.iteration,
            max_iterations: s.max_iterations,
            cost_usd: s.cost_usd,
            cost_micro_usd: s.cost_micro_usd,
            recent_activity: s.activity[skip..]
                .iter()
                .map(|l| clip(l, LINE_CHARS))
                .collect(),
            outcome: s.outcome.as_deref().map(|o| clip(o, REASON_CHARS)),
            repository_url: s.result.repository_url().map(String::from),
            deployment_url,
            verified: s.result.live_verified(),
            database: s.result.database_name().map(String::from),
            error: s.error.as_ref().map(|f| ErrorView {
                step: f.step.clone(),
                reason: clip(&f.reason, REASON_CHARS),
            }),
            cancel_requested: s.cancel_requested,
            next,
        }
    }
}

/// One of a project's requests, in brief.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RequestBrief {
    pub request_id: String,
    pub phase: String,
    pub description: String,
    pub cost_usd: f64,
    pub created_at_ms: u64,
}

impl From<&RequestRecord> for RequestBrief {
    fn from(r: &RequestRecord) -> Self {
        RequestBrief {
            request_id: r.id.to_string(),
            phase: phase_name(r.phase),
            description: clip(r.description.as_str(), 120),
            cost_usd: r.agent.cost.as_usd_f64(),
            created_at_ms: r.created_at_ms,
        }
    }
}

/// A project in a listing.
#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ProjectSummary {
    pub project_id: String,
    /// `live` once a request has finished for it, `building` while its first request runs,
    /// `deleting` while its deletion runs, `deletion_stopped` when a step of it was refused
    /// (delete again to retry), `deleted` once it is gone.
    pub state: String,
    /// When it was deleted.
    pub deleted_at_ms: Option<u64>,
    pub name: Option<String>,
    pub repository_url: Option<String>,
    pub deployment_url: Option<String>,
    /// Whether the deployed version passed its checks (false: unverified; absent for
    /// versions deployed before verification existed).
    pub verified: Option<bool>,
    pub last_request_id: Option<String>,
    pub updated_at_ms: u64,
}

/// The answer to `list_projects`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ProjectList {
    /// Most recently updated first.
    pub projects: Vec<ProjectSummary>,
    /// How many projects there are in all.
    pub total: usize,
    /// True when only the first ones are listed.
    pub truncated: bool,
}

/// The answer to `get_project`.
#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ProjectView {
    pub project_id: String,
    /// `live` once a request has finished for it, `building` while its first request runs,
    /// `deleting` while its deletion runs, `deletion_stopped` when a step of it was refused
    /// (delete again to retry), `deleted` once it is gone.
    pub state: String,
    /// When it was deleted.
    pub deleted_at_ms: Option<u64>,
    /// Its deletion: who asked, when, each step's result (what it removed), and the step
    /// that stopped it if one did.
    pub deletion: Option<OperationView>,
    /// Its last rollback, the same way.
    pub rollback: Option<OperationView>,
    /// Deletions and rollbacks asked for and done, with who asked and when; newest last.
    pub history: Vec<HistoryView>,
    pub name: Option<String>,
    pub repository_url: Option<String>,
    pub deployment_url: Option<String>,
    pub database: Option<String>,
    /// The deployed version and the one before it (the rollback target).
    pub deployed_version: Option<String>,
    pub previous_version: Option<String>,
    /// Whether the deployed version passed its checks (false: unverified, e.g. a first
    /// deploy that failed them stays up to be looked at; absent for versions deployed
    /// before verification existed).
    pub verified: Option<bool>,
    /// The newest version that passed its checks: a request whose checks still fail after
    /// its repair rounds goes back to it.
    pub last_verified_version: Option<String>,
    /// The project's newest requests, newest first.
    pub recent_requests: Vec<RequestBrief>,
    pub created_at_ms: Option<u64>,
    pub updated_at_ms: u64,
}

/// A deletion or rollback of a project.
#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct OperationView {
    /// `running`, `done` or `stopped` (a step was refused: see failure).
    pub status: String,
    pub requested_by: String,
    pub requested_at_ms: u64,
    /// Step → its result (for a deletion: what it removed).
    pub steps: std::collections::BTreeMap<String, serde_json::Value>,
    pub failure: Option<ErrorView>,
    /// Requests that were running on the project and were cancelled first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cancelled_requests: Vec<String>,
    pub target_version: Option<String>,
    pub from_version: Option<String>,
    pub finished_at_ms: Option<u64>,
}

impl From<&Operation> for OperationView {
    fn from(op: &Operation) -> Self {
        let status = if op.finished_at_ms.is_some() {
            "done"
        } else if op.failure.is_some() {
            "stopped"
        } else {
            "running"
        };
        OperationView {
            status: status.into(),
            requested_by: op.requested_by.to_string(),
            requested_at_ms: op.requested_at_ms,
            steps: op.steps.clone(),
            failure: op.failure.as_ref().map(|f| ErrorView {
                step: f.step.clone(),
                reason: clip(&f.reason, REASON_CHARS),
            }),
            cancelled_requests: op
                .cancelled_requests
                .iter()
                .map(|r| r.to_string())
                .collect(),
            target_version: op.target_version.clone(),
            from_version: op.from_version.clone(),
            finished_at_ms: op.finished_at_ms,
        }
    }
}

/// One line of a project's history.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct HistoryView {
    /// `delete requested`, `deleted`, `delete failed`, `rollback requested`, `rolled back`,
    /// `rollback failed`.
    pub action: String,
    /// Who asked.
    pub by: String,
    pub at_ms: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// History lines shown by `get_project`, newest last.
pub const HISTORY_SHOWN: usize = 20;

/// The state a project record says it is in.
pub fn project_state(l: &Lifecycle) -> &'static str {
    match (&l.deleted_at_ms, &l.deletion) {
        (Some(_), _) => "deleted",
        (None, Some(op)) if op.failure.is_some() => "deletion_stopped",
        (None, Some(_)) => "deleting",
        (None, None) => "live",
    }
}

/// The answer to `delete_project` and `rollback_project`.
#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ProjectOperationView {
    pub project_id: String,
    /// `deleting`, `deleted` or `rolling_back`.
    pub state: String,
    /// False when nothing new started: the project was deleted already (a no-op), or the
    /// same operation is under way.
    pub started: bool,
    /// Requests that were running on the project and were cancelled first.
    pub cancelled_requests: Vec<String>,
    /// A step that stopped an earlier deletion and is retried now.
    pub retrying: Option<ErrorView>,
    /// For a rollback: the version it goes back to, and the one it leaves.
    pub target_version: Option<String>,
    pub from_version: Option<String>,
    /// For a project deleted already: when, and what each step removed.
    pub deleted_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub removed: serde_json::Map<String, serde_json::Value>,
    pub message: String,
    /// What to do next.
    pub next: String,
}

impl From<&OperationAccepted> for ProjectOperationView {
    fn from(a: &OperationAccepted) -> Self {
        let next = match a.state.as_str() {
            "deleted" => "nothing to do".to_string(),
            _ => format!(
                "poll get_project with project_id {} every 10-30 s until its state is {}",
                a.project_id,
                if a.state == "deleting" {
                    "deleted (or deletion_stopped)"
                } else {
                    "live with deployed_version equal to target_version (see rollback for its progress)"
                }
            ),
        };
        ProjectOperationView {
            project_id: a.project_id.to_string(),
            state: a.state.clone(),
            started: a.started,
            cancelled_requests: a.cancelled_requests.iter().map(|r| r.to_string()).collect(),
            retrying: a.retrying.as_ref().map(|f| ErrorView {
                step: f.step.clone(),
                reason: clip(&f.reason, REASON_CHARS),
            }),
            target_version: a.target_version.clone(),
            from_version: a.from_version.clone(),
            deleted_at_ms: a.deleted_at_ms,
            removed: a.removed.clone(),
            message: a.message.clone(),
            next,
        }
    }
}

/// Why a view could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// Unknown, or not the caller's: the same answer either way.
    NotFound(String),
    Unavailable,
}

fn unavailable(e: impl std::fmt::Display) -> ViewError {
    tracing::warn!("records unavailable: {e}");
    ViewError::Unavailable
}

/// The caller's projects: their project records, plus projects whose first request is still
/// running (the record is written when a request finishes). Only running requests are read,
/// so the cost does not grow with the caller's history.
/// Deleted projects are left out unless `include_deleted` (projects being deleted are
/// always listed).
pub async fn list_projects(
    fd: &FrontDoor,
    user: &UserId,
    include_deleted: bool,
) -> Result<ProjectList, ViewError> {
    let records = fd.records.projects(user).await.map_err(unavailable)?;
    let requests = fd
        .requests
        .store
        .running_for_owner(user, ACTIVE_SCAN)
        .await
        .map_err(unavailable)?;
    let mut projects: Vec<ProjectSummary> = records
        .iter()
        .filter(|p| &p.owner == user)
        .filter(|p| include_deleted || p.lifecycle.deleted_at_ms.is_none())
        .map(|p| ProjectSummary {
            project_id: p.id.to_string(),
            state: project_state(&p.lifecycle).into(),
            deleted_at_ms: p.lifecycle.deleted_at_ms,
            name: Some(p.name.clone()),
            repository_url: p.repo_url.clone(),
            deployment_url: p.deploy_url.clone(),
            verified: p.deployed_verified,
            last_request_id: p.last_request.as_ref().map(|r| r.to_string()),
            updated_at_ms: p.updated_at_ms,
        })
        .collect();
    // Newest first: the first request seen per project is its latest.
    for r in &requests {
        if records.iter().any(|p| p.id == r.project) {
            continue;
        }
        if projects.iter().any(|p| p.project_id == r.project.as_str()) {
            continue;
        }
        projects.push(ProjectSummary {
            project_id: r.project.to_string(),
            state: "building".into(),
            deleted_at_ms: None,
            name: None,
            repository_url: None,
            deployment_url: None,
            verified: None,
            last_request_id: Some(r.id.to_string()),
            updated_at_ms: r.updated_at_ms,
        });
    }
    projects.sort_by_key(|p| std::cmp::Reverse(p.updated_at_ms));
    let total = projects.len();
    projects.truncate(PROJECTS_SHOWN);
    Ok(ProjectList {
        truncated: total > projects.len(),
        total,
        projects,
    })
}

/// One of the caller's projects; someone else's is [`ViewError::NotFound`].
pub async fn project(fd: &FrontDoor, user: &UserId, id: &str) -> Result<ProjectView, ViewError> {
    let not_found = || ViewError::NotFound(clip(id, 80));
    let id = ProjectId::parse(id).map_err(|_| not_found())?;
    let record: Option<ProjectRecord> = fd
        .records
        .project(&id)
        .await
        .map_err(unavailable)?
        .filter(|p| &p.owner == user);
    let requests: Vec<RequestRecord> = fd
        .requests
        .store
        .list_for_project(user, &id, PROJECT_REQUESTS_SHOWN)
        .await
        .map_err(unavailable)?;
    let recent_requests: Vec<RequestBrief> = requests.iter().map(RequestBrief::from).collect();
    match record {
        Some(p) => Ok(ProjectView {
            project_id: p.id.to_string(),
            state: project_state(&p.lifecycle).into(),
            deleted_at_ms: p.lifecycle.deleted_at_ms,
            deletion: p.lifecycle.deletion.as_ref().map(OperationView::from),
            rollback: p.lifecycle.rollback.as_ref().map(OperationView::from),
            history: {
                let h = &p.lifecycle.history;
                h[h.len().saturating_sub(HISTORY_SHOWN)..]
                    .iter()
                    .map(|e| HistoryView {
                        action: e.action.clone(),
                        by: e.by.to_string(),
                        at_ms: e.at_ms,
                        detail: clip(&e.detail, REASON_CHARS),
                    })
                    .collect()
            },
            name: Some(p.name),
            repository_url: p.repo_url,
            deployment_url: p.deploy_url,
            database: p.database,
            deployed_version: p.deployed_version,
            previous_version: p.previous_version,
            verified: p.deployed_verified,
            last_verified_version: p.last_verified_version,
            recent_requests,
            created_at_ms: Some(p.created_at_ms),
            updated_at_ms: p.updated_at_ms,
        }),
        None if !requests.is_empty() => Ok(ProjectView {
            project_id: id.to_string(),
            state: "building".into(),
            deleted_at_ms: None,
            deletion: None,
            rollback: None,
            history: Vec::new(),
            name: None,
            repository_url: None,
            deployment_url: None,
            database: None,
            deployed_version: None,
            previous_version: None,
            verified: None,
            last_verified_version: None,
            updated_at_ms: requests[0].updated_at_ms,
            created_at_ms: requests.last().map(|r| r.created_at_ms),
            recent_requests,
        }),
        None => Err(not_found()),
    }
}
