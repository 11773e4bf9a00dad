//! [`ScriptedServer`]: an HTTP server on `127.0.0.1` that speaks both Anthropic's Messages
//! API (`POST /v1/messages`) and OpenAI's chat completions (`POST /v1/chat/completions`),
//! answering from one [`ScriptedModel`], so tests can drive the real clients.
//!
//! Both endpoints validate the conversation the way the real APIs do (every tool call
//! answered right after it; the Anthropic endpoint also text blocks, the final turn and
//! thinking signatures, the OpenAI one the output-limit parameter), count requests, and can be told to fail the next requests
//! ([`ScriptedServer::fail_next`]) to exercise retries. The server stops when its handle
//! is dropped.

mod anthropic_api;
mod openai_api;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::Value;
use tb_core::model::StopReason;
use tokio::task::JoinHandle;

use crate::scripted::{Script, ScriptedModel};

/// Which quirks the chat-completions endpoint shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OpenAiDialect {
    /// OpenAI's shapes: call ids, `arguments` as JSON strings, `prompt_tokens_details`.
    #[default]
    Standard,
    /// What some Ollama-based stacks leak: no call ids, `arguments` as JSON objects, no
    /// `prompt_tokens_details`.
    OllamaLike,
}

/// Which output-limit parameter the chat-completions endpoint accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenLimitParameter {
    /// `max_completion_tokens`; `max_tokens` is refused, as OpenAI refuses it for its
    /// reasoning models (it is "deprecated in favor of `max_completion_tokens`, and is not
    /// compatible with o-series models": `max_tokens` in `openai/openai-python`
    /// `src/openai/types/chat/completion_create_params.py`).
    #[default]
    MaxCompletionTokens,
    /// `max_tokens` only; `max_completion_tokens` is refused, as servers that predate it do.
    MaxTokens,
}

/// A running scripted server; dropping it stops the server.
pub struct ScriptedServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

impl ScriptedServer {
    /// Starts a server for `script` on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// If no local port can be bound (see [`ScriptedServer::try_start`]).
    pub async fn start(script: Script) -> ScriptedServer {
        ScriptedServer::try_start(ScriptedModel::new(script))
            .await
            .expect("bind the scripted server to 127.0.0.1")
    }

    /// Starts a server answering from `model` (and its prompt cache).
    pub async fn try_start(model: ScriptedModel) -> io::Result<ScriptedServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ServerState {
            model,
            requests: AtomicUsize::new(0),
            faults: Mutex::new(VecDeque::new()),
            last_body: Mutex::new(None),
            ollama_like: AtomicBool::new(false),
            max_tokens_only: AtomicBool::new(false),
        });
        let router = Router::new()
            .route("/v1/messages", post(anthropic_api::messages))
            .route("/v1/chat/completions", post(openai_api::chat_completions))
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "scripted server stopped");
            }
        });
        Ok(ScriptedServer { addr, state, task })
    }

    /// `http://127.0.0.1:PORT`: the Anthropic client's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`: the OpenAI-compatible client's base URL.
    pub fn openai_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// Requests received on either endpoint, failed and rejected ones included.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// The JSON body of the last well-formed request.
    pub fn last_request(&self) -> Option<Value> {
        lock(&self.state.last_body).clone()
    }

    pub fn model(&self) -> &ScriptedModel {
        &self.state.model
    }

    /// Makes the next `n` requests (after any already queued faults) fail with `status`,
    /// these response headers, and an error body in the endpoint's format.
    ///
    /// # Panics
    /// On an invalid status code or header.
    pub fn fail_next(&self, n: usize, status: u16, headers: &[(&str, &str)]) {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status");
        let headers: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes()).expect("a valid header name");
                (
                    name,
                    HeaderValue::from_str(v).expect("a valid header value"),
                )
            })
            .collect();
        let mut faults = lock(&self.state.faults);
        faults.extend(std::iter::repeat_n(Fault { status, headers }, n));
    }

    /// Which output-limit parameter the chat-completions endpoint accepts (the other is
    /// refused with a 400 naming it).
    pub fn set_openai_token_limit(&self, parameter: TokenLimitParameter) {
        self.state.max_tokens_only.store(
            parameter == TokenLimitParameter::MaxTokens,
            Ordering::SeqCst,
        );
    }

    pub fn set_openai_dialect(&self, dialect: OpenAiDialect) {
        self.state
            .ollama_like
            .store(dialect == OpenAiDialect::OllamaLike, Ordering::SeqCst);
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("url", &self.url())
            .field("requests", &self.requests())
            .finish()
    }
}

struct ServerState {
    model: ScriptedModel,
    requests: AtomicUsize,
    faults: Mutex<VecDeque<Fault>>,
    last_body: Mutex<Option<Value>>,
    ollama_like: AtomicBool,
    max_tokens_only: AtomicBool,
}

#[derive(Clone)]
struct Fault {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// An endpoint's error response for a status and a message, in its API's error shape.
type ErrorResponse = fn(StatusCode, &str) -> Response;

impl ServerState {
    /// Counts the request and, when a fault is queued, returns the response that injects
    /// it: `error`'s response for the fault's status, with the fault's headers.
    fn begin(&self, error: ErrorResponse) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let fault = lock(&self.faults).pop_front()?;
        let message = format!("injected failure (HTTP {})", fault.status.as_u16());
        let mut response = error(fault.status, &message);
        response.headers_mut().extend(fault.headers);
        Some(response)
    }

    /// `body` read as JSON and kept as the last body received. What is not JSON is refused
    /// with `not_json`, then the parser's reason.
    fn record(&self, body: &[u8], not_json: &str) -> Result<Value, String> {
        let body: Value = serde_json::from_slice(body).map_err(|e| format!("{not_json}: {e}"))?;
        *lock(&self.last_body) = Some(body.clone());
        Ok(body)
    }

    fn token_limit(&self) -> TokenLimitParameter {
        if self.max_tokens_only.load(Ordering::SeqCst) {
            TokenLimitParameter::MaxTokens
        } else {
            TokenLimitParameter::MaxCompletionTokens
        }
    }

    fn dialect(&self) -> OpenAiDialect {
        if self.ollama_like.load(Ordering::SeqCst) {
            OpenAiDialect::OllamaLike
        } else {
            OpenAiDialect::Standard
        }
    }
}

/// Anthropic's spelling of a stop reason.
fn stop_reason_name(reason: &StopReason) -> &str {
    match reason {
        StopReason::EndTurn => "end_turn",
        StopReason::ToolUse => "tool_use",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::PauseTurn => "pause_turn",
        StopReason::Refusal => "refusal",
        StopReason::ContextWindowExceeded => "model_context_window_exceeded",
        StopReason::Other(other) => other,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
