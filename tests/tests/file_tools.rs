//! The file tools through the agent loop: what a command leaves in the workspace (a FIFO, a
//! hard link to a file outside) is refused with errors the model can act on, a tool call
//! that never returns is abandoned at the tool timeout, and each time the request goes on.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tb_core::agent::Outcome;
use tb_core::sandbox::{ExecOutput, FileEntry, Sandbox, SandboxError, WorkspacePath};
use tb_models::scripted::ScriptedModel;
use tb_tests::*;

/// A request that blocks is a failed test, not a hung one.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_and_a_hard_linked_file_are_refused_and_the_request_goes_on() {
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary.txt");
    std::fs::write(&canary, "canary").unwrap();
    let model = ScriptedModel::new(script(json!({"turns": [
        {"tool_calls": [{"name": "run_command", "input": {"command": format!("mkfifo pipe && ln '{}' linked.txt", canary.display())}}]},
        {"tool_calls": [
            {"name": "write_file", "input": {"path": "pipe", "content": "x"}},
            {"name": "read_file", "input": {"path": "pipe"}},
            {"name": "read_file", "input": {"path": "linked.txt"}},
            {"name": "write_file", "input": {"path": "linked.txt", "content": "pwned"}}]},
        {"tool_calls": [{"name": "write_file", "input": {"path": "ok.txt", "content": "fine"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}]})));
    let sandbox = TestSandbox::new().await;
    let state = tokio::time::timeout(
        REQUEST_DEADLINE,
        run_agent(&model, &sandbox.sandbox, &test_config()),
    )
    .await
    .expect("the request went on");

    let results = tool_results(&state);
    assert!(!results[0].1, "{}", results[0].0);
    for (i, expected) in [
        (1, "`pipe` is a FIFO"),
        (2, "`pipe` is a FIFO"),
        (3, "`linked.txt` has 2 hard links"),
        (4, "`linked.txt` has 2 hard links"),
    ] {
        assert!(
            results[i].1,
            "call {i} should have failed: {}",
            results[i].0
        );
        assert!(
            results[i].0.contains(expected),
            "call {i}: {}",
            results[i].0
        );
    }
    assert!(!results[5].1, "{}", results[5].0);
    assert_eq!(
        outcome(&state),
        &Outcome::Finished {
            summary: "done".into(),
            checks: None,
        }
    );
    assert_eq!(sandbox.read("ok.txt"), "fine");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "canary");
}

/// The local sandbox, except that writing `stuck` never returns (as a remote sandbox that
/// stops answering mid-call would).
struct StuckWrites(tb_sandbox::LocalSandbox);

#[async_trait]
impl Sandbox for StuckWrites {
    fn id(&self) -> &str {
        self.0.id()
    }
    async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SandboxError> {
        self.0.exec(command, timeout).await
    }
    async fn write_file(&self, path: &WorkspacePath, contents: &[u8]) -> Result<(), SandboxError> {
        if path.as_str() == "stuck" {
            std::future::pending::<()>().await;
        }
        self.0.write_file(path, contents).await
    }
    async fn read_file(&self, path: &WorkspacePath) -> Result<Vec<u8>, SandboxError> {
        self.0.read_file(path).await
    }
    async fn delete(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        self.0.delete(path).await
    }
    async fn list(&self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, SandboxError> {
        self.0.list(dir).await
    }
}

#[tokio::test]
async fn a_tool_call_that_never_returns_is_abandoned_at_the_tool_timeout() {
    let model = ScriptedModel::new(script(json!({"turns": [
        {"tool_calls": [{"name": "write_file", "input": {"path": "stuck", "content": "x"}}]},
        {"tool_calls": [{"name": "write_file", "input": {"path": "ok.txt", "content": "fine"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}]})));
    let sandbox = TestSandbox::new().await;
    let stuck = StuckWrites(sandbox.sandbox.clone());
    let config = tb_core::agent::AgentConfig {
        tool_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let state = tokio::time::timeout(REQUEST_DEADLINE, run_agent(&model, &stuck, &config))
        .await
        .expect("the request went on");
    let results = tool_results(&state);
    assert!(results[0].1);
    assert!(
        results[0]
            .0
            .contains("`write_file` did not finish within 1 s"),
        "{}",
        results[0].0
    );
    assert!(!results[1].1, "{}", results[1].0);
    assert_eq!(sandbox.read("ok.txt"), "fine");
    assert!(matches!(outcome(&state), Outcome::Finished { .. }));
}
