//! What the model port exchanges: one call of a chat model with tools. The [`Model`] trait
//! is in [`crate::ports`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conversation::{Block, Message};
use crate::usage::TokenUsage;

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    pub input_schema: Value,
    /// An Anthropic-defined tool type the models are trained on (e.g.
    /// `text_editor_20250728`): sent instead of the description and schema on the Anthropic
    /// path; other providers get the schema as a custom tool of the same shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic_type: Option<String>,
}

/// Everything one model call needs. Borrowed: the agent never copies the conversation.
#[derive(Clone, Copy, Debug)]
pub struct ModelRequest<'a> {
    pub system: &'a str,
    pub messages: &'a [Message],
    pub tools: &'a [ToolSpec],
    pub max_tokens: u32,
    /// Ask the provider to cache the stable prefix (system prompt, tools, history).
    pub prompt_caching: bool,
}

/// Why the model stopped. Unknown values are kept, not rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndTurn,
    ToolUse,
    MaxTokens,
    StopSequence,
    /// A server-side tool loop paused; send the content back to continue.
    PauseTurn,
    Refusal,
    ContextWindowExceeded,
    Other(String),
}

impl StopReason {
    /// Maps Anthropic's `stop_reason` and OpenAI's `finish_reason` strings.
    pub fn parse(s: &str) -> StopReason {
        match s {
            "end_turn" | "stop" => StopReason::EndTurn,
            "tool_use" | "tool_calls" | "function_call" => StopReason::ToolUse,
            "max_tokens" | "length" => StopReason::MaxTokens,
            "stop_sequence" => StopReason::StopSequence,
            "pause_turn" => StopReason::PauseTurn,
            "refusal" | "content_filter" => StopReason::Refusal,
            "model_context_window_exceeded" => StopReason::ContextWindowExceeded,
            other => StopReason::Other(other.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelResponse {
    /// The model id the provider reports (used for pricing).
    pub model: String,
    pub content: Vec<Block>,
    pub stop_reason: StopReason,
    pub usage: TokenUsage,
    /// Why the model declined, when it says (Anthropic's `stop_details` of a `refusal`,
    /// OpenAI's `message.refusal`).
    pub refusal: Option<String>,
}

/// Errors, by how the caller must react.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// Worth retrying later (429, 529, 5xx, network), after the adapter's own retries ran out.
    #[error("model temporarily unavailable{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Transient {
        status: Option<u16>,
        message: String,
    },
    /// The provider refused the request as made (4xx other than 408/409/429). Retrying will
    /// not help: bad key, bad request, unknown model.
    #[error("model request rejected (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// The provider answered something we cannot read.
    #[error("unreadable model response: {0}")]
    Protocol(String),
}

pub use crate::ports::Model;
