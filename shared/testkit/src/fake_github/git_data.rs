//! The fake's Git Data API: blobs, trees, commits and refs under
//! `/repos/{owner}/{repo}/git/`, written into the repository's bare git repository.
//!
//! As on GitHub, every route answers 409 `Git Repository is empty.` while the repository
//! has no commit.

#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::git_store::{GitStore, Person};
use super::{Fake, RepoMeta, error, json_body};

pub(super) fn routes() -> Router<Arc<Fake>> {
    Router::new()
        .route("/repos/{owner}/{repo}/git/blobs", post(create_blob))
        .route("/repos/{owner}/{repo}/git/trees", post(create_tree))
        .route("/repos/{owner}/{repo}/git/trees/{sha}", get(get_tree))
        .route("/repos/{owner}/{repo}/git/commits", post(create_commit))
        .route("/repos/{owner}/{repo}/git/commits/{sha}", get(get_commit))
        .route("/repos/{owner}/{repo}/git/ref/{*reference}", get(get_ref))
        .route("/repos/{owner}/{repo}/git/refs", post(create_ref))
        .route(
            "/repos/{owner}/{repo}/git/refs/{*reference}",
            patch(update_ref),
        )
}

/// An error answer, returned as it is. (It is as large as any answer: clippy's
/// `result_large_err` is allowed for this module.)
type Rejection = Response;

fn unprocessable(message: impl Into<String>) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, message)
}

/// The repository for a Git Data call: 404 if unknown, 409 if it has no commit.
fn git_repo(fake: &Fake, owner: &str, name: &str) -> Result<RepoMeta, Rejection> {
    let repo = fake
        .visible_repo(owner, name)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, "Not Found"))?;
    match fake.git.is_empty(&repo.path) {
        Ok(false) => Ok(repo),
        Ok(true) => Err(error(StatusCode::CONFLICT, "Git Repository is empty.")),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.0)),
    }
}

/// Runs `handler` for a non-empty repository with the parsed JSON body; a rejection
/// (from `handler` too) is the answer.
async fn with_repo(
    fake: Arc<Fake>,
    owner: String,
    name: String,
    body: Option<Bytes>,
    handler: impl FnOnce(&Fake, &RepoMeta, Value) -> Result<Response, Rejection> + Send + 'static,
) -> Response {
    super::blocking(fake, move |fake| {
        in_repo(fake, &owner, &name, body.as_deref(), handler).unwrap_or_else(|r| r)
    })
    .await
}

fn in_repo(
    fake: &Fake,
    owner: &str,
    name: &str,
    body: Option<&[u8]>,
    handler: impl FnOnce(&Fake, &RepoMeta, Value) -> Result<Response, Rejection>,
) -> Result<Response, Rejection> {
    let repo = git_repo(fake, owner, name)?;
    if body.is_some() && repo.archived {
        return Err(error(
            StatusCode::FORBIDDEN,
            "Repository was archived so is read-only.",
        ));
    }
    let body = match body.map(json_body) {
        None => Value::Null,
        Some(body) => body?,
    };
    handler(fake, &repo, body)
}

/// GitHub's 422 for a ref update that repository rules refuse (the body the REST API
/// answers `PATCH /repos/{owner}/{repo}/git/refs/{ref}` with, as clients quote it:
/// "Repository rule violations found\n\nCannot force-push to this branch\n\n").
fn rule_violations(violations: &[&str]) -> Response {
    let mut message = String::from("Repository rule violations found\n\n");
    for v in violations {
        message.push_str(v);
        message.push_str("\n\n");
    }
    let body = serde_json::json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest/git/refs#update-a-reference",
        "status": "422",
    });
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
}

fn missing(field: &str) -> Response {
    unprocessable(format!("Invalid request.\n\n\"{field}\" wasn't supplied."))
}

/// The string `field` of a request body, or the 422 for its absence.
fn required<'a>(body: &'a Value, field: &str) -> Result<&'a str, Rejection> {
    body.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| missing(field))
}

/// A tree entry path as GitHub accepts it: relative, no empty, `.` or `..` parts.
pub(super) fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && part != ".git")
}

/// `content` in `encoding` (`utf-8` or `base64`) as bytes.
pub(super) fn decode_content(content: &str, encoding: &str) -> Result<Vec<u8>, Rejection> {
    match encoding {
        "utf-8" | "utf8" => Ok(content.as_bytes().to_vec()),
        "base64" => {
            let compact: String = content
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|_| unprocessable("Invalid request.\n\ncontent is not valid Base64."))
        }
        other => Err(unprocessable(format!(
            "Invalid request.\n\nencoding `{other}` is not one of utf-8, base64."
        ))),
    }
}

