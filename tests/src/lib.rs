//! Shared helpers of the integration tests (`tests/tests/*.rs`) and the `bench` binary.
//!
//! Tests use real things: a local sandbox in a temporary directory (real bash, real files),
//! the real model clients against the scripted server on loopback; for the finalizer
//! ([`finalize`]), the real adapters against Postgres, moto, a registry and the fakes of
//! `tb-testkit`, with network faults from [`flaky::FlakyProxy`].

pub mod faults;
pub mod finalize;
pub mod flaky;
pub mod instant;
pub mod load;
pub mod runtime_api;
pub mod scenario;
pub mod slow_http;

use std::path::PathBuf;
use std::time::Duration;

use tb_core::agent::{Agent, AgentConfig, AgentState, CancelFlag, Outcome, Slice, SliceEnd};
use tb_core::model::Model;
use tb_core::pricing::PriceTable;
use tb_core::sandbox::{Sandbox, SandboxSpec};
use tb_core::{Block, ModelCall};
use tb_models::anthropic::{AnthropicClient, AnthropicConfig};
use tb_models::openai::{OpenAiClient, OpenAiConfig};
use tb_models::retry::RetryPolicy;
use tb_models::scripted::Script;
use tb_models::server::ScriptedServer;
use tb_sandbox::{LocalSandbox, LocalSandboxConfig, LocalSandboxProvider};
use tempfile::TempDir;

/// A local sandbox in its own temporary directory (removed on drop).
pub struct TestSandbox {
    pub sandbox: LocalSandbox,
    _dir: TempDir,
}

impl TestSandbox {
    pub async fn new() -> TestSandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let provider = LocalSandboxProvider::new(LocalSandboxConfig::new(dir.path()));
        let sandbox = provider
            .create_local(&SandboxSpec {
                name: "test".into(),
                ..Default::default()
            })
            .await
            .expect("local sandbox");
        TestSandbox { sandbox, _dir: dir }
    }

    /// A path in the project on disk.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.sandbox.workspace_dir().join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.file(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }
}

/// Production defaults with test-sized timeouts.
pub fn test_config() -> AgentConfig {
    AgentConfig {
        command_timeout: Duration::from_secs(60),
        max_command_timeout: Duration::from_secs(120),
        // Most tests' projects are a few files, not a Nitro app: nothing to build.
        check_on_finish: false,
        ..AgentConfig::standard()
    }
}

/// A script from JSON (see shared/models/SCRIPT_FORMAT.md).
pub fn script(json: serde_json::Value) -> Script {
    serde_json::from_value(json).expect("valid script")
}

/// Fast retries, so retry tests do not wait.
pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

/// The real Anthropic client pointed at the scripted server.
pub fn anthropic_client(server: &ScriptedServer) -> AnthropicClient {
    let mut config = AnthropicConfig::new("test-key", "scripted");
    config.base_url = server.url();
    config.retry = quick_retries();
    AnthropicClient::new(config).expect("client")
}

/// The real OpenAI-compatible client pointed at the scripted server.
pub fn openai_client(server: &ScriptedServer) -> OpenAiClient {
    let mut config = OpenAiConfig::new(server.openai_url(), "scripted").with_api_key("test-key");
    config.retry = quick_retries();
    OpenAiClient::new(config).expect("client")
}

/// Runs the agent on `task` until it is done.
pub async fn run_agent(
    model: &dyn Model,
    sandbox: &dyn Sandbox,
    config: &AgentConfig,
) -> AgentState {
    run_agent_from(model, sandbox, config, None).await
}

/// [`run_agent`] for a request that starts from `base` (the template or a project's source,
/// already seeded into `sandbox`), as the worker runs it.
pub async fn run_agent_from(
    model: &dyn Model,
    sandbox: &dyn Sandbox,
    config: &AgentConfig,
    base: Option<&tb_core::agent::ProjectBase>,
) -> AgentState {
    let mut state = AgentState::new("Create a simple API with a users endpoint");
    let prices = PriceTable::with_defaults();
    let agent = Agent {
        model,
        sandbox,
        db: None,
        prices: &prices,
        config,
        cancel: CancelFlag::default(),
        base,
    };
    match agent
        .run(&mut state, Slice::unbounded())
        .await
        .expect("agent run")
    {
        SliceEnd::Done(_) => state,
        SliceEnd::Paused => panic!("an unbounded slice paused"),
    }
}

