//! When and how long to wait before retrying a failed model call.
//!
//! The rules follow Anthropic's SDKs, which OpenAI-compatible servers mostly share:
//! retry 408, 409, 429, 529 and every 5xx, plus connection failures and timeouts; a
//! server may override with `x-should-retry: true|false`, and may ask for a wait with
//! `retry-after-ms` or `retry-after` (seconds or an HTTP-date). Otherwise the wait is
//! exponential backoff with full jitter.

use std::time::Duration;

use reqwest::header::HeaderMap;
use tb_core::backoff::Backoff;

/// The longest wait a server's `retry-after` header can impose.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How often and how patiently a client retries one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (0 counts as 1).
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry; it doubles per attempt.
    pub base_delay: Duration,
    /// The largest backoff ceiling.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The wait after failed attempt number `attempt` (1-based): a uniformly random
    /// duration between zero and `min(max_delay, base_delay * 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.schedule().full_jitter(attempt)
    }

    /// The policy [`tb_core::backoff::retry`] runs a call of `provider` with.
    pub(crate) fn retrying(&self, provider: &'static str) -> tb_core::backoff::RetryPolicy {
        tb_core::backoff::RetryPolicy::new(
            provider,
            self.max_attempts,
            self.schedule(),
            tb_core::backoff::Jitter::Full,
        )
        .max_retry_after(MAX_RETRY_AFTER)
    }

    fn schedule(&self) -> Backoff {
        Backoff::new(self.base_delay, self.max_delay)
    }

    #[cfg(test)]
    fn ceiling(&self, attempt: u32) -> Duration {
        self.schedule().ceiling(attempt)
    }
}

/// Whether a failed status is worth retrying, absent an `x-should-retry` header.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

/// The server's explicit verdict from `x-should-retry`, if it gave one.
pub(crate) fn should_retry_header(headers: &HeaderMap) -> Option<bool> {
    match header_str(headers, "x-should-retry")?.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The wait the server asked for (`retry-after-ms` first, then `retry-after` in seconds or
/// as an HTTP-date), capped at [`MAX_RETRY_AFTER`]. A date already past asks for nothing
/// (backoff applies).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    tb_core::backoff::retry_after(
        header_str(headers, "retry-after-ms"),
        header_str(headers, "retry-after"),
        MAX_RETRY_AFTER,
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn overload_rate_limit_conflict_timeout_and_server_errors_are_retryable() {
        for s in [408, 409, 429, 500, 502, 503, 529] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after_and_waits_are_capped_at_a_minute() {
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "7")]);
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "0")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3600")])),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )])),
            None
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")])), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn x_should_retry_is_read_as_a_boolean() {
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "false")])),
            Some(false)
        );
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "maybe")])),
            None
        );
    }

    #[test]
    fn backoff_doubles_its_ceiling_and_never_exceeds_max_delay() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_millis(500));
        assert_eq!(p.ceiling(2), Duration::from_secs(1));
        assert_eq!(p.ceiling(4), Duration::from_secs(4));
        assert_eq!(p.ceiling(40), Duration::from_secs(30));
        for attempt in 1..10 {
            assert!(p.backoff(attempt) <= p.ceiling(attempt));
        }
    }
}
