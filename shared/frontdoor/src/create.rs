//! A request to create, as the caller gave it (REST body or MCP tool arguments), checked and
//! handed to [`tb_pipeline::Requests::create`], which admits it (project tenancy, the
//! caller's limits; [`tb_pipeline::admission`]).

use tb_core::domain::{Description, ProjectId};
use tb_pipeline::{Accepted, NewRequest, Refusal};

use crate::FrontDoor;
use crate::auth::Caller;

/// A request to create, as the caller gave it.
#[derive(Clone, Debug, Default)]
pub struct CreateRequest {
    pub description: String,
    pub project_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub callback_url: Option<String>,
}

/// Parses what the caller gave and creates the request through admission.
pub async fn create(
    fd: &FrontDoor,
    caller: &Caller,
    req: CreateRequest,
) -> Result<Accepted, Refusal> {
    let description = Description::parse(&req.description).map_err(Refusal::Invalid)?;
    let project = req
        .project_id
        .as_deref()
        // An id that cannot exist is simply not found (no hint about the format of others').
        .map(|id| ProjectId::parse(id).map_err(|_| Refusal::NoProject(clip(id, 80))))
        .transpose()?;
    let new = NewRequest {
        owner: caller.user.clone(),
        key_id: caller.key_id.clone(),
        description,
        project,
        idempotency_key: req.idempotency_key,
        callback_url: req.callback_url,
    };
    fd.requests.create(new).await
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
