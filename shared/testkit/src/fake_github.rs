//! A fake GitHub REST API on `127.0.0.1`, backed by real bare git repositories in a
//! temporary directory, for the GitHub code host adapter.
//!
//! It speaks the subset a publisher needs: `GET /user`, `POST /user/repos`,
//! `POST /orgs/{org}/repos`, `GET /repos/{o}/{r}`, the Git Data API (blobs, trees,
//! commits, refs) and `PUT /repos/{o}/{r}/contents/{path}`. It is honest where a client's
//! correctness depends on it:
//!
//! - objects are written with git plumbing into a bare repository per GitHub repository,
//!   so a test can `git clone` [`FakeGitHub::clone_url`] and check files and history;
//! - every request needs `Authorization: Bearer <token>` (or `token <token>`): 401
//!   `Bad credentials` otherwise; and a `User-Agent`: 403 otherwise, as GitHub does;
//! - creating an existing repository answers GitHub's 422 `name already exists on this
//!   account`; an organization must be known ([`FakeGitHub::add_org`]), 404 otherwise;
//! - like GitHub, the Git Data API refuses to work on a repository without commits
//!   (409 `Git Repository is empty.`), while the contents API may create the first commit;
//! - moving a ref without `force` must be a fast-forward (422 `Update is not a fast
//!   forward`), and creating an existing ref is a 422 (`Reference already exists`);
//! - a tree is made from its `tree` entries alone, or on top of `base_tree`, whose entries
//!   the request's overwrite path by path; an entry of mode `040000`, type `tree`, by
//!   `sha` puts that whole tree at its path (GitHub REST, "Create a tree"; the sources are
//!   quoted beside the handler in `git_data.rs`);
//! - `PATCH /repos/{o}/{r}` with `archived: true` archives a repository (GitHub REST,
//!   "Update a repository": <https://docs.github.com/en/rest/repos/repos#update-a-repository>);
//!   an archived repository is read-only: every write to it answers 403 `Repository was
//!   archived so is read-only.` (GitHub docs, "About archiving repositories": "When a
//!   repository is archived, its issues, pull requests, code, labels, … are read-only");
//! - repository rulesets ([`FakeGitHub::add_ruleset`]) refuse what their rules forbid on a
//!   branch with GitHub's 422 for rule violations: `message` `Repository rule violations
//!   found\n\n<one line per rule>\n\n`, `documentation_url` of the endpoint (as the REST
//!   API answers `PATCH …/git/refs/{ref}`; the rules are those of the rulesets API in
//!   `github/rest-api-description`: `non_fast_forward` "Block force pushes", with the text
//!   `Cannot force-push to this branch`, and `update` "Restrict updates", `Cannot update this
//!   protected ref.`).
//!
//! Faults can be injected ([`FakeGitHub::fail_next`], [`FakeGitHub::fail_next_matching`]),
//! and every request is logged ([`FakeGitHub::requests`]) with its headers except the
//! value of `Authorization`, so tests can check where a token travels.
//!
//! Not covered: pagination, ETags, webhooks, anything outside the routes above, and
//! GitHub's own rate limiting (inject it as a fault).

mod contents;
mod git_data;
mod git_store;
mod repos;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tempfile::TempDir;

use git_store::GitStore;

/// The largest request body the fake accepts (GitHub's own limit is higher; snapshots
/// in tests are small).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// A running fake GitHub; stops when dropped.
pub struct FakeGitHub {
    state: Arc<Fake>,
    _server: crate::Server,
}

/// A repository ruleset on one branch (the rules of GitHub's rulesets API this fake knows).
#[derive(Clone, Debug, Default)]
pub struct Ruleset {
    /// The branch it applies to (`main`).
    pub branch: String,
    /// `non_fast_forward`: no update that is not a fast-forward, forced or not.
    pub block_force_pushes: bool,
    /// `update`: no update at all (creation is still allowed).
    pub restrict_updates: bool,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Every header but `Authorization` (names lower case).
    pub headers: Vec<(String, String)>,
    /// Whether an `Authorization` header was sent (its value is not kept).
    pub had_authorization: bool,
    pub body: String,
    pub status: u16,
}

