//! The REST API, independent of its host (the Lambda api function, the local server, tests):
//! a request's method, path and body in; a status and a JSON body out. Authentication
//! happens before: the caller passes the authenticated owner.

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tb_core::domain::{Description, ProjectId, RequestId, UserId};

use crate::pipeline::Pipeline;
use crate::requests::{NewRequest, RequestError};

/// Bodies larger than this are refused before parsing.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Who is calling, as established by authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub key_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    description: String,
    project_id: Option<String>,
    idempotency_key: Option<String>,
    callback_url: Option<String>,
}

pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> (StatusCode, Value) {
    (status, json!({"error": code, "message": message.into()}))
}

impl From<RequestError> for (StatusCode, Value) {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid(m) => error(StatusCode::BAD_REQUEST, "invalid_request", m),
            RequestError::NotFound(m) => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no request {m}"),
            ),
            RequestError::Unavailable(m) => {
                tracing::warn!("unavailable: {m}");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "temporarily unavailable; retry shortly",
                )
            }
        }
    }
}

/// Routes one authenticated REST call.
pub async fn handle(
    p: &Pipeline,
    caller: &Caller,
    method: &Method,
    path: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    if body.len() > MAX_BODY_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let result = match (method, segments.as_slice()) {
        (&Method::POST, ["v1", "requests"]) => create(p, caller, body).await,
        (&Method::GET, ["v1", "requests"]) => p
            .list(&caller.user, 50)
            .await
            .map(|l| (StatusCode::OK, json!({"requests": l})))
            .map_err(Into::into),
        (&Method::GET, ["v1", "requests", id]) => match parse_id(id) {
            Ok(id) => p
                .status(&caller.user, &id)
                .await
                .map(|s| (StatusCode::OK, json!(s)))
                .map_err(Into::into),
            Err(e) => Err(e),
        },
        (&Method::POST, ["v1", "requests", id, "cancel"]) => match parse_id(id) {
            Ok(id) => p
                .cancel(&caller.user, &id)
                .await
                .map(|s| (StatusCode::OK, json!(s)))
                .map_err(Into::into),
            Err(e) => Err(e),
        },
        (_, ["v1", "requests", ..]) => Err(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
        )),
    };
    result.unwrap_or_else(|e| e)
}

fn parse_id(id: &str) -> Result<RequestId, (StatusCode, Value)> {
    // An id that cannot exist is simply not found (no hint about the format of others').
    RequestId::parse(id).map_err(|_| {
        error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no request {}", id.chars().take(80).collect::<String>()),
        )
    })
}

async fn create(
    p: &Pipeline,
    caller: &Caller,
    body: &[u8],
) -> Result<(StatusCode, Value), (StatusCode, Value)> {
    let b: CreateBody = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not a valid request: {e}"),
        )
    })?;
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "invalid_request", m);
    let description = Description::parse(&b.description).map_err(bad)?;
    let project = b
        .project_id
        .map(|p| ProjectId::parse(&p).map_err(|e| bad(e.to_string())))
        .transpose()?;
    let new = NewRequest {
        owner: caller.user.clone(),
        key_id: caller.key_id.clone(),
        description,
        project,
        idempotency_key: b.idempotency_key,
        callback_url: b.callback_url,
        holds_slot: false,
    };
    let accepted = p.create(new).await?;
    let status = if accepted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let poll = format!("/v1/requests/{}", accepted.request_id);
    Ok((
        status,
        json!({"request_id": accepted.request_id, "project_id": accepted.project_id, "phase": accepted.phase, "created": accepted.created, "poll": poll}),
    ))
}
