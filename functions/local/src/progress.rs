//! Progress for people (a line per iteration) or for scripts (JSON lines), or nothing.

use serde_json::{Value, json};
use tb_core::agent::AgentState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Human,
    Json,
    Quiet,
}

pub struct Progress {
    pub output: Output,
    pub max_iterations: u32,
}

impl Progress {
    /// A line for people (printed as is) and the same event for scripts.
    pub fn event(&self, human: &str, event: Value) {
        match self.output {
            Output::Human => println!("{human}"),
            Output::Json => println!("{event}"),
            Output::Quiet => {}
        }
    }

    /// After each agent iteration: what it did and what it cost so far.
    pub fn iteration(&self, state: &AgentState) {
        let actions = tb_core::agent::last_actions(state);
        self.event(
            &format!(
                "  [{:>2}/{}] {}  {}",
                state.iteration,
                self.max_iterations,
                state.cost,
                if actions.is_empty() { "(no tool call)".to_string() } else { actions.join(", ") }
            ),
            json!({"event": "iteration", "iteration": state.iteration, "cost_usd": state.cost.as_usd_f64(), "actions": actions}),
        );
    }
}
