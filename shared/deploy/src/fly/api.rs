//! The Fly.io Machines API calls the deployer makes, with Fly's auth header rule, spacing
//! of mutating calls per machine, and `retry-after` handling of 429s.
//!
//! The token goes into one sensitive header value and nowhere else: paths and bodies never
//! hold it, and server text is scrubbed of it before it becomes an error.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use tb_core::backoff::{Attempt, Backoff, Jitter, RetryPolicy, parse_retry_after, retry};
use tokio::time::Instant;

use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::spacing::Spacing;
use super::token::FlyTokens;
use crate::{DeployError, Secret};

/// The statuses of a call that created or changed something.
const CREATED: &[StatusCode] = &[StatusCode::OK, StatusCode::CREATED];
/// The statuses of a deletion, the last one (404) for something gone already.
const GONE: &[StatusCode] = &[
    StatusCode::OK,
    StatusCode::ACCEPTED,
    StatusCode::NO_CONTENT,
    StatusCode::NOT_FOUND,
];

/// What the deployer reads of a machine.
#[derive(Clone, Debug, Deserialize)]
pub struct Machine {
    pub id: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub config: Value,
    #[serde(default)]
    pub created_at: String,
}

/// One public IP of an app.
#[derive(Clone, Debug, Deserialize)]
pub struct IpAssignment {
    pub ip: String,
    #[serde(default)]
    pub shared: bool,
}

/// How a `wait` ended.
pub(crate) enum Waited {
    Reached,
    TimedOut,
    /// 404: the machine is not visible (yet: a new machine can take a moment).
    NotVisible,
}

/// What `GET /apps/{app}` found.
pub(crate) enum AppLookup {
    Found {
        org: String,
        network: String,
    },
    /// 404 (or 401, which fly-go's `WaitForApp` also treats as "not visible yet").
    NotVisible,
    /// 403: the name belongs to an organization this token cannot see.
    OtherOrganization,
}

/// What `POST /apps` did.
pub(crate) enum Created {
    Created,
    /// 422, with Fly's message: the name is taken (or invalid).
    Refused(String),
}

pub(crate) struct MachinesApi {
    http: reqwest::Client,
    base: String,
    authorization: HeaderValue,
    token: Secret,
    spacing: Spacing,
    max_429_retries: u32,
    visibility_timeout: Duration,
}

/// fly-go `flaps/retry.go`, for waiting out eventual consistency: from 100 ms, doubling,
/// at most 500 ms (±50 %), until `deadline`.
pub(crate) fn fly_go(deadline: Instant) -> RetryPolicy {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
    RetryPolicy::new("Fly.io", u32::MAX, backoff, Jitter::Spread).deadline(Some(deadline))
}

/// flyctl `internal/machine/wait.go` between wait calls: 500 ms doubling to 2 s (±50 %),
/// until `deadline`.
pub(crate) fn flyctl_wait(deadline: Instant) -> RetryPolicy {
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
    RetryPolicy::new("Fly.io", u32::MAX, backoff, Jitter::Spread).deadline(Some(deadline))
}

/// An answer kept while its call is tried again; the retry log shows its operation and
/// status.
struct Pending<'a, T> {
    op: &'a str,
    status: StatusCode,
    answer: T,
}

impl<T> fmt::Display for Pending<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: Fly.io answered {}", self.op, self.status)
    }
}

impl MachinesApi {
    pub(crate) fn new(
        base: &str,
        token: &Secret,
        spacing: Duration,
        max_429_retries: u32,
        visibility_timeout: Duration,
    ) -> Result<Self, DeployError> {
        // As flyctl sends it (fly-go `tokens.FlapsHeader`): `FlyV1 <macaroons>`, or
        // `Bearer <token>` for a user token.
        let value = FlyTokens::parse(token.expose()).api_header();
        let mut authorization = HeaderValue::from_str(&value).map_err(|_| {
            DeployError::Config("the Fly token holds characters not allowed in a header".into())
        })?;
        authorization.set_sensitive(true);
        let http = crate::http_client(Some(Duration::from_secs(90)))?;
        Ok(MachinesApi {
            http,
            base: base.trim_end_matches('/').to_owned(),
            authorization,
            token: token.clone(),
            spacing: Spacing::new(spacing),
            max_429_retries,
            visibility_timeout,
        })
    }

