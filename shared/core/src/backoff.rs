//! How long to wait before trying again: the one backoff of the workspace, for the model
//! clients' retries, the finalizer's step retries, the local dispatcher and the worker's
//! outage retries; and the server's `Retry-After`, read the same way everywhere.

use std::time::Duration;

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
}

/// The wait a server asked for, from the values of its `retry-after-ms` (milliseconds, a
/// non-standard header Anthropic's and OpenAI's SDKs honour first) and `Retry-After`
/// headers (RFC 9110 §10.2.3: delay-seconds; an HTTP-date is not read and gives `None`),
/// capped at `cap`. Negative, non-numeric or missing values give `None`.
pub fn retry_after(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    cap: Duration,
) -> Option<Duration> {
    let secs = match retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok()) {
        Some(ms) => ms / 1000.0,
        None => retry_after?.trim().parse::<f64>().ok()?,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(cap.as_secs_f64())))
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
}
