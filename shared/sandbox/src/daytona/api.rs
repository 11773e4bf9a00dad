//! The HTTP layer shared by the Daytona main API and toolbox: auth, retries, and mapping
//! of failures to [`SandboxError`].

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::{Client, RequestBuilder, Response, StatusCode, Url};
use tb_core::backoff::{Attempt, Stop, retry};
use tb_core::sandbox::SandboxError;

use super::RetryPolicy;
use super::wire::error_message;

const USER_AGENT: &str = concat!("turbobackend-sandbox/", env!("CARGO_PKG_VERSION"));

/// Whether a request may be sent again after an attempt whose outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resend {
    /// Idempotent (or made safe by the caller): retry on 429, 5xx and network errors.
    Freely,
    /// Running it twice would be wrong (a command): retry only when it surely was not
    /// processed (429, connection refused); 5xx and broken connections are returned.
    OnlyIfUnprocessed,
}

/// The final answer of a request, after retries.
pub(crate) struct Sent {
    pub response: Response,
    /// An earlier attempt failed in a way that may have been processed by the server
    /// (5xx, connection lost): a 404 or 409 now may be that attempt's doing.
    pub after_uncertain_attempt: bool,
}

pub(crate) struct Api {
    http: Client,
    api_key: String,
    retry: RetryPolicy,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("api_key", &tb_core::secret::REDACTED)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Api {
    pub fn new(api_key: String, retry: RetryPolicy) -> Result<Self, SandboxError> {
        let http = tb_tls::http_client()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SandboxError::Unavailable(format!("building the HTTP client: {e}")))?;
        Ok(Api {
            http,
            api_key,
            retry,
        })
    }

    /// Sends the request `build` makes (once per attempt) with auth and a `timeout`,
    /// retrying as `resend` allows. Returns any final answer that is not a retryable
    /// failure; retryable failures that outlast the retries become `Unavailable`.
    pub async fn send(
        &self,
        what: &str,
        resend: Resend,
        timeout: Duration,
        build: &(dyn Fn(&Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Sent, SandboxError> {
        // Set once an attempt may have been processed; read by the attempts after it.
        let uncertain = &AtomicBool::new(false);
        let policy = self.retry.retrying();
        let sent = retry(&policy, move |_| async move {
            let result = build(&self.http)
                .bearer_auth(&self.api_key)
                .timeout(timeout)
                .send()
                .await;
            match result {
                Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                    let wait = self.retry.retry_after(response.headers());
                    let message = error_message(&response.bytes().await.unwrap_or_default());
                    Attempt::Retry {
                        after: wait,
                        error: format!("{what}: rate limited by Daytona: {message}"),
                    }
                }
                Ok(response) if response.status().is_server_error() && resend == Resend::Freely => {
                    uncertain.store(true, Ordering::Relaxed);
                    let status = response.status();
                    let message = error_message(&response.bytes().await.unwrap_or_default());
                    Attempt::Retry {
                        after: None,
                        error: format!("{what}: Daytona answered {status}: {message}"),
                    }
                }
                Ok(response) => Attempt::Done(Sent {
                    response,
                    after_uncertain_attempt: uncertain.load(Ordering::Relaxed),
                }),
                Err(e) if e.is_connect() || resend == Resend::Freely => {
                    if !e.is_connect() {
                        uncertain.store(true, Ordering::Relaxed);
                    }
                    Attempt::Retry {
                        after: None,
                        error: format!("{what}: {}", describe(&e)),
                    }
                }
                Err(e) => Attempt::Fail(format!("{what}: {}", describe(&e))),
            }
        })
        .await;
        sent.map_err(|gave_up| {
            SandboxError::Unavailable(match gave_up.stop {
                Stop::Failed => gave_up.error,
                _ => format!(
                    "{} (gave up after {} attempts)",
                    gave_up.error, gave_up.attempts
                ),
            })
        })
    }

    /// Like [`Api::send`], then requires a 2xx answer and returns its body.
    pub async fn send_ok(
        &self,
        what: &str,
        resend: Resend,
        timeout: Duration,
        build: &(dyn Fn(&Client) -> RequestBuilder + Send + Sync),
    ) -> Result<Bytes, SandboxError> {
        let sent = self.send(what, resend, timeout, build).await?;
        let status = sent.response.status();
        let body = sent
            .response
            .bytes()
            .await
            .map_err(|e| body_error(what, &e))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(status_error(what, status, &body))
        }
    }
}

/// A non-2xx answer as the error the caller can act on.
pub(crate) fn status_error(what: &str, status: StatusCode, body: &[u8]) -> SandboxError {
    let message = error_message(body);
    match status.as_u16() {
        400 | 409 | 413 | 422 => SandboxError::Invalid(format!("{what}: {message}")),
        401 | 403 => SandboxError::Unavailable(format!(
            "{what}: Daytona refused the API key ({status}): {message}"
        )),
        404 => SandboxError::NotFound(format!("{what}: {message}")),
        _ => SandboxError::Unavailable(format!("{what}: Daytona answered {status}: {message}")),
    }
}

pub(crate) fn body_error(what: &str, e: &reqwest::Error) -> SandboxError {
    SandboxError::Unavailable(format!("{what}: reading the answer: {}", describe(e)))
}

/// Parses a JSON body, naming `what` on failure.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<T, SandboxError> {
    serde_json::from_slice(body).map_err(|e| {
        SandboxError::Unavailable(format!(
            "{what}: unexpected answer from Daytona ({e}): {}",
            error_message(body)
        ))
    })
}

/// Reads a body, refusing more than `limit` bytes without reading them all.
pub(crate) async fn read_limited(
    what: &str,
    mut response: Response,
    limit: u64,
    too_large: impl Fn(u64) -> SandboxError,
) -> Result<Vec<u8>, SandboxError> {
    if let Some(length) = response.content_length().filter(|&n| n > limit) {
        return Err(too_large(length));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| body_error(what, &e))? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > limit {
            return Err(too_large(body.len() as u64));
        }
    }
    Ok(body.to_vec())
}

/// `base` with `segments` appended as path segments (each percent-encoded).
pub(crate) fn url_with(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("http(s) URLs have a path")
        .pop_if_empty()
        .extend(segments);
    url
}

/// The error without the URL (which may carry ids) repeated, but with its causes.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
