//! Token usage and the per-call usage record (one ledger row per model call).

use std::ops::AddAssign;

use serde::{Deserialize, Serialize};

use crate::model::StopReason;
use crate::money::MicroUsd;

/// Tokens of one model call, by the way each kind is billed.
///
/// Normalised across providers: `input` is the *uncached* prompt tokens only. Anthropic
/// reports it that way; OpenAI-style `prompt_tokens` includes cached tokens, so its adapter
/// subtracts them. The full prompt is `input + cache_write + cache_read`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub cache_write: u64,
    pub cache_read: u64,
}

impl TokenUsage {
    /// All prompt tokens, whichever way they were billed.
    pub fn prompt_total(&self) -> u64 {
        self.input + self.cache_write + self.cache_read
    }

    /// What was added since `earlier` (each kind, saturating).
    pub fn since(&self, earlier: &TokenUsage) -> TokenUsage {
        TokenUsage {
            input: self.input.saturating_sub(earlier.input),
            output: self.output.saturating_sub(earlier.output),
            cache_write: self.cache_write.saturating_sub(earlier.cache_write),
            cache_read: self.cache_read.saturating_sub(earlier.cache_read),
        }
    }
}

impl AddAssign for TokenUsage {
    fn add_assign(&mut self, rhs: TokenUsage) {
        self.input += rhs.input;
        self.output += rhs.output;
        self.cache_write += rhs.cache_write;
        self.cache_read += rhs.cache_read;
    }
}

/// One model call, as recorded in the usage ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCall {
    /// The agent iteration (1-based) this call belongs to; unique within a request.
    pub iteration: u32,
    pub model: String,
    pub usage: TokenUsage,
    pub cost: MicroUsd,
    pub latency_ms: u64,
    pub stop_reason: StopReason,
}
