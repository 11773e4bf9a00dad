//! [`Requests`]: create a request (through admission, [`crate::admission`]), report its
//! status, cancel it, list a user's requests. The front door (MCP, REST) and the worker (a
//! job in the original system's shape) create requests only here.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tb_core::agent::AgentConfig;
use tb_core::clock::now_ms;
use tb_core::domain::{Description, Phase, ProjectId, RequestId, UserId};
use tb_core::encoding::sha256_hex;
use tb_core::ports::{PlatformRecords, PortError};

use crate::admission::{Admission, Limits, Origin, Refusal};
use crate::messages::WorkMessage;
use crate::ports::{Appended, Created, Queue, StateStore};
use crate::record::{Failure, RequestRecord};
use crate::steps::Steps;

/// A new request, as the front door (or a job on the queue) gives it.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub owner: UserId,
    pub key_id: Option<String>,
    pub description: Description,
    pub project: Option<ProjectId>,
    /// The same owner and key always give the same request.
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
}

/// Everything that creates, reports, cancels and lists requests: the state store and the
/// work queue, the platform records (project ownership, the spending ledger), the per-user
/// limits, and the limits of each request's agent. Built once per process; the api uses
/// only this, the worker adds what runs the agent ([`crate::Worker`]).
pub struct Requests {
    pub store: Arc<dyn StateStore>,
    pub queue: Arc<dyn Queue>,
    pub records: Arc<dyn PlatformRecords>,
    pub limits: Limits,
    /// Each request's agent limits: its budget counts in admission, its iteration limit in
    /// its status.
    pub agent: AgentConfig,
    /// Accept callback URLs on private or loopback addresses, and plain http (local mode,
    /// tests). Never in the cloud: it would let a caller reach internal endpoints.
    pub allow_private_callbacks: bool,
    pub(crate) admission: Admission,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(String),
    /// Unknown, or not the caller's: the same answer either way.
    #[error("no request {0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<PortError> for RequestError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::NotFound(s) => RequestError::NotFound(s),
            other => RequestError::Unavailable(other.to_string()),
        }
    }
}

/// The answer to `create`: enough to poll.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub request_id: RequestId,
    pub project_id: ProjectId,
    pub phase: Phase,
    /// False when the idempotency key matched an earlier request.
    pub created: bool,
}

/// What a client sees of a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub request_id: RequestId,
    pub project_id: ProjectId,
    pub description: String,
    pub phase: Phase,
    pub iteration: u32,
    pub max_iterations: u32,
    pub cost_usd: f64,
    pub cost_micro_usd: i64,
    pub tokens: tb_core::TokenUsage,
    pub activity: Vec<String>,
    pub outcome: Option<String>,
    /// Finalizer results (repository, archive, database, deployment) once known.
    pub result: Steps,
    pub error: Option<Failure>,
    pub cancel_requested: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// The id of the request a job in the original system's shape creates: a redelivered job
/// finds it again.
pub fn job_request_id(job_id: &str) -> RequestId {
    derived_request_id("job", job_id)
}

/// A request id derived from something the caller chose, so retries find the same request.
pub fn derived_request_id(scope: &str, key: &str) -> RequestId {
    RequestId::parse(&format!(
        "req_{}",
        &sha256_hex(format!("{scope}\0{key}").as_bytes())[..26]
    ))
    .expect("hex is a valid id")
}