    /// `GET /apps/{app}`. A name held by an organization this token cannot see answers
    /// 403 (fly-go `flaps/flaps_apps.go`, `AppNameAvailable`); 404 means no such app, or
    /// one too new to be visible yet.
    pub(crate) async fn app(&self, app: &str) -> Result<AppLookup, DeployError> {
        let op = format!("get app {app}");
        let (status, body) = self
            .call(&op, Method::GET, &format!("/apps/{app}"), None, None)
            .await?;
        match status {
            StatusCode::OK => Ok(AppLookup::Found {
                org: body["organization"]["slug"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                network: body["network"].as_str().unwrap_or("").to_owned(),
            }),
            StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED => Ok(AppLookup::NotVisible),
            StatusCode::FORBIDDEN => Ok(AppLookup::OtherOrganization),
            _ => Err(self.status_error(&op, status, &body)),
        }
    }

    /// `POST /apps?wait=true` with the app's own private network, as fly-go's `CreateApp`
    /// sends it (`flaps/flaps_apps.go`: `name`, `org_slug`, `network`; the API description
    /// calls the name `app_name`, so both go). 422 means the name is taken (or invalid).
    pub(crate) async fn create_app(
        &self,
        app: &str,
        org_slug: &str,
        network: &str,
    ) -> Result<Created, DeployError> {
        let op = format!("create app {app}");
        let body = json!({"app_name": app, "name": app, "org_slug": org_slug, "network": network});
        let key = format!("create_app/{app}");
        let (status, body) = self
            .call(
                &op,
                Method::POST,
                "/apps?wait=true",
                Some(&body),
                Some(&key),
            )
            .await?;
        match status {
            StatusCode::OK | StatusCode::CREATED => Ok(Created::Created),
            StatusCode::UNPROCESSABLE_ENTITY => Ok(Created::Refused(message(&body))),
            _ => Err(self.status_error(&op, status, &body)),
        }
    }

    /// `GET /apps/{app}/ip_assignments`.
    pub(crate) async fn ips(&self, app: &str) -> Result<Vec<IpAssignment>, DeployError> {
        let op = format!("list IPs of {app}");
        let path = format!("/apps/{app}/ip_assignments");
        let answer = self
            .call_visible(&op, Method::GET, &path, None, None)
            .await?;
        let body = self.ok(&op, answer, &[StatusCode::OK])?;
        self.read(
            &op,
            body.get("ips").cloned().unwrap_or(Value::Array(vec![])),
        )
    }

    /// `POST /apps/{app}/ip_assignments` with `type` `shared_v4` or `v6`.
    pub(crate) async fn allocate_ip(&self, app: &str, kind: &str) -> Result<(), DeployError> {
        let op = format!("allocate a {kind} IP for {app}");
        let (path, key) = (
            format!("/apps/{app}/ip_assignments"),
            format!("ip_assignments/{app}"),
        );
        let body = json!({"type": kind});
        let answer = self
            .call_visible(&op, Method::POST, &path, Some(&body), Some(&key))
            .await?;
        self.ok(&op, answer, CREATED).map(drop)
    }

    /// `POST /apps/{app}/secrets`; returns the secrets version to pass as
    /// `min_secrets_version`.
    pub(crate) async fn set_secrets(
        &self,
        app: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<Option<u64>, DeployError> {
        let op = format!("set secrets of {app}");
        let (path, key) = (format!("/apps/{app}/secrets"), format!("secrets/{app}"));
        let body = json!({"values": values});
        let answer = self
            .call_visible(&op, Method::POST, &path, Some(&body), Some(&key))
            .await?;
        Ok(self.ok(&op, answer, CREATED)?["version"].as_u64())
    }

    /// `GET /apps/{app}/machines?metadata.{key}={value}`.
    pub(crate) async fn machines(
        &self,
        app: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<Machine>, DeployError> {
        let op = format!("list machines of {app}");
        let path = format!("/apps/{app}/machines?metadata.{key}={value}");
        let answer = self.call(&op, Method::GET, &path, None, None).await?;
        self.read(&op, self.ok(&op, answer, &[StatusCode::OK])?)
    }

    /// `GET /apps/{app}/machines/{id}`; `None` on 404 (gone, or not visible yet).
    pub(crate) async fn machine(
        &self,
        app: &str,
        id: &str,
    ) -> Result<Option<Machine>, DeployError> {
        let op = format!("get machine {id} of {app}");
        let path = format!("/apps/{app}/machines/{id}");
        let answer = self.call(&op, Method::GET, &path, None, None).await?;
        if answer.0 == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.read(&op, self.ok(&op, answer, &[StatusCode::OK])?)
            .map(Some)
    }

    /// `POST /apps/{app}/machines`.
    pub(crate) async fn create_machine(
        &self,
        app: &str,
        config: &Value,
        region: &str,
        min_secrets_version: Option<u64>,
    ) -> Result<Machine, DeployError> {
        let op = format!("create a machine in {app}");
        let mut body = json!({"config": config, "region": region});
        if let Some(v) = min_secrets_version {
            body["min_secrets_version"] = json!(v);
        }
        let (path, key) = (
            format!("/apps/{app}/machines"),
            format!("create_machine/{app}"),
        );
        let answer = self
            .call(&op, Method::POST, &path, Some(&body), Some(&key))
            .await?;
        self.read(&op, self.ok(&op, answer, CREATED)?)
    }

    /// `POST /apps/{app}/machines/{id}`: replaces the whole configuration.
    pub(crate) async fn update_machine(
        &self,
        app: &str,
        id: &str,
        config: &Value,
        min_secrets_version: Option<u64>,
        current_version: &str,
    ) -> Result<Machine, DeployError> {
        let op = format!("update machine {id} of {app}");
        let mut body = json!({"config": config});
        if let Some(v) = min_secrets_version {
            body["min_secrets_version"] = json!(v);
        }
        if !current_version.is_empty() {
            body["current_version"] = json!(current_version);
        }
        let path = format!("/apps/{app}/machines/{id}");
        let answer = self
            .call(&op, Method::POST, &path, Some(&body), Some(id))
            .await?;
        self.read(&op, self.ok(&op, answer, &[StatusCode::OK])?)
    }

    /// `GET /apps/{app}/machines/{id}/wait?state=…&timeout=…` (seconds, at most 60).
    pub(crate) async fn wait(
        &self,
        app: &str,
        id: &str,
        state: &str,
        timeout_secs: u64,
    ) -> Result<Waited, DeployError> {
        let op = format!("wait for machine {id} of {app} to be {state}");
        let secs = timeout_secs.clamp(1, 60);
        let path = format!("/apps/{app}/machines/{id}/wait?state={state}&timeout={secs}");
        let (status, body) = self.call(&op, Method::GET, &path, None, None).await?;
        match status {
            StatusCode::OK => Ok(Waited::Reached),
            StatusCode::REQUEST_TIMEOUT => Ok(Waited::TimedOut),
            StatusCode::NOT_FOUND => Ok(Waited::NotVisible),
            _ => Err(self.status_error(&op, status, &body)),
        }
    }

    /// `DELETE /apps/{app}/machines/{id}?force=true`: stops it if running, then destroys it.
    pub(crate) async fn destroy_machine(&self, app: &str, id: &str) -> Result<(), DeployError> {
        let op = format!("destroy machine {id} of {app}");
        let path = format!("/apps/{app}/machines/{id}?force=true");
        let answer = self
            .call(&op, Method::DELETE, &path, None, Some(id))
            .await?;
        self.ok(&op, answer, GONE).map(drop)
    }

    /// `GET /apps/{app}/machines`: every machine of the app, whatever its role.
    pub(crate) async fn all_machines(&self, app: &str) -> Result<Vec<Machine>, DeployError> {
        let op = format!("list machines of {app}");
        let path = format!("/apps/{app}/machines");
        let answer = self.call(&op, Method::GET, &path, None, None).await?;
        if answer.0 == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        self.read(&op, self.ok(&op, answer, &[StatusCode::OK])?)
    }

    /// `DELETE /apps/{app}/ip_assignments/{ip}` (releases a public IP; a 404 means it is
    /// released already).
    pub(crate) async fn release_ip(&self, app: &str, ip: &str) -> Result<(), DeployError> {
        let op = format!("release IP {ip} of {app}");
        let path = format!("/apps/{app}/ip_assignments/{ip}");
        let key = format!("ip_assignments/{app}");
        let answer = self
            .call(&op, Method::DELETE, &path, None, Some(&key))
            .await?;
        self.ok(&op, answer, GONE).map(drop)
    }

    /// `DELETE /apps/{app}?force=true` (202; `force` stops machines first). `false` when
    /// there was no such app (404).
    pub(crate) async fn delete_app(&self, app: &str) -> Result<bool, DeployError> {
        let op = format!("delete app {app}");
        let (path, key) = (
            format!("/apps/{app}?force=true"),
            format!("delete_app/{app}"),
        );
        let answer = self
            .call(&op, Method::DELETE, &path, None, Some(&key))
            .await?;
        if answer.0 == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.ok(&op, answer, &GONE[..3]).map(|_| true)
    }

    /// [`MachinesApi::call`], retrying 404 and 401 for a while: a just-created app is not
    /// visible at once to every part of the API. The backoff is fly-go's `flaps.Retry`
    /// (`flaps/retry.go`: 100 ms doubling to 500 ms, ±50 % jitter), as its `WaitForApp`
    /// (`flaps/flaps_apps.go`) uses it for exactly these two statuses; bounded by
    /// `visibility_timeout` (fly-go: one minute).
    async fn call_visible(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        spacing_key: Option<&str>,
    ) -> Result<(StatusCode, Value), DeployError> {
        let policy = fly_go(Instant::now() + self.visibility_timeout);
        let method = &method;
        let answer = retry(&policy, move |_| async move {
            match self.call(op, method.clone(), path, body, spacing_key).await {
                Ok((status, answer))
                    if matches!(status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) =>
                {
                    Attempt::Retry {
                        after: None,
                        error: Pending { op, status, answer },
                    }
                }
                other => Attempt::Done(other),
            }
        })
        .await;
        answer.unwrap_or_else(|not_visible| {
            let Pending { status, answer, .. } = not_visible.error;
            Ok((status, answer))
        })
    }

    /// Waits until `GET /apps/{app}` answers 200, as fly-go's `WaitForApp` does after
    /// creating an app (404 and 401 are retried, anything else ends the wait).
    pub(crate) async fn wait_for_app(&self, app: &str) -> Result<(), DeployError> {
        let op = format!("wait for app {app}");
        let path = format!("/apps/{app}");
        let answer = self
            .call_visible(&op, Method::GET, &path, None, None)
            .await?;
        self.ok(&op, answer, &[StatusCode::OK]).map(drop)
    }

    /// How long calls on a just-created app or machine keep being retried on 404 / 401.
    pub(crate) fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }

    /// Sends one call. Mutating calls (`spacing_key` set) wait for their slot; a 429 is
    /// retried after its `retry-after` (at most 10 s) up to the configured number of times.
    async fn call(
        &self,
        op: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        spacing_key: Option<&str>,
    ) -> Result<(StatusCode, Value), DeployError> {
        let url = &format!("{}{path}", self.base);
        let method = &method;
        // Fly's `retry-after`, else a second; at most 10 s.
        let policy = RetryPolicy::new(
            "Fly.io",
            self.max_429_retries.saturating_add(1),
            Backoff::new(Duration::from_secs(1), Duration::from_secs(10)),
            Jitter::None,
        );
        let sent = retry(&policy, move |_| async move {
            if let Some(key) = spacing_key {
                self.spacing.wait(key).await;
            }
            let mut request = self
                .http
                .request(method.clone(), url)
                .header(header::AUTHORIZATION, self.authorization.clone());
            if path.contains("/wait?") {
                request = request.timeout(Duration::from_secs(75));
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let after = resp
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| parse_retry_after(v.to_str().ok()?))
                        .unwrap_or(Duration::from_secs(1));
                    Attempt::Retry {
                        after: Some(after),
                        error: Pending {
                            op,
                            status: resp.status(),
                            answer: resp,
                        },
                    }
                }
                Ok(resp) => Attempt::Done(Ok(resp)),
                Err(e) => Attempt::Done(Err(self.error(op, None, &e.to_string()))),
            }
        })
        .await;
        let resp = match sent {
            Ok(resp) => resp?,
            Err(throttled) => throttled.error.answer,
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// The body of an answer whose status is one of `ok`; an error otherwise.
    fn ok(
        &self,
        op: &str,
        (status, body): (StatusCode, Value),
        ok: &[StatusCode],
    ) -> Result<Value, DeployError> {
        if ok.contains(&status) {
            Ok(body)
        } else {
            Err(self.status_error(op, status, &body))
        }
    }

    /// A JSON answer read as `T`.
    fn read<T: DeserializeOwned>(&self, op: &str, body: Value) -> Result<T, DeployError> {
        serde_json::from_value(body).map_err(|e| self.error(op, None, &format!("bad answer: {e}")))
    }

    fn status_error(&self, op: &str, status: StatusCode, body: &Value) -> DeployError {
        self.error(op, Some(status.as_u16()), &message(body))
    }

    pub(crate) fn error(&self, op: &str, status: Option<u16>, text: &str) -> DeployError {
        DeployError::Fly {
            operation: self.token.scrub(op),
            status,
            message: self.token.scrub(text),
        }
    }
}

/// Fly's error bodies are `{"error": "…"}`; anything else is shown shortened.
fn message(body: &Value) -> String {
    match body {
        Value::Object(o) => o
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string().chars().take(300).collect()),
        Value::String(s) => s.chars().take(300).collect(),
        Value::Null => String::new(),
        other => other.to_string().chars().take(300).collect(),
    }
}