/// `author`/`committer` of a request, `fallback` when absent.
pub(super) fn person(value: Option<&Value>, fallback: &Person) -> Person {
    let field = |name: &str| {
        value
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match (field("name"), field("email")) {
        (Some(name), Some(email)) => Person {
            name,
            email,
            date: field("date").unwrap_or_default(),
        },
        _ => Person {
            name: fallback.name.clone(),
            email: fallback.email.clone(),
            date: fallback.date.clone(),
        },
    }
}

/// The authenticated user as a commit author, dated now.
pub(super) fn user_person(fake: &Fake) -> Person {
    Person {
        name: fake.login.clone(),
        email: format!("{}@users.noreply.github.com", fake.login),
        date: String::new(),
    }
}

async fn create_blob(
    State(fake): State<Arc<Fake>>,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    with_repo(fake, owner, name, Some(body), |fake, repo, body| {
        let content = required(&body, "content")?;
        let encoding = body
            .get("encoding")
            .and_then(Value::as_str)
            .unwrap_or("utf-8");
        let bytes = decode_content(content, encoding)?;
        let sha = fake
            .git
            .write_blob(&repo.path, &bytes)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.0))?;
        Ok((
            StatusCode::CREATED,
            axum::Json(json!({
                "sha": sha,
                "url": format!("{}/git/blobs/{sha}", fake.repo_api_url(repo)),
            })),
        )
            .into_response())
    })
    .await
}

/// One checked entry of a tree request.
enum Edit {
    /// A blob or submodule commit at `path`.
    Add {
        mode: String,
        sha: String,
        path: String,
    },
    /// A whole tree at `path`.
    Graft {
        sha: String,
        path: String,
    },
    Remove {
        path: String,
    },
}

fn check_entry(git: &GitStore, repo: &RepoMeta, entry: &Value) -> Result<Edit, Rejection> {
    let text = |name: &str| entry.get(name).and_then(Value::as_str);
    let path = text("path").ok_or_else(|| missing("tree.path"))?.to_owned();
    if !valid_path(&path) {
        return Err(unprocessable(format!(
            "tree.path `{path}` contains a malformed path component"
        )));
    }
    let mode = text("mode").ok_or_else(|| missing("tree.mode"))?.to_owned();
    let kind = text("type").unwrap_or("blob");
    let expected_kind = match mode.as_str() {
        "100644" | "100755" | "120000" => "blob",
        "040000" => "tree",
        "160000" => "commit",
        _ => {
            return Err(unprocessable(
                "tree.mode must be one of: 100644, 100755, 040000, 160000, 120000",
            ));
        }
    };
    if kind != expected_kind {
        return Err(unprocessable(format!(
            "tree.type `{kind}` does not match mode {mode}"
        )));
    }
    let sha = match (entry.get("sha"), text("content")) {
        (Some(Value::Null), None) => return Ok(Edit::Remove { path }),
        (Some(Value::String(sha)), None) => {
            let found = git.object_type(&repo.path, sha);
            if kind != "commit" && found.as_deref() != Some(kind) {
                return Err(unprocessable(format!(
                    "tree.sha {sha} is not a valid {kind}"
                )));
            }
            sha.clone()
        }
        (None, Some(content)) if kind == "blob" => {
            git.write_blob(&repo.path, content.as_bytes())
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.0))?
        }
        _ => {
            return Err(unprocessable(
                "Invalid request.\n\nexactly one of \"sha\" and \"content\" must be supplied.",
            ));
        }
    };
    Ok(if kind == "tree" {
        Edit::Graft { sha, path }
    } else {
        Edit::Add { mode, sha, path }
    })
}

