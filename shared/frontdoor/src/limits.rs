//! Admission of new requests: tenancy of the target project, the per-user limit on running
//! requests and the per-user spending cap, checked and acted on atomically per user.
//!
//! # Atomicity
//!
//! The running-requests limit is a slot counter in the state store
//! (`StateStore::acquire_slot` / `release_slot`: a conditional update of a per-user item in
//! DynamoDB, one upsert in SQLite), so it holds across every api instance. A request that
//! took a slot carries `holds_slot`; the finalizer gives the slot back after the request's
//! final commit, in one atomic write with the record of it (a redelivered finalize message
//! does it if the first one died in between, and never a second time). The spending check runs under a per-user async mutex, which serialises it within
//! one process; across instances the slot limit bounds what can run at once, so the cap can
//! be overshot by at most the budgets of requests admitted in the same instant on other
//! instances.
//!
//! # Spending
//!
//! A new request is refused when
//! `spent (the ledger) + committed (running requests) + budget (the new request)` would
//! exceed the cap. A queued or running request is committed at its worst case,
//! `max(cost so far, one request budget)`, since it may still spend up to its budget; a
//! finalizing request no longer calls the model and is committed at its cost so far. Counting
//! running requests at their cost so far alone would let parallel calls through (a request
//! just queued has cost nothing yet) and the cap would not hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use tb_core::MicroUsd;
use tb_core::domain::{Description, Phase, ProjectId, UserId};
use tb_pipeline::requests::derived_request_id;
use tb_pipeline::{Accepted, NewRequest, RequestError, RequestRecord};

use crate::FrontDoor;
use crate::auth::Caller;

/// At most this many of a user's running requests are listed (stores that cannot select
/// running requests directly look through this many of the user's newest requests instead).
/// Requests run for minutes and users have a handful running at once, so running requests
/// are among the newest.
pub const ACTIVE_SCAN: usize = 1000;

/// A request to create, as the caller gave it (REST body or MCP tool arguments).
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub description: String,
    pub project_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
}

/// Why a request was not created. Each says what the caller can do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Invalid(String),
    /// The project does not exist or is not the caller's (the same answer either way).
    NoProject(String),
    TooManyRunning {
        running: usize,
        limit: usize,
    },
    SpendingCap {
        spent: MicroUsd,
        committed: MicroUsd,
        budget: MicroUsd,
        cap: MicroUsd,
    },
    Unavailable,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
            Refusal::NoProject(_) => StatusCode::NOT_FOUND,
            Refusal::TooManyRunning { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::SpendingCap { .. } => StatusCode::PAYMENT_REQUIRED,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) => "invalid_request",
            Refusal::NoProject(_) => "not_found",
            Refusal::TooManyRunning { .. } => "too_many_running_requests",
            Refusal::SpendingCap { .. } => "spending_cap_reached",
            Refusal::Unavailable => "unavailable",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::Invalid(m) => m.clone(),
            Refusal::NoProject(id) => format!(
                "no project {id}: use a project_id from list_projects, or leave project_id out to start a new project"
            ),
            Refusal::TooManyRunning { running, limit } => format!(
                "{running} of your requests are running and the limit is {limit}: wait for one to finish (poll get_request_status) or cancel one (cancel_request), then try again"
            ),
            Refusal::SpendingCap {
                spent,
                committed,
                budget,
                cap,
            } => format!(
                "spending cap reached: you have spent {spent}, running requests may still spend up to {committed}, and a new request may spend up to {budget}; your cap is {cap}"
            ),
            Refusal::Unavailable => "temporarily unavailable; retry in a few seconds".into(),
        }
    }

    /// The REST body for this refusal.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"error": self.code(), "message": self.message()});
        match self {
            Refusal::TooManyRunning { running, limit } => {
                body["running"] = (*running).into();
                body["limit"] = (*limit).into();
            }
            Refusal::SpendingCap {
                spent,
                committed,
                budget,
                cap,
            } => {
                body["spent_micro_usd"] = spent.micros().into();
                body["committed_micro_usd"] = committed.micros().into();
                body["request_budget_micro_usd"] = budget.micros().into();
                body["cap_micro_usd"] = cap.micros().into();
            }
            _ => {}
        }
        body
    }
}

