//! Progress for people (lines), for scripts (JSON lines), or nothing.

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Human,
    Json,
    Quiet,
}

pub struct Progress {
    pub output: Output,
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
}