/// `POST /repos/{owner}/{repo}/git/trees` (GitHub REST, "Create a tree",
/// <https://docs.github.com/en/rest/git/trees#create-a-tree>):
///
/// - `base_tree`: "If provided, a new Git tree object will be created from entries in the
///   Git tree object pointed to by `base_tree` and entries defined in the `tree`
///   parameter. Entries defined in the `tree` parameter will overwrite items from
///   `base_tree` with the same `path`. … If not provided, GitHub will create a new Git
///   tree object from only the entries defined in the `tree` parameter." A `base_tree`
///   that is not a tree is a 422;
/// - `tree[].mode`: "one of `100644` for file (blob), `100755` for executable (blob),
///   `040000` for subdirectory (tree), `160000` for submodule (commit), or `120000` for a
///   blob that specifies the path of a symlink", `tree[].type` `blob`, `tree`, or `commit`
///   to match; a `tree` entry by `sha` puts that whole tree at `path`;
/// - `tree[].sha` or `tree[].content` ("Use either `tree.sha` or `content` to specify the
///   contents of the entry"), `sha: null` deletes the path;
/// - "The tree creation API accepts nested entries. If you specify both a tree and a
///   nested path modifying that tree, this endpoint will overwrite the contents of the
///   tree with the new path contents": trees are placed first, then the files.
///
/// Answers 201 with the tree as `GET …/git/trees/{sha}` shows it.
async fn create_tree(
    State(fake): State<Arc<Fake>>,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    with_repo(fake, owner, name, Some(body), |fake, repo, body| {
        let entries = body
            .get("tree")
            .and_then(Value::as_array)
            .ok_or_else(|| missing("tree"))?;
        let base = match body.get("base_tree").and_then(Value::as_str) {
            Some(base) if fake.git.object_type(&repo.path, base).as_deref() != Some("tree") => {
                return Err(unprocessable(format!(
                    "base_tree {base} is not a valid tree"
                )));
            }
            base => base.map(str::to_owned),
        };
        let edits = entries
            .iter()
            .map(|entry| check_entry(&fake.git, repo, entry))
            .collect::<Result<Vec<_>, _>>()?;
        let built = fake.git.build_tree(&repo.path, base.as_deref(), |index| {
            let mut index_info = Vec::new();
            for edit in &edits {
                match edit {
                    Edit::Graft { sha, path } => {
                        // "Entries defined in the tree parameter will overwrite items from
                        // base_tree with the same path" (GitHub REST, "Create a tree",
                        // `base_tree`): what the base has at `path` goes first.
                        fake.git.remove_from_index(&repo.path, index, path)?;
                        let prefix = format!("--prefix={path}/");
                        fake.git.with_index(
                            &repo.path,
                            index,
                            &["read-tree", &prefix, sha],
                            None,
                        )?;
                    }
                    Edit::Remove { path } => {
                        fake.git.with_index(
                            &repo.path,
                            index,
                            &["update-index", "--force-remove", "--", path],
                            None,
                        )?;
                    }
                    Edit::Add { mode, sha, path } => {
                        index_info.extend_from_slice(format!("{mode} {sha}\t{path}").as_bytes());
                        index_info.push(0);
                    }
                }
            }
            if !index_info.is_empty() {
                fake.git.with_index(
                    &repo.path,
                    index,
                    &["update-index", "-z", "--add", "--index-info"],
                    Some(&index_info),
                )?;
            }
            Ok(())
        });
        let sha = built.map_err(|e| unprocessable(format!("GitRPC::BadObjectState: {}", e.0)))?;
        Ok(tree_response(fake, repo, &sha, false, StatusCode::CREATED))
    })
    .await
}

fn tree_response(
    fake: &Fake,
    repo: &RepoMeta,
    sha: &str,
    recursive: bool,
    status: StatusCode,
) -> Response {
    let url = fake.repo_api_url(repo);
    match fake.git.ls_tree(&repo.path, sha, recursive) {
        Ok(items) => (
            status,
            axum::Json(json!({
                "sha": sha,
                "url": format!("{url}/git/trees/{sha}"),
                "tree": items.iter().map(|i| i.to_json(&url)).collect::<Vec<_>>(),
                "truncated": false,
            })),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.0),
    }
}

async fn get_tree(
    State(fake): State<Arc<Fake>>,
    Path((owner, name, tree)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    // GitHub: any value of `recursive` asks for every level.
    let recursive = query.contains_key("recursive");
    with_repo(fake, owner, name, None, move |fake, repo, _| {
        let resolved = fake.git.git(
            Some(&repo.path),
            &["rev-parse", "-q", "--verify", &format!("{tree}^{{tree}}")],
            &[],
            None,
        );
        let sha = resolved.map_err(|_| error(StatusCode::NOT_FOUND, "Not Found"))?;
        Ok(tree_response(
            fake,
            repo,
            sha.trim(),
            recursive,
            StatusCode::OK,
        ))
    })
    .await
}

async fn create_commit(
    State(fake): State<Arc<Fake>>,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    with_repo(fake, owner, name, Some(body), |fake, repo, body| {
        let message = required(&body, "message")?;
        let tree = required(&body, "tree")?;
        if fake.git.object_type(&repo.path, tree).as_deref() != Some("tree") {
            return Err(unprocessable("Tree SHA does not exist"));
        }
        let mut parents = Vec::new();
        for parent in body
            .get("parents")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let parent = parent.as_str().unwrap_or("");
            if fake.git.object_type(&repo.path, parent).as_deref() != Some("commit") {
                return Err(unprocessable(
                    "Parent SHA does not exist or is not a commit object",
                ));
            }
            parents.push(parent.to_owned());
        }
        let author = person(body.get("author"), &user_person(fake));
        let committer = person(body.get("committer"), &author);
        let commit = fake
            .git
            .commit_tree(&repo.path, tree, &parents, message, &author, &committer)
            .and_then(|sha| fake.git.commit(&repo.path, &sha))
            .map_err(|e| unprocessable(e.0))?;
        Ok((
            StatusCode::CREATED,
            axum::Json(commit.to_json(&fake.repo_api_url(repo))),
        )
            .into_response())
    })
    .await
}

