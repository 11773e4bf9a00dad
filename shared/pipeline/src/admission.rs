//! Admission of new requests, inside [`Requests::create`]: tenancy of the target project,
//! the per-user limit on running requests and the per-user spending cap, checked and acted on
//! atomically per user. Every way in passes here: MCP and REST (the front door) and a job in
//! the original system's shape on the work queue (the worker).
//!
//! # Atomicity
//!
//! The running-requests limit is a slot counter in the state store
//! (`StateStore::acquire_slot` / `release_slot`: a conditional update of a per-user item in
//! DynamoDB, one upsert in SQLite), so it holds across every process. A request that took a
//! slot carries `holds_slot`; the finalizer gives the slot back with the request's final
//! commit, in one atomic write with the record of it (a redelivered finalize message does it
//! if the first one died in between, and never a second time).
//! The spending check runs under a per-user async mutex, which serialises it within one
//! process; across processes the slot limit bounds what can run at once, so the cap can be
//! overshot by at most the budgets of requests admitted in the same instant elsewhere.
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
//!
//! [`Requests::create`]: crate::Requests::create

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::StatusCode;
use tb_core::MicroUsd;
use tb_core::domain::{Phase, ProjectId, RequestId, UserId};

use crate::record::RequestRecord;
use crate::requests::{NewRequest, RequestError, Requests};

/// At most this many of a user's running requests are listed (stores that cannot select
/// running requests directly look through this many of the user's newest requests instead).
/// Requests run for minutes and users have a handful running at once, so running requests
/// are among the newest.
pub const ACTIVE_SCAN: usize = 1000;

/// Per-user limits: those admission enforces, and the size of a request body the front door
/// reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests a user may have in a non-terminal phase at once.
    pub max_concurrent_per_user: usize,
    /// What a user may spend in all: the ledger, plus what running requests may still spend,
    /// plus one request budget for the new request, must stay within this.
    pub spending_cap_per_user: MicroUsd,
    /// Request bodies larger than this are refused (413) by the front door before parsing.
    pub max_body_bytes: usize,
}

/// A limit setting that does not parse; the message names the setting and its value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitsError(String);

impl Limits {
    /// The per-user limits from environment-style variables (pass `|k| std::env::var(k).ok()`):
    /// `TB_MAX_CONCURRENT_REQUESTS` (requests not yet finished, at least 1; default 3) and
    /// `TB_SPENDING_CAP_USD` (dollars, e.g. `50` or `12.50`, more than zero; default $50).
    /// The body size limit is the standard one.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Limits, LimitsError> {
        let mut limits = Limits::default();
        if let Some(v) = var("TB_MAX_CONCURRENT_REQUESTS") {
            limits.max_concurrent_per_user = v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    LimitsError(format!(
                        "TB_MAX_CONCURRENT_REQUESTS={v} is not a whole number from 1 to {}",
                        u32::MAX
                    ))
                })?;
        }
        if let Some(v) = var("TB_SPENDING_CAP_USD") {
            limits.spending_cap_per_user = MicroUsd::parse_usd(&v)
                .ok()
                .filter(|cap| *cap > MicroUsd::ZERO)
                .ok_or_else(|| {
                    LimitsError(format!(
                        "TB_SPENDING_CAP_USD={v} is not an amount of dollars greater than zero (e.g. 50 or 12.50)"
                    ))
                })?;
        }
        Ok(limits)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_per_user: 3,
            spending_cap_per_user: MicroUsd::from_micros(50_000_000),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Why a request was not created. Each says what the caller can do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
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
pub(crate) struct Admission {
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

/// Who vouches for the user a new request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// An authenticated caller (API key or OAuth token) of the front door. A project it
    /// names must be one it owns.
    Caller,
    /// A job in the original system's shape on the work queue. Trusted: only our own
    /// backend can publish there (the queue's policy grants `sqs:SendMessage` to it and to
    /// our functions, through IAM), so its `user_id` is taken as given. Its `project_id` may
    /// name a project that backend creates, unknown here yet; but a project known to be
    /// another user's is refused like any other caller's.
    Job,
}