impl FakeGitHub {
    /// Starts a server on a free port of `127.0.0.1` that accepts `token` as the user
    /// `login`. Panics if it cannot listen.
    pub async fn start(token: &str, login: &str) -> FakeGitHub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake GitHub");
        let base_url = format!("http://{}", listener.local_addr().expect("local address"));
        let dir = TempDir::new().expect("creating the fake GitHub's directory");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("creating an empty HOME");
        let state = Arc::new(Fake {
            token: token.to_owned(),
            login: login.to_owned(),
            base_url,
            repos_dir: dir.path().join("repos"),
            git: GitStore::new(home),
            git_lock: Mutex::new(()),
            inner: Mutex::new(Inner::default()),
            _dir: dir,
        });
        let app = Router::new()
            .merge(repos::routes())
            .merge(git_data::routes())
            .merge(contents::routes())
            .fallback(|| async { error(StatusCode::NOT_FOUND, "Not Found") })
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(state.clone());
        let server = crate::serve(listener, app, "fake GitHub");
        FakeGitHub {
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`, the API root to configure a client with.
    pub fn api_url(&self) -> &str {
        &self.state.base_url
    }

    pub fn login(&self) -> &str {
        &self.state.login
    }

    /// Makes the user a member of organization `org`, so it may create repositories there.
    pub fn add_org(&self, org: &str) {
        self.state
            .lock()
            .orgs
            .insert(org.to_ascii_lowercase(), org.to_owned());
    }

    /// Adds a ruleset to `owner/repo` (as an organization's rulesets apply to its
    /// repositories, existing or created later).
    pub fn add_ruleset(&self, owner: &str, repo: &str, ruleset: Ruleset) {
        self.state
            .lock()
            .rulesets
            .entry(repo_key(owner, repo))
            .or_default()
            .push(ruleset);
    }

    /// Creates an empty repository directly (as if made earlier through the web UI).
    pub fn create_repo(&self, owner: &str, name: &str, private: bool) {
        if repos::create(&self.state, owner, name, private, "").is_err() {
            panic!("creating repository {owner}/{name} in the fake GitHub failed");
        }
    }

    /// The path of the bare repository behind `owner/repo`, for `git clone`.
    pub fn clone_url(&self, owner: &str, repo: &str) -> String {
        self.state
            .repo_dir(owner, repo)
            .to_string_lossy()
            .into_owned()
    }

    /// Whether `owner/repo` is archived (`None`: no such repository).
    pub fn repo_is_archived(&self, owner: &str, repo: &str) -> Option<bool> {
        self.repo_flag(owner, repo, |r| r.archived)
    }

    /// Whether `owner/repo` is private (`None`: no such repository).
    pub fn repo_is_private(&self, owner: &str, repo: &str) -> Option<bool> {
        self.repo_flag(owner, repo, |r| r.private)
    }

    fn repo_flag(&self, owner: &str, repo: &str, flag: fn(&RepoMeta) -> bool) -> Option<bool> {
        let state = self.state.lock();
        state.repos.get(&repo_key(owner, repo)).map(flag)
    }

    /// The next `n` requests (after the User-Agent and token checks) get `status` with
    /// `headers` and a GitHub-style error body, and are not processed.
    pub fn fail_next(&self, n: u32, status: u16, headers: &[(&str, &str)]) {
        self.push_fault(None, None, n, status, headers);
    }

    /// Like [`FakeGitHub::fail_next`], only for requests with `method` whose path contains
    /// `path_part`.
    pub fn fail_next_matching(
        &self,
        method: &str,
        path_part: &str,
        n: u32,
        status: u16,
        headers: &[(&str, &str)],
    ) {
        self.push_fault(Some(method), Some(path_part), n, status, headers);
    }

    fn push_fault(
        &self,
        method: Option<&str>,
        path_part: Option<&str>,
        n: u32,
        status: u16,
        headers: &[(&str, &str)],
    ) {
        self.state.lock().faults.push(Fault {
            method: method.map(str::to_ascii_uppercase),
            path_part: path_part.map(str::to_owned),
            remaining: n,
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.lock().log.clone()
    }

    /// How many requests had `method` and a path starting with `path_prefix`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.state
            .lock()
            .log
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .count()
    }
}

/// The server's state, shared by the handlers and the handle.
pub(crate) struct Fake {
    token: String,
    login: String,
    base_url: String,
    repos_dir: PathBuf,
    git: GitStore,
    /// Serialises writes to the repositories.
    git_lock: Mutex<()>,
    inner: Mutex<Inner>,
    _dir: TempDir,
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }

    fn git_guard(&self) -> MutexGuard<'_, ()> {
        crate::lock(&self.git_lock)
    }

    fn repo_dir(&self, owner: &str, name: &str) -> PathBuf {
        self.repos_dir
            .join(owner.to_ascii_lowercase())
            .join(format!("{}.git", name.to_ascii_lowercase()))
    }

    /// `{base}/repos/{owner}/{name}`, the `url` of a repository.
    fn repo_api_url(&self, repo: &RepoMeta) -> String {
        format!("{}/repos/{}/{}", self.base_url, repo.owner, repo.name)
    }

    /// The rulesets of `repo` that apply to `branch`.
    fn rulesets_for(&self, repo: &RepoMeta, branch: &str) -> Vec<Ruleset> {
        self.lock()
            .rulesets
            .get(&repo_key(&repo.owner, &repo.name))
            .map(|all| all.iter().filter(|r| r.branch == branch).cloned().collect())
            .unwrap_or_default()
    }

    /// The repository, if the token's user can see it.
    fn visible_repo(&self, owner: &str, name: &str) -> Option<RepoMeta> {
        let inner = self.lock();
        let repo = inner.repos.get(&repo_key(owner, name))?.clone();
        let mine = repo.owner.eq_ignore_ascii_case(&self.login)
            || inner.orgs.contains_key(&repo.owner.to_ascii_lowercase());
        mine.then_some(repo)
    }
}

#[derive(Default)]
struct Inner {
    /// Lower-case name → name as given.
    orgs: BTreeMap<String, String>,
    repos: BTreeMap<(String, String), RepoMeta>,
    next_id: u64,
    rulesets: BTreeMap<(String, String), Vec<Ruleset>>,
    faults: Vec<Fault>,
    log: Vec<LoggedRequest>,
}

#[derive(Clone, Debug)]
pub(crate) struct RepoMeta {
    pub id: u64,
    pub owner: String,
    pub name: String,
    pub private: bool,
    pub description: String,
    pub path: PathBuf,
    /// Archived: read-only (writes answer 403).
    pub archived: bool,
}

struct Fault {
    method: Option<String>,
    path_part: Option<String>,
    remaining: u32,
    status: u16,
    headers: Vec<(String, String)>,
}

fn repo_key(owner: &str, name: &str) -> (String, String) {
    (owner.to_ascii_lowercase(), name.to_ascii_lowercase())
}

/// A GitHub-style error: `{"message", "documentation_url", "status"}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    error_with(status, message, None)
}

/// Like [`error`], with GitHub's `errors` list (422s).
pub(crate) fn error_with(
    status: StatusCode,
    message: impl Into<String>,
    errors: Option<Value>,
) -> Response {
    let mut body = json!({
        "message": message.into(),
        "documentation_url": "https://docs.github.com/rest",
        "status": status.as_u16().to_string(),
    });
    if let Some(errors) = errors {
        body["errors"] = errors;
    }
    (status, axum::Json(body)).into_response()
}

/// Runs a blocking handler (git) off the async threads, holding the write lock.
pub(crate) async fn blocking(
    fake: Arc<Fake>,
    handler: impl FnOnce(&Fake) -> Response + Send + 'static,
) -> Response {
    tokio::task::spawn_blocking(move || {
        let _guard = fake.git_guard();
        handler(&fake)
    })
    .await
    .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Parses a JSON body as GitHub does: 400 `Problems parsing JSON` otherwise.
#[allow(clippy::result_large_err)]
pub(crate) fn json_body(bytes: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "Problems parsing JSON"))
}

