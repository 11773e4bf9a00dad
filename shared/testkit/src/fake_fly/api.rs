//! The Machines API routes of the fake: apps, IP assignments, secrets, machines.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{FakeApp, FakeMachine, Fly, Inner, boot, now_rfc3339};

pub(super) fn routes() -> Router<Arc<Fly>> {
    Router::new()
        .route("/apps", post(create_app))
        .route("/apps/{app}", get(get_app).delete(delete_app))
        .route(
            "/apps/{app}/ip_assignments",
            get(list_ips).post(allocate_ip),
        )
        .route("/apps/{app}/ip_assignments/{ip}", delete(release_ip))
        .route("/apps/{app}/secrets", post(set_secrets))
        .route(
            "/apps/{app}/machines",
            get(list_machines).post(create_machine),
        )
        .route(
            "/apps/{app}/machines/{id}",
            get(get_machine).post(update_machine).delete(delete_machine),
        )
        .route("/apps/{app}/machines/{id}/wait", get(wait_machine))
        .route("/apps/{app}/machines/{id}/restart", post(restart_machine))
}

fn error(status: StatusCode, message: &str) -> Response {
    Refusal::new(status, message).into_response()
}

/// An error answer: `{"error": message}`, with `retry-after` for 429s.
struct Refusal {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, message: &str) -> Self {
        Refusal {
            status,
            message: message.to_owned(),
            retry_after: None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({"error": self.message}))).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                secs.to_string().parse().expect("digits"),
            );
        }
        response
    }
}

/// Takes a rate-limit token for `action` on `target` (or an injected 429).
fn throttle(inner: &mut Inner, action: &str, target: &str) -> Result<(), Refusal> {
    let wait = if inner.injected_429 > 0 {
        inner.injected_429 -= 1;
        Some(Duration::from_secs(1))
    } else {
        inner.buckets.take(action, target).err()
    };
    match wait {
        None => Ok(()),
        Some(wait) => Err(Refusal {
            retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
            ..Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("rate limit exceeded for {action}"),
            )
        }),
    }
}

/// 404 unless `app` exists and is visible already (a new app is not, for a moment).
fn app_refusal(inner: &mut Inner, app: &str) -> Option<Refusal> {
    let visible_at = inner.apps.get(app)?.visible_at;
    if Instant::now() < visible_at {
        inner.invisible_answers += 1;
        return Some(Refusal::new(StatusCode::NOT_FOUND, "app not found"));
    }
    None
}

/// 404 unless machine `id` of `app` exists, is not destroyed (unless `destroyed_ok`) and
/// is visible already (a new machine is not, for a moment).
fn machine_refusal(inner: &mut Inner, app: &str, id: &str, destroyed_ok: bool) -> Option<Refusal> {
    let not_found = || Some(Refusal::new(StatusCode::NOT_FOUND, "machine not found"));
    let Some(m) = inner.machines.get(id).filter(|m| m.app == app) else {
        return not_found();
    };
    if !destroyed_ok && m.state == "destroyed" {
        return not_found();
    }
    if Instant::now() < m.visible_at {
        inner.invisible_answers += 1;
        return not_found();
    }
    None
}

/// The app a call names, once the call has its rate-limit token (when `action` is
/// limited) and the app is visible.
fn app_for<'a>(
    inner: &'a mut Inner,
    action: Option<&str>,
    app: &str,
) -> Result<&'a mut FakeApp, Refusal> {
    if let Some(action) = action {
        throttle(inner, action, app)?;
    }
    if let Some(r) = app_refusal(inner, app) {
        return Err(r);
    }
    inner
        .apps
        .get_mut(app)
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "app not found"))
}

/// The machine a call names, not destroyed, once the call has its rate-limit token for
/// `action` on it (when given) and the machine is visible.
fn machine_for<'a>(
    inner: &'a mut Inner,
    action: Option<&str>,
    app: &str,
    id: &str,
) -> Result<&'a mut FakeMachine, Refusal> {
    if let Some(action) = action {
        throttle(inner, action, id)?;
    }
    if let Some(r) = machine_refusal(inner, app, id, false) {
        return Err(r);
    }
    inner
        .machines
        .get_mut(id)
        .filter(|m| m.app == app && m.state != "destroyed")
        .ok_or_else(|| Refusal::new(StatusCode::NOT_FOUND, "machine not found"))
}

fn valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

