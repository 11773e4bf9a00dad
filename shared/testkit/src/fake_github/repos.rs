//! The fake's users and repositories: `GET /user`, `POST /user/repos`,
//! `POST /orgs/{org}/repos`, `GET` and `PATCH /repos/{owner}/{repo}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{Fake, RepoMeta, error, error_with, json_body, repo_key};

pub(super) fn routes() -> Router<Arc<Fake>> {
    Router::new()
        .route("/user", get(user))
        .route("/user/repos", post(create_for_user))
        .route("/orgs/{org}/repos", post(create_for_org))
        .route("/repos/{owner}/{repo}", get(get_repo).patch(update_repo))
}

/// `PATCH /repos/{owner}/{repo}` ("Update a repository"): only `archived` is applied here;
/// `archived: false` unarchives. Answers the repository JSON.
async fn update_repo(
    State(fake): State<Arc<Fake>>,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Some(repo) = fake.visible_repo(&owner, &name) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let repo = {
        let mut inner = fake.lock();
        let Some(stored) = inner.repos.get_mut(&repo_key(&repo.owner, &repo.name)) else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        if let Some(archived) = body.get("archived").and_then(Value::as_bool) {
            stored.archived = archived;
        }
        stored.clone()
    };
    axum::Json(repo_json(&fake, &repo)).into_response()
}

async fn user(State(fake): State<Arc<Fake>>) -> Response {
    axum::Json(json!({
        "login": fake.login,
        "id": 1,
        "type": "User",
        "html_url": format!("{}/{}", fake.base_url, fake.login),
    }))
    .into_response()
}

async fn create_for_user(State(fake): State<Arc<Fake>>, body: Bytes) -> Response {
    let owner = fake.login.clone();
    create_from_request(fake, owner, body).await
}

async fn create_for_org(
    State(fake): State<Arc<Fake>>,
    Path(org): Path<String>,
    body: Bytes,
) -> Response {
    let Some(org) = fake.lock().orgs.get(&org.to_ascii_lowercase()).cloned() else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    create_from_request(fake, org, body).await
}

async fn create_from_request(fake: Arc<Fake>, owner: String, body: Bytes) -> Response {
    let body = match json_body(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let Some(name) = body.get("name").and_then(Value::as_str).map(str::to_owned) else {
        return error_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Repository creation failed.",
            Some(json!([{ "resource": "Repository", "code": "missing_field", "field": "name" }])),
        );
    };
    let private = body
        .get("private")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || body.get("visibility").and_then(Value::as_str) == Some("private");
    let auto_init = body
        .get("auto_init")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let description = body
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    super::blocking(fake, move |fake| {
        match create(fake, &owner, &name, private, &description) {
            Ok(repo) => {
                if auto_init && let Err(response) = super::contents::initial_readme(fake, &repo) {
                    return response;
                }
                (StatusCode::CREATED, axum::Json(repo_json(fake, &repo))).into_response()
            }
            Err(response) => response,
        }
    })
    .await
}

/// Creates `owner/name` with an empty bare repository behind it.
#[allow(clippy::result_large_err)]
pub(super) fn create(
    fake: &Fake,
    owner: &str,
    name: &str,
    private: bool,
    description: &str,
) -> Result<RepoMeta, Response> {
    let valid = !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(name_refused("name is invalid"));
    }
    let repo = {
        let mut inner = fake.lock();
        if inner.repos.contains_key(&repo_key(owner, name)) {
            return Err(name_refused("name already exists on this account"));
        }
        inner.next_id += 1;
        let repo = RepoMeta {
            id: inner.next_id,
            owner: owner.to_owned(),
            name: name.to_owned(),
            private,
            description: description.to_owned(),
            path: fake.repo_dir(owner, name),
            archived: false,
        };
        inner.repos.insert(repo_key(owner, name), repo.clone());
        repo
    };
    fake.git.init_bare(&repo.path).map_err(|e| {
        fake.lock().repos.remove(&repo_key(owner, name));
        error(StatusCode::INTERNAL_SERVER_ERROR, e.0)
    })?;
    Ok(repo)
}

async fn get_repo(
    State(fake): State<Arc<Fake>>,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    match fake.visible_repo(&owner, &name) {
        Some(repo) => axum::Json(repo_json(&fake, &repo)).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// GitHub's repository JSON (the fields clients commonly read).
pub(super) fn repo_json(fake: &Fake, repo: &RepoMeta) -> Value {
    let html_url = format!("{}/{}/{}", fake.base_url, repo.owner, repo.name);
    let is_org = !repo.owner.eq_ignore_ascii_case(&fake.login);
    json!({
        "id": repo.id,
        "node_id": format!("R_{}", repo.id),
        "name": repo.name,
        "full_name": format!("{}/{}", repo.owner, repo.name),
        "owner": {
            "login": repo.owner,
            "type": if is_org { "Organization" } else { "User" },
        },
        "private": repo.private,
        "visibility": if repo.private { "private" } else { "public" },
        "description": repo.description,
        "html_url": html_url,
        "url": fake.repo_api_url(repo),
        "clone_url": format!("{html_url}.git"),
        "default_branch": "main",
        "archived": repo.archived,
    })
}

/// GitHub's 422 for a repository name it will not create, `message` naming why.
fn name_refused(message: &str) -> Response {
    error_with(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Repository creation failed.",
        Some(json!([{
            "resource": "Repository", "code": "custom", "field": "name",
            "message": message
        }])),
    )
}
