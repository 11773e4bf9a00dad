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

/// A free port of 127.0.0.1, not listened on (connections to it are refused until a
/// server binds it).
pub fn reserve_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("local address")
}

impl SlowHttp {
    /// Forwards to `target` (`http://127.0.0.1:PORT`), each answer `latency` late.
    pub async fn start(target: &str, latency: Duration) -> SlowHttp {
        Self::start_on("127.0.0.1:0".parse().expect("valid"), target, latency).await
    }

    /// The same on `addr` (a port from [`reserve_port`]).
    pub async fn start_on(addr: SocketAddr, target: &str, latency: Duration) -> SlowHttp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("binding the forwarder");
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
