//! Settings of the worker's slices and claims, and the deadline every invocation works to.

use std::time::{Duration, Instant};

use tb_core::settings::SettingError;

/// How work is cut into slices and how long claims last.
#[derive(Clone, Debug)]
pub struct SliceSettings {
    /// Agent iterations per worker invocation at most.
    pub iterations_per_slice: u32,
    /// How long a claim on a request lasts without being renewed. Must exceed the worker's
    /// function timeout, so a live worker never loses its claim.
    pub lease: Duration,
    /// Stop a slice this long before the invocation's deadline.
    pub safety_margin: Duration,
    /// The sweeper re-drives a request with no live claim and no progress for this long.
    pub stall_after: Duration,
    /// The sweeper deletes sandboxes older than this that no live request owns.
    pub sandbox_max_age: Duration,
    /// How long an outage of the model or the sandbox provider is waited out (with growing
    /// waits between attempts) before the request fails naming it (`TB_OUTAGE_RETRY_SECS`).
    pub outage_retry: Duration,
}

impl SliceSettings {
    pub fn standard() -> Self {
        SliceSettings {
            iterations_per_slice: 25,
            lease: Duration::from_secs(360),
            safety_margin: Duration::from_secs(60),
            stall_after: Duration::from_secs(420),
            sandbox_max_age: Duration::from_secs(6 * 3600),
            outage_retry: Duration::from_secs(600),
        }
    }

    /// The standard settings with `TB_OUTAGE_RETRY_SECS` and `TB_INVOCATION_MARGIN_SECS`
    /// (the safety margin; decimals allowed) read through `var`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let mut s = SliceSettings::standard();
        if let Some(secs) = seconds(&var, "TB_OUTAGE_RETRY_SECS")? {
            s.outage_retry = secs;
        }
        if let Some(secs) = seconds(&var, "TB_INVOCATION_MARGIN_SECS")? {
            s.safety_margin = secs;
        }
        Ok(s)
    }
}

/// A duration setting in seconds (decimals allowed), `None` when unset.
pub fn seconds(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<Duration>, SettingError> {
    let Some(v) = var(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match v.trim().parse::<f64>() {
        Ok(s) if (0.0..1e9).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
        _ => Err(SettingError {
            name,
            problem: format!("`{v}` is not a number of seconds"),
        }),
    }
}

/// When the work of an invocation that must have returned by `deadline` must end: `margin`
/// before it, or half the time left when that is less (a margin as long as the function's
/// timeout would leave no time at all). Used by the worker's slices and the finalizer.
pub fn hard_deadline(deadline: Instant, margin: Duration) -> Instant {
    let now = Instant::now();
    let left = deadline.saturating_duration_since(now);
    now + left - margin.min(left / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_bound_and_margin_are_read_in_seconds_and_bad_values_are_named() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = SliceSettings::from_env(env(&[
            ("TB_OUTAGE_RETRY_SECS", "90"),
            ("TB_INVOCATION_MARGIN_SECS", "0.5"),
        ]))
        .unwrap();
        assert_eq!(
            (s.outage_retry, s.safety_margin),
            (Duration::from_secs(90), Duration::from_millis(500))
        );
        let d = SliceSettings::from_env(env(&[])).unwrap();
        assert_eq!(d.outage_retry, Duration::from_secs(600));
        for bad in ["soon", "-1", "NaN"] {
            let e = SliceSettings::from_env(move |k: &str| {
                (k == "TB_OUTAGE_RETRY_SECS").then(|| bad.to_string())
            })
            .unwrap_err();
            assert_eq!(e.name, "TB_OUTAGE_RETRY_SECS", "{bad}");
        }
    }

    #[test]
    fn the_margin_is_at_most_half_the_time_left() {
        let now = std::time::Instant::now();
        let hard = hard_deadline(now + Duration::from_secs(300), Duration::from_secs(60));
        let left = hard.saturating_duration_since(now);
        assert!(
            left.abs_diff(Duration::from_secs(240)) < Duration::from_millis(100),
            "{left:?}"
        );
        let hard = hard_deadline(now + Duration::from_secs(30), Duration::from_secs(60));
        let left = hard.saturating_duration_since(now);
        assert!(
            left.abs_diff(Duration::from_secs(15)) < Duration::from_millis(100),
            "{left:?}"
        );
    }
}
