//! A fake Daytona: the main API under `/api` and the toolbox under `/toolbox/{id}`, served
//! on `127.0.0.1` and backed by real local sandboxes in a temporary directory.
//!
//! It is honest where the client's correctness depends on it: commands really run (with
//! `bash`, in the sandbox's workspace), files really land on disk, paths must be absolute
//! under the configured workdir (others get 400), a command past its timeout gets 408,
//! every request needs `Authorization: Bearer <key>` (401 otherwise), and a new sandbox is
//! `creating` on its first `GET` and `started` after that, so clients must poll.
//!
//! Faults can be injected ([`FakeDaytona::fail_next_create_with_429`],
//! [`FakeDaytona::fail_next_start_with`], [`FakeDaytona::stop`],
//! [`FakeDaytona::next_create_goes_through`] for any sequence of Daytona's states) and
//! counters read. Older servers' shapes can be asked for
//! ([`FakeDaytona::answer_exit_codes_as_code`], [`FakeDaytona::list_as_plain_array`]).
//! Each behaviour names its source in the daytonaio/daytona repository beside it.

mod main_api;
mod toolbox;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tb_sandbox::{DaytonaConfig, DaytonaProvider, LocalSandbox, RetryPolicy};

use crate::TempLocalProvider;

/// A running fake Daytona server; stops when dropped.
pub struct FakeDaytona {
    state: Arc<Fake>,
    base_url: String,
    _server: crate::Server,
}

impl FakeDaytona {
    /// Starts a server on a free port of `127.0.0.1` that accepts `api_key`, with the
    /// project workdir [`DaytonaConfig::DEFAULT_WORKDIR`]. Panics if it cannot listen.
    pub async fn start(api_key: &str) -> FakeDaytona {
        Self::start_with_workdir(api_key, DaytonaConfig::DEFAULT_WORKDIR).await
    }

    /// Like [`FakeDaytona::start`], mapping `workdir` (absolute) to the backing workspace.
    pub async fn start_with_workdir(api_key: &str, workdir: &str) -> FakeDaytona {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Daytona");
        let base_url = format!("http://{}", listener.local_addr().expect("local address"));
        let local = TempLocalProvider::with_config(|config| {
            // The daemon returns all output; the client under test does the capping.
            config.output_cap_bytes = 64 * 1024 * 1024;
        });
        let state = Arc::new(Fake {
            api_key: api_key.to_owned(),
            toolbox_url: format!("{base_url}/toolbox"),
            workdir: workdir.trim_end_matches('/').to_owned(),
            local,
            inner: Mutex::new(Inner::default()),
        });
        let app = Router::new()
            .nest("/api", main_api::routes())
            .nest("/toolbox/{sandbox_id}", toolbox::routes())
            .layer(middleware::from_fn_with_state(
                state.clone(),
                require_bearer,
            ))
            .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(state.clone());
        let server = crate::serve(listener, app, "fake Daytona");
        FakeDaytona {
            state,
            base_url,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT/api`.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base_url)
    }

    /// `http://127.0.0.1:PORT/toolbox`, reported as every sandbox's `toolboxProxyUrl`.
    pub fn toolbox_url(&self) -> &str {
        &self.state.toolbox_url
    }

    pub fn workdir(&self) -> &str {
        &self.state.workdir
    }

    /// A client configuration for this server: its URL, key and workdir, and retries
    /// without long waits.
    pub fn config(&self) -> DaytonaConfig {
        DaytonaConfig {
            api_url: self.api_url(),
            workdir: self.state.workdir.clone(),
            start_timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                max_attempts: 4,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
                max_retry_after: Duration::from_secs(1),
            },
            ..DaytonaConfig::new(self.state.api_key.clone())
        }
    }

    /// A provider for this server with [`FakeDaytona::config`].
    pub fn provider(&self) -> DaytonaProvider {
        DaytonaProvider::new(self.config()).expect("a valid configuration")
    }

    /// The next `n` `POST /api/sandbox` answer 429 with `Retry-After-sandbox-create: 0`.
    pub fn fail_next_create_with_429(&self, n: u32) {
        self.state.lock().creates_to_refuse = n;
    }

    /// The next `n` `POST /api/sandbox` create the sandbox, then answer 500 as if the
    /// answer had been lost on the way back.
    pub fn fail_next_create_with_500_after_creating(&self, n: u32) {
        self.state.lock().creates_to_lose = n;
    }

    /// The next sandbox created ends in state `error` with `reason` instead of `started`.
    pub fn fail_next_start_with(&self, reason: &str) {
        self.state.lock().next_start_error = Some(reason.to_owned());
    }

    /// Stops a sandbox as auto-stop would; false if there is no such sandbox.
    pub fn stop(&self, id: &str) -> bool {
        let mut inner = self.state.lock();
        match inner.sandboxes.get_mut(id) {
            Some(sandbox) => {
                sandbox.state = "stopped".into();
                sandbox.pending = None;
                sandbox.script.clear();
                true
            }
            None => false,
        }
    }

    /// Answers process results as daemons before the current one did: `{"code": …}` instead
    /// of `{"exitCode": …}` (see `toolbox.rs`).
    pub fn answer_exit_codes_as_code(&self) {
        self.state.lock().legacy_exit_code = true;
    }

    /// Answers `GET /api/sandbox` as servers before cursor pagination did: a plain array
    /// of every matching sandbox, `cursor` and `limit` ignored (see `main_api.rs`).
    pub fn list_as_plain_array(&self) {
        self.state.lock().legacy_list = true;
    }

    /// The next sandbox created reports `states` on its successive `GET`s after `creating`
    /// (one per `GET`), then stays in the last one, e.g. `["starting", "stopped"]` for a
    /// sandbox auto-stopped while the client waits. The values are Daytona's
    /// `SandboxState` (apps/api/src/sandbox/enums/sandbox-state.enum.ts); a state given as
    /// `error: <reason>` sets `errorReason` too.
    pub fn next_create_goes_through(&self, states: &[&str]) {
        self.state.lock().next_states = Some(states.iter().map(|s| s.to_string()).collect());
    }

    /// `GET /api/sandbox` pages hold at most `n` items whatever `limit` asks.
    pub fn set_list_page_size(&self, n: usize) {
        self.state.lock().page_size = Some(n.max(1));
    }

    /// `POST /api/sandbox` requests received, refused ones included.
    pub fn create_calls(&self) -> u32 {
        self.state.lock().counters.creates
    }

    /// `POST /api/sandbox/{id}/start` requests received.
    pub fn start_calls(&self) -> u32 {
        self.state.lock().counters.starts
    }

    /// `POST …/process/execute` requests received.
    pub fn exec_calls(&self) -> u32 {
        self.state.lock().counters.execs
    }

    /// `GET /api/sandbox` requests received (pages).
    pub fn list_calls(&self) -> u32 {
        self.state.lock().counters.lists
    }

    /// Requests refused for a missing or wrong bearer token.
    pub fn unauthorized_calls(&self) -> u32 {
        self.state.lock().counters.unauthorized
    }

    /// The JSON body of the last `POST /api/sandbox`.
    pub fn last_create_body(&self) -> Option<serde_json::Value> {
        self.state.lock().last_create_body.clone()
    }

    /// The JSON body of the last `POST …/process/execute`.
    pub fn last_exec_body(&self) -> Option<serde_json::Value> {
        self.state.lock().last_exec_body.clone()
    }

    /// Ids of the sandboxes that exist, oldest first.
    pub fn sandbox_ids(&self) -> Vec<String> {
        let inner = self.state.lock();
        let mut sandboxes: Vec<_> = inner.sandboxes.values().collect();
        sandboxes.sort_by_key(|s| s.seq);
        sandboxes.into_iter().map(|s| s.id.clone()).collect()
    }

    /// The host directory that backs a sandbox's workdir.
    pub fn workspace_dir(&self, id: &str) -> Option<PathBuf> {
        self.state
            .lock()
            .sandboxes
            .get(id)
            .map(|s| s.local.workspace_dir().to_path_buf())
    }
}

/// The server's state, shared by the handlers and the handle.
pub(crate) struct Fake {
    api_key: String,
    toolbox_url: String,
    workdir: String,
    local: TempLocalProvider,
    inner: Mutex<Inner>,
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }
}