/// Logging, the User-Agent and token checks, and injected faults, before any route.
async fn gate(State(fake): State<Arc<Fake>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"),
    };
    let mut entry = LoggedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .filter(|(name, _)| *name != axum::http::header::AUTHORIZATION)
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        had_authorization: parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION),
        body: String::from_utf8_lossy(&bytes).into_owned(),
        status: 0,
    };
    let response = screen(&fake, &parts, &entry).await;
    let response = match response {
        Some(refusal) => refusal,
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    };
    entry.status = response.status().as_u16();
    fake.lock().log.push(entry);
    response
}

/// The refusal a request gets before reaching its route, if any.
async fn screen(
    fake: &Fake,
    parts: &axum::http::request::Parts,
    entry: &LoggedRequest,
) -> Option<Response> {
    let user_agent = parts
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if user_agent.trim().is_empty() {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.\n",
            )
                .into_response(),
        );
    }
    let authorization = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let presented = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("token "));
    if presented != Some(fake.token.as_str()) {
        let message = if authorization.is_empty() {
            "Requires authentication"
        } else {
            "Bad credentials"
        };
        return Some(error(StatusCode::UNAUTHORIZED, message));
    }
    let mut inner = fake.lock();
    let fault = inner.faults.iter_mut().find(|f| {
        f.remaining > 0
            && f.method.as_deref().is_none_or(|m| m == entry.method)
            && f.path_part
                .as_deref()
                .is_none_or(|p| entry.path.contains(p))
    })?;
    fault.remaining -= 1;
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match fault.status {
        403 | 429 => {
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
        }
        500..=599 => "Server Error",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    let mut response = error(status, message);
    for (name, value) in &fault.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    Some(response)
}
