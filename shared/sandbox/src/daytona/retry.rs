//! When and how long to wait before sending a Daytona request again.

use std::time::Duration;

use reqwest::header::HeaderMap;
use tb_core::backoff::{Backoff, Jitter, parse_retry_after};

/// Exponential backoff with jitter; a server's `Retry-After` wins when it sends one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// The wait before the first retry; doubled for each retry after it.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A server-sent `Retry-After` longer than this is cut to it.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): `initial × 2^(attempt-1)`,
    /// capped, then scaled by a random factor in [0.5, 1] so clients spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        Backoff::new(self.initial_backoff, self.max_backoff).equal_jitter(attempt)
    }

    /// The policy [`tb_core::backoff::retry`] runs a Daytona request with.
    pub(crate) fn retrying(&self) -> tb_core::backoff::RetryPolicy {
        let backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        tb_core::backoff::RetryPolicy::new("Daytona", self.max_attempts, backoff, Jitter::Equal)
            .max_retry_after(self.max_retry_after)
    }

    /// The wait a 429 answer asks for: the largest of `Retry-After` and the non-standard
    /// `Retry-After-<throttler>` headers (`Retry-After-sandbox-create`, …), each read by
    /// [`parse_retry_after`], capped at [`RetryPolicy::max_retry_after`]; `None` when there
    /// is none.
    pub fn retry_after(&self, headers: &HeaderMap) -> Option<Duration> {
        headers
            .iter()
            .filter(|(name, _)| {
                let name = name.as_str(); // header names are lower case
                name == "retry-after" || name.starts_with("retry-after-")
            })
            .filter_map(|(_, value)| parse_retry_after(value.to_str().ok()?))
            .map(|wait| wait.min(self.max_retry_after))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(
                first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
                "{first:?}"
            );
            let third = policy.backoff(3);
            assert!(
                third >= Duration::from_millis(200) && third <= Duration::from_millis(400),
                "{third:?}"
            );
            assert!(policy.backoff(30) <= Duration::from_millis(500));
        }
    }

    #[test]
    fn the_throttler_specific_retry_after_header_is_honoured() {
        let policy = RetryPolicy::default();
        let wait = policy.retry_after(&headers(&[
            ("Retry-After-sandbox-create", "7"),
            ("X-RateLimit-Limit-sandbox-create", "300"),
        ]));
        assert_eq!(wait, Some(Duration::from_secs(7)));
        assert_eq!(
            policy.retry_after(&headers(&[("Retry-After", "0")])),
            Some(Duration::ZERO)
        );
        assert_eq!(
            policy.retry_after(&headers(&[
                ("Retry-After", "2"),
                ("Retry-After-authenticated", "3")
            ])),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn a_huge_or_missing_retry_after_does_not_stall() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.retry_after(&headers(&[("Retry-After", "86400")])),
            Some(policy.max_retry_after)
        );
        assert_eq!(
            policy.retry_after(&headers(&[("Content-Type", "application/json")])),
            None
        );
        assert_eq!(
            policy.retry_after(&headers(&[(
                "Retry-After",
                "Wed, 21 Oct 2015 07:28:00 GMT"
            )])),
            None
        );
    }
}
