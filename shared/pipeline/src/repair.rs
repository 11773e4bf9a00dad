//! Repair rounds: when the live app fails its checks, the request goes back to the agent,
//! in the same sandbox, with the failed calls (and the app's recent log lines, where the
//! deployer can read them: [`tb_core::ports::Deployer::recent_logs`]) as an observation; its next `finish` is
//! built, deployed and verified again. At most `TB_REPAIR_ROUNDS` rounds, all within the
//! request's iteration, budget and time limits (the agent's state carries on).
//!
//! A round is recorded in the `repairs` step (the failed verification and the agent's cost
//! when the round began, for the receipt's cost by phase); the steps from `archive` to
//! `verify` are cleared so they run again.

use tb_core::Message;
use tb_core::domain::Phase;

use crate::messages::WorkMessage;
use crate::ports::{Appended, Queue, StateStore};
use crate::record::RequestRecord;
use crate::steps::{Repair, Step};

/// Rounds begun so far.
pub fn rounds(rec: &RequestRecord) -> u32 {
    rec.steps.repairs.len() as u32
}

/// Hands `rec` back to the agent with `failure` and the app's recent `logs` (if the deployer
/// could read them) if a round is left (committed, then the work message sent):
/// `Some(round)`. `None`: no round left, or no sandbox to repair in.
pub async fn hand_back(
    store: &dyn StateStore,
    queue: &dyn Queue,
    rec: &mut RequestRecord,
    failure: &str,
    logs: Option<&[String]>,
    max_rounds: u32,
) -> Result<Option<u32>, tb_core::ports::PortError> {
    let round = rounds(rec) + 1;
    if round > max_rounds || rec.sandbox_id.is_none() || rec.cancel_requested {
        return Ok(None);
    }
    let verify = rec.steps.verified().cloned();
    // A round runs every step again but the receipt (the build with its sub-steps).
    for step in Step::ALL.into_iter().filter(|s| *s != Step::Receipt) {
        rec.steps.clear(step);
    }
    rec.steps.agent = None;
    rec.steps.repairs.push(Repair {
        round,
        verify,
        cost_micro_usd_before: rec.agent.cost.micros(),
    });
    let observation = Message::user_text(observation(failure, logs, round, max_rounds));
    let first_index = rec.agent.messages;
    rec.agent.messages += 1;
    rec.agent.outcome = None;
    rec.phase = Phase::Running;
    rec.lease = None;
    rec.seq += 1;
    rec.push_activity(format!(
        "verify: the live app failed its checks; repair round {round} of {max_rounds}: back to the agent"
    ));
    crate::ports::save_next(
        store,
        rec,
        Appended {
            first_index,
            messages: std::slice::from_ref(&observation),
            calls: &[],
        },
    )
    .await?;
    let next = WorkMessage::Continue {
        request_id: rec.id.clone(),
        seq: rec.seq,
    };
    if let Err(e) = queue.send_work(&next, std::time::Duration::ZERO).await {
        tracing::warn!(request_id = %rec.id, "work message not sent ({e}); the sweeper will re-drive it");
    }
    Ok(Some(round))
}

/// What the agent is told at the start of repair round `round`.
pub fn observation(failure: &str, logs: Option<&[String]>, round: u32, max_rounds: u32) -> String {
    let logs = match logs {
        Some([]) => {
            "\n\nRecent log lines of the deployed app: none (it printed nothing).".to_string()
        }
        Some(lines) => format!(
            "\n\nRecent log lines of the deployed app (the last {}, secrets redacted):\n{}",
            lines.len(),
            lines.join("\n")
        ),
        None => String::new(),
    };
    format!(
        "[Verification failed] The platform built and deployed your project and called it; these calls did not do what your `finish` declared:\n{}{logs}\n\nThis is repair round {round} of {max_rounds}. Find the cause (the handlers, the migrations, the checks themselves), fix it, rebuild, try the calls with `curl`, and call `finish` again with the checks; the project will be deployed and verified again.",
        failure.trim_start_matches("the live app failed its checks:\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_observation_has_the_failed_calls_and_the_apps_log_lines_under_their_heading() {
        let logs = vec![
            "listening on 3000".to_string(),
            "TypeError: Cannot read properties of undefined (reading 'id')".to_string(),
        ];
        let text = observation(
            "the live app failed its checks:\nGET /api/todos/1 -> 500",
            Some(&logs),
            1,
            2,
        );
        assert!(text.contains("GET /api/todos/1 -> 500"), "{text}");
        let (_, after) = text
            .split_once("Recent log lines of the deployed app (the last 2, secrets redacted):\n")
            .expect("the heading");
        assert!(
            after.starts_with("listening on 3000\nTypeError: Cannot read properties"),
            "{text}"
        );
        assert!(text.contains("repair round 1 of 2"));
        // A deploy target that cannot read logs: no heading at all.
        let without = observation("GET /api/todos/1 -> 500", None, 1, 2);
        assert!(!without.contains("log lines"), "{without}");
    }
}
