//! The fake's toolbox (`/toolbox/{sandbox_id}/…`): commands and files, served by the
//! backing local sandbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Multipart, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tb_core::sandbox::{Sandbox, SandboxError, WorkspacePath};
use tb_sandbox::LocalSandbox;

use super::{Fake, error};

pub(super) fn routes() -> Router<Arc<Fake>> {
    Router::new()
        .route("/process/execute", post(execute))
        .route("/files", get(list).delete(delete))
        .route("/files/upload", post(upload))
        .route("/files/download", get(download))
        .route("/files/folder", post(folder))
}

#[derive(Deserialize)]
struct ExecuteBody {
    command: String,
    cwd: Option<String>,
    timeout: Option<u64>,
}

#[derive(Deserialize)]
struct PathQuery {
    path: String,
    recursive: Option<String>,
}

async fn execute(
    State(fake): State<Arc<Fake>>,
    Path(id): Path<String>,
    Json(raw): Json<Value>,
) -> Response {
    {
        let mut inner = fake.lock();
        inner.counters.execs += 1;
        inner.last_exec_body = Some(raw.clone());
    }
    let body: ExecuteBody = match serde_json::from_value(raw) {
        Ok(body) => body,
        Err(e) => return daemon_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if body.command.trim().is_empty() {
        return daemon_error(StatusCode::BAD_REQUEST, "command is required");
    }
    let sandbox = match started(&fake, &id) {
        Ok(sandbox) => sandbox,
        Err(response) => return *response,
    };
    let mut script = String::new();
    if let Some(cwd) = &body.cwd {
        match to_workspace(&fake, cwd) {
            Ok(dir) if dir.is_root() => {}
            Ok(dir) => script = format!("cd '{}' || exit 1\n", dir.as_str().replace('\'', r"'\''")),
            Err(response) => return *response,
        }
    }
    script.push_str(&body.command);
    // No timeout means no limit at the daemon.
    let timeout = body
        .timeout
        .filter(|&t| t > 0)
        .map_or(Duration::from_secs(24 * 3600), Duration::from_secs);
    match sandbox.exec(&script, timeout).await {
        Ok(out) if out.timed_out => {
            daemon_error(StatusCode::REQUEST_TIMEOUT, "command execution timeout")
        }
        Ok(out) => {
            // Go reports -1 for a process killed by a signal.
            let code = out.exit_code.unwrap_or(-1);
            // Daemons before the current `ExecuteResponse`
            // (daytonaio/daytona apps/daemon/pkg/toolbox/process/types.go: "TODO: Set
            // ExitCode as required once all sandboxes migrated to the new daemon") answer
            // `code`; the SDKs read either (libs/sdk-typescript/src/Process.ts:
            // `response.data.exitCode ?? response.data.code`; libs/sdk-python/src/daytona/
            // _async/process.py: `additional_properties.get("code")`).
            let field = if fake.lock().legacy_exit_code {
                "code"
            } else {
                "exitCode"
            };
            Json(json!({ field: code, "result": out.output })).into_response()
        }
        Err(e) => sandbox_error(e),
    }
}

async fn upload(Target { sandbox, path, .. }: Target, mut multipart: Multipart) -> Response {
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) if field.name() == Some("file") => {
                let contents = match field.bytes().await {
                    Ok(contents) => contents,
                    Err(e) => return daemon_error(StatusCode::BAD_REQUEST, &e.to_string()),
                };
                return match sandbox.write_file(&path, &contents).await {
                    Ok(()) => StatusCode::OK.into_response(),
                    Err(e) => sandbox_error(e),
                };
            }
            Ok(Some(_)) => continue,
            Ok(None) => {
                return daemon_error(StatusCode::BAD_REQUEST, "multipart part `file` is required");
            }
            Err(e) => return daemon_error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }
}

async fn download(Target { sandbox, path, .. }: Target) -> Response {
    match sandbox.read_file(&path).await {
        Ok(contents) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            contents,
        )
            .into_response(),
        Err(e) => sandbox_error(e),
    }
}

async fn delete(
    Target {
        sandbox,
        path,
        recursive,
    }: Target,
) -> Response {
    match sandbox.is_dir(&path).await {
        Ok(true) if !recursive => {
            return daemon_error(
                StatusCode::BAD_REQUEST,
                "cannot delete a directory without recursive=true",
            );
        }
        Ok(_) => {}
        Err(e) => return sandbox_error(e),
    }
    match sandbox.delete(&path).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => sandbox_error(e),
    }
}