async fn create_app(State(fly): State<Arc<Fly>>, Json(body): Json<Value>) -> Response {
    let name = body["app_name"]
        .as_str()
        .or_else(|| body["name"].as_str())
        .unwrap_or("")
        .to_owned();
    let Some(org_slug) = body["org_slug"].as_str().filter(|s| !s.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "org_slug is required");
    };
    let mut inner = fly.lock();
    if let Err(r) = throttle(&mut inner, "create_app", &name) {
        return r.into_response();
    }
    if !valid_app_name(&name) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "invalid app name");
    }
    if inner.reserved.contains(&name) || inner.apps.contains_key(&name) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Name has already been taken",
        );
    }
    let network = body["network"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_owned();
    let visible_at = inner.visible_from_now();
    inner.apps.insert(
        name.clone(),
        FakeApp {
            org_slug: org_slug.to_owned(),
            network,
            visible_at,
            ips: Vec::new(),
            secrets: BTreeMap::new(),
            secrets_version: 0,
        },
    );
    (
        StatusCode::CREATED,
        Json(json!({"id": name, "created_at": now_rfc3339()})),
    )
        .into_response()
}

async fn get_app(State(fly): State<Arc<Fly>>, Path(app): Path<String>) -> Response {
    let mut inner = fly.lock();
    if inner.reserved.contains(&app) {
        // fly-go `flaps/flaps_apps.go`, `AppNameAvailable`: the API looks the name up
        // globally and refuses the read of another organization's app with a 403.
        return error(StatusCode::FORBIDDEN, "unauthorized to access this app");
    }
    if let Some(r) = app_refusal(&mut inner, &app) {
        return r.into_response();
    }
    match inner.apps.get(&app) {
        Some(a) => Json(json!({
            "id": app, "name": app, "status": "deployed", "network": a.network,
            "organization": {"name": a.org_slug, "slug": a.org_slug},
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, "app not found"),
    }
}

/// `DELETE /apps/{app}`: 202, and the app is gone with its machines, IPs and secrets
/// (`reference/external_apis.md` §2.2 from the Machines API's apps resource:
/// "`DELETE /apps/{app}` (`?force=true` stops machines first) → 202"). Without `force`, a
/// machine still running refuses the deletion the way a machine's own `DELETE` does without
/// it (412 `failed_precondition`); that answer is this fake's reading of "stops machines
/// first", the documentation gives no status for it.
async fn delete_app(
    State(fly): State<Arc<Fly>>,
    Path(app): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = fly.lock();
    if let Err(r) = throttle(&mut inner, "delete_app", &app) {
        return r.into_response();
    }
    if inner.reserved.contains(&app) {
        return error(StatusCode::FORBIDDEN, "unauthorized to access this app");
    }
    if let Some(r) = app_refusal(&mut inner, &app) {
        return r.into_response();
    }
    if !inner.apps.contains_key(&app) {
        return error(StatusCode::NOT_FOUND, "app not found");
    }
    let force = query.get("force").is_some_and(|v| v == "true");
    let mut running = false;
    for m in inner.machines.values_mut().filter(|m| m.app == app) {
        running |= m.process.as_mut().is_some_and(|p| p.is_running());
    }
    if running && !force {
        return error(
            StatusCode::PRECONDITION_FAILED,
            "failed_precondition: the app has running machines, stop them or use force=true",
        );
    }
    for m in inner.machines.values_mut().filter(|m| m.app == app) {
        m.stop("destroyed");
    }
    inner.apps.remove(&app);
    StatusCode::ACCEPTED.into_response()
}

/// `DELETE /apps/{app}/ip_assignments/{ip}` (`reference/external_apis.md` §2.3, the REST
/// IP assignments flyctl uses): releases the address; an address the app does not have is
/// a 404.
async fn release_ip(
    State(fly): State<Arc<Fly>>,
    Path((app, ip)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let mut inner = fly.lock();
    let a = app_for(&mut inner, Some("ip_assignments"), &app)?;
    let before = a.ips.len();
    a.ips.retain(|(_, address)| address != &ip);
    if a.ips.len() == before {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "ip assignment not found",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_ips(
    State(fly): State<Arc<Fly>>,
    Path(app): Path<String>,
) -> Result<Response, Refusal> {
    let mut inner = fly.lock();
    let a = app_for(&mut inner, None, &app)?;
    let ips: Vec<Value> = a.ips.iter().map(|(kind, ip)| ip_json(kind, ip)).collect();
    Ok(Json(json!({"ips": ips})).into_response())
}

fn ip_json(kind: &str, ip: &str) -> Value {
    json!({"ip": ip, "region": "global", "service_name": "", "shared": kind == "shared_v4",
           "created_at": now_rfc3339()})
}

async fn allocate_ip(
    State(fly): State<Arc<Fly>>,
    Path(app): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let mut inner = fly.lock();
    let a = app_for(&mut inner, Some("ip_assignments"), &app)?;
    let kind = body["type"].as_str().unwrap_or("");
    // Documentation ranges: these addresses only name things, nothing is reachable there.
    let n = a.ips.len() + 1;
    let ip = match kind {
        "shared_v4" => "203.0.113.10".to_owned(),
        "v4" => format!("198.51.100.{n}"),
        "v6" => format!("2001:db8::{n}"),
        "private_v6" => format!("fdaa:0:1::{n}"),
        _ => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "type must be v4, shared_v4, v6 or private_v6",
            ));
        }
    };
    a.ips.push((kind.to_owned(), ip.clone()));
    Ok(Json(ip_json(kind, &ip)).into_response())
}

async fn set_secrets(
    State(fly): State<Arc<Fly>>,
    Path(app): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let mut inner = fly.lock();
    let a = app_for(&mut inner, Some("secrets"), &app)?;
    let Some(values) = body["values"].as_object() else {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "values is required"));
    };
    for (name, value) in values {
        match value {
            Value::Null => {
                a.secrets.remove(name);
            }
            Value::String(s) => {
                a.secrets.insert(name.clone(), s.clone());
            }
            _ => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "secret values are strings or null",
                ));
            }
        }
    }
    a.secrets_version += 1;
    let secrets: Vec<Value> = a
        .secrets
        .keys()
        .map(|name| json!({"name": name, "digest": "fake", "created_at": now_rfc3339()}))
        .collect();
    Ok(Json(json!({"secrets": secrets, "version": a.secrets_version})).into_response())
}

