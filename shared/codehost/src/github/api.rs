//! The HTTP layer: one octocrab client, requests with retries, and reading answers.
//!
//! octocrab supplies the connection (rustls), the `Authorization: Bearer` header (marked
//! sensitive), `User-Agent: octocrab`, `X-GitHub-Api-Version: 2022-11-28` and the base
//! URI. Its own retry layer is left out: [`Api::send`] retries itself so it can honour
//! GitHub's rate-limit headers and bound the waits.

use http::{HeaderMap, Method};
use octocrab::Octocrab;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tb_core::backoff::{Attempt, retry};

use super::config::GitHubConfig;
use super::retry::{RetryPolicy, Verdict, verdict};
use crate::error::CodeHostError;

/// A final answer (after retries): a success, or a refusal the caller interprets.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    /// The JSON body; `Null` when empty or not JSON.
    pub body: Value,
    /// The body's `message`, else its text, for errors.
    pub message: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as `T`, for a success.
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, CodeHostError> {
        serde_json::from_value(self.body.clone()).map_err(|e| CodeHostError::Protocol {
            what: what.to_owned(),
            message: format!("{} answer: {e}", self.status),
        })
    }

    /// The error for an answer the caller does not expect.
    pub fn refusal(&self, what: &str) -> CodeHostError {
        let what = what.to_owned();
        let message = self.message.clone();
        match self.status {
            401 => CodeHostError::Unauthorized { what, message },
            403 => CodeHostError::Forbidden { what, message },
            404 => CodeHostError::NotFound { what, message },
            status if status >= 500 => CodeHostError::Unavailable {
                what,
                message: format!("{status} {message}"),
            },
            status if (200..300).contains(&status) => CodeHostError::Protocol {
                what,
                message: format!("unexpected {status}"),
            },
            status => CodeHostError::Rejected {
                what,
                status,
                message: self.detailed_message(),
            },
        }
    }

    /// `message` plus the `errors` GitHub lists on a 422, if any.
    fn detailed_message(&self) -> String {
        match self.body.get("errors").and_then(Value::as_array) {
            Some(errors) if !errors.is_empty() => {
                let details: Vec<String> = errors
                    .iter()
                    .map(|e| match e {
                        Value::String(s) => s.clone(),
                        other => other
                            .get("message")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .unwrap_or_else(|| other.to_string()),
                    })
                    .collect();
                format!("{}: {}", self.message, details.join("; "))
            }
            _ => self.message.clone(),
        }
    }
}

pub(crate) struct Api {
    octo: Octocrab,
    retry: RetryPolicy,
}

impl Api {
    /// Builds the client. Must run inside a Tokio runtime (octocrab spawns its worker).
    pub fn new(config: &GitHubConfig) -> Result<Api, CodeHostError> {
        let building = |e: &dyn std::fmt::Display| {
            CodeHostError::Config(format!("building the GitHub client: {e}"))
        };
        // The process's shared TLS configuration; as octocrab's own client: no redirects
        // followed, no proxy.
        let http = tb_tls::http_client()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| building(&e))?;
        let octo = Octocrab::builder()
            .personal_token(config.token.expose().to_owned())
            .base_uri(config.api_base.trim_end_matches('/'))
            .map_err(|e| CodeHostError::Config(format!("api_base: {e}")))?
            .add_header(
                http::header::ACCEPT,
                "application/vnd.github+json".to_owned(),
            )
            .build_with_reqwest(http)
            .map_err(|e| building(&e))?;
        Ok(Api {
            octo,
            retry: config.retry.clone(),
        })
    }

    /// Sends `method path` (a path below the API root, already escaped) with an optional
    /// JSON body. 5xx, 429, secondary rate limits and network failures are retried; any
    /// other answer is returned for the caller to interpret.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer, CodeHostError> {
        let method = &method;
        let policy = self.retry.retrying();
        let sent = retry(&policy, move |_| async move {
            let (status, headers, text) = match self.attempt(method, path, body).await {
                Ok(answer) => answer,
                Err(message) => {
                    return Attempt::Retry {
                        after: None,
                        error: CodeHostError::Unavailable {
                            what: what.to_owned(),
                            message,
                        },
                    };
                }
            };
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = body
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| text.chars().take(300).collect::<String>().trim().to_owned());
            let answer = Answer {
                status,
                body,
                message,
            };
            if answer.is_success() {
                return Attempt::Done(answer);
            }
            let Verdict::Retry { wait } = verdict(
                status,
                &headers,
                &answer.message,
                tb_core::clock::now_secs(),
            ) else {
                return Attempt::Done(answer);
            };
            let rate_limited = |wait| CodeHostError::RateLimited {
                what: what.to_owned(),
                status,
                wait,
            };
            match wait {
                Some(wait) if wait > self.retry.max_wait => Attempt::Fail(rate_limited(wait)),
                Some(wait) => Attempt::Retry {
                    after: Some(wait),
                    error: rate_limited(wait),
                },
                None => Attempt::Retry {
                    after: None,
                    error: answer.refusal(what),
                },
            }
        })
        .await;
        sent.map_err(|gave_up| gave_up.error)
    }

    /// One request: status, headers and body text, or why no answer came.
    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, HeaderMap, String), String> {
        let uri = path.to_owned();
        let sent = match *method {
            Method::GET => self.octo._get(uri).await,
            Method::POST => self.octo._post(uri, body).await,
            Method::PATCH => self.octo._patch(uri, body).await,
            Method::PUT => self.octo._put(uri, body).await,
            _ => return Err(format!("method {method} is not used by this adapter")),
        };
        let response = sent.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = self
            .octo
            .body_to_string(response)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        Ok((status, headers, text))
    }
}

/// Escapes one path segment (owner, repository or ref part) for a URL path.
pub(crate) fn segment(s: &str) -> String {
    tb_core::encoding::percent_encode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("turbobackend-proj_1"), "turbobackend-proj_1");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn a_422_refusal_lists_githubs_errors() {
        let answer = Answer {
            status: 422,
            body: serde_json::json!({"message": "Validation Failed", "errors": [{"field": "name", "message": "name is too long"}, "other"]}),
            message: "Validation Failed".into(),
        };
        let text = answer.refusal("creating a repository").to_string();
        assert!(
            text.contains("name is too long") && text.contains("other"),
            "{text}"
        );
    }
}
