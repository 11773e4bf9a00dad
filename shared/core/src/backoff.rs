//! How long to wait before trying again: the one backoff of the workspace, for the HTTP
//! clients' retries (models, Daytona, GitHub, Fly, callbacks), the finalizer's step retries,
//! the local dispatcher and the worker's outage retries; and the server's `Retry-After`,
//! read the same way everywhere ([`parse_retry_after`]); and [`retry`], the one retry loop
//! every client's retries run on.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

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

    /// The wait before retry `attempt` with `jitter`.
    pub fn wait(&self, jitter: Jitter, attempt: u32) -> Duration {
        match jitter {
            Jitter::None => self.ceiling(attempt),
            Jitter::Full => self.full_jitter(attempt),
            Jitter::Equal => self.equal_jitter(attempt),
            Jitter::Spread => self.spread_jitter(attempt),
        }
    }
}

/// Which random share of the ceiling a wait takes (see [`Backoff`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// The ceiling itself.
    None,
    /// [`Backoff::full_jitter`].
    Full,
    /// [`Backoff::equal_jitter`].
    Equal,
    /// [`Backoff::spread_jitter`].
    Spread,
}

/// How [`retry`] retries: how many attempts, the waits between them, and the time bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Names the service in the log line of each retry.
    pub service: &'static str,
    /// Attempts in all, the first included (0 counts as 1; `u32::MAX`: until a time bound).
    pub max_attempts: u32,
    /// The wait before retry `n` when the attempt names none.
    pub backoff: Backoff,
    pub jitter: Jitter,
    /// A wait an attempt names (a server's `Retry-After`) is cut to this.
    pub max_retry_after: Duration,
    /// No retry once this long has passed since the first attempt began.
    pub give_up_after: Option<Duration>,
    /// No wait that would end at or past this instant.
    pub deadline: Option<Instant>,
}

impl RetryPolicy {
    /// `max_attempts` attempts, waiting `backoff` with `jitter` between them; a named wait
    /// is capped at `backoff.max`; no time bound.
    pub const fn new(
        service: &'static str,
        max_attempts: u32,
        backoff: Backoff,
        jitter: Jitter,
    ) -> Self {
        RetryPolicy {
            service,
            max_attempts,
            backoff,
            jitter,
            max_retry_after: backoff.max,
            give_up_after: None,
            deadline: None,
        }
    }

    pub const fn max_retry_after(mut self, cap: Duration) -> Self {
        self.max_retry_after = cap;
        self
    }

    pub const fn give_up_after(mut self, after: Duration) -> Self {
        self.give_up_after = Some(after);
        self
    }

    pub const fn deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }
}

/// What one attempt came to.
#[derive(Clone, Debug)]
pub enum Attempt<T, E> {
    Done(T),
    /// Worth another attempt: after `after` (capped at [`RetryPolicy::max_retry_after`]) when
    /// the attempt names a wait, else after the policy's backoff.
    Retry {
        after: Option<Duration>,
        error: E,
    },
    /// Another attempt would not help.
    Fail(E),
}

/// Why [`retry`] stopped without a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The attempt said [`Attempt::Fail`].
    Failed,
    /// [`RetryPolicy::max_attempts`] were made.
    Attempts,
    /// [`RetryPolicy::give_up_after`] passed.
    Time,
    /// The next wait would reach [`RetryPolicy::deadline`].
    Deadline,
}

/// The last attempt's error, how many attempts were made and why they stopped.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub error: E,
    pub attempts: u32,
    pub stop: Stop,
}

