//! Daytona sandboxes over REST: the main API creates, starts, lists and deletes them; each
//! sandbox's toolbox (`{toolboxProxyUrl}/{sandboxId}`) runs commands and moves files.
//!
//! - The project lives in [`DaytonaConfig::workdir`] inside the sandbox; workspace paths
//!   are joined to it, and commands start there.
//! - Sandboxes are created with an empty `env`: they run the model's commands, so no
//!   secret goes in.
//! - Requests carry `Authorization: Bearer <key>`; the key is never logged nor shown by
//!   `Debug`.
//! - 429, 5xx and network failures are retried ([`RetryPolicy`]; `Retry-After` and
//!   Daytona's `Retry-After-<throttler>` headers are honoured). Commands are not resent
//!   when the first attempt may have run. What still fails becomes
//!   [`SandboxError::Unavailable`]; 400 becomes `Invalid`, 404 `NotFound`.
//! - [`DaytonaConfig::labels`] scope a provider: they are added to every sandbox it
//!   creates, and it lists and connects only to sandboxes that carry them.
//! - Servers of several versions are understood: process results with `exitCode` or (older
//!   daemons) `code`; the sandbox list as `{items, nextCursor}` pages, followed, or (older
//!   servers) one plain array. Waiting for `started` ends at once on a state that cannot
//!   get there, and starts a sandbox found stopped (see `Shared::wait_started`).

mod api;
mod retry;
mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::Url;
use reqwest::multipart::{Form, Part};
use tb_core::sandbox::{
    ExecOutput, FileEntry, Sandbox, SandboxError, SandboxInfo, SandboxProvider, SandboxSpec,
    WorkspacePath,
};
use tokio::time::Instant;

pub use retry::RetryPolicy;

use crate::OutputCap;
use api::{Api, Resend, parse_json, read_limited, status_error, url_with};
use wire::{
    BuildInfo, CreateSandbox, ExecuteRequest, ExecuteResponse, FileInfo, SandboxDto, SandboxList,
};

/// How to reach Daytona and what to create.
#[derive(Clone, PartialEq, Eq)]
pub struct DaytonaConfig {
    /// The main API, e.g. `https://app.daytona.io/api`.
    pub api_url: String,
    pub api_key: String,
    /// Snapshot (id or name) to create sandboxes from. Exclusive with `image`; with neither
    /// the server's default snapshot is used.
    pub snapshot: Option<String>,
    /// Image to build sandboxes from (`FROM <image>`); slower to start than a snapshot.
    pub image: Option<String>,
    /// Absolute directory inside the sandbox that holds the project.
    pub workdir: String,
    /// Minutes of inactivity before Daytona stops a sandbox (0 = never).
    pub auto_stop_minutes: u32,
    /// Minutes after stopping before Daytona deletes a sandbox (negative = never).
    pub auto_delete_minutes: i32,
    /// How long create and connect wait for the sandbox to reach `started`.
    pub start_timeout: Duration,
    pub retry: RetryPolicy,
    /// Added to every created sandbox; list and connect see only sandboxes carrying them.
    pub labels: BTreeMap<String, String>,
    /// Output kept per command: its first and last half.
    pub output_cap_bytes: usize,
    /// Files larger than this are refused by `read_file`.
    pub read_limit_bytes: u64,
    /// Timeout of one HTTP request (commands get their own timeout plus a margin).
    pub request_timeout: Duration,
}

impl DaytonaConfig {
    pub const DEFAULT_API_URL: &str = "https://app.daytona.io/api";
    pub const DEFAULT_WORKDIR: &str = "/home/daytona/project";

