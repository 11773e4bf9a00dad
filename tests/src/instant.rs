//! A zero-latency model and sandbox, for measuring the loop's own overhead. Nothing real
//! stands behind them, so they are used by the benchmark only, never to prove behaviour.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tb_core::model::{Model, ModelError, ModelRequest, ModelResponse, StopReason};
use tb_core::sandbox::{ExecOutput, FileEntry, Sandbox, SandboxError, WorkspacePath};
use tb_core::{Block, TokenUsage};

/// Answers every call at once with one `write_file` call; usage grows with the prompt so
/// cost code runs. With `serialize`, it also builds the Anthropic request body, as the real
/// client must, so that cost is part of the figure.
pub struct InstantModel {
    pub serialize: bool,
}

#[async_trait]
impl Model for InstantModel {
    fn id(&self) -> &str {
        "scripted"
    }

    fn context_window(&self) -> u64 {
        u64::MAX / 4
    }

    async fn complete(&self, request: ModelRequest<'_>) -> Result<ModelResponse, ModelError> {
        let prompt_bytes = if self.serialize {
            tb_models::anthropic::request_body("scripted", &request)
                .to_string()
                .len()
        } else {
            request.messages.len() * 200
        };
        let n = request.messages.len();
        Ok(ModelResponse {
            model: "scripted".into(),
            content: vec![Block::ToolUse {
                id: format!("toolu_{n}"),
                name: "write_file".into(),
                input: json!({"path": format!("src/file{}.txt", n % 7), "content": format!("line {n}")}),
            }],
            stop_reason: StopReason::ToolUse,
            usage: TokenUsage {
                input: 10,
                output: 20,
                cache_write: 0,
                cache_read: (prompt_bytes / 4) as u64,
            },
            refusal: None,
        })
    }
}

/// Keeps files in a map; commands print nothing.
#[derive(Default)]
pub struct InstantSandbox {
    files: Mutex<BTreeMap<String, Vec<u8>>>,
}

#[async_trait]
impl Sandbox for InstantSandbox {
    fn id(&self) -> &str {
        "instant"
    }

    async fn exec(&self, _command: &str, _timeout: Duration) -> Result<ExecOutput, SandboxError> {
        Ok(ExecOutput {
            exit_code: Some(0),
            output: "__TB_EXIT 0\n__TB_SIZE 0\n".into(),
            total_bytes: 0,
            timed_out: false,
        })
    }

    async fn write_file(&self, path: &WorkspacePath, contents: &[u8]) -> Result<(), SandboxError> {
        self.files
            .lock()
            .unwrap()
            .insert(path.as_str().into(), contents.to_vec());
        Ok(())
    }

    async fn read_file(&self, path: &WorkspacePath) -> Result<Vec<u8>, SandboxError> {
        self.files
            .lock()
            .unwrap()
            .get(path.as_str())
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(path.to_string()))
    }

    async fn delete(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        self.files.lock().unwrap().remove(path.as_str());
        Ok(())
    }

    async fn list(&self, _dir: &WorkspacePath) -> Result<Vec<FileEntry>, SandboxError> {
        Ok(Vec::new())
    }
}
