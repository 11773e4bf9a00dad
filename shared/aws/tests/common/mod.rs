//! Builders shared by the tests: requests, turns of conversation, model calls.

#![allow(dead_code)]

use serde_json::json;
use tb_aws::DynamoStore;
use tb_core::domain::{Description, ProjectId, RequestId, UserId};
use tb_core::model::StopReason;
use tb_core::ports::PortError;
use tb_core::{Block, Message, MicroUsd, ModelCall, TokenUsage};
use tb_pipeline::{Appended, RequestRecord, StateStore};

pub fn new_request(owner: &str, now_ms: u64) -> (RequestRecord, Message) {
    RequestRecord::new(
        RequestId::generate(),
        UserId::parse(owner).unwrap(),
        ProjectId::generate(),
        Description::parse("Create a simple API with a users endpoint").unwrap(),
        now_ms,
    )
}

/// One agent turn: the model's tool call and its result, the result `size` bytes long.
pub fn turn(i: usize, size: usize) -> [Message; 2] {
    let id = format!("toolu_{i}");
    [
        Message::assistant(vec![
            Block::Text {
                text: format!("step {i}: writing a file"),
            },
            Block::ToolUse {
                id: id.clone(),
                name: "write_file".into(),
                input: json!({"path": format!("f{i}.ts"), "content": "x"}),
            },
        ]),
        Message {
            role: tb_core::Role::User,
            content: vec![Block::ToolResult {
                tool_use_id: id,
                content: "o".repeat(size),
                is_error: false,
            }],
        },
    ]
}

pub fn call(iteration: u32) -> ModelCall {
    ModelCall {
        iteration,
        model: "claude-sonnet-4-6".into(),
        usage: TokenUsage {
            input: 100,
            output: 50,
            cache_write: 10,
            cache_read: 1000,
        },
        cost: MicroUsd(1234),
        latency_ms: 900,
        stop_reason: StopReason::ToolUse,
    }
}

/// Commits one iteration as the worker does: bump the version, update the header, append.
pub async fn step(
    store: &DynamoStore,
    record: &mut RequestRecord,
    messages: &[Message],
    calls: &[ModelCall],
) -> Result<(), PortError> {
    let expected = record.version;
    let first_index = record.agent.messages;
    record.version += 1;
    record.updated_at_ms += 1_000;
    record.agent.messages += messages.len();
    record.agent.calls += calls.len();
    record.agent.iteration += 1;
    record.push_activity(format!("iteration {}", record.agent.iteration));
    store
        .commit(
            record,
            expected,
            Appended {
                first_index,
                messages,
                calls,
            },
        )
        .await
}
