//! Fly's rate limit on mutating calls: per action and machine (or app), one request per
//! second with a burst of three, as token buckets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

const BURST: f64 = 3.0;
const PER_SECOND: f64 = 1.0;

#[derive(Default)]
pub(super) struct Buckets {
    buckets: HashMap<(String, String), (f64, Instant)>,
}

impl Buckets {
    /// Takes a token for `action` on `target`; `Err(wait)` when none is left.
    pub(super) fn take(&mut self, action: &str, target: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let (tokens, at) = self
            .buckets
            .entry((action.to_owned(), target.to_owned()))
            .or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * PER_SECOND).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / PER_SECOND))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_three_then_one_per_second() {
        let mut b = Buckets::default();
        for _ in 0..3 {
            assert!(b.take("update", "m1").is_ok());
        }
        let wait = b.take("update", "m1").unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(
            b.take("delete", "m1").is_ok(),
            "another action has its own bucket"
        );
        assert!(
            b.take("update", "m2").is_ok(),
            "another machine has its own bucket"
        );
    }
}
