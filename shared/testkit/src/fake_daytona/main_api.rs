//! The fake's main API: create, get, list, start, stop and delete sandboxes.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tb_core::sandbox::{SandboxProvider, SandboxSpec};

use super::{Fake, FakeSandbox, Pending, error};

pub(super) fn routes() -> Router<Arc<Fake>> {
    Router::new()
        .route("/sandbox", post(create).get(list))
        .route("/sandbox/{id}", get(get_one).delete(delete))
        .route("/sandbox/{id}/start", post(start))
        .route("/sandbox/{id}/stop", post(stop))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    name: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    snapshot: Option<String>,
    build_info: Option<BuildInfo>,
    auto_stop_interval: Option<i64>,
    auto_delete_interval: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BuildInfo {
    dockerfile_content: String,
}

async fn create(State(fake): State<Arc<Fake>>, Json(raw): Json<Value>) -> Response {
    {
        let mut inner = fake.lock();
        inner.counters.creates += 1;
        inner.last_create_body = Some(raw.clone());
        if inner.creates_to_refuse > 0 {
            inner.creates_to_refuse -= 1;
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded");
            let headers = response.headers_mut();
            headers.insert(
                "Retry-After-sandbox-create",
                "0".parse().expect("valid header"),
            );
            headers.insert(
                "X-RateLimit-Limit-sandbox-create",
                "300".parse().expect("valid header"),
            );
            headers.insert(
                "X-RateLimit-Remaining-sandbox-create",
                "0".parse().expect("valid header"),
            );
            return response;
        }
    }
    let body: CreateBody = match serde_json::from_value(raw) {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if body.snapshot.is_some() && body.build_info.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "Cannot specify both snapshot and buildInfo",
        );
    }
    if body
        .build_info
        .as_ref()
        .is_some_and(|b| !b.dockerfile_content.starts_with("FROM "))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "buildInfo.dockerfileContent must start with FROM",
        );
    }
    let (seq, id) = {
        let mut inner = fake.lock();
        if let Some(name) = &body.name
            && inner.sandboxes.values().any(|s| &s.name == name)
        {
            return error(
                StatusCode::CONFLICT,
                format!("Sandbox with name {name} already exists"),
            );
        }
        inner.next_seq += 1;
        let seq = inner.next_seq;
        (
            seq,
            format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{seq:012x}",
                rand::random::<u32>(),
                rand::random::<u16>(),
                rand::random::<u16>() & 0xfff,
                rand::random::<u16>() & 0xfff
            ),
        )
    };
    let labels = body.labels.unwrap_or_default();
    let spec = SandboxSpec {
        name: id.clone(),
        labels: labels.clone(),
    };
    let local = match fake.local.provider().create_local(&spec).await {
        Ok(local) => local,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    assert_eq!(
        tb_core::sandbox::Sandbox::id(&local),
        id,
        "the backing sandbox takes the fake's id"
    );
    let mut inner = fake.lock();
    let (then, reason) = match inner.next_start_error.take() {
        Some(reason) => ("error".to_owned(), Some(reason)),
        None => ("started".to_owned(), None),
    };
    let script: std::collections::VecDeque<String> =
        inner.next_states.take().unwrap_or_default().into();
    let sandbox = FakeSandbox {
        id: id.clone(),
        name: body.name.unwrap_or_else(|| id.clone()),
        seq,
        labels,
        state: "creating".into(),
        pending: script.is_empty().then_some(Pending {
            gets_left: 1,
            then,
            reason,
        }),
        script,
        error_reason: None,
        snapshot: body.snapshot,
        auto_stop_interval: body.auto_stop_interval.unwrap_or(15),
        auto_delete_interval: body.auto_delete_interval.unwrap_or(-1),
        created_at: now(),
        local,
    };
    let answer = dto(&fake, &sandbox);
    inner.sandboxes.insert(id, sandbox);
    if inner.creates_to_lose > 0 {
        inner.creates_to_lose -= 1;
        return error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error");
    }
    Json(answer).into_response()
}