impl From<RequestError> for Refusal {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid(m) => Refusal::Invalid(m),
            RequestError::NotFound(m) => Refusal::Invalid(format!("no request {m}")),
            RequestError::Unavailable(m) => {
                tracing::warn!("request creation unavailable: {m}");
                Refusal::Unavailable
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    tracing::warn!("admission unavailable: {e}");
    Refusal::Unavailable
}

/// Per-user admission locks.
#[derive(Default)]
pub struct Admission {
    users: Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Admission {
    async fn lock(&self, user: &UserId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            if users.len() > 4096 {
                // Only the map holds an unused lock (clones are made under this mutex).
                users.retain(|_, l| Arc::strong_count(l) > 1);
            }
            users.entry(user.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// The user's requests that are not in a terminal phase (see
/// [`tb_pipeline::StateStore::running_for_owner`]).
pub async fn running(fd: &FrontDoor, user: &UserId) -> Result<Vec<RequestRecord>, Refusal> {
    fd.pipeline
        .store
        .running_for_owner(user, ACTIVE_SCAN)
        .await
        .map_err(unavailable)
}

/// What running requests may still cost at most (see the module documentation).
pub fn committed(running: &[RequestRecord], budget: MicroUsd) -> MicroUsd {
    running
        .iter()
        .map(|r| match r.phase {
            Phase::Queued | Phase::Running => r.agent.cost.max(budget),
            _ => r.agent.cost,
        })
        .sum()
}

/// Whether `project` is the user's: a project record they own, or a project one of their
/// requests is building (its record is written when the first request finishes).
async fn owns_project(fd: &FrontDoor, user: &UserId, project: &ProjectId) -> Result<bool, Refusal> {
    match fd.records.project(project).await.map_err(unavailable)? {
        Some(p) if &p.owner == user && p.lifecycle.deletion.is_some() => {
            Err(Refusal::Invalid(format!(
                "project {project} is deleted (or being deleted): leave project_id out to start a new project"
            )))
        }
        Some(p) => Ok(&p.owner == user),
        None => Ok(!fd
            .pipeline
            .store
            .list_for_project(user, project, 1)
            .await
            .map_err(unavailable)?
            .is_empty()),
    }
}

/// Checks the request and the caller's limits, then creates it; all limit checks and the
/// creation happen under the caller's admission lock.
pub async fn admit(
    fd: &FrontDoor,
    caller: &Caller,
    req: CreateRequest,
) -> Result<Accepted, Refusal> {
    let description = Description::parse(&req.description).map_err(Refusal::Invalid)?;
    let project = match &req.project_id {
        None => None,
        Some(id) => {
            let id = ProjectId::parse(id).map_err(|_| Refusal::NoProject(clip(id, 80)))?;
            if !owns_project(fd, &caller.user, &id).await? {
                return Err(Refusal::NoProject(id.to_string()));
            }
            Some(id)
        }
    };
    let new = NewRequest {
        owner: caller.user.clone(),
        key_id: caller.key_id.clone(),
        description,
        project,
        idempotency_key: req.idempotency_key,
        callback_url: req.callback_url,
        holds_slot: false,
    };

    let _guard = fd.admission.lock(&caller.user).await;

    // A retry with the same idempotency key finds the request it created, whatever the limits
    // say now.
    if let Some(key) = new.idempotency_key.as_deref().filter(|k| !k.is_empty()) {
        let id = derived_request_id(caller.user.as_str(), key);
        if let Some(existing) = fd.pipeline.store.load(&id).await.map_err(unavailable)?
            && existing.owner == caller.user
        {
            return Ok(fd.pipeline.create(new).await?);
        }
    }

    let limit = fd.limits.max_concurrent_per_user;
    // The slot is taken in the state store, atomically across every api instance; the
    // request gives it back when it ends. It is taken first: a refusal then costs one
    // conditional update, not a listing of the user's recent requests (clients retry at the
    // limit, and a refusal must stay cheap however long the user's history is).
    let slot_limit = u32::try_from(limit).unwrap_or(u32::MAX);
    if !fd
        .pipeline
        .store
        .acquire_slot(&caller.user, slot_limit)
        .await
        .map_err(unavailable)?
    {
        // The counter is the truth: all `limit` slots are taken.
        return Err(Refusal::TooManyRunning {
            running: limit,
            limit,
        });
    }
    let give_back = || async {
        if let Err(e) = fd.pipeline.store.release_slot(&caller.user).await {
            tracing::warn!(user = %caller.user, "giving back a slot failed: {e}");
        }
    };
    // Admitted by the slot: the running requests are needed for the spending check only.
    let running = match running(fd, &caller.user).await {
        Ok(r) => r,
        Err(refusal) => {
            give_back().await;
            return Err(refusal);
        }
    };
    let budget = fd.pipeline.agent.budget;
    let committed = committed(&running, budget);
    let spent = match fd.records.spent(&caller.user).await {
        Ok(s) => s,
        Err(e) => {
            give_back().await;
            return Err(unavailable(e));
        }
    };
    let cap = fd.limits.spending_cap_per_user;
    if spent + committed + budget > cap {
        give_back().await;
        return Err(Refusal::SpendingCap {
            spent,
            committed,
            budget,
            cap,
        });
    }
    let new = NewRequest {
        holds_slot: true,
        ..new
    };
    let accepted = match fd.pipeline.create(new).await {
        Ok(a) => a,
        Err(e) => {
            give_back().await;
            return Err(e.into());
        }
    };
    if !accepted.created {
        give_back().await;
    }
    tracing::info!(
        user = %caller.user,
        request_id = %accepted.request_id,
        running = running.len() + 1,
        "request admitted"
    );
    Ok(accepted)
}

/// At most `n` characters of `s`.
pub(crate) fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
    out.push('…');
    out
}