impl Requests {
    /// The user's requests that are not in a terminal phase (see
    /// [`crate::StateStore::running_for_owner`]).
    pub async fn running(&self, user: &UserId) -> Result<Vec<RequestRecord>, Refusal> {
        self.store
            .running_for_owner(user, ACTIVE_SCAN)
            .await
            .map_err(unavailable)
    }

    /// Whether `project` is the user's: a project record they own, or a project one of
    /// their requests is building (its record is written when the first request finishes).
    /// `Ok(None)`: nobody is known to own it.
    async fn project_owned(
        &self,
        user: &UserId,
        project: &ProjectId,
    ) -> Result<Option<bool>, Refusal> {
        if let Some(p) = self.records.project(project).await.map_err(unavailable)? {
            if &p.owner == user && p.lifecycle.deletion.is_some() {
                return Err(Refusal::Invalid(format!(
                    "project {project} is deleted (or being deleted): leave project_id out to start a new project"
                )));
            }
            return Ok(Some(&p.owner == user));
        }
        let building = self
            .store
            .list_for_project(user, project, 1)
            .await
            .map_err(unavailable)?;
        Ok((!building.is_empty()).then_some(true))
    }

    /// Checks the request's project and the user's limits, then creates it; all limit
    /// checks and the creation happen under the user's admission lock. `id`: the id a retry
    /// finds again (from an idempotency key or a job id); `None` for a new one.
    pub(crate) async fn admit(
        &self,
        id: Option<RequestId>,
        new: NewRequest,
        origin: Origin,
    ) -> Result<crate::Accepted, Refusal> {
        if let Some(project) = &new.project {
            let owned = self.project_owned(&new.owner, project).await?;
            let allowed = match origin {
                Origin::Caller => owned == Some(true),
                Origin::Job => owned != Some(false),
            };
            if !allowed {
                return Err(Refusal::NoProject(project.to_string()));
            }
        }
        let user = new.owner.clone();
        let _guard = self.admission.lock(&user).await;

        // A retry (the same idempotency key, or the same job) finds the request it created,
        // whatever the limits say now.
        let existing = match &id {
            Some(id) => self.store.load(id).await.map_err(unavailable)?,
            None => None,
        };
        if let Some(existing) = existing {
            if existing.owner != user {
                return Err(Refusal::Invalid(format!(
                    "the request {} belongs to another user",
                    existing.id
                )));
            }
            return Ok(crate::Accepted {
                request_id: existing.id,
                project_id: existing.project,
                phase: existing.phase,
                created: false,
            });
        }

        let limit = self.limits.max_concurrent_per_user;
        // The slot is taken in the state store, atomically across every process; the
        // request gives it back when it ends. It is taken first: a refusal then costs one
        // conditional update, not a listing of the user's recent requests (clients retry at
        // the limit, and a refusal must stay cheap however long the user's history is).
        let slot_limit = u32::try_from(limit).unwrap_or(u32::MAX);
        if !self
            .store
            .acquire_slot(&user, slot_limit)
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
            if let Err(e) = self.store.release_slot(&user).await {
                tracing::warn!(user = %user, "giving back a slot failed: {e}");
            }
        };
        // Admitted by the slot: the running requests are needed for the spending check only.
        let running = match self.running(&user).await {
            Ok(r) => r,
            Err(refusal) => {
                give_back().await;
                return Err(refusal);
            }
        };
        let budget = self.agent.budget;
        let committed = committed(&running, budget);
        let spent = match self.records.spent(&user).await {
            Ok(s) => s,
            Err(e) => {
                give_back().await;
                return Err(unavailable(e));
            }
        };
        let cap = self.limits.spending_cap_per_user;
        if spent + committed + budget > cap {
            give_back().await;
            return Err(Refusal::SpendingCap {
                spent,
                committed,
                budget,
                cap,
            });
        }
        let id = id.unwrap_or_else(RequestId::generate);
        let accepted = match self.insert(id, new).await {
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
            user = %user,
            request_id = %accepted.request_id,
            running = running.len() + 1,
            "request admitted"
        );
        Ok(accepted)
    }
}
