//! The request record: everything about a request except its conversation and its calls.
//!
//! Stored as one item (`STATE`) whose size does not grow with the conversation; messages
//! and model calls are stored as separate append-only items.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tb_core::agent::{AgentState, Outcome, StuckState};
use tb_core::backoff::Backoff;
use tb_core::domain::{Description, Phase, ProjectId, RequestId, UserId};
use tb_core::{Message, MicroUsd, ModelCall, TokenUsage};

use crate::steps::Steps;

/// Lines of recent activity kept on the record.
pub const ACTIVITY_LINES: usize = 12;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: RequestId,
    pub owner: UserId,
    pub project: ProjectId,
    /// The API key the request came in with, if any.
    pub key_id: Option<String>,
    pub description: Description,
    pub callback_url: Option<String>,
    pub phase: Phase,
    /// The continuation sequence: only a work message carrying this number is acted on.
    pub seq: u64,
    /// Bumped by every write; writes are conditional on the version read.
    pub version: u64,
    pub lease: Option<Lease>,
    pub sandbox_id: Option<String>,
    pub agent: AgentHeader,
    pub cancel_requested: bool,
    /// The request holds one of its owner's concurrent-request slots (given back when it ends).
    #[serde(default)]
    pub holds_slot: bool,
    /// What the worker and the finalizer recorded: each finalizer step's result (a step
    /// with a result is not run again), the seed, the agent's end, the callback.
    pub steps: Steps,
    pub failure: Option<Failure>,
    /// A service the agent needs is unreachable and the worker is waiting it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<Outage>,
    pub activity: Vec<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// A worker's claim on a request, until `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub until_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Where it failed: `agent`, `queue`, or a finalizer step.
    pub step: String,
    pub reason: String,
}

/// An outage the worker is waiting out: retried with growing waits until
/// `SliceSettings::outage_retry` after `since_ms`, then the request fails naming it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    /// What is unreachable: `the model`, `the sandbox provider`.
    pub service: String,
    /// The last error seen.
    pub cause: String,
    /// Failed attempts so far (slices that hit it).
    pub attempts: u32,
    pub since_ms: u64,
    /// When the next attempt is due (the sweeper leaves the request alone until then).
    pub retry_at_ms: u64,
}

/// The waits between attempts during an outage bounded by `bound`: from `bound / 40` (at
/// most 5 s) doubling up to `bound / 4` (at most 5 minutes; SQS delays a message 15
/// minutes at most).
pub fn outage_backoff(bound: Duration) -> Backoff {
    Backoff::new(
        (bound / 40).min(Duration::from_secs(5)),
        (bound / 4).min(Duration::from_secs(300)),
    )
}

/// The gist of an error for an activity line: the innermost cause of a connection failure
/// (`connection refused`), else the message cut to 160 characters.
fn short_cause(cause: &str) -> String {
    let lower = cause.to_lowercase();
    for gist in [
        "connection refused",
        "connection reset",
        "timed out",
        "dns error",
    ] {
        if lower.contains(gist) {
            return gist.into();
        }
    }
    let cut: String = cause.chars().take(160).collect();
    if cut.len() < cause.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// [`AgentState`] without its messages and calls, plus their counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentHeader {
    pub iteration: u32,
    pub usage: TokenUsage,
    pub cost: MicroUsd,
    pub started_at_ms: u64,
    pub compacted_upto: usize,
    pub stuck: StuckState,
    pub outcome: Option<Outcome>,
    pub messages: usize,
    pub calls: usize,
}

impl AgentHeader {
    pub fn of(state: &AgentState) -> Self {
        AgentHeader {
            iteration: state.iteration,
            usage: state.usage,
            cost: state.cost,
            started_at_ms: state.started_at_ms,
            compacted_upto: state.compacted_upto,
            stuck: state.stuck.clone(),
            outcome: state.outcome.clone(),
            messages: state.messages.len(),
            calls: state.calls.len(),
        }
    }

    /// Reassembles the agent state from the header and the stored items.
    pub fn join(&self, messages: Vec<Message>, calls: Vec<ModelCall>) -> AgentState {
        AgentState {
            messages,
            calls,
            iteration: self.iteration,
            usage: self.usage,
            cost: self.cost,
            started_at_ms: self.started_at_ms,
            compacted_upto: self.compacted_upto,
            stuck: self.stuck.clone(),
            outcome: self.outcome.clone(),
        }
    }
}

