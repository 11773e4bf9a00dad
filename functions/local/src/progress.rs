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
        let actions: Vec<String> = state
            .messages
            .iter()
            .rev()
            .find(|m| m.role == tb_core::Role::Assistant)
            .map(|m| {
                m.tool_uses()
                    .map(|(_, name, input)| describe(name, input))
                    .collect()
            })
            .unwrap_or_default();
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

fn describe(name: &str, input: &Value) -> String {
    let arg = input
        .get("command")
        .or_else(|| input.get("path"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let arg: String = arg.chars().take(60).collect();
    if arg.is_empty() {
        name.to_string()
    } else {
        format!("{name} {arg}")
    }
}
