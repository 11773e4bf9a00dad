//! How long to wait before trying again: the one backoff of the workspace, for the HTTP
//! clients' retries (models, Daytona, GitHub, Fly, callbacks), the finalizer's step retries,
//! the local dispatcher and the worker's outage retries; and the server's `Retry-After`,
//! read the same way everywhere ([`parse_retry_after`]).

use std::time::{Duration, SystemTime};

/// Exponential backoff: the ceiling before retry `n` (1-based) is `base × 2^(n-1)`, at most
/// `max`. [`Backoff::full_jitter`] waits a uniformly random time up to the ceiling (spreads
/// clients best, AWS Architecture Blog "Exponential Backoff And Jitter");
/// [`Backoff::equal_jitter`] waits between half and all of it (never retries at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// `min(max, base × 2^(attempt-1))`; attempt 0 counts as 1.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.base.saturating_mul(doubling).min(self.max)
    }

    /// A uniformly random wait in `[0, ceiling(attempt)]`.
    pub fn full_jitter(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(unit_random())
    }

    /// A uniformly random wait in `[ceiling/2, ceiling]`.
    pub fn equal_jitter(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(0.5 + unit_random() / 2.0)
    }

    /// A uniformly random wait in `[ceiling/2, 3·ceiling/2]` (±50 %, the randomization
    /// factor of Go's `cenkalti/backoff`, which fly-go uses).
    pub fn spread_jitter(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(0.5 + unit_random())
    }
}

/// The wait a server asked for, from the values of its `retry-after-ms` (milliseconds, a
/// non-standard header Anthropic's and OpenAI's SDKs honour first) and `Retry-After`
/// headers (read by [`parse_retry_after`]), capped at `cap`. Negative, non-numeric or
/// missing values give `None`.
pub fn retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    cap: Duration,
) -> Option<Duration> {
    let wait = match retry_after_ms.and_then(|v| seconds(v, 1000.0)) {
        Some(wait) => wait,
        None => parse_retry_after(retry_after?)?,
    };
    Some(wait.min(cap))
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delay-seconds (fractions accepted, as some
/// servers send them), or an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime
/// forms, §5.6.7) turned into the time left until it. A date already past asks for no wait
/// and, like a negative, non-numeric or empty value, gives `None`: the caller's own backoff
/// applies.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    parse_retry_after_at(value, SystemTime::now())
}

fn parse_retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(wait) = seconds(value, 1.0) {
        return Some(wait);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    date.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// `value` read as a non-negative number of `per_second` units.
fn seconds(value: &str, per_second: f64) -> Option<Duration> {
    let n = value.trim().parse::<f64>().ok()? / per_second;
    (n.is_finite() && n >= 0.0).then(|| Duration::try_from_secs_f64(n).unwrap_or(Duration::MAX))
}

/// A uniformly random number in `[0, 1]`.
fn unit_random() -> f64 {
    rand::random_range(0.0..=1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_maximum_and_jitter_stays_under_it() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(1), Duration::from_millis(500));
        assert_eq!(b.ceiling(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(4), Duration::from_secs(4));
        assert_eq!(b.ceiling(40), Duration::from_secs(30));
        for attempt in 1..12 {
            assert!(b.full_jitter(attempt) <= b.ceiling(attempt));
            let s = b.spread_jitter(attempt);
            assert!(
                s <= b.ceiling(attempt).mul_f64(1.5) && s >= b.ceiling(attempt) / 2,
                "{s:?}"
            );
            let e = b.equal_jitter(attempt);
            assert!(
                e <= b.ceiling(attempt) && e >= b.ceiling(attempt) / 2,
                "{e:?}"
            );
        }
    }

    #[test]
    fn retry_after_reads_milliseconds_first_then_seconds_and_is_capped() {
        let cap = Duration::from_secs(60);
        assert_eq!(
            retry_after(Some("250"), Some("7"), cap),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(None, Some(" 7 "), cap),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after(None, Some("0"), cap), Some(Duration::ZERO));
        assert_eq!(retry_after(None, Some("3600"), cap), Some(cap));
        assert_eq!(
            retry_after(Some("x"), Some("2"), cap),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(None, Some("Wed, 21 Oct 2015 07:28:00 GMT"), cap),
            None
        );
        assert_eq!(retry_after(None, Some("-1"), cap), None);
        assert_eq!(retry_after(None, None, cap), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // RFC 9110 §10.2.3's own examples, read at a fixed time.
        let now = httpdate::parse_http_date("Fri, 31 Dec 1999 23:58:00 GMT").unwrap();
        let at = |v| parse_retry_after_at(v, now);
        assert_eq!(at("120"), Some(Duration::from_secs(120)));
        assert_eq!(at(" 1.5 "), Some(Duration::from_millis(1500)));
        assert_eq!(
            at("Fri, 31 Dec 1999 23:59:59 GMT"),
            Some(Duration::from_secs(119))
        );
        // The obsolete forms a recipient must accept (RFC 9110 §5.6.7).
        assert_eq!(
            at("Friday, 31-Dec-99 23:59:59 GMT"),
            Some(Duration::from_secs(119))
        );
        assert_eq!(
            at("Fri Dec 31 23:59:59 1999"),
            Some(Duration::from_secs(119))
        );
        assert_eq!(at("Fri, 31 Dec 1999 23:58:00 GMT"), None);
        assert_eq!(
            at("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::from_secs(498_727_800))
        );
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), None);
        for bad in ["", "-1", "soon", "NaN", "inf", "31 Dec 1999"] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
