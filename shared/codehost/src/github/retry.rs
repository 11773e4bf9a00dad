//! When to send a GitHub request again, and after how long.
//!
//! GitHub asks clients to honour `retry-after`, else to wait until `x-ratelimit-reset`
//! when `x-ratelimit-remaining` is 0, else to wait at least a minute after a secondary
//! rate limit. 5xx answers and network failures are retried with exponential backoff and
//! jitter.

use std::time::Duration;

use http::HeaderMap;
use tb_core::backoff::{Backoff, Jitter, parse_retry_after};

/// Exponential backoff with jitter, bounded server-requested waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// The wait before the first retry; doubled for each retry after it.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest wait this adapter sits through when GitHub asks for one; a longer one
    /// ends the push with a transient error so the caller can come back later.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            max_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): `initial × 2^(attempt-1)`,
    /// capped, then scaled by a random factor in [0.5, 1] so clients spread out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        Backoff::new(self.initial_backoff, self.max_backoff).equal_jitter(attempt)
    }

    /// The policy [`tb_core::backoff::retry`] runs a GitHub request with; a wait GitHub
    /// asks for longer than [`RetryPolicy::max_wait`] is the caller's to refuse.
    pub(crate) fn retrying(&self) -> tb_core::backoff::RetryPolicy {
        let backoff = Backoff::new(self.initial_backoff, self.max_backoff);
        tb_core::backoff::RetryPolicy::new("GitHub", self.max_attempts, backoff, Jitter::Equal)
            .max_retry_after(self.max_wait)
    }
}

/// What to do with an answer that is not a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again; after the wait GitHub asked for, if it asked.
    Retry { wait: Option<Duration> },
    /// Retrying will not help: the caller interprets the answer.
    Final,
}

/// How long GitHub says to wait before asking again after a secondary rate limit that
/// names no time.
const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// Classifies a non-2xx answer. `message` is the `message` of the JSON body (or the body
/// text); `now_epoch` the current Unix time in seconds, for `x-ratelimit-reset`.
pub(crate) fn verdict(status: u16, headers: &HeaderMap, message: &str, now_epoch: u64) -> Verdict {
    let requested = requested_wait(headers, now_epoch);
    match status {
        500..=599 => Verdict::Retry { wait: requested },
        429 => Verdict::Retry {
            wait: Some(requested.unwrap_or(SECONDARY_LIMIT_WAIT)),
        },
        403 if requested.is_some() => Verdict::Retry { wait: requested },
        403 if message.to_ascii_lowercase().contains("rate limit") => Verdict::Retry {
            wait: Some(SECONDARY_LIMIT_WAIT),
        },
        _ => Verdict::Final,
    }
}

/// `retry-after` (read by [`parse_retry_after`]), else the time until `x-ratelimit-reset`
/// when `x-ratelimit-remaining` is 0.
fn requested_wait(headers: &HeaderMap, now_epoch: u64) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(wait) = header("retry-after").and_then(parse_retry_after) {
        return Some(wait);
    }
    if header("x-ratelimit-remaining") == Some("0") {
        let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())?;
        // One second more: the reset time is rounded down.
        return Some(Duration::from_secs(reset.saturating_sub(now_epoch) + 1));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

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
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            assert!(policy.backoff(30) <= Duration::from_millis(500));
        }
    }

    #[test]
    fn a_secondary_rate_limit_with_retry_after_is_retried_after_that_wait() {
        let v = verdict(
            403,
            &headers(&[("retry-after", "7")]),
            "You have exceeded a secondary rate limit",
            0,
        );
        assert_eq!(
            v,
            Verdict::Retry {
                wait: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn an_exhausted_primary_limit_waits_until_the_reset() {
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1000"),
        ]);
        assert_eq!(
            verdict(403, &h, "API rate limit exceeded", 990),
            Verdict::Retry {
                wait: Some(Duration::from_secs(11))
            }
        );
        assert_eq!(
            verdict(429, &h, "", 2000),
            Verdict::Retry {
                wait: Some(Duration::from_secs(1))
            }
        );
    }

    #[test]
    fn a_plain_forbidden_is_final_but_a_rate_limit_message_is_not() {
        assert_eq!(
            verdict(
                403,
                &headers(&[]),
                "Resource not accessible by integration",
                0
            ),
            Verdict::Final
        );
        assert_eq!(
            verdict(
                403,
                &headers(&[]),
                "You have exceeded a secondary rate limit.",
                0
            ),
            Verdict::Retry {
                wait: Some(SECONDARY_LIMIT_WAIT)
            }
        );
        assert_eq!(
            verdict(404, &headers(&[("retry-after", "1")]), "", 0),
            Verdict::Final
        );
    }

    #[test]
    fn server_errors_are_retried_with_backoff_unless_a_wait_is_named() {
        assert_eq!(
            verdict(502, &headers(&[]), "", 0),
            Verdict::Retry { wait: None }
        );
        assert_eq!(
            verdict(503, &headers(&[("retry-after", "2")]), "", 0),
            Verdict::Retry {
                wait: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            verdict(429, &headers(&[]), "", 0),
            Verdict::Retry {
                wait: Some(SECONDARY_LIMIT_WAIT)
            }
        );
    }
}
