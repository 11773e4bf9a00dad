//! The HTTP plumbing both provider clients share: building the client, posting JSON with
//! retries, and turning failures into [`ModelError`]s.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Client, Url};
use tb_core::backoff::{Attempt, retry};
use tb_core::model::ModelError;

use crate::retry::{RetryPolicy, is_retryable_status, retry_after, should_retry_header};

/// The default timeout of one HTTP attempt (long generations take minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A client configuration that cannot work.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid base URL `{url}`: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    #[error("invalid API key: {0}")]
    InvalidApiKey(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// A reqwest client with our User-Agent and timeouts; built once per model client.
fn build_client(timeout: Duration) -> Result<Client, ConfigError> {
    tb_tls::http_client()
        .user_agent(concat!("turbobackend/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(30).min(timeout))
        .build()
        .map_err(|e| ConfigError::Http(describe(&e)))
}

/// `{base}{path}`, tolerating a trailing slash on `base`.
pub(crate) fn endpoint(base: &str, path: &str) -> Result<Url, ConfigError> {
    let joined = format!("{}{}", base.trim_end_matches('/'), path);
    let url = Url::parse(&joined).map_err(|e| ConfigError::InvalidBaseUrl {
        url: base.to_string(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        let reason = "the scheme must be http or https".to_string();
        return Err(ConfigError::InvalidBaseUrl {
            url: base.to_string(),
            reason,
        });
    }
    Ok(url)
}

/// A header value that reqwest redacts from its own Debug output.
pub(crate) fn secret_header(value: &str) -> Result<HeaderValue, ConfigError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        ConfigError::InvalidApiKey("it contains characters not allowed in a header".into())
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// Where a client sends its calls: the HTTP client, the URL and headers, the retries.
#[derive(Debug)]
pub(crate) struct Endpoint {
    http: Client,
    url: Url,
    headers: HeaderMap,
    retry: RetryPolicy,
    /// Names the provider in logs.
    provider: &'static str,
}

impl Endpoint {
    pub(crate) fn new(
        url: Url,
        headers: HeaderMap,
        timeout: Duration,
        retry: RetryPolicy,
        provider: &'static str,
    ) -> Result<Self, ConfigError> {
        Ok(Endpoint {
            http: build_client(timeout)?,
            url,
            headers,
            retry,
            provider,
        })
    }

    /// POSTs `body` as JSON and returns the body of the first 2xx answer, retrying per
    /// the policy.
    pub(crate) async fn post(&self, body: &serde_json::Value) -> Result<Vec<u8>, ModelError> {
        post_json(
            &self.http,
            &self.url,
            &self.headers,
            body,
            &self.retry,
            self.provider,
        )
        .await
    }
}

/// POSTs `body` as JSON and returns the body of the first 2xx answer, retrying per
/// `policy`. `provider` names the provider in logs.
async fn post_json(
    client: &Client,
    url: &Url,
    headers: &HeaderMap,
    body: &serde_json::Value,
    policy: &RetryPolicy,
    provider: &'static str,
) -> Result<Vec<u8>, ModelError> {
    let payload = serde_json::to_vec(body)
        .map_err(|e| ModelError::Protocol(format!("cannot encode request: {e}")))?;
    let payload = &payload;
    let policy = policy.retrying(provider);
    let sent = retry(&policy, move |_| async move {
        let request = client
            .post(url.clone())
            .headers(headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(payload.clone());
        let failure = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let verdict = should_retry_header(response.headers());
                let wait = retry_after(response.headers());
                match response.bytes().await {
                    Ok(bytes) if (200..300).contains(&status) => {
                        return Attempt::Done(bytes.to_vec());
                    }
                    Ok(bytes) => Failure::Status {
                        status,
                        message: error_message(&bytes),
                        retry: verdict.unwrap_or_else(|| is_retryable_status(status)),
                        wait,
                    },
                    Err(e) => Failure::Network {
                        message: describe(&e),
                        retry: true,
                    },
                }
            }
            Err(e) => {
                let retry = e.is_connect() || e.is_timeout() || e.is_request();
                Failure::Network {
                    message: describe(&e),
                    retry,
                }
            }
        };
        if failure.retry() {
            Attempt::Retry {
                after: failure.wait(),
                error: failure,
            }
        } else {
            Attempt::Fail(failure)
        }
    })
    .await;
    sent.map_err(|gave_up| gave_up.error.into_error(gave_up.attempts))
}

/// The human message in an error body: Anthropic's `{"error":{"message"}}`, OpenAI's
/// same shape, `{"error":"…"}` (Ollama), `{"message":"…"}` (vLLM), `{"detail":"…"}`;
/// else the raw body, truncated.
pub(crate) fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        let candidates = [
            &v["error"]["message"],
            &v["error"],
            &v["message"],
            &v["detail"],
        ];
        if let Some(m) = candidates
            .iter()
            .find_map(|c| c.as_str())
            .filter(|m| !m.is_empty())
        {
            return m.to_string();
        }
    }
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_string()
    } else {
        truncate(text, 500)
    }
}

/// A provider's response body read as `T`; what does not read is a protocol error quoting
/// the start of the body.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ModelError> {
    serde_json::from_slice(body).map_err(|e| {
        ModelError::Protocol(format!(
            "{e}; body: {}",
            truncate(&String::from_utf8_lossy(body), 300)
        ))
    })
}