impl RequestRecord {
    pub fn new(
        id: RequestId,
        owner: UserId,
        project: ProjectId,
        description: Description,
        now_ms: u64,
    ) -> (Self, Message) {
        let state = AgentState::new(description.as_str());
        let first = state.messages[0].clone();
        let record = RequestRecord {
            id,
            owner,
            project,
            key_id: None,
            description,
            callback_url: None,
            phase: Phase::Queued,
            seq: 0,
            version: 0,
            lease: None,
            sandbox_id: None,
            agent: AgentHeader {
                started_at_ms: now_ms,
                ..AgentHeader::of(&state)
            },
            cancel_requested: false,
            holds_slot: false,
            steps: Steps::default(),
            failure: None,
            outage: None,
            activity: Vec::new(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        };
        (record, first)
    }

    pub fn push_activity(&mut self, line: String) {
        self.activity.push(line);
        let excess = self.activity.len().saturating_sub(ACTIVITY_LINES);
        self.activity.drain(..excess);
    }

    /// Records that `service` failed with `cause` (after its client's own retries) in an
    /// attempt that began at `began_ms`: `Ok` with the wait before the next attempt, said in
    /// the activity; or, once the outage has lasted `bound`, `Err` with the reason the
    /// request fails.
    pub fn note_outage(
        &mut self,
        service: &str,
        cause: &str,
        began_ms: u64,
        bound: Duration,
    ) -> Result<Duration, String> {
        let now = tb_core::clock::now_ms();
        let mut outage = self.outage.take().unwrap_or(Outage {
            service: service.into(),
            cause: String::new(),
            attempts: 0,
            since_ms: began_ms,
            retry_at_ms: now,
        });
        outage.service = service.into();
        outage.cause = cause.into();
        outage.attempts += 1;
        let lasted = Duration::from_millis(now.saturating_sub(outage.since_ms));
        tracing::warn!(request_id = %self.id, attempts = outage.attempts, lasted_secs = lasted.as_secs(), "{service} unavailable: {cause}");
        if lasted >= bound {
            let reason = format!(
                "{service} was unreachable for {} s ({} {}): {cause}",
                lasted.as_secs(),
                outage.attempts,
                if outage.attempts == 1 {
                    "attempt"
                } else {
                    "attempts"
                }
            );
            self.push_activity(format!("giving up: {reason}"));
            return Err(reason);
        }
        let delay = outage_backoff(bound)
            .equal_jitter(outage.attempts)
            .min(bound - lasted);
        outage.retry_at_ms = now + delay.as_millis() as u64;
        self.push_activity(format!(
            "waiting for {service}: {}; attempt {}, next in {} s",
            short_cause(cause),
            outage.attempts,
            delay.as_secs_f64().ceil()
        ));
        self.outage = Some(outage);
        Ok(delay)
    }

    /// Ends the outage being waited out, if any, saying so in the activity.
    pub fn outage_over(&mut self) {
        if let Some(outage) = self.outage.take() {
            let secs = tb_core::clock::now_ms().saturating_sub(outage.since_ms) / 1000;
            self.push_activity(format!("{} is back after {secs} s", outage.service));
        }
    }

    /// Whether another worker holds a live lease.
    pub fn leased_by_other(&self, me: &str, now_ms: u64) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| l.owner != me && l.until_ms > now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord::new(
            RequestId::generate(),
            UserId::parse("user_1").unwrap(),
            ProjectId::generate(),
            Description::parse("An API").unwrap(),
            tb_core::clock::now_ms(),
        )
        .0
    }

    #[test]
    fn an_outage_is_counted_said_and_given_up_after_its_bound() {
        let mut rec = record();
        let now = tb_core::clock::now_ms();
        let bound = Duration::from_secs(600);
        let wait = rec
            .note_outage(
                "the model",
                "error sending request: tcp connect error: Connection refused (os error 111)",
                now,
                bound,
            )
            .unwrap();
        // The first wait: between half and all of 600 s / 40 (capped at 5 s).
        assert!(
            wait >= Duration::from_millis(2500) && wait <= Duration::from_secs(5),
            "{wait:?}"
        );
        let line = rec.activity.last().unwrap();
        assert!(
            line.starts_with("waiting for the model: connection refused; attempt 1, next in "),
            "{line}"
        );
        rec.note_outage("the model", "HTTP 529: overloaded", now, bound)
            .unwrap();
        assert_eq!(rec.outage.as_ref().map(|o| o.attempts), Some(2));
        assert!(
            rec.activity
                .last()
                .unwrap()
                .contains("HTTP 529: overloaded; attempt 2")
        );

        // Begun longer ago than the bound: given up, naming the service and the cause.
        let mut old = record();
        let reason = old
            .note_outage("the model", "HTTP 529: overloaded", now - 601_000, bound)
            .unwrap_err();
        assert!(
            reason.starts_with("the model was unreachable for 601 s (1 attempt): HTTP 529"),
            "{reason}"
        );

        rec.outage_over();
        assert!(rec.outage.is_none());
        assert!(
            rec.activity
                .last()
                .unwrap()
                .starts_with("the model is back after")
        );
    }

    #[test]
    fn outage_waits_grow_with_the_bound_within_sqs_limits() {
        let b = outage_backoff(Duration::from_secs(600));
        assert_eq!(
            (b.base, b.max),
            (Duration::from_secs(5), Duration::from_secs(150))
        );
        let b = outage_backoff(Duration::from_secs(4));
        assert_eq!(
            (b.base, b.max),
            (Duration::from_millis(100), Duration::from_secs(1))
        );
        let b = outage_backoff(Duration::from_secs(86_400));
        assert!(b.max <= Duration::from_secs(900));
    }
}