#[derive(Default)]
struct Inner {
    sandboxes: BTreeMap<String, FakeSandbox>,
    next_seq: u64,
    creates_to_refuse: u32,
    creates_to_lose: u32,
    next_start_error: Option<String>,
    page_size: Option<usize>,
    legacy_exit_code: bool,
    legacy_list: bool,
    next_states: Option<Vec<String>>,
    counters: Counters,
    last_create_body: Option<serde_json::Value>,
    last_exec_body: Option<serde_json::Value>,
}

impl Inner {
    /// By id, or by name as Daytona's `{sandboxIdOrName}` allows.
    fn find_mut(&mut self, id_or_name: &str) -> Option<&mut FakeSandbox> {
        let id = if self.sandboxes.contains_key(id_or_name) {
            id_or_name.to_owned()
        } else {
            self.sandboxes
                .values()
                .find(|s| s.name == id_or_name)?
                .id
                .clone()
        };
        self.sandboxes.get_mut(&id)
    }
}

#[derive(Default)]
struct Counters {
    creates: u32,
    starts: u32,
    execs: u32,
    lists: u32,
    unauthorized: u32,
}

struct FakeSandbox {
    id: String,
    name: String,
    seq: u64,
    labels: BTreeMap<String, String>,
    state: String,
    /// A state change that happens after some more `GET`s.
    pending: Option<Pending>,
    /// States reported one per `GET`, before `pending` (see
    /// [`FakeDaytona::next_create_goes_through`]).
    script: std::collections::VecDeque<String>,
    error_reason: Option<String>,
    snapshot: Option<String>,
    auto_stop_interval: i64,
    auto_delete_interval: i64,
    created_at: u64,
    local: LocalSandbox,
}

struct Pending {
    gets_left: u32,
    then: String,
    reason: Option<String>,
}

impl FakeSandbox {
    /// Called on each `GET`: the state reported now, advancing a pending change.
    fn observe(&mut self) {
        if let Some(next) = self.script.pop_front() {
            match next.split_once(": ") {
                Some((state, reason)) => {
                    self.state = state.to_owned();
                    self.error_reason = Some(reason.to_owned());
                }
                None => self.state = next,
            }
            return;
        }
        if let Some(pending) = &mut self.pending {
            if pending.gets_left > 0 {
                pending.gets_left -= 1;
                return;
            }
            let pending = self.pending.take().expect("checked above");
            self.state = pending.then;
            self.error_reason = pending.reason;
        }
    }
}

/// A NestJS-style error: `{"statusCode","message","error"}`.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "statusCode": status.as_u16(),
        "message": message.into(),
        "error": status.canonical_reason().unwrap_or("Error"),
    });
    (status, axum::Json(body)).into_response()
}

async fn require_bearer(State(fake): State<Arc<Fake>>, request: Request, next: Next) -> Response {
    let expected = format!("Bearer {}", fake.api_key);
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        fake.lock().counters.unauthorized += 1;
        return error(StatusCode::UNAUTHORIZED, "Invalid credentials");
    }
    next.run(request).await
}