pub fn outcome(state: &AgentState) -> &Outcome {
    state.outcome.as_ref().expect("the agent is done")
}

/// Every tool result the model was shown, in order: (content, is_error).
pub fn tool_results(state: &AgentState) -> Vec<(String, bool)> {
    state
        .messages
        .iter()
        .flat_map(|m| &m.content)
        .filter_map(|b| match b {
            Block::ToolResult {
                content, is_error, ..
            } => Some((content.clone(), *is_error)),
            _ => None,
        })
        .collect()
}

/// Model calls without their latency (which differs between otherwise identical runs).
pub fn calls_without_latency(state: &AgentState) -> Vec<ModelCall> {
    state
        .calls
        .iter()
        .cloned()
        .map(|c| ModelCall { latency_ms: 0, ..c })
        .collect()
}

/// The peak resident set (VmHWM) of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A tiny todo API as a built Nitro app would run it (`node .output/server/index.mjs`,
/// listening on `PORT`), in plain Node with no dependencies, so that tests build, start and
/// call a real server without `npm install`. `GET /api/health`; `POST /api/todos` (`title`,
/// `tags`) answers 201 with the todo and its `id`; `GET /api/todos/<id>` answers it.
/// `broken`: `GET /api/todos/<id>` answers 500 (and prints `reading todo <id> failed: boom`).
pub fn todo_server_js(broken: bool) -> String {
    let read = if broken {
        r#"console.error(`reading todo ${m[1]} failed: boom`); return send(res, 500, {error: "boom"});"#
    } else {
        r#"const t = todos.get(Number(m[1])); if (!t) return send(res, 404, {error: "not found"}); return send(res, 200, t);"#
    };
    format!(
        r#"import http from "node:http";
const todos = new Map();
const send = (res, status, body) => {{ res.writeHead(status, {{"content-type": "application/json"}}); res.end(JSON.stringify(body)); }};
http.createServer((req, res) => {{
  let data = "";
  req.on("data", (c) => (data += c));
  req.on("end", () => {{
    const m = /^\/api\/todos\/(\d+)$/.exec(req.url);
    if (req.method === "GET" && req.url === "/api/health") return send(res, 200, {{status: "ok"}});
    if (req.method === "POST" && req.url === "/api/todos") {{
      const b = JSON.parse(data || "{{}}");
      if (typeof b.title !== "string") return send(res, 400, {{error: "title is required"}});
      const t = {{id: todos.size + 1, title: b.title, tags: b.tags ?? []}};
      todos.set(t.id, t);
      return send(res, 201, t);
    }}
    if (req.method === "GET" && m) {{ {read} }}
    send(res, 404, {{error: "no route"}});
  }});
}}).listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? "0.0.0.0");
"#
    )
}

/// The files of [`todo_server_js`]'s project: its `package.json` (whose build copies the
/// server to `.output/server/index.mjs`) and the server, as `write_file` calls.
pub fn todo_project_calls(broken: bool) -> serde_json::Value {
    serde_json::json!([
        {"name": "write_file", "input": {"path": "package.json", "content": "{\"name\": \"todos\", \"private\": true, \"type\": \"module\", \"scripts\": {\"build\": \"mkdir -p .output/server && cp server.mjs .output/server/index.mjs\"}}\n"}},
        {"name": "write_file", "input": {"path": "server.mjs", "content": todo_server_js(broken)}}
    ])
}

/// The checks a todo API's `finish` declares: create a todo, then read it back by its id.
pub fn todo_checks() -> serde_json::Value {
    serde_json::json!([
        {"method": "POST", "path": "/api/todos", "body": {"title": "milk", "tags": ["shop"]}, "status": 201, "expect": {"title": "milk", "tags.0": "shop"}},
        {"method": "GET", "path": "/api/todos/{{1.id}}", "status": 200, "expect": {"id": "{{1.id}}", "title": "milk"}}
    ])
}