async fn list_machines(
    State(fly): State<Arc<Fly>>,
    Path(app): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = fly.lock();
    if !inner.apps.contains_key(&app) {
        return error(StatusCode::NOT_FOUND, "app not found");
    }
    if let Some(r) = app_refusal(&mut inner, &app) {
        return r.into_response();
    }
    let now = Instant::now();
    let include_deleted = query.get("include_deleted").is_some_and(|v| v == "true");
    let mut machines: Vec<&FakeMachine> = inner
        .machines
        .values()
        .filter(|m| m.app == app)
        .filter(|m| include_deleted || m.state != "destroyed")
        .filter(|m| m.visible_at <= now)
        .filter(|m| {
            query
                .iter()
                .all(|(k, v)| match k.strip_prefix("metadata.") {
                    Some(key) => m.config["metadata"][key] == v.as_str(),
                    None => true,
                })
        })
        .collect();
    machines.sort_by_key(|m| m.seq);
    Json(machines.into_iter().map(machine_json).collect::<Vec<_>>()).into_response()
}

/// Checks what a create or update asks for, before anything changes.
fn check_machine_request(inner: &Inner, app: &str, body: &Value) -> Result<Value, Refusal> {
    let Some(a) = inner.apps.get(app) else {
        return Err(Refusal::new(StatusCode::NOT_FOUND, "app not found"));
    };
    let config = body["config"].clone();
    if config["image"].as_str().is_none_or(str::is_empty) {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "config.image is required",
        ));
    }
    if config.get("guest").is_some() && config.get("size").is_some() {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "guest and size are exclusive",
        ));
    }
    if let Some(memory) = config["guest"]["memory_mb"].as_u64()
        && memory % 256 != 0
    {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "memory_mb must be a multiple of 256",
        ));
    }
    if let Some(v) = body["min_secrets_version"].as_u64()
        && v > a.secrets_version
    {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "min_secrets_version is ahead of the app's secrets",
        ));
    }
    Ok(config)
}

async fn create_machine(
    State(fly): State<Arc<Fly>>,
    Path(app): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let mut inner = fly.lock();
    app_for(&mut inner, Some("create_machine"), &app)?;
    let config = check_machine_request(&inner, &app, &body)?;
    let seq = inner.seq();
    let visible_at = inner.visible_from_now();
    let id = tb_core::ids::random_hex(7);
    let now = now_rfc3339();
    let machine = FakeMachine {
        id: id.clone(),
        app: app.clone(),
        name: body["name"]
            .as_str()
            .map_or_else(|| format!("machine-{seq}"), str::to_owned),
        region: body["region"].as_str().unwrap_or("iad").to_owned(),
        seq,
        state: "created".into(),
        instance_id: tb_core::ids::random_hex(13),
        config,
        created_at: now.clone(),
        updated_at: now,
        generation: 1,
        process: None,
        check_status: "critical".into(),
        events: Vec::new(),
        pulls: Vec::new(),
        visible_at,
    };
    let answer = machine_json(&machine);
    inner.machines.insert(id.clone(), machine);
    drop(inner);
    boot::start(fly.clone(), id, 1);
    Ok(Json(answer).into_response())
}

