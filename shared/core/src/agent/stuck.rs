//! Stuck detection: the same action again and again, with the same result or failing.
//!
//! Only repeated *actions* count, as in OpenHands' `StuckDetector` (identical action and
//! observation pairs; identical actions that all fail). The same error after different
//! actions is how a fix-and-retry loop looks, which is progress, not a loop. The nudge
//! resets once the agent does something different.

use serde::{Deserialize, Serialize};

use crate::encoding::sha256_hex;

/// What the detector remembers between iterations (part of the resumable agent state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckState {
    recent: Vec<Fingerprint>,
    nudged: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    /// The tool calls (names and inputs).
    #[serde(default)]
    action: String,
    /// The tool calls and their results.
    step: String,
    #[serde(default)]
    failed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Stuck: tell the model, once until it does something different.
    Nudge(String),
    /// Stuck again right after the nudge: stop.
    Stop(String),
}

impl StuckState {
    /// Records one iteration: `action` describes its tool calls, `step` the calls and their
    /// results, `failed` whether any call failed. Stuck when the last `repeats` iterations
    /// were the same action with the same result, or the same action failing each time.
    pub fn observe(&mut self, action: &str, step: &str, failed: bool, repeats: usize) -> Verdict {
        let repeats = repeats.max(2);
        self.recent.push(Fingerprint {
            action: sha256_hex(action.as_bytes()),
            step: sha256_hex(step.as_bytes()),
            failed,
        });
        if self.recent.len() > repeats {
            self.recent.remove(0);
        }
        let first = &self.recent[0];
        let same_action =
            self.recent.len() == repeats && self.recent.iter().all(|f| f.action == first.action);
        let reason = if same_action && self.recent.iter().all(|f| f.step == first.step) {
            format!("the same action gave the same result {repeats} times in a row")
        } else if same_action && self.recent.iter().all(|f| f.failed) {
            format!("the same action failed {repeats} times in a row")
        } else {
            // Something different: progress, so a later loop gets a fresh nudge.
            if let [.., before, last] = self.recent.as_slice()
                && before.action != last.action
            {
                self.nudged = false;
            }
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
        assert_eq!(s.observe("ls", "ls => a", false, 3), Verdict::Fine);
        assert_eq!(s.observe("ls", "ls => a", false, 3), Verdict::Fine);
        assert!(matches!(
            s.observe("ls", "ls => a", false, 3),
            Verdict::Nudge(_)
        ));
        assert!(matches!(
            s.observe("ls", "ls => a", false, 3),
            Verdict::Stop(_)
        ));
    }

    #[test]
    fn the_same_failing_action_is_stuck_even_when_its_output_varies() {
        let mut s = StuckState::default();
        s.observe("npm test", "npm test => fail at 1s", true, 3);
        s.observe("npm test", "npm test => fail at 2s", true, 3);
        assert!(
            matches!(s.observe("npm test", "npm test => fail at 3s", true, 3), Verdict::Nudge(r) if r.contains("failed"))
        );
    }

    #[test]
    fn the_same_error_after_different_fixes_is_progress() {
        let mut s = StuckState::default();
        for i in 0..6 {
            let action = format!("edit fix {i}; npm run build");
            assert_eq!(
                s.observe(&action, &format!("{action} => TS2304"), true, 3),
                Verdict::Fine
            );
        }
    }

    #[test]
    fn the_nudge_resets_after_progress() {
        let mut s = StuckState::default();
        for _ in 0..2 {
            s.observe("ls", "ls => a", false, 3);
        }
        assert!(matches!(
            s.observe("ls", "ls => a", false, 3),
            Verdict::Nudge(_)
        ));
        // The agent listens and does something else...
        assert_eq!(s.observe("build", "build => ok", false, 3), Verdict::Fine);
        // ...so a later loop is nudged again before it is stopped.
        s.observe("cat x", "cat x => b", false, 3);
        s.observe("cat x", "cat x => b", false, 3);
        assert!(matches!(
            s.observe("cat x", "cat x => b", false, 3),
            Verdict::Nudge(_)
        ));
        assert!(matches!(
            s.observe("cat x", "cat x => b", false, 3),
            Verdict::Stop(_)
        ));
    }

    #[test]
    fn progress_is_not_stuck() {
        let mut s = StuckState::default();
        for i in 0..10 {
            let a = format!("step {i}");
            assert_eq!(s.observe(&a, &a, i % 2 == 0, 3), Verdict::Fine);
        }
    }

    #[test]
    fn a_state_saved_before_actions_were_recorded_still_loads() {
        let old = r#"{"recent":[{"step":"ab","error":"cd"}],"nudged":true}"#;
        let s: StuckState = serde_json::from_str(old).unwrap();
        assert!(s.nudged);
    }
}