impl Requests {
    /// Default [`Limits`], callbacks to public https addresses only.
    pub fn new(
        store: Arc<dyn StateStore>,
        queue: Arc<dyn Queue>,
        records: Arc<dyn PlatformRecords>,
        agent: AgentConfig,
    ) -> Self {
        Requests {
            store,
            queue,
            records,
            limits: Limits::default(),
            agent,
            allow_private_callbacks: false,
            admission: Admission::default(),
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Accepts callbacks to private addresses and plain http (local mode, tests).
    pub fn allowing_private_callbacks(mut self) -> Self {
        self.allow_private_callbacks = true;
        self
    }

    /// Admits the request ([`crate::admission`]), stores it and enqueues its first slice.
    /// Idempotent on the key.
    #[tracing::instrument(skip_all, fields(owner = %new.owner))]
    pub async fn create(&self, new: NewRequest) -> Result<Accepted, Refusal> {
        let id = match &new.idempotency_key {
            Some(k) if k.is_empty() || k.len() > 200 => {
                return Err(Refusal::Invalid(
                    "idempotency_key must be 1-200 characters".into(),
                ));
            }
            Some(k) => Some(derived_request_id(new.owner.as_str(), k)),
            None => None,
        };
        self.check_callback(&new).await?;
        self.admit(id, new, Origin::Caller).await
    }

    /// Creates the request a job in the original system's shape asks for, once: its id
    /// derives from the job id. The job's user is trusted (see [`Origin::Job`]); its project
    /// and the user's limits are checked like any other request's.
    #[tracing::instrument(skip_all, fields(owner = %new.owner, job_id))]
    pub async fn create_job(&self, job_id: &str, new: NewRequest) -> Result<Accepted, Refusal> {
        self.check_callback(&new).await?;
        self.admit(Some(job_request_id(job_id)), new, Origin::Job)
            .await
    }

    async fn check_callback(&self, new: &NewRequest) -> Result<(), Refusal> {
        match &new.callback_url {
            Some(url) => crate::callback::check(url, self.allow_private_callbacks)
                .await
                .map_err(Refusal::Invalid),
            None => Ok(()),
        }
    }

    /// Stores an admitted request (it holds one of its owner's slots) and enqueues its first
    /// slice.
    pub(crate) async fn insert(
        &self,
        id: RequestId,
        new: NewRequest,
    ) -> Result<Accepted, RequestError> {
        let project = new.project.clone().unwrap_or_else(ProjectId::generate);
        let (mut record, first) =
            RequestRecord::new(id.clone(), new.owner, project, new.description, now_ms());
        record.key_id = new.key_id;
        record.callback_url = new.callback_url;
        record.holds_slot = true;
        match self.store.create(&record, &first).await? {
            Created::Existing(existing) => {
                return Ok(Accepted {
                    request_id: existing.id,
                    project_id: existing.project,
                    phase: existing.phase,
                    created: false,
                });
            }
            Created::New => {}
        }
        tracing::info!(request_id = %id, "request created");
        // The record is the truth: if this send is lost, the sweeper re-drives the request.
        if let Err(e) = self
            .queue
            .send_work(
                &WorkMessage::Continue {
                    request_id: id.clone(),
                    seq: 0,
                },
                Duration::ZERO,
            )
            .await
        {
            tracing::warn!(request_id = %id, "first work message not sent ({e}); the sweeper will re-drive it");
        }
        Ok(Accepted {
            request_id: id,
            project_id: record.project,
            phase: Phase::Queued,
            created: true,
        })
    }

    /// The status of one of `owner`'s requests.
    pub async fn status(&self, owner: &UserId, id: &RequestId) -> Result<Status, RequestError> {
        let r = self.owned(owner, id).await?;
        Ok(self.status_of(&r))
    }

    pub fn status_of(&self, r: &RequestRecord) -> Status {
        Status {
            request_id: r.id.clone(),
            project_id: r.project.clone(),
            description: r.description.as_str().to_string(),
            phase: r.phase,
            iteration: r.agent.iteration,
            max_iterations: self.agent.max_iterations,
            cost_usd: r.agent.cost.as_usd_f64(),
            cost_micro_usd: r.agent.cost.micros(),
            tokens: r.agent.usage,
            activity: r.activity.clone(),
            outcome: r.agent.outcome.as_ref().map(|o| o.describe()),
            result: r.steps.clone(),
            error: r.failure.clone(),
            cancel_requested: r.cancel_requested,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        }
    }

    /// Asks a request to stop. The worker stops it at its next iteration boundary; the
    /// finalizer still archives what was built.
    pub async fn cancel(&self, owner: &UserId, id: &RequestId) -> Result<Status, RequestError> {
        for _ in 0..5 {
            let mut r = self.owned(owner, id).await?;
            if r.phase.is_terminal() || r.cancel_requested {
                return Ok(self.status_of(&r));
            }
            let v = r.version;
            r.version += 1;
            r.cancel_requested = true;
            r.updated_at_ms = now_ms();
            r.push_activity("cancel requested".into());
            match self.store.commit(&r, v, Appended::default()).await {
                Ok(()) => {
                    // Wake a worker if none holds the request, so the cancel takes effect now.
                    if !r.leased_by_other("", now_ms()) && r.phase != Phase::Finalizing {
                        let msg = WorkMessage::Continue {
                            request_id: r.id.clone(),
                            seq: r.seq,
                        };
                        if let Err(e) = self.queue.send_work(&msg, Duration::ZERO).await {
                            tracing::warn!(request_id = %r.id, "cancel wake-up not sent ({e}); the sweeper will re-drive it");
                        }
                    }
                    return Ok(self.status_of(&r));
                }
                Err(PortError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RequestError::Unavailable(
            "the request is changing too fast; try again".into(),
        ))
    }

    /// `owner`'s requests, newest first.
    pub async fn list(&self, owner: &UserId, limit: usize) -> Result<Vec<Status>, RequestError> {
        Ok(self
            .store
            .list_for_owner(owner, limit)
            .await?
            .iter()
            .map(|r| self.status_of(r))
            .collect())
    }

    async fn owned(&self, owner: &UserId, id: &RequestId) -> Result<RequestRecord, RequestError> {
        match self.store.load(id).await? {
            Some(r) if &r.owner == owner => Ok(r),
            _ => Err(RequestError::NotFound(id.to_string())),
        }
    }
}