async fn get_one(State(fake): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    let mut inner = fake.lock();
    match inner.find_mut(&id) {
        Some(sandbox) => {
            sandbox.observe();
            Json(dto(&fake, sandbox)).into_response()
        }
        None => not_found(&id),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    labels: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list(State(fake): State<Arc<Fake>>, Query(query): Query<ListQuery>) -> Response {
    let wanted: BTreeMap<String, String> = match query
        .labels
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
    {
        Ok(labels) => labels.unwrap_or_default(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("labels must be a JSON object: {e}"),
            );
        }
    };
    let start: usize = match query.cursor.as_deref().map(str::parse).transpose() {
        Ok(start) => start.unwrap_or(0),
        Err(_) => return error(StatusCode::BAD_REQUEST, "invalid cursor"),
    };
    let mut inner = fake.lock();
    inner.counters.lists += 1;
    let limit = query
        .limit
        .unwrap_or(100)
        .clamp(1, 200)
        .min(inner.page_size.unwrap_or(usize::MAX));
    let mut matching: Vec<&FakeSandbox> = inner
        .sandboxes
        .values()
        .filter(|s| wanted.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    matching.sort_by_key(|s| s.seq);
    if inner.legacy_list {
        // Before cursor pagination (daytonaio/daytona commit cfbf686bf, "BREAKING CHANGE:
        // The GET /api/sandbox endpoint now returns a paginated response object"), the
        // endpoint returned `SandboxDto[]`: every match at once
        // (apps/api/src/sandbox/controllers/sandbox.controller.ts at cfbf686bf^,
        // `listSandboxes(): Promise<SandboxDto[]>`).
        let all: Vec<Value> = matching.iter().map(|s| dto(&fake, s)).collect();
        return Json(all).into_response();
    }
    // Today's shape, `ListSandboxesResponse` {items, nextCursor: string | null}
    // (apps/api/src/sandbox/dto/list-sandboxes-response.dto.ts).
    let items: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|s| dto(&fake, s))
        .collect();
    let next = start + items.len();
    let next_cursor = if next < matching.len() {
        json!(next.to_string())
    } else {
        Value::Null
    };
    Json(json!({ "items": items, "nextCursor": next_cursor })).into_response()
}

async fn start(State(fake): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    let mut inner = fake.lock();
    inner.counters.starts += 1;
    let Some(sandbox) = inner.find_mut(&id) else {
        return not_found(&id);
    };
    // The rules of `SandboxService.start` (apps/api/src/sandbox/services/sandbox.service.ts):
    // started is a no-op; errored sandboxes are refused (`assertSandboxNotErrored`, 400);
    // stopped, archived and archiving ones start; paused ones resume only for VM classes
    // (422, and this fake's class is `container`); any other state is a state change in
    // progress (`StateChangeInProgressError`, 409).
    match sandbox.state.as_str() {
        "started" | "starting" => {}
        "error" | "build_failed" => {
            return error(StatusCode::BAD_REQUEST, "Sandbox is in an errored state");
        }
        "stopped" | "archived" | "archiving" => {
            sandbox.state = "starting".into();
            sandbox.script.clear();
            sandbox.pending = Some(Pending {
                gets_left: 1,
                then: "started".into(),
                reason: None,
            });
        }
        "paused" => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Resuming is not supported for this sandbox",
            );
        }
        _ => return error(StatusCode::CONFLICT, "Sandbox state change in progress"),
    }
    Json(dto(&fake, sandbox)).into_response()
}

async fn stop(State(fake): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    let mut inner = fake.lock();
    let Some(sandbox) = inner.find_mut(&id) else {
        return not_found(&id);
    };
    sandbox.state = "stopped".into();
    sandbox.pending = None;
    sandbox.script.clear();
    Json(dto(&fake, sandbox)).into_response()
}

async fn delete(State(fake): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    let removed = {
        let mut inner = fake.lock();
        let Some(key) = inner.find_mut(&id).map(|s| s.id.clone()) else {
            return not_found(&id);
        };
        inner.sandboxes.remove(&key).expect("found above")
    };
    if let Err(e) = fake.local.provider().destroy(&removed.id).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let mut answer = dto(&fake, &removed);
    answer["state"] = json!("destroyed");
    Json(answer).into_response()
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("Sandbox with ID or name {id} not found"),
    )
}

fn now() -> u64 {
    tb_core::clock::now_secs()
}

/// The `Sandbox` DTO, with the required fields of the real one.
fn dto(fake: &Fake, s: &FakeSandbox) -> Value {
    let created_at = tb_core::clock::format_rfc3339(s.created_at);
    json!({
        "id": s.id,
        "organizationId": "fake-org",
        "name": s.name,
        "user": "daytona",
        "env": {},
        "labels": s.labels,
        "public": false,
        "networkBlockAll": false,
        "target": "us",
        "cpu": 1,
        "gpu": 0,
        "memory": 1,
        "disk": 3,
        "state": s.state,
        "desiredState": desired_state(&s.state),
        "errorReason": s.error_reason,
        "snapshot": s.snapshot,
        "autoStopInterval": s.auto_stop_interval,
        "autoDeleteInterval": s.auto_delete_interval,
        "toolboxProxyUrl": fake.toolbox_url,
        "createdAt": created_at,
        "updatedAt": created_at,
        "sandboxClass": "container",
    })
}

/// The `desiredState` that goes with a state (`SandboxDesiredState`,
/// apps/api/src/sandbox/enums/sandbox-desired-state.enum.ts): a sandbox on its way down or
/// down wants to be there; any other is being taken to `started`.
fn desired_state(state: &str) -> &'static str {
    match state {
        "stopped" | "stopping" => "stopped",
        "archived" | "archiving" => "archived",
        "paused" | "pausing" => "paused",
        "destroyed" | "destroying" => "destroyed",
        _ => "started",
    }
}