async fn get_commit(
    State(fake): State<Arc<Fake>>,
    Path((owner, name, sha)): Path<(String, String, String)>,
) -> Response {
    with_repo(fake, owner, name, None, move |fake, repo, _| {
        if fake.git.object_type(&repo.path, &sha).as_deref() != Some("commit") {
            return Err(error(StatusCode::NOT_FOUND, "Not Found"));
        }
        let commit = fake
            .git
            .commit(&repo.path, &sha)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.0))?;
        Ok(axum::Json(commit.to_json(&fake.repo_api_url(repo))).into_response())
    })
    .await
}

fn ref_json(fake: &Fake, repo: &RepoMeta, full: &str, sha: &str) -> Value {
    let url = fake.repo_api_url(repo);
    json!({
        "ref": full,
        "node_id": format!("REF_{sha}"),
        "url": format!("{url}/git/{full}"),
        "object": { "sha": sha, "type": "commit", "url": format!("{url}/git/commits/{sha}") },
    })
}

async fn get_ref(
    State(fake): State<Arc<Fake>>,
    Path((owner, name, reference)): Path<(String, String, String)>,
) -> Response {
    with_repo(fake, owner, name, None, move |fake, repo, _| {
        let full = format!("refs/{reference}");
        let sha = fake
            .git
            .resolve(&repo.path, &full)
            .ok_or_else(|| error(StatusCode::NOT_FOUND, "Not Found"))?;
        Ok(axum::Json(ref_json(fake, repo, &full, &sha)).into_response())
    })
    .await
}

async fn create_ref(
    State(fake): State<Arc<Fake>>,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    with_repo(fake, owner, name, Some(body), |fake, repo, body| {
        let full = required(&body, "ref")?;
        let sha = required(&body, "sha")?;
        if !full.starts_with("refs/") || full.matches('/').count() < 2 || !valid_path(full) {
            return Err(unprocessable(
                "Reference name must start with 'refs/' and have at least two slashes.",
            ));
        }
        if fake.git.object_type(&repo.path, sha).is_none() {
            return Err(unprocessable("Object does not exist"));
        }
        if fake.git.resolve(&repo.path, full).is_some() {
            return Err(unprocessable("Reference already exists"));
        }
        fake.git
            .update_ref(&repo.path, full, sha, None)
            .map_err(|_| unprocessable("Reference already exists"))?;
        Ok((
            StatusCode::CREATED,
            axum::Json(ref_json(fake, repo, full, sha)),
        )
            .into_response())
    })
    .await
}

/// `PATCH /repos/{owner}/{repo}/git/refs/{ref}` (GitHub REST, "Update a reference",
/// <https://docs.github.com/en/rest/git/refs#update-a-reference>): `sha` to move to, and
/// `force` ("Indicates whether to force the update or to make sure the update is a
/// fast-forward update. Leaving this out or setting it to `false` will make sure you're not
/// overwriting work", default `false`). A non-forced update that is not a fast-forward is
/// the 422 `Update is not a fast forward` (the message GitHub answers, as clients quote
/// it, e.g. octokit/rest.js issues), a missing ref the 422 `Reference does not exist`.
async fn update_ref(
    State(fake): State<Arc<Fake>>,
    Path((owner, name, reference)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    with_repo(fake, owner, name, Some(body), move |fake, repo, body| {
        let full = format!("refs/{reference}");
        let sha = required(&body, "sha")?;
        let force = body.get("force").and_then(Value::as_bool).unwrap_or(false);
        let current = fake
            .git
            .resolve(&repo.path, &full)
            .ok_or_else(|| unprocessable("Reference does not exist"))?;
        if fake.git.object_type(&repo.path, sha).as_deref() != Some("commit") {
            return Err(unprocessable("Object does not exist"));
        }
        let fast_forward = fake.git.is_ancestor(&repo.path, &current, sha);
        if !force && !fast_forward {
            return Err(unprocessable("Update is not a fast forward"));
        }
        let branch = reference.strip_prefix("heads/").unwrap_or("");
        let mut violations = Vec::new();
        for rules in fake.rulesets_for(repo, branch) {
            if rules.restrict_updates {
                violations.push("Cannot update this protected ref.");
            }
            if rules.block_force_pushes && !fast_forward {
                violations.push("Cannot force-push to this branch");
            }
        }
        if !violations.is_empty() {
            return Err(rule_violations(&violations));
        }
        fake.git
            .update_ref(&repo.path, &full, sha, Some(&current))
            .map_err(|e| unprocessable(format!("Reference cannot be updated: {}", e.0)))?;
        Ok(axum::Json(ref_json(fake, repo, &full, sha)).into_response())
    })
    .await
}
