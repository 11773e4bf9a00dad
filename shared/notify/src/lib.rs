//! Callbacks: a signed JSON summary POSTed to a request's callback URL when it finishes.
//!
//! Each POST carries `X-Turbobackend-Delivery: <id>` (the same for every retry of one
//! notification, so receivers drop duplicates) and `X-Turbobackend-Signature: t=<unix
//! seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the shared secret>`. How receivers
//! verify it: docs/callbacks.md. Retried with exponential backoff on 429, 5xx and network
//! errors; a redirect is never followed and counts as a failed delivery. Unless private
//! targets are allowed (local mode), the host is resolved again at send time and must be
//! public ([`tb_core::net::is_public`]), and the connection is pinned to the checked address,
//! so a DNS change after the request was accepted cannot redirect it inside.

use std::time::Duration;
use tb_core::backoff::{Attempt, Backoff, Jitter, RetryPolicy, Stop, retry};

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tb_core::net::is_public;
use tb_core::ports::{Notifier, PortError};

pub mod probe;
pub use probe::HttpProber;

pub const SIGNATURE_HEADER: &str = "x-turbobackend-signature";
pub const DELIVERY_HEADER: &str = "x-turbobackend-delivery";

pub struct HttpNotifier {
    secret: Vec<u8>,
    allow_private: bool,
    attempts: u32,
    base_delay: Duration,
}

impl std::fmt::Debug for HttpNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpNotifier")
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

impl HttpNotifier {
    /// `secret` signs every callback (`TB_CALLBACK_SECRET`).
    pub fn new(secret: impl Into<Vec<u8>>, allow_private: bool) -> Self {
        HttpNotifier {
            secret: secret.into(),
            allow_private,
            attempts: 4,
            base_delay: Duration::from_millis(500),
        }
    }

    pub fn with_retries(mut self, attempts: u32, base_delay: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.base_delay = base_delay;
        self
    }

    /// `t=<timestamp>,v1=<signature>` for `body` at `timestamp`.
    pub fn signature(&self, timestamp: u64, body: &str) -> String {
        format!("t={timestamp},v1={}", sign(&self.secret, timestamp, body))
    }

    async fn client_for(&self, url: &str) -> Result<reqwest::Client, PortError> {
        pinned_client(url, self.allow_private, Duration::from_secs(10)).await
    }
}

/// A client for `url` under the platform's outbound policy: redirects are never followed
/// (a redirect would send the call wherever the receiver points: loopback, the metadata
/// service), and unless private targets are allowed the host is resolved now, must be
/// public ([`is_public`]), and the connection is pinned to the checked address.
pub async fn pinned_client(
    url: &str,
    allow_private: bool,
    timeout: Duration,
) -> Result<reqwest::Client, PortError> {
    let builder = tb_tls::http_client()
        // Never followed: a redirect would send the request wherever the receiver points
        // (loopback, the metadata service), past the address check.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("turbobackend/", env!("CARGO_PKG_VERSION")));
    let builder = if allow_private {
        builder
    } else {
        let parsed =
            url::Url::parse(url).map_err(|e| PortError::Permanent(format!("bad URL: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| PortError::Permanent("the URL has no host".into()))?
            .to_string();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| PortError::Transient(format!("resolving {host}: {e}")))?
            .find(|a| is_public(&a.ip()))
            .ok_or_else(|| {
                PortError::Permanent(format!("{host} does not resolve to a public address"))
            })?;
        builder.resolve(&host, addr)
    };
    builder
        .build()
        .map_err(|e| PortError::Permanent(e.to_string()))
}

/// Hex HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn sign(secret: &[u8], timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    tb_core::encoding::hex(&mac.finalize().into_bytes())
}

#[async_trait]
impl Notifier for HttpNotifier {
    async fn notify(&self, url: &str, delivery_id: &str, payload: &Value) -> Result<(), PortError> {
        let client = self.client_for(url).await?;
        let body = payload.to_string();
        let body = &body;
        let client = &client;
        let schedule = Backoff::new(self.base_delay, self.base_delay.saturating_mul(1024));
        let policy = RetryPolicy::new("callback", self.attempts, schedule, Jitter::None);
        let sent = retry(&policy, move |_| async move {
            let ts = tb_core::clock::now_ms() / 1000;
            let sent = client
                .post(url)
                .header("content-type", "application/json")
                .header(DELIVERY_HEADER, delivery_id)
                .header(SIGNATURE_HEADER, self.signature(ts, body))
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => Attempt::Done(()),
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                    Attempt::Retry {
                        after: None,
                        error: format!("HTTP {}", r.status()),
                    }
                }
                Ok(r) if r.status().is_redirection() => Attempt::Fail(format!(
                    "the callback receiver answered HTTP {} (a redirect; callbacks do not follow redirects)",
                    r.status()
                )),
                Ok(r) => Attempt::Fail(format!(
                    "the callback receiver answered HTTP {}",
                    r.status()
                )),
                Err(e) => Attempt::Retry {
                    after: None,
                    error: e.without_url().to_string(),
                },
            }
        })
        .await;
        sent.map_err(|gave_up| match gave_up.stop {
            Stop::Failed => PortError::Permanent(gave_up.error),
            _ => PortError::Transient(format!(
                "callback not delivered after {} attempts: {}",
                self.attempts, gave_up.error
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        let n = HttpNotifier::new("s3cret", true);
        let a = n.signature(1700000000, r#"{"a":1}"#);
        assert!(a.starts_with("t=1700000000,v1="));
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(a, n.signature(1700000001, r#"{"a":1}"#));
        assert_ne!(a, n.signature(1700000000, r#"{"a":2}"#));
        assert_ne!(
            a,
            HttpNotifier::new("other", true).signature(1700000000, r#"{"a":1}"#)
        );
    }

    #[tokio::test]
    async fn private_targets_are_refused_at_send_time_unless_allowed() {
        let n = HttpNotifier::new("k", false).with_retries(1, Duration::ZERO);
        let err = n
            .notify("https://127.0.0.1:9/hook", "d1", &serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("public address"), "{err}");
    }
}
