//! The fake's contents API, `PUT /repos/{owner}/{repo}/contents/{path}`: one file
//! committed on a branch. Unlike the Git Data API it works on an empty repository, where
//! it makes the first commit (as on GitHub). Also the README of `auto_init`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use serde_json::{Value, json};

use super::git_data::{decode_content, person, user_person, valid_path};
use super::git_store::{CommitInfo, Person};
use super::{Fake, RepoMeta, error, json_body};

pub(super) fn routes() -> Router<Arc<Fake>> {
    Router::new().route("/repos/{owner}/{repo}/contents/{*path}", put(put_file))
}

fn unprocessable(message: impl Into<String>) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, message)
}

async fn put_file(
    State(fake): State<Arc<Fake>>,
    Path((owner, name, path)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    super::blocking(fake, move |fake| {
        let Some(repo) = fake.visible_repo(&owner, &name) else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        if repo.archived {
            return error(
                StatusCode::FORBIDDEN,
                "Repository was archived so is read-only.",
            );
        }
        let body = match json_body(&body) {
            Ok(body) => body,
            Err(response) => return response,
        };
        let text = |field: &str| body.get(field).and_then(Value::as_str);
        let Some(message) = text("message") else {
            return unprocessable("Invalid request.\n\n\"message\" wasn't supplied.");
        };
        let Some(content) = text("content") else {
            return unprocessable("Invalid request.\n\n\"content\" wasn't supplied.");
        };
        if !valid_path(&path) {
            return unprocessable(format!("path `{path}` contains a malformed path component"));
        }
        let bytes = match decode_content(content, "base64") {
            Ok(bytes) => bytes,
            Err(response) => return response,
        };
        let committer = person(body.get("committer"), &user_person(fake));
        let author = person(body.get("author"), &committer);
        let file = NewFile {
            branch: text("branch").unwrap_or("main"),
            path: &path,
            contents: &bytes,
            message,
            replaces: text("sha"),
        };
        match commit_file(fake, &repo, &file, &author, &committer) {
            Ok((blob, commit)) => {
                let url = fake.repo_api_url(&repo);
                let file_name = path.rsplit('/').next().unwrap_or(&path);
                (
                    StatusCode::CREATED,
                    axum::Json(json!({
                        "content": {
                            "name": file_name,
                            "path": path,
                            "sha": blob,
                            "size": bytes.len(),
                            "type": "file",
                            "url": format!("{url}/contents/{path}?ref={}", file.branch),
                            "git_url": format!("{url}/git/blobs/{blob}"),
                        },
                        "commit": commit.to_json(&url),
                    })),
                )
                    .into_response()
            }
            Err(response) => response,
        }
    })
    .await
}

/// The README commit of a repository created with `auto_init: true`.
#[allow(clippy::result_large_err)]
pub(super) fn initial_readme(fake: &Fake, repo: &RepoMeta) -> Result<(), Response> {
    let user = user_person(fake);
    let readme = format!("# {}\n", repo.name);
    let file = NewFile {
        branch: "main",
        path: "README.md",
        contents: readme.as_bytes(),
        message: "Initial commit",
        replaces: None,
    };
    commit_file(fake, repo, &file, &user, &user).map(|_| ())
}

struct NewFile<'a> {
    branch: &'a str,
    path: &'a str,
    contents: &'a [u8],
    message: &'a str,
    /// The blob id of the file being replaced, required when it exists.
    replaces: Option<&'a str>,
}

/// Commits one file on a branch; returns the blob id and the commit.
#[allow(clippy::result_large_err)]
fn commit_file(
    fake: &Fake,
    repo: &RepoMeta,
    file: &NewFile<'_>,
    author: &Person,
    committer: &Person,
) -> Result<(String, CommitInfo), Response> {
    let internal = |e: super::git_store::GitFailed| error(StatusCode::INTERNAL_SERVER_ERROR, e.0);
    let empty = fake.git.is_empty(&repo.path).map_err(internal)?;
    let full = format!("refs/heads/{}", file.branch);
    let parent = fake.git.resolve(&repo.path, &full);
    if parent.is_none() && !empty {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("Branch {} not found", file.branch),
        ));
    }
    if let Some(parent) = &parent {
        let existing = fake
            .git
            .git(
                Some(&repo.path),
                &[
                    "rev-parse",
                    "-q",
                    "--verify",
                    &format!("{parent}:{}", file.path),
                ],
                &[],
                None,
            )
            .ok()
            .map(|s| s.trim().to_owned());
        match (existing, file.replaces) {
            (Some(_), None) => {
                return Err(unprocessable(
                    "Invalid request.\n\n\"sha\" wasn't supplied.",
                ));
            }
            (Some(existing), Some(given)) if existing != given => {
                return Err(error(
                    StatusCode::CONFLICT,
                    format!("{} does not match {given}", file.path),
                ));
            }
            _ => {}
        }
    }
    let blob = fake
        .git
        .write_blob(&repo.path, file.contents)
        .map_err(internal)?;
    let cacheinfo = format!("100644,{blob},{}", file.path);
    let tree = fake
        .git
        .build_tree(&repo.path, parent.as_deref(), |index| {
            fake.git
                .with_index(
                    &repo.path,
                    index,
                    &["update-index", "--add", "--cacheinfo", &cacheinfo],
                    None,
                )
                .map(|_| ())
        })
        .map_err(|e| unprocessable(e.0))?;
    let parents: Vec<String> = parent.iter().cloned().collect();
    let sha = fake
        .git
        .commit_tree(&repo.path, &tree, &parents, file.message, author, committer)
        .map_err(internal)?;
    fake.git
        .update_ref(&repo.path, &full, &sha, parent.as_deref())
        .map_err(|e| error(StatusCode::CONFLICT, e.0))?;
    let commit = fake.git.commit(&repo.path, &sha).map_err(internal)?;
    Ok((blob, commit))
}
