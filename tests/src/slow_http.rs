//! An HTTP forwarder on loopback that answers each request after a set latency: a model
//! that takes seconds to answer, in front of the real scripted server. Started late on a
//! reserved port ([`reserve_port`]), it is also a model endpoint that is down (connections
//! refused: nothing listens) for a while and then back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

struct Forward {
    target: String,
    latency: Duration,
    http: reqwest::Client,
}

/// A running forwarder; stops when dropped.
pub struct SlowHttp {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// A port of 127.0.0.1 held for one test: bound but not listened on, so connections to it
/// are refused, and no other server (of this or a concurrent test) can take it until it is
/// dropped or handed to [`SlowHttp::start_on`]. (A port merely found free and released is
/// soon handed to the next server that binds port 0, which then answers in its place.)
pub struct ReservedPort {
    socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

/// Reserves a port of 127.0.0.1 (see [`ReservedPort`]).
pub fn reserve_port() -> ReservedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("valid"))
        .expect("a free port");
    let addr = socket.local_addr().expect("local address");
    ReservedPort { socket, addr }
}

impl ReservedPort {
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::fmt::Display for ReservedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

impl SlowHttp {
    /// Forwards to `target` (`http://127.0.0.1:PORT`), each answer `latency` late.
    pub async fn start(target: &str, latency: Duration) -> SlowHttp {
        Self::start_on(reserve_port(), target, latency).await
    }

    /// The same on a reserved port, which it starts listening on.
    pub async fn start_on(port: ReservedPort, target: &str, latency: Duration) -> SlowHttp {
        let listener = port
            .socket
            .listen(1024)
            .expect("listening on the reserved port");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Forward {
            target: target.trim_end_matches('/').to_string(),
            latency,
            http: reqwest::Client::new(),
        });
        let app = Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SlowHttp { addr, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SlowHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    State(f): State<Arc<Forward>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::time::sleep(f.latency).await;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = f.http.request(method, format!("{}{path}", f.target));
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    match request.body(body).send().await {
        Ok(r) => {
            let status = r.status();
            let headers = r.headers().clone();
            let body = r.bytes().await.unwrap_or_default();
            let mut response = (status, body).into_response();
            for (name, value) in &headers {
                if name != "content-length" && name != "transfer-encoding" {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
