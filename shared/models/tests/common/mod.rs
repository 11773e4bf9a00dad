//! Shared fixtures for the client-against-server tests.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::json;
use tb_core::model::{ModelRequest, ModelResponse, ToolSpec};
use tb_core::{Block, Message, Role};
use tb_models::{RetryPolicy, Script, ScriptTurn};

/// Turn 0 writes a file, turn 1 finishes.
pub fn script() -> Script {
    Script::new(vec![
        ScriptTurn::tool_call("write_file", json!({"path": "a.txt", "content": "hi"}))
            .with_text("Creating the file."),
        ScriptTurn::text("Done."),
    ])
}

pub fn tools() -> Vec<ToolSpec> {
    ["read_file", "write_file"]
        .into_iter()
        .map(|name| ToolSpec {
            name: name.to_string(),
            description: format!("The {name} tool."),
            input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
            anthropic_type: None,
        })
        .collect()
}

pub const SYSTEM: &str =
    "You are turbobackend's agent. You build backends with the tools you are given.";

pub fn request<'a>(
    messages: &'a [Message],
    tools: &'a [ToolSpec],
    caching: bool,
) -> ModelRequest<'a> {
    ModelRequest {
        system: SYSTEM,
        messages,
        tools,
        max_tokens: 4096,
        prompt_caching: caching,
    }
}

pub fn opening() -> Vec<Message> {
    vec![Message::user_text("Build a todo API with SQLite.")]
}

/// The conversation after `first`: its tool calls answered with "ok".
pub fn answered(first: &ModelResponse) -> Vec<Message> {
    let results = first
        .content
        .iter()
        .filter_map(|b| match b {
            Block::ToolUse { id, .. } => Some(Block::ToolResult {
                tool_use_id: id.clone(),
                content: "wrote 2 bytes".into(),
                is_error: false,
            }),
            _ => None,
        })
        .collect();
    let mut messages = opening();
    messages.push(Message::assistant(first.content.clone()));
    messages.push(Message {
        role: Role::User,
        content: results,
    });
    messages
}

/// Fast retries so the tests do not sleep.
pub fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}
