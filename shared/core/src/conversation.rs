//! The provider-neutral conversation: what the agent said, did and saw.
//!
//! The block shapes follow Anthropic's Messages API (the richest of the formats we speak);
//! the OpenAI-compatible adapter maps them to `tool_calls` and `role: tool` messages.
//! Thinking blocks are kept exactly as the provider returned them, signature included: the
//! Messages API verifies them when they are sent back, and refuses a modified block.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
    /// The model's reasoning, with the provider's signature of it; sent back unchanged.
    Thinking {
        thinking: String,
        signature: String,
    },
    /// Reasoning the provider encrypted (`data` is opaque); sent back unchanged.
    RedactedThinking {
        data: String,
    },
}

impl Block {
    /// A text block with nothing but whitespace in it: the Messages API refuses those
    /// ("text content blocks must be non-empty"), so they are never stored or sent.
    pub fn is_blank_text(&self) -> bool {
        matches!(self, Block::Text { text } if text.trim().is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Block>,
}

impl Message {
    pub fn user_text(text: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: vec![Block::Text { text: text.into() }],
        }
    }

    pub fn assistant(content: Vec<Block>) -> Self {
        Message {
            role: Role::Assistant,
            content,
        }
    }

    /// The tool calls in this message, in order.
    pub fn tool_uses(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.content.iter().filter_map(|b| match b {
            Block::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
            _ => None,
        })
    }

    /// All text blocks joined by newlines.
    pub fn text(&self) -> String {
        let parts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|b| match b {
                Block::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        parts.join("\n")
    }
}
