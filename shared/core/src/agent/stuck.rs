//! Stuck detection: the same action with the same result, or the same error, again and again.

use serde::{Deserialize, Serialize};

use crate::ids::sha256_hex;

/// What the detector remembers between iterations (part of the resumable agent state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckState {
    recent: Vec<Fingerprint>,
    nudged: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    step: String,
    error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// First time stuck: tell the model, once.
    Nudge(String),
    /// Stuck again after the nudge: stop.
    Stop(String),
}

impl StuckState {
    /// Records one iteration: `step` describes its actions and their results, `error` its
    /// errors if it had any. Stuck when the last `repeats` iterations were all the same step,
    /// or all failed with the same error.
    pub fn observe(&mut self, step: &str, error: Option<&str>, repeats: usize) -> Verdict {
        let repeats = repeats.max(2);
        self.recent.push(Fingerprint {
            step: sha256_hex(step.as_bytes()),
            error: error.map(|e| sha256_hex(e.as_bytes())),
        });
        if self.recent.len() > repeats {
            self.recent.remove(0);
        }
        if self.recent.len() < repeats {
            return Verdict::Fine;
        }
        let first = &self.recent[0];
        let reason = if self.recent.iter().all(|f| f.step == first.step) {
            format!("the same action gave the same result {repeats} times in a row")
        } else if first.error.is_some() && self.recent.iter().all(|f| f.error == first.error) {
            format!("the same error came back {repeats} times in a row")
        } else {
            return Verdict::Fine;
        };
        if self.nudged {
            Verdict::Stop(reason)
        } else {
            self.nudged = true;
            Verdict::Nudge(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeating_the_same_step_nudges_once_then_stops() {
        let mut s = StuckState::default();
        assert_eq!(s.observe("ls", None, 3), Verdict::Fine);
        assert_eq!(s.observe("ls", None, 3), Verdict::Fine);
        assert!(matches!(s.observe("ls", None, 3), Verdict::Nudge(_)));
        assert!(matches!(s.observe("ls", None, 3), Verdict::Stop(_)));
    }

    #[test]
    fn the_same_error_from_different_actions_is_stuck_too() {
        let mut s = StuckState::default();
        s.observe("a", Some("ENOENT"), 3);
        s.observe("b", Some("ENOENT"), 3);
        assert!(
            matches!(s.observe("c", Some("ENOENT"), 3), Verdict::Nudge(r) if r.contains("error"))
        );
    }

    #[test]
    fn progress_is_not_stuck() {
        let mut s = StuckState::default();
        for i in 0..10 {
            assert_eq!(
                s.observe(&format!("step {i}"), Some(&format!("err {}", i % 2)), 3),
                Verdict::Fine
            );
        }
    }
}