/// At most `max` bytes of `s`, cut at a character boundary, with an ellipsis if cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

enum Failure {
    Status {
        status: u16,
        message: String,
        retry: bool,
        wait: Option<Duration>,
    },
    Network {
        message: String,
        retry: bool,
    },
}

impl Failure {
    fn retry(&self) -> bool {
        match self {
            Failure::Status { retry, .. } | Failure::Network { retry, .. } => *retry,
        }
    }

    fn wait(&self) -> Option<Duration> {
        match self {
            Failure::Status { wait, .. } => *wait,
            Failure::Network { .. } => None,
        }
    }

    fn into_error(self, attempts: u32) -> ModelError {
        let tried = |m: String| {
            if attempts > 1 {
                format!("{m} (after {attempts} attempts)")
            } else {
                m
            }
        };
        match self {
            Failure::Status {
                status, message, ..
            } if is_retryable_status(status) => ModelError::Transient {
                status: Some(status),
                message: tried(message),
            },
            Failure::Status {
                status, message, ..
            } if (400..500).contains(&status) => ModelError::Rejected {
                status,
                message: tried(message),
            },
            Failure::Status {
                status, message, ..
            } => ModelError::Protocol(format!(
                "unexpected HTTP status {status}: {}",
                tried(message)
            )),
            Failure::Network { message, .. } => ModelError::Transient {
                status: None,
                message: tried(message),
            },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status {
                status, message, ..
            } => write!(f, "model call failed: HTTP {status}: {message}"),
            Failure::Network { message, .. } => write!(f, "model call failed: {message}"),
        }
    }
}

/// An error and its causes on one line (reqwest's own Display hides the cause).
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_read_from_each_providers_error_body() {
        let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        assert_eq!(error_message(anthropic), "max_tokens: Field required");
        assert_eq!(
            error_message(br#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(
            error_message(br#"{"object":"error","message":"bad"}"#),
            "bad"
        );
        assert_eq!(
            error_message(b"<html>502 Bad Gateway</html>"),
            "<html>502 Bad Gateway</html>"
        );
        assert_eq!(error_message(b""), "(empty body)");
        let long = "é".repeat(400);
        assert!(error_message(long.as_bytes()).chars().count() <= 251);
    }

    #[test]
    fn endpoints_join_with_or_without_a_trailing_slash_and_need_http() {
        assert_eq!(
            endpoint("http://h:1/v1/", "/chat/completions")
                .unwrap()
                .as_str(),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            endpoint("https://api.anthropic.com", "/v1/messages")
                .unwrap()
                .as_str(),
            "https://api.anthropic.com/v1/messages"
        );
        assert!(endpoint("not a url", "/x").is_err());
        assert!(endpoint("ftp://h", "/x").is_err());
    }
}