/// Runs `attempt(n)` (`n` from 1) until it is done, fails, or `policy` allows no more
/// attempts; between attempts it waits the wait an attempt named (capped), else the
/// policy's backoff for the attempt that failed.
pub async fn retry<T, E, F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Result<T, GaveUp<E>>
where
    E: fmt::Display,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let began = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let gave_up = |error, stop| GaveUp {
            error,
            attempts: n,
            stop,
        };
        let (after, error) = match attempt(n).await {
            Attempt::Done(value) => return Ok(value),
            Attempt::Fail(error) => return Err(gave_up(error, Stop::Failed)),
            Attempt::Retry { after, error } => (after, error),
        };
        if n >= policy.max_attempts.max(1) {
            return Err(gave_up(error, Stop::Attempts));
        }
        if policy.give_up_after.is_some_and(|t| began.elapsed() >= t) {
            return Err(gave_up(error, Stop::Time));
        }
        let wait = match after {
            Some(after) => after.min(policy.max_retry_after),
            None => policy.backoff.wait(policy.jitter, n),
        };
        if policy.deadline.is_some_and(|d| Instant::now() + wait >= d) {
            return Err(gave_up(error, Stop::Deadline));
        }
        tracing::info!(
            service = policy.service,
            attempt = n,
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "{error}; retrying"
        );
        tokio::time::sleep(wait).await;
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
    use std::sync::Mutex;

    const SECOND: Duration = Duration::from_secs(1);

    /// Runs `retry` over answers given in turn, recording when (since the start, on the
    /// paused clock) each attempt began.
    async fn run(
        policy: RetryPolicy,
        answers: Vec<Attempt<&'static str, &'static str>>,
    ) -> (Result<&'static str, GaveUp<&'static str>>, Vec<Duration>) {
        let start = Instant::now();
        let answers = Mutex::new(answers.into_iter());
        let began = Mutex::new(Vec::new());
        let result = retry(&policy, |n| {
            began.lock().unwrap().push(start.elapsed());
            assert_eq!(n as usize, began.lock().unwrap().len());
            let next = answers.lock().unwrap().next().expect("an answer left");
            async move { next }
        })
        .await;
        (result, began.into_inner().unwrap())
    }

    fn again(after: Option<Duration>) -> Attempt<&'static str, &'static str> {
        Attempt::Retry {
            after,
            error: "busy",
        }
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy::new(
            "test",
            max_attempts,
            Backoff::new(SECOND, 8 * SECOND),
            Jitter::None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_the_backoff_until_done() {
        let (result, began) = run(
            policy(5),
            vec![again(None), again(None), again(None), Attempt::Done("ok")],
        )
        .await;
        assert_eq!(result.unwrap(), "ok");
        assert_eq!(began, [0, 1, 3, 7].map(|s| s * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn counts_attempts_and_returns_the_last_error() {
        let (result, began) = run(policy(3), vec![again(None); 3]).await;
        let gave_up = result.unwrap_err();
        assert_eq!((gave_up.error, gave_up.attempts), ("busy", 3));
        assert_eq!(gave_up.stop, Stop::Attempts);
        assert_eq!(began.len(), 3);
        let (result, began) = run(policy(0), vec![again(None)]).await;
        assert_eq!(result.unwrap_err().attempts, 1);
        assert_eq!(began.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_named_wait_is_used_and_capped() {
        let p = policy(4).max_retry_after(5 * SECOND);
        let (result, began) = run(
            p,
            vec![
                again(Some(3 * SECOND)),
                again(Some(Duration::ZERO)),
                again(Some(3600 * SECOND)),
                Attempt::Done("ok"),
            ],
        )
        .await;
        assert_eq!(result.unwrap(), "ok");
        assert_eq!(began, [0, 3, 3, 8].map(|s| s * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_not_retried() {
        let (result, began) = run(policy(5), vec![again(None), Attempt::Fail("refused")]).await;
        let gave_up = result.unwrap_err();
        assert_eq!(
            (gave_up.error, gave_up.attempts, gave_up.stop),
            ("refused", 2, Stop::Failed)
        );
        assert_eq!(began, [Duration::ZERO, SECOND]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_reaches_the_deadline() {
        let p = policy(u32::MAX).deadline(Some(Instant::now() + 5 * SECOND));
        // Waits 1, 2, then 4 would end at 7 s, past the deadline.
        let (result, began) = run(p, vec![again(None); 10]).await;
        let gave_up = result.unwrap_err();
        assert_eq!((gave_up.attempts, gave_up.stop), (3, Stop::Deadline));
        assert_eq!(began, [0, 1, 3].map(|s| s * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_after_the_time_allowed() {
        let p = policy(u32::MAX).give_up_after(4 * SECOND);
        let (result, began) = run(p, vec![again(None); 10]).await;
        let gave_up = result.unwrap_err();
        assert_eq!((gave_up.attempts, gave_up.stop), (4, Stop::Time));
        assert_eq!(began, [0, 1, 3, 7].map(|s| s * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_waits_stay_within_their_bounds() {
        for (jitter, low, high) in [
            (Jitter::Full, 0.0, 1.0),
            (Jitter::Equal, 0.5, 1.0),
            (Jitter::Spread, 0.5, 1.5),
        ] {
            let p = RetryPolicy::new("test", 2, Backoff::new(4 * SECOND, 8 * SECOND), jitter);
            let (_, began) = run(p, vec![again(None), Attempt::Done("ok")]).await;
            let wait = began[1].as_secs_f64();
            assert!(
                (4.0 * low..=4.0 * high).contains(&wait),
                "{jitter:?}: {wait}"
            );
        }
    }

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
