//! Shared by the front door's integration tests: the router served on loopback over an
//! in-memory pipeline (memory store and queue, the scripted model, a local sandbox in a
//! temporary directory) and in-memory platform records.
#![allow(dead_code)]

pub mod clients;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tb_core::agent::AgentConfig;
use tb_core::domain::{RequestId, UserId};
use tb_core::ports::PlatformRecords;
use tb_core::ports::PortError;
use tb_core::pricing::PriceTable;
use tb_core::{Message, ModelCall};
use tb_frontdoor::memory::MemoryRecords;
use tb_frontdoor::{FrontDoor, Limits};
use tb_pipeline::memory::{MemoryQueue, MemoryStore};
use tb_pipeline::{Appended, Created, RequestRecord, StateStore};
use tb_pipeline::{Invocation, Requests, SliceSettings, Worker};
use tb_sandbox::{LocalSandboxConfig, LocalSandboxProvider};
use tempfile::TempDir;

pub const ACCEPT: &str = "application/json, text/event-stream";

/// A short task: write a file, then finish.
pub fn task_script() -> tb_models::Script {
    serde_json::from_value(json!({"turns": [
        {"tool_calls": [{"name": "write_file", "input": {"path": "a.txt", "content": "one\n"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]}))
    .expect("valid script")
}

pub struct Server {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    pub fd: Arc<FrontDoor>,
    /// Runs the work the front door queues ([`Server::drain_work`]).
    pub worker: Worker,
    pub records: Arc<MemoryRecords>,
    pub store: Arc<MemoryStore>,
    pub queue: Arc<MemoryQueue>,
    pub http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start() -> Server {
    start_with(Limits::default()).await
}

pub async fn start_with(limits: Limits) -> Server {
    start_full(limits, Duration::ZERO).await
}

/// With `latency` added to every state-store call, as a networked store has: calls that are
/// not serialised interleave.
pub async fn start_full(limits: Limits, latency: Duration) -> Server {
    start_configured(limits, latency, tb_frontdoor::OAuthSettings::default()).await
}

/// With the authorization server's `oauth` settings.
pub async fn start_oauth(oauth: tb_frontdoor::OAuthSettings) -> Server {
    start_configured(Limits::default(), Duration::ZERO, oauth).await
}

async fn start_configured(
    limits: Limits,
    latency: Duration,
    oauth: tb_frontdoor::OAuthSettings,
) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(MemoryStore::default());
    let queue = Arc::new(MemoryQueue::default());
    let records = Arc::new(MemoryRecords::new());
    let requests = Requests::new(
        Arc::new(Latent {
            inner: store.clone(),
            latency,
        }),
        queue.clone(),
        records.clone() as Arc<dyn PlatformRecords>,
        AgentConfig {
            command_timeout: Duration::from_secs(60),
            check_on_finish: false,
            ..AgentConfig::standard()
        },
    )
    .with_limits(limits)
    .allowing_private_callbacks();
    let requests = Arc::new(requests);
    let worker = Worker {
        requests: requests.clone(),
        sandboxes: Arc::new(LocalSandboxProvider::new(LocalSandboxConfig::new(
            dir.path(),
        ))),
        model: Arc::new(tb_models::ScriptedModel::new(task_script())),
        dev_databases: None,
        archive: None,
        prices: PriceTable::with_defaults(),
        slices: SliceSettings::standard(),
    };
    let fd = Arc::new(
        FrontDoor::new(requests)
            .with_oauth(Arc::new(tb_frontdoor::memory::MemoryOAuth::new()), oauth),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = tb_frontdoor::router(fd.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Server {
        url,
        fd,
        worker,
        records,
        store,
        queue,
        http: reqwest::Client::new(),
        task,
        _dir: dir,
    }
}

/// A state store that takes `latency` for every call.
struct Latent {
    inner: Arc<MemoryStore>,
    latency: Duration,
}

impl Latent {
    async fn wait(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }
}

#[async_trait::async_trait]
impl StateStore for Latent {
    async fn create(&self, record: &RequestRecord, first: &Message) -> Result<Created, PortError> {
        self.wait().await;
        self.inner.create(record, first).await
    }
    async fn load(&self, id: &RequestId) -> Result<Option<RequestRecord>, PortError> {
        self.wait().await;
        self.inner.load(id).await
    }
    async fn conversation(
        &self,
        record: &RequestRecord,
    ) -> Result<(Vec<Message>, Vec<ModelCall>), PortError> {
        self.wait().await;
        self.inner.conversation(record).await
    }
    async fn commit(
        &self,
        record: &RequestRecord,
        expected_version: u64,
        appended: Appended<'_>,
    ) -> Result<(), PortError> {
        self.wait().await;
        self.inner.commit(record, expected_version, appended).await
    }
    async fn active(&self) -> Result<Vec<RequestRecord>, PortError> {
        self.wait().await;
        self.inner.active().await
    }
    async fn list_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        self.wait().await;
        self.inner.list_for_owner(owner, limit).await
    }

    async fn acquire_slot(&self, owner: &UserId, limit: u32) -> Result<bool, PortError> {
        self.inner.acquire_slot(owner, limit).await
    }

    async fn release_slot(&self, owner: &UserId) -> Result<(), PortError> {
        self.inner.release_slot(owner).await
    }

    async fn commit_releasing_slot(
        &self,
        record: &RequestRecord,
        expected_version: u64,
    ) -> Result<(), PortError> {
        self.wait().await;
        self.inner
            .commit_releasing_slot(record, expected_version)
            .await
    }
}

pub fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

impl Server {
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.url)
    }

    /// A new API key for `user`.
    pub async fn key(&self, user_id: &str) -> String {
        self.records
            .create_key(&user(user_id), "test")
            .await
            .expect("create key")
            .1
    }

    /// POSTs a JSON-RPC body to /mcp as a legacy-era client (no version header).
    pub async fn mcp(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.mcp_url())
            .bearer_auth(key)
            .header("accept", ACCEPT)
            .json(&body)
            .send()
            .await
            .expect("POST /mcp");
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Calls a tool (legacy era, stateless: no initialize needed) and returns the result.
    pub async fn call(&self, key: &str, tool: &str, args: Value) -> Value {
        let (status, body) = self
            .mcp(
                key,
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": tool, "arguments": args}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("no result: {body}"))
    }

    /// A REST call with a key.
    pub async fn rest(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("REST call");
        let status = r.status();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Runs the worker on every queued work message until none are left.
    pub async fn drain_work(&self) {
        for _ in 0..100 {
            let batch = self.queue.take_work();
            if batch.is_empty() {
                return;
            }
            for m in batch {
                let body = serde_json::to_string(&m).unwrap();
                let inv = Invocation {
                    worker_id: tb_core::ids::random_hex(8),
                    deadline: Instant::now() + Duration::from_secs(600),
                };
                self.worker
                    .handle_work(&body, &inv)
                    .await
                    .expect("work slice");
            }
        }
    }
}

/// `isError` of a tool result.
pub fn is_error(result: &Value) -> bool {
    result["isError"] == json!(true)
}

/// The text of a tool result's first content block.
pub fn text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
