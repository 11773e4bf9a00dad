//! The REST routes: authentication and the body limit, then the creation of requests through
//! admission (limits, project tenancy), the caller's projects, and everything else through
//! the host-agnostic [`tb_pipeline::rest::handle`].

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::FrontDoor;
use crate::auth::{self, Caller};
use crate::limits::{self, CreateRequest};
use crate::views::{self, ViewError};

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_response(status, json!({"error": code, "message": message.into()}))
}

/// `GET /health`: no authentication, no dependencies.
pub async fn health() -> Response {
    json_response(
        StatusCode::OK,
        json!({"status": "ok", "service": "turbobackend", "version": env!("CARGO_PKG_VERSION")}),
    )
}

pub async fn not_found(req: Request) -> Response {
    let path: String = req.uri().path().chars().take(200).collect();
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {path}; the API is under /v1 and MCP is at /mcp"),
    )
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    TooLarge(usize),
    Unreadable,
}

impl BodyError {
    pub(crate) fn message(self) -> String {
        match self {
            BodyError::TooLarge(max) => format!("the body is larger than {max} bytes"),
            BodyError::Unreadable => "the body could not be read".into(),
        }
    }
    pub(crate) fn code(self) -> &'static str {
        match self {
            BodyError::TooLarge(_) => "body_too_large",
            BodyError::Unreadable => "unreadable_body",
        }
    }
    pub(crate) fn status(self) -> StatusCode {
        match self {
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Unreadable => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads at most `max` bytes: a declared `Content-Length` above it is refused before reading,
/// and reading stops as soon as the limit is passed (chunked bodies have no length).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(max)),
        Err(_) => Err(BodyError::Unreadable),
    }
}

/// `/v1/...`: authenticated REST.
pub async fn serve(State(fd): State<Arc<FrontDoor>>, req: Request) -> Response {
    let caller = match auth::authenticate(fd.records.as_ref(), req.headers()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, fd.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e.status(), e.code(), e.message()),
    };
    let path = parts.uri.path();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["v1", "requests"]) => create(&fd, &caller, &body).await,
        (&Method::GET, ["v1", "projects"]) => {
            let include_deleted = query_flag(parts.uri.query(), "include_deleted");
            match views::list_projects(&fd, &caller.user, include_deleted).await {
                Ok(list) => json_response(StatusCode::OK, json!(list)),
                Err(e) => view_error(e),
            }
        }
        (&Method::DELETE, ["v1", "projects", id]) => {
            let confirm = match confirmation(parts.uri.query(), &body) {
                Ok(c) => c,
                Err(response) => return response,
            };
            operation_response(
                tb_pipeline::lifecycle::request_delete(
                    &fd.pipeline,
                    fd.records.as_ref(),
                    &caller.user,
                    id,
                    &confirm,
                )
                .await,
                id,
            )
        }
        (&Method::POST, ["v1", "projects", id, "rollback"]) => operation_response(
            tb_pipeline::lifecycle::request_rollback(
                &fd.pipeline,
                fd.records.as_ref(),
                &caller.user,
                id,
            )
            .await,
            id,
        ),
        (&Method::GET, ["v1", "projects", id]) => {
            match views::project(&fd, &caller.user, id).await {
                Ok(p) => json_response(StatusCode::OK, json!(p)),
                Err(e) => view_error(e),
            }
        }
        (_, ["v1", "projects", ..]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {path}", parts.method),
        ),
        _ => {
            let (status, value) =
                tb_pipeline::rest::handle(&fd.pipeline, &caller, &parts.method, path, &body).await;
            json_response(status, value)
        }
    }
}

/// Whether `name=true` (or `name=1`) is in the query string.
fn query_flag(query: Option<&str>, name: &str) -> bool {
    query.unwrap_or("").split('&').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(k, v)| k == name && matches!(v, "true" | "1"))
    })
}

/// The `confirm` of a deletion: `?confirm=<project id>`, or `{"confirm": "<project id>"}`
/// as the body.
#[allow(clippy::result_large_err)]
fn confirmation(query: Option<&str>, body: &[u8]) -> Result<String, Response> {
    if let Some(value) = query.unwrap_or("").split('&').find_map(|pair| {
        pair.split_once('=')
            .filter(|(k, _)| *k == "confirm")
            .map(|(_, v)| v.to_string())
    }) {
        return Ok(value);
    }
    if body.is_empty() {
        return Ok(String::new());
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DeleteBody {
        confirm: String,
    }
    serde_json::from_slice::<DeleteBody>(body)
        .map(|b| b.confirm)
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not {{\"confirm\": \"<project id>\"}}: {e}"),
            )
        })
}

fn operation_response(
    result: Result<tb_pipeline::lifecycle::OperationAccepted, tb_pipeline::RequestError>,
    id: &str,
) -> Response {
    match result {
        Ok(accepted) => {
            let status = if accepted.started {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            json_response(status, json!(views::ProjectOperationView::from(&accepted)))
        }
        Err(tb_pipeline::RequestError::NotFound(_)) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no project {}", limits_clip(id)),
        ),
        Err(tb_pipeline::RequestError::Invalid(m)) => {
            error(StatusCode::CONFLICT, "not_possible", m)
        }
        Err(tb_pipeline::RequestError::Unavailable(m)) => {
            tracing::warn!("unavailable: {m}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "temporarily unavailable; retry shortly",
            )
        }
    }
}

fn limits_clip(id: &str) -> String {
    crate::limits::clip(id, 80)
}

fn view_error(e: ViewError) -> Response {
    match e {
        ViewError::NotFound(id) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no project {id}"),
        ),
        ViewError::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "temporarily unavailable; retry shortly",
        ),
    }
}

/// The body of `POST /v1/requests` (as in `tb_pipeline::rest`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    description: String,
    project_id: Option<String>,
    idempotency_key: Option<String>,
    callback_url: Option<String>,
}

async fn create(fd: &FrontDoor, caller: &Caller, body: &[u8]) -> Response {
    let b: CreateBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not a valid request: {e}"),
            );
        }
    };
    let req = CreateRequest {
        description: b.description,
        project_id: b.project_id,
        idempotency_key: b.idempotency_key,
        callback_url: b.callback_url,
    };
    match limits::admit(fd, caller, req).await {
        Ok(a) => {
            let status = if a.created {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            json_response(
                status,
                json!({
                    "request_id": a.request_id,
                    "project_id": a.project_id,
                    "phase": a.phase,
                    "created": a.created,
                    "poll": format!("/v1/requests/{}", a.request_id),
                }),
            )
        }
        Err(refusal) => json_response(refusal.status(), refusal.body()),
    }
}