async fn get_machine(
    State(fly): State<Arc<Fly>>,
    Path((app, id)): Path<(String, String)>,
) -> Response {
    let mut inner = fly.lock();
    if let Some(r) = machine_refusal(&mut inner, &app, &id, true) {
        return r.into_response();
    }
    match inner.machines.get(&id).filter(|m| m.app == app) {
        Some(m) => Json(machine_json(m)).into_response(),
        None => error(StatusCode::NOT_FOUND, "machine not found"),
    }
}

async fn update_machine(
    State(fly): State<Arc<Fly>>,
    Path((app, id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Result<Response, Refusal> {
    let mut inner = fly.lock();
    machine_for(&mut inner, Some("update"), &app, &id)?;
    let config = check_machine_request(&inner, &app, &body)?;
    let m = machine_for(&mut inner, None, &app, &id)?;
    if let Some(current) = body["current_version"].as_str()
        && current != m.instance_id
    {
        return Err(Refusal::new(
            StatusCode::PRECONDITION_FAILED,
            "current_version does not match the machine's instance",
        ));
    }
    m.stop("updating");
    m.config = config;
    m.instance_id = tb_core::ids::random_hex(13);
    m.check_status = "critical".into();
    let (answer, generation) = (machine_json(m), m.generation);
    drop(inner);
    boot::start(fly.clone(), id, generation);
    Ok(Json(answer).into_response())
}

async fn delete_machine(
    State(fly): State<Arc<Fly>>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let mut inner = fly.lock();
    let m = machine_for(&mut inner, Some("delete"), &app, &id)?;
    let force = query.get("force").is_some_and(|v| v == "true");
    let active = m.process.as_mut().is_some_and(|p| p.is_running());
    if active && !force {
        return Err(Refusal::new(
            StatusCode::PRECONDITION_FAILED,
            "failed_precondition: machine still active, stop it or use force=true",
        ));
    }
    m.stop("destroyed");
    Ok(Json(json!({"ok": true})).into_response())
}

/// Stops the machine's process and boots its current config again: the same image, pulled
/// again by digest and unpacked into a fresh root. The machine keeps its instance (a
/// restart is not an update).
async fn restart_machine(
    State(fly): State<Arc<Fly>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let mut inner = fly.lock();
    let m = machine_for(&mut inner, Some("restart"), &app, &id)?;
    m.stop("starting");
    m.check_status = "critical".into();
    m.events.push("restarted".into());
    let generation = m.generation;
    drop(inner);
    boot::start(fly.clone(), id, generation);
    Ok(Json(json!({"ok": true})).into_response())
}

async fn wait_machine(
    State(fly): State<Arc<Fly>>,
    Path((app, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let wanted = query
        .get("state")
        .cloned()
        .unwrap_or_else(|| "started".into());
    let secs = query
        .get("timeout")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(60)
        .clamp(1, 60);
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        {
            let mut inner = fly.lock();
            if let Some(r) = machine_refusal(&mut inner, &app, &id, true) {
                return r.into_response();
            }
            let Some(m) = inner.machines.get(&id).filter(|m| m.app == app) else {
                return error(StatusCode::NOT_FOUND, "machine not found");
            };
            if m.state == wanted {
                return Json(json!({"ok": true})).into_response();
            }
        }
        if Instant::now() >= until {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("deadline_exceeded: machine did not reach state {wanted}"),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn machine_json(m: &FakeMachine) -> Value {
    let image = m.config["image"].as_str().unwrap_or("");
    let (name, digest) = image.split_once('@').unwrap_or((image, ""));
    let (registry, repository) = name.split_once('/').unwrap_or(("", name));
    json!({
        "id": m.id,
        "name": m.name,
        "state": m.state,
        "region": m.region,
        "instance_id": m.instance_id,
        "private_ip": format!("fdaa:0:1:a7b::{}", m.seq),
        "config": m.config,
        "image_ref": {"registry": registry, "repository": repository, "digest": digest},
        "checks": [{"name": "servicecheck-00-http-8080", "status": m.check_status}],
        "events": m.events.iter().map(|e| json!({"type": "note", "status": e})).collect::<Vec<_>>(),
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    })
}