async fn list(Target { sandbox, path, .. }: Target) -> Response {
    match sandbox.list(&path).await {
        Ok(entries) => {
            let infos: Vec<Value> = entries
                .into_iter()
                .map(|entry| {
                    let name = entry.path.rsplit('/').next().unwrap_or_default().to_owned();
                    json!({
                        "name": name,
                        "isDir": entry.is_dir,
                        "size": entry.size,
                        "mode": if entry.is_dir { "drwxr-xr-x" } else { "-rw-r--r--" },
                        "permissions": if entry.is_dir { "0755" } else { "0644" },
                        "owner": "daytona",
                        "group": "daytona",
                        "modifiedAt": "2026-01-01T00:00:00Z",
                    })
                })
                .collect();
            Json(infos).into_response()
        }
        Err(e) => sandbox_error(e),
    }
}

async fn folder(
    State(fake): State<Arc<Fake>>,
    Path(id): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let Some(dir) = query.get("path") else {
        return daemon_error(StatusCode::BAD_REQUEST, "path is required");
    };
    if let Some(mode) = query.get("mode")
        && u32::from_str_radix(mode, 8).is_err()
    {
        return daemon_error(StatusCode::BAD_REQUEST, "mode must be octal");
    }
    let (sandbox, path) = match target(&fake, &id, dir) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    match sandbox.create_dir_all(&path).await {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => sandbox_error(e),
    }
}

/// The started sandbox a file call names (`{sandbox_id}`) and its `path` mapped into the
/// workspace, with `recursive` as asked. Taken from the request's path and query before any
/// body is read: Daytona's proxy resolves `{toolboxProxyUrl}/{sandboxId}` to the sandbox's
/// daemon before it forwards the request (reference/external_apis.md, "toolbox base"), so
/// an unknown or stopped sandbox answers without the upload being read.
struct Target {
    sandbox: LocalSandbox,
    path: WorkspacePath,
    recursive: bool,
}

impl FromRequestParts<Arc<Fake>> for Target {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, fake: &Arc<Fake>) -> Result<Self, Response> {
        let Path(id) = Path::<String>::from_request_parts(parts, fake)
            .await
            .map_err(IntoResponse::into_response)?;
        let Query(query) = Query::<PathQuery>::from_request_parts(parts, fake)
            .await
            .map_err(IntoResponse::into_response)?;
        let (sandbox, path) = target(fake, &id, &query.path).map_err(|response| *response)?;
        Ok(Target {
            sandbox,
            path,
            recursive: query.recursive.as_deref() == Some("true"),
        })
    }
}

/// The started sandbox `id` and `absolute` mapped into its workspace.
fn target(
    fake: &Fake,
    id: &str,
    absolute: &str,
) -> Result<(LocalSandbox, WorkspacePath), Box<Response>> {
    let sandbox = started(fake, id)?;
    Ok((sandbox, to_workspace(fake, absolute)?))
}

/// Errors are boxed: a `Response` is large.
fn started(fake: &Fake, id: &str) -> Result<LocalSandbox, Box<Response>> {
    let inner = fake.lock();
    match inner.sandboxes.get(id) {
        Some(sandbox) if sandbox.state == "started" => Ok(sandbox.local.clone()),
        Some(sandbox) => Err(Box::new(error(
            StatusCode::CONFLICT,
            format!("Sandbox is {}, not started", sandbox.state),
        ))),
        None => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("Sandbox with ID {id} not found"),
        ))),
    }
}

/// `<workdir>/a/b` → `a/b`; anything not under the workdir is refused with 400.
fn to_workspace(fake: &Fake, absolute: &str) -> Result<WorkspacePath, Box<Response>> {
    let refuse = || {
        Box::new(daemon_error(
            StatusCode::BAD_REQUEST,
            &format!("path {absolute} is outside {}", fake.workdir),
        ))
    };
    let relative = if absolute == fake.workdir {
        ""
    } else {
        absolute
            .strip_prefix(&fake.workdir)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(refuse)?
    };
    WorkspacePath::parse(relative).map_err(|_| refuse())
}

/// The daemon's (gin) error shape: `{"error": …}`.
fn daemon_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": message, "statusCode": status.as_u16() })),
    )
        .into_response()
}

fn sandbox_error(e: SandboxError) -> Response {
    let status = match &e {
        SandboxError::NotFound(_) => StatusCode::NOT_FOUND,
        SandboxError::Path(_) | SandboxError::Invalid(_) => StatusCode::BAD_REQUEST,
        SandboxError::Unavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    daemon_error(status, &e.to_string())
}