    /// The defaults: hosted API, server's default snapshot, auto-stop after 15 minutes and
    /// deletion 60 minutes after that, 120 s to start.
    pub fn new(api_key: impl Into<String>) -> Self {
        DaytonaConfig {
            api_url: Self::DEFAULT_API_URL.to_owned(),
            api_key: api_key.into(),
            snapshot: None,
            image: None,
            workdir: Self::DEFAULT_WORKDIR.to_owned(),
            auto_stop_minutes: 15,
            auto_delete_minutes: 60,
            start_timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            labels: BTreeMap::new(),
            output_cap_bytes: crate::LocalSandboxConfig::DEFAULT_OUTPUT_CAP_BYTES,
            read_limit_bytes: crate::LocalSandboxConfig::DEFAULT_READ_LIMIT_BYTES,
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for DaytonaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaytonaConfig")
            .field("api_url", &self.api_url)
            .field("api_key", &tb_core::secret::REDACTED)
            .field("snapshot", &self.snapshot)
            .field("image", &self.image)
            .field("workdir", &self.workdir)
            .field("auto_stop_minutes", &self.auto_stop_minutes)
            .field("auto_delete_minutes", &self.auto_delete_minutes)
            .field("start_timeout", &self.start_timeout)
            .field("retry", &self.retry)
            .field("labels", &self.labels)
            .field("output_cap_bytes", &self.output_cap_bytes)
            .field("read_limit_bytes", &self.read_limit_bytes)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Creates, reattaches to, lists and deletes Daytona sandboxes.
#[derive(Clone, Debug)]
pub struct DaytonaProvider {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    api: Api,
    api_url: Url,
    config: DaytonaConfig,
}

impl DaytonaProvider {
    /// Checks the configuration; makes no request.
    pub fn new(config: DaytonaConfig) -> Result<Self, SandboxError> {
        let invalid = |m: String| Err(SandboxError::Invalid(format!("Daytona configuration: {m}")));
        let api_url = match Url::parse(config.api_url.trim_end_matches('/')) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            _ => {
                return invalid(format!(
                    "api_url `{}` is not an http(s) URL",
                    config.api_url
                ));
            }
        };
        if config.snapshot.is_some() && config.image.is_some() {
            return invalid("set a snapshot or an image, not both".into());
        }
        let workdir = config.workdir.trim_end_matches('/').to_owned();
        if !workdir.starts_with('/') || workdir.split('/').any(|p| p == "..") {
            return invalid(format!(
                "workdir `{}` must be an absolute path without `..`",
                config.workdir
            ));
        }
        if config.retry.max_attempts == 0 {
            return invalid("retry.max_attempts must be at least 1".into());
        }
        let mut config = config;
        config.workdir = workdir;
        let api = Api::new(config.api_key.clone(), config.retry.clone())?;
        Ok(DaytonaProvider {
            inner: Arc::new(Shared {
                api,
                api_url,
                config,
            }),
        })
    }

    pub fn config(&self) -> &DaytonaConfig {
        &self.inner.config
    }

    /// [`SandboxProvider::create`], typed.
    pub async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<DaytonaSandbox, SandboxError> {
        let shared = &self.inner;
        let config = &shared.config;
        let mut labels = config.labels.clone();
        labels.extend(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let body = CreateSandbox {
            name: (!spec.name.is_empty()).then(|| spec.name.clone()),
            labels,
            snapshot: config.snapshot.clone(),
            build_info: config.image.as_ref().map(|image| BuildInfo {
                dockerfile_content: format!("FROM {image}\n"),
            }),
            auto_stop_interval: config.auto_stop_minutes,
            auto_delete_interval: config.auto_delete_minutes,
            env: BTreeMap::new(),
        };
        let url = url_with(&shared.api_url, &["sandbox"]);
        // Creating from a snapshot waits up to ~30 s server-side.
        let timeout = config.request_timeout.max(Duration::from_secs(90));
        let sent = shared
            .api
            .send("creating a sandbox", Resend::Freely, timeout, &|http| {
                http.post(url.clone()).json(&body)
            })
            .await?;
        let status = sent.response.status();
        let answer = sent
            .response
            .bytes()
            .await
            .map_err(|e| api::body_error("creating a sandbox", &e))?;
        let dto: SandboxDto = if status.is_success() {
            parse_json("creating a sandbox", &answer)?
        } else if status.as_u16() == 409 && sent.after_uncertain_attempt && body.name.is_some() {
            // An earlier attempt created it before its answer was lost.
            tracing::info!(name = %spec.name, "sandbox exists after a failed create attempt; adopting it");
            shared.get(&spec.name).await?
        } else {
            return Err(status_error("creating a sandbox", status, &answer));
        };
        tracing::info!(sandbox = %dto.id, state = dto.state(), "created Daytona sandbox");
        match shared.attach(dto.clone()).await {
            Ok(sandbox) => Ok(sandbox),
            Err(e) => {
                if let Err(cleanup) = shared.delete(&dto.id).await {
                    tracing::warn!(sandbox = %dto.id, error = %cleanup, "could not delete a sandbox that failed to start");
                }
                Err(e)
            }
        }
    }

    /// [`SandboxProvider::connect`], typed: a stopped, archived or paused sandbox is started.
    pub async fn connect_sandbox(&self, id: &str) -> Result<DaytonaSandbox, SandboxError> {
        let shared = &self.inner;
        if id.is_empty() {
            return Err(SandboxError::NotFound("sandbox ``".into()));
        }
        let dto = shared.get(id).await?;
        if !carries(&dto, &shared.config.labels) {
            return Err(SandboxError::NotFound(format!(
                "sandbox `{id}` (not labelled for this provider)"
            )));
        }
        match dto.state() {
            "destroyed" | "destroying" => {
                return Err(SandboxError::NotFound(format!(
                    "sandbox `{id}` (destroyed)"
                )));
            }
            _ => {}
        }
        // A stopped, archived or paused sandbox is started by the wait.
        shared.attach(dto).await
    }

    /// The sandboxes carrying all of `labels` (the server filters; this checks again).
    pub async fn list_with_labels(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<SandboxInfo>, SandboxError> {
        let shared = &self.inner;
        let url = url_with(&shared.api_url, &["sandbox"]);
        let labels_json = serde_json::to_string(labels).expect("labels serialise");
        let mut infos = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let mut query = vec![("limit", "100".to_owned())];
            if !labels.is_empty() {
                query.push(("labels", labels_json.clone()));
            }
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let body = shared
                .api
                .send_ok(
                    "listing sandboxes",
                    Resend::Freely,
                    shared.config.request_timeout,
                    &|http| http.get(url.clone()).query(&query),
                )
                .await?;
            let page = parse_json::<SandboxList>("listing sandboxes", &body)?.into_page();
            let next = page.next_cursor();
            infos.extend(
                page.items
                    .into_iter()
                    .filter(|dto| carries(dto, labels))
                    .map(|dto| SandboxInfo {
                        created_at: dto
                            .created_at
                            .as_deref()
                            .and_then(tb_core::clock::parse_rfc3339)
                            .unwrap_or(0),
                        labels: dto.labels.unwrap_or_default(),
                        id: dto.id,
                    }),
            );
            match next {
                Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => return Ok(infos),
            }
        }
        Err(SandboxError::Unavailable(
            "listing sandboxes: more than 1000 pages".into(),
        ))
    }
}

#[async_trait]
impl SandboxProvider for DaytonaProvider {
    async fn create(&self, spec: &SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
        Ok(Arc::new(self.create_sandbox(spec).await?))
    }

    async fn connect(&self, id: &str) -> Result<Arc<dyn Sandbox>, SandboxError> {
        Ok(Arc::new(self.connect_sandbox(id).await?))
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        if id.is_empty() {
            return Ok(());
        }
        self.inner.delete(id).await
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        self.list_with_labels(&self.inner.config.labels).await
    }
}

impl Shared {
    async fn get(&self, id: &str) -> Result<SandboxDto, SandboxError> {
        let url = url_with(&self.api_url, &["sandbox", id]);
        let sent = self
            .api
            .send(
                "looking up a sandbox",
                Resend::Freely,
                self.config.request_timeout,
                &|http| http.get(url.clone()),
            )
            .await?;
        let status = sent.response.status();
        let body = sent
            .response
            .bytes()
            .await
            .map_err(|e| api::body_error("looking up a sandbox", &e))?;
        match status.as_u16() {
            200..=299 => parse_json("looking up a sandbox", &body),
            404 => Err(SandboxError::NotFound(format!("sandbox `{id}`"))),
            _ => Err(status_error("looking up a sandbox", status, &body)),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), SandboxError> {
        let url = url_with(&self.api_url, &["sandbox", id]);
        let sent = self
            .api
            .send(
                "deleting a sandbox",
                Resend::Freely,
                self.config.request_timeout,
                &|http| http.delete(url.clone()),
            )
            .await?;
        let status = sent.response.status();
        if status.is_success() || status.as_u16() == 404 {
            return Ok(());
        }
        let body = sent.response.bytes().await.unwrap_or_default();
        Err(status_error("deleting a sandbox", status, &body))
    }

    /// Waits for `started`, makes the project directory, and returns the handle.
    async fn attach(self: &Arc<Self>, dto: SandboxDto) -> Result<DaytonaSandbox, SandboxError> {
        let dto = self.wait_started(dto).await?;
        let proxy = dto
            .toolbox_proxy_url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/');
        let toolbox = match Url::parse(proxy) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url_with(&url, &[&dto.id]),
            _ => {
                return Err(SandboxError::Unavailable(format!(
                    "sandbox `{}` has no usable toolboxProxyUrl ({proxy:?})",
                    dto.id
                )));
            }
        };
        let sandbox = DaytonaSandbox {
            id: dto.id,
            toolbox,
            shared: self.clone(),
        };
        sandbox.make_dir(&self.config.workdir).await?;
        Ok(sandbox)
    }

    /// `POST /sandbox/{id}/start`: the sandbox as the server answers.
    async fn start(&self, id: &str) -> Result<SandboxDto, SandboxError> {
        let url = url_with(&self.api_url, &["sandbox", id, "start"]);
        let body = self
            .api
            .send_ok(
                "starting a sandbox",
                Resend::Freely,
                self.config.request_timeout,
                &|http| http.post(url.clone()),
            )
            .await?;
        parse_json("starting a sandbox", &body)
    }

    /// Polls the sandbox (100 ms, growing ×1.1 up to 1 s) until it is `started`, or at
    /// most `start_timeout`. What each of Daytona's states means here (`SandboxState`,
    /// apps/api/src/sandbox/enums/sandbox-state.enum.ts; which states start: `start` in
    /// apps/api/src/sandbox/services/sandbox.service.ts):
    ///
    /// - `error`, `build_failed`, `destroying`, `destroyed`: it will never start; fail now
    ///   with the state and the server's `errorReason`.
    /// - `stopped`, `archived`, `archiving`, `paused`: stopped meanwhile (auto-stop, an
    ///   operator); start it, once per wait, and wait while `desiredState` is `started`.
    ///   Stopped again after that: fail.
    /// - `stopping`, `pausing`: on the way down and not startable until there; fail now
    ///   rather than wait out the timeout.
    /// - anything else (`creating`, `starting`, `pulling_snapshot`, …): wait.
    async fn wait_started(&self, mut dto: SandboxDto) -> Result<SandboxDto, SandboxError> {
        let deadline = Instant::now() + self.config.start_timeout;
        let mut delay = Duration::from_millis(100);
        let mut restarted = false;
        loop {
            let id = dto.id.clone();
            match dto.state() {
                "started" => return Ok(dto),
                state @ ("error" | "build_failed") => {
                    return Err(SandboxError::Unavailable(format!(
                        "sandbox `{id}` failed to start ({state}): {}",
                        dto.error_reason.as_deref().unwrap_or("no reason given")
                    )));
                }
                state @ ("destroyed" | "destroying") => {
                    return Err(SandboxError::Unavailable(format!(
                        "sandbox `{id}` was {state} while starting"
                    )));
                }
                state @ ("stopping" | "pausing") => {
                    return Err(SandboxError::Unavailable(format!(
                        "sandbox `{id}` is {state} (stopped while it was starting, e.g. by auto-stop); it cannot be started until that ends"
                    )));
                }
                // The server answers a start with the state still `stopped` and
                // `desiredState` `started`: that start is under way.
                "stopped" | "archived" | "archiving" | "paused"
                    if dto.desired_state.as_deref() == Some("started") => {}
                state @ ("stopped" | "archived" | "archiving" | "paused") => {
                    if restarted {
                        return Err(SandboxError::Unavailable(format!(
                            "sandbox `{id}` is {state} again after being started"
                        )));
                    }
                    restarted = true;
                    tracing::info!(sandbox = %id, state, "starting Daytona sandbox");
                    dto = self.start(&id).await.map_err(|e| {
                        SandboxError::Unavailable(format!(
                            "sandbox `{id}` is {state} and could not be started: {e}"
                        ))
                    })?;
                    continue;
                }
                _ => {}
            }
            if Instant::now() + delay > deadline {
                return Err(SandboxError::Unavailable(format!(
                    "sandbox `{id}` did not start within {} s (last state `{}`)",
                    self.config.start_timeout.as_secs(),
                    dto.state()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = delay.mul_f64(1.1).min(Duration::from_secs(1));
            dto = self.get(&id).await?;
        }
    }
}

fn carries(dto: &SandboxDto, labels: &BTreeMap<String, String>) -> bool {
    let have = dto.labels.as_ref();
    labels
        .iter()
        .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
}

/// One started Daytona sandbox; commands and files go through its toolbox.
#[derive(Clone, Debug)]
pub struct DaytonaSandbox {
    id: String,
    toolbox: Url,
    shared: Arc<Shared>,
}

impl DaytonaSandbox {
    /// `{toolboxProxyUrl}/{id}`.
    pub fn toolbox_url(&self) -> &str {
        self.toolbox.as_str()
    }

    /// The absolute project directory inside the sandbox.
    pub fn workdir(&self) -> &str {
        &self.shared.config.workdir
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        url_with(&self.toolbox, segments)
    }

    fn absolute(&self, path: &WorkspacePath) -> String {
        if path.is_root() {
            self.workdir().to_owned()
        } else {
            format!("{}/{}", self.workdir(), path.as_str())
        }
    }

    async fn make_dir(&self, absolute: &str) -> Result<(), SandboxError> {
        let url = self.endpoint(&["files", "folder"]);
        self.shared
            .api
            .send_ok(
                "creating a folder",
                Resend::Freely,
                self.shared.config.request_timeout,
                &|http| {
                    http.post(url.clone())
                        .query(&[("path", absolute), ("mode", "0755")])
                },
            )
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Sandbox for DaytonaSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SandboxError> {
        let script = wrap_for_bash(command);
        let body = ExecuteRequest {
            command: &script,
            cwd: self.workdir(),
            timeout: timeout.as_secs_f64().ceil().max(1.0) as u64,
        };
        let url = self.endpoint(&["process", "execute"]);
        let http_timeout = timeout.saturating_add(Duration::from_secs(60));
        let sent = self
            .shared
            .api
            .send(
                "running a command",
                Resend::OnlyIfUnprocessed,
                http_timeout,
                &|http| http.post(url.clone()).json(&body),
            )
            .await?;
        let status = sent.response.status();
        let answer = sent
            .response
            .bytes()
            .await
            .map_err(|e| api::body_error("running a command", &e))?;
        if status == reqwest::StatusCode::REQUEST_TIMEOUT {
            return Ok(ExecOutput {
                exit_code: None,
                // Daytona sends no output for a killed command.
                output: String::new(),
                total_bytes: 0,
                timed_out: true,
            });
        }
        if !status.is_success() {
            return Err(status_error("running a command", status, &answer));
        }
        let result: ExecuteResponse = parse_json("running a command", &answer)?;
        let (output, total_bytes) = OutputCap::capture(
            self.shared.config.output_cap_bytes,
            result.result.as_bytes(),
        );
        Ok(ExecOutput {
            exit_code: result.exit_code(),
            output,
            total_bytes,
            timed_out: false,
        })
    }

    async fn write_file(&self, path: &WorkspacePath, contents: &[u8]) -> Result<(), SandboxError> {
        if path.is_root() {
            return Err(SandboxError::Invalid(
                "`.` is the project root; give a file path".into(),
            ));
        }
        let (parent, name) = path
            .as_str()
            .rsplit_once('/')
            .unwrap_or(("", path.as_str()));
        if !parent.is_empty() {
            self.make_dir(&format!("{}/{parent}", self.workdir()))
                .await?;
        }
        let url = self.endpoint(&["files", "upload"]);
        let absolute = self.absolute(path);
        let contents = Bytes::copy_from_slice(contents);
        let name = name.to_owned();
        self.shared
            .api
            .send_ok(
                "uploading a file",
                Resend::Freely,
                self.shared.config.request_timeout,
                &|http| {
                    let part = Part::stream_with_length(
                        reqwest::Body::from(contents.clone()),
                        contents.len() as u64,
                    )
                    .file_name(name.clone());
                    http.post(url.clone())
                        .query(&[("path", absolute.as_str())])
                        .multipart(Form::new().part("file", part))
                },
            )
            .await
            .map(|_| ())
    }

    async fn read_file(&self, path: &WorkspacePath) -> Result<Vec<u8>, SandboxError> {
        let url = self.endpoint(&["files", "download"]);
        let absolute = self.absolute(path);
        let what = "downloading a file";
        let sent = self
            .shared
            .api
            .send(
                what,
                Resend::Freely,
                self.shared.config.request_timeout,
                &|http| http.get(url.clone()).query(&[("path", absolute.as_str())]),
            )
            .await?;
        let status = sent.response.status();
        if status.as_u16() == 404 {
            return Err(SandboxError::NotFound(path.to_string()));
        }
        if !status.is_success() {
            let body = sent.response.bytes().await.unwrap_or_default();
            return Err(status_error(&format!("reading `{path}`"), status, &body));
        }
        let limit = self.shared.config.read_limit_bytes;
        read_limited(what, sent.response, limit, |size| {
            SandboxError::Invalid(format!(
                "`{path}` is {size} bytes or more; larger than the read limit of {limit} bytes (read a part of it with a command)"
            ))
        })
        .await
    }

    async fn delete(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        if path.is_root() {
            return Err(SandboxError::Invalid(
                "refusing to delete the project root".into(),
            ));
        }
        let url = self.endpoint(&["files"]);
        let absolute = self.absolute(path);
        let sent = self
            .shared
            .api
            .send(
                "deleting a file",
                Resend::Freely,
                self.shared.config.request_timeout,
                &|http| {
                    http.delete(url.clone())
                        .query(&[("path", absolute.as_str()), ("recursive", "true")])
                },
            )
            .await?;
        let status = sent.response.status();
        match status.as_u16() {
            200..=299 => Ok(()),
            // The earlier attempt that failed in transit did the deleting.
            404 if sent.after_uncertain_attempt => Ok(()),
            404 => Err(SandboxError::NotFound(path.to_string())),
            _ => {
                let body = sent.response.bytes().await.unwrap_or_default();
                Err(status_error(&format!("deleting `{path}`"), status, &body))
            }
        }
    }

    async fn list(&self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, SandboxError> {
        let url = self.endpoint(&["files"]);
        let absolute = self.absolute(dir);
        let sent = self
            .shared
            .api
            .send(
                "listing files",
                Resend::Freely,
                self.shared.config.request_timeout,
                &|http| http.get(url.clone()).query(&[("path", absolute.as_str())]),
            )
            .await?;
        let status = sent.response.status();
        let body = sent
            .response
            .bytes()
            .await
            .map_err(|e| api::body_error("listing files", &e))?;
        if status.as_u16() == 404 {
            return Err(SandboxError::NotFound(dir.to_string()));
        }
        if !status.is_success() {
            return Err(status_error(&format!("listing `{dir}`"), status, &body));
        }
        let infos: Vec<FileInfo> = parse_json("listing files", &body)?;
        let mut entries: Vec<FileEntry> = infos
            .into_iter()
            .filter(|info| !info.name.is_empty() && info.name != "." && info.name != "..")
            .map(|info| FileEntry {
                path: if dir.is_root() {
                    info.name
                } else {
                    format!("{}/{}", dir.as_str(), info.name)
                },
                is_dir: info.is_dir,
                size: if info.is_dir { 0 } else { info.size },
            })
            .collect();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }
}

/// The command as a script for `bash`, whatever the daemon's shell is: the text goes in a
/// here-document read from fd 3 (no argument-length limit, no quoting), stdin is
/// `/dev/null` as with the local sandbox, and `exec` keeps bash in the daemon's process
/// group so its timeout kills everything.
fn wrap_for_bash(command: &str) -> String {
    let delimiter = loop {
        let candidate = format!("TB_SCRIPT_{:032x}", rand::random::<u128>());
        if !command.contains(&candidate) {
            break candidate;
        }
    };
    format!("exec bash /dev/fd/3 3<<'{delimiter}' </dev/null\n{command}\n{delimiter}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_is_redacted_from_debug_output() {
        let config = DaytonaConfig::new("dtn_secret_key");
        let provider = DaytonaProvider::new(config.clone()).unwrap();
        assert!(!format!("{config:?}").contains("dtn_secret_key"));
        assert!(!format!("{provider:?}").contains("dtn_secret_key"));
    }

    #[test]
    fn conflicting_or_malformed_configuration_is_refused() {
        let both = DaytonaConfig {
            snapshot: Some("s".into()),
            image: Some("node:22".into()),
            ..DaytonaConfig::new("k")
        };
        assert!(matches!(
            DaytonaProvider::new(both),
            Err(SandboxError::Invalid(_))
        ));
        let relative = DaytonaConfig {
            workdir: "project".into(),
            ..DaytonaConfig::new("k")
        };
        assert!(matches!(
            DaytonaProvider::new(relative),
            Err(SandboxError::Invalid(_))
        ));
        let bad_url = DaytonaConfig {
            api_url: "ftp://x".into(),
            ..DaytonaConfig::new("k")
        };
        assert!(matches!(
            DaytonaProvider::new(bad_url),
            Err(SandboxError::Invalid(_))
        ));
    }

    #[test]
    fn the_bash_wrapper_keeps_the_command_verbatim_between_unique_delimiters() {
        let command = "echo 'a \"b\"' $HOME\ncat <<EOF\nx\nEOF";
        let script = wrap_for_bash(command);
        let first_line = script.lines().next().unwrap();
        let delimiter = first_line.split('\'').nth(1).unwrap();
        assert!(delimiter.starts_with("TB_SCRIPT_"));
        assert_eq!(script, format!("{first_line}\n{command}\n{delimiter}\n"));
    }

    #[tokio::test]
    async fn the_bash_wrapper_runs_under_bash_with_stdin_closed() {
        let script = wrap_for_bash("set -o pipefail; echo \"$((6 * 7))\"; cat; echo done");
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "42\ndone\n");
    }
}
