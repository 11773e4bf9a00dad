//! A local server that speaks the Lambda Runtime API (`/2018-06-01/runtime/...`: invocation
//! next, response, error, and init error), so a function's real bootstrap can be started as
//! a process and driven event by event, as Lambda does: the benchmarks time its cold start
//! and its invocations with it.
//!
//! The server hands out one event per `GET .../invocation/next` (the call blocks until
//! [`RuntimeApi::invoke`] supplies one) and completes the invocation when the bootstrap
//! posts its response or error.
//!
//! The deadline is enforced as Lambda enforces a function's timeout: the event carries
//! `Lambda-Runtime-Deadline-Ms` (the hand-over time plus the timeout, as in
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html#runtimes-api-next>); when
//! no answer has come by then, the invocation counts as failed ([`Answer::TimedOut`], the
//! "Task timed out after N seconds" of Lambda's log) and the process registered with
//! [`RuntimeApi::kill_at_deadline`] is killed (Lambda stops the execution environment and
//! initialises a new one for the next event:
//! <https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html#runtimes-lifecycle-invoke-with-errors>).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

/// What the bootstrap answered to one invocation.
#[derive(Debug)]
pub enum Answer {
    Response(Value),
    Error(String),
    /// No answer by the deadline: the invocation failed and its process was killed.
    TimedOut,
}

struct Event {
    id: String,
    payload: Value,
    /// Told when the bootstrap received the event (its deadline runs from then).
    handed: oneshot::Sender<Instant>,
}

struct Shared {
    first_next: Mutex<Option<Instant>>,
    next_seen: Notify,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    init_error: Mutex<Option<String>>,
    /// Invocation timeout reported to the function as its deadline.
    timeout: Duration,
    /// The process killed when an invocation outlives its deadline.
    process: Mutex<Option<u32>>,
    timeouts: std::sync::atomic::AtomicUsize,
}

/// A running Runtime API server; stops when dropped.
pub struct RuntimeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    task: JoinHandle<()>,
    counter: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RuntimeApi {
    /// Starts a server on a free port of 127.0.0.1; invocations get `timeout` as deadline.
    pub async fn start(timeout: Duration) -> std::io::Result<RuntimeApi> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            first_next: Mutex::new(None),
            next_seen: Notify::new(),
            events: tokio::sync::Mutex::new(rx),
            waiting: Mutex::new(HashMap::new()),
            init_error: Mutex::new(None),
            timeout,
            process: Mutex::new(None),
            timeouts: Default::default(),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(RuntimeApi {
            addr,
            shared,
            events: tx,
            task,
            counter: Default::default(),
        })
    }

    /// `127.0.0.1:PORT`: the value of `AWS_LAMBDA_RUNTIME_API` for the bootstrap.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Waits until the bootstrap first asks for an event (or reports an init error) and
    /// returns when it asked.
    pub async fn first_next(&self, within: Duration) -> anyhow::Result<Instant> {
        let give_up = Instant::now() + within;
        loop {
            let seen = self.shared.next_seen.notified();
            if let Some(at) = *lock(&self.shared.first_next) {
                return Ok(at);
            }
            if let Some(e) = lock(&self.shared.init_error).clone() {
                anyhow::bail!("the function failed to initialise: {e}");
            }
            let left = give_up.saturating_duration_since(Instant::now());
            anyhow::ensure!(
                !left.is_zero(),
                "the function did not ask for an event within {within:?}"
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), seen).await;
        }
    }

    /// The process (the bootstrap) to kill when an invocation outlives its deadline; a new
    /// one must then be started for the next invocation, as Lambda does.
    pub fn kill_at_deadline(&self, pid: u32) {
        *lock(&self.shared.process) = Some(pid);
    }

    /// Invocations that outlived their deadline so far.
    pub fn timeouts(&self) -> usize {
        self.shared
            .timeouts
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Hands `payload` to the bootstrap and waits for its answer, at most until the
    /// invocation's deadline; returns the answer and the time from handing it over to the
    /// answer. Fails when the bootstrap does not ask for the event within a minute.
    pub async fn invoke(&self, payload: Value) -> anyhow::Result<(Duration, Answer)> {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("bench-invocation-{n}");
        let (tx, rx) = oneshot::channel();
        let (handed_tx, handed_rx) = oneshot::channel();
        lock(&self.shared.waiting).insert(id.clone(), tx);
        self.events
            .send(Event {
                id: id.clone(),
                payload,
                handed: handed_tx,
            })
            .map_err(|_| anyhow::anyhow!("the runtime API server stopped"))?;
        let started = tokio::time::timeout(Duration::from_secs(60), handed_rx)
            .await
            .map_err(|_| anyhow::anyhow!("the function did not ask for the event"))?
            .map_err(|_| anyhow::anyhow!("the runtime API server stopped"))?;
        let deadline = started + self.shared.timeout;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(answer) => {
                let answer =
                    answer.map_err(|_| anyhow::anyhow!("the runtime API server stopped"))?;
                Ok((started.elapsed(), answer))
            }
            Err(_) => {
                lock(&self.shared.waiting).remove(&id);
                self.shared
                    .timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(pid) = lock(&self.shared.process).take() {
                    // SIGKILL, as Lambda gives no grace at a timeout.
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                Ok((started.elapsed(), Answer::TimedOut))
            }
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn next(State(s): State<Arc<Shared>>) -> Response {
    {
        let mut first = lock(&s.first_next);
        if first.is_none() {
            *first = Some(Instant::now());
        }
    }
    s.next_seen.notify_waiters();
    let Some(event) = s.events.lock().await.recv().await else {
        return StatusCode::GONE.into_response();
    };
    let deadline = tb_core::clock::now_ms() + s.timeout.as_millis() as u64;
    let _ = event.handed.send(Instant::now());
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("lambda-runtime-aws-request-id", event.id);
    put("lambda-runtime-deadline-ms", deadline.to_string());
    put(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:bench".into(),
    );
    put(
        "lambda-runtime-trace-id",
        "Root=1-00000000-000000000000000000000000;Sampled=0".into(),
    );
    put("content-type", "application/json".into());
    (headers, event.payload.to_string()).into_response()
}

fn complete(s: &Shared, id: &str, answer: Answer) -> StatusCode {
    match lock(&s.waiting).remove(id) {
        Some(tx) => {
            let _ = tx.send(answer);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(State(s): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    complete(&s, &id, Answer::Response(value))
}

async fn error(State(s): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    complete(
        &s,
        &id,
        Answer::Error(String::from_utf8_lossy(&body).into_owned()),
    )
}

async fn init_error(State(s): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    *lock(&s.init_error) = Some(String::from_utf8_lossy(&body).into_owned());
    s.next_seen.notify_waiters();
    StatusCode::ACCEPTED
}
