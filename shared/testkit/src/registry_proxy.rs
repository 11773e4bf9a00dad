//! A proxy in front of the real test registry (`infra/registry.sh`) that counts the
//! requests it passes on and, when asked, wants credentials:
//!
//! - Basic, as a registry with htpasswd auth does (the distribution server,
//!   `registry/auth/htpasswd`: `401` with `WWW-Authenticate: Basic realm=…` and an
//!   `UNAUTHORIZED` error body);
//! - an anonymous bearer token, as ECR Public does for anonymous pulls: the Docker token
//!   flow (distribution `docs/spec/auth/token.md`), a `401` with
//!   `WWW-Authenticate: Bearer realm="…/token/",service="public.ecr.aws",scope="aws"`,
//!   then `GET <realm>?scope=…&service=…` without credentials answering `{"token": …}`.
//!
//! Seen from a client
//! it is another registry (its own `host:port`), so tests can tell which registry a deploy
//! talked to and how often.
//!
//! `Location` headers naming the upstream are rewritten to the proxy; redirects are passed
//! back, not followed.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

/// One request the proxy received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxiedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: u16,
    /// Whether it carried the expected credentials (always true without auth, and for
    /// token requests).
    pub authorized: bool,
}

enum Auth {
    None,
    /// The expected `Authorization` value.
    Basic(String),
    /// The token the realm hands out.
    AnonymousBearer(String),
}

struct Proxy {
    upstream: String,
    own: String,
    auth: Auth,
    requests: Mutex<Vec<ProxiedRequest>>,
    http: reqwest::Client,
}

/// A running proxy; stops when dropped.
pub struct RegistryProxy {
    state: Arc<Proxy>,
    _server: crate::Server,
}

impl RegistryProxy {
    /// Proxies `upstream` (`127.0.0.1:5056`) without asking for credentials.
    pub async fn start(upstream: &str) -> RegistryProxy {
        Self::launch(upstream, Auth::None).await
    }

    /// Proxies `upstream` behind ECR Public's anonymous token flow (its `/token/` realm
    /// requests are counted too).
    pub async fn like_ecr_public(upstream: &str) -> RegistryProxy {
        let token = format!("anon-{}", tb_core::ids::random_hex(12));
        Self::launch(upstream, Auth::AnonymousBearer(token)).await
    }

    /// Proxies `upstream`, answering 401 to every request without Basic `user:password`.
    pub async fn with_basic_auth(upstream: &str, user: &str, password: &str) -> RegistryProxy {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self::launch(upstream, Auth::Basic(format!("Basic {encoded}"))).await
    }

    async fn launch(upstream: &str, auth: Auth) -> RegistryProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the registry proxy");
        let own = listener.local_addr().expect("address").to_string();
        let state = Arc::new(Proxy {
            upstream: upstream
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned(),
            own,
            auth,
            requests: Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client"),
        });
        let app = Router::new().fallback(forward).with_state(state.clone());
        let server = crate::serve(listener, app, "registry proxy");
        RegistryProxy {
            state,
            _server: server,
        }
    }

    /// The proxy as a registry name: `127.0.0.1:PORT`.
    pub fn registry(&self) -> &str {
        &self.state.own
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.state.requests.lock().expect("requests").clone()
    }

    /// How many requests the proxy received so far.
    pub fn count(&self) -> usize {
        self.state.requests.lock().expect("requests").len()
    }
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let (authorized, challenge) = match &proxy.auth {
        Auth::None => (true, String::new()),
        Auth::Basic(expected) => (
            presented.as_deref() == Some(expected.as_bytes()),
            "Basic realm=\"Registry Realm\"".to_owned(),
        ),
        Auth::AnonymousBearer(token) => (
            path.starts_with("/token/")
                || presented.as_deref() == Some(format!("Bearer {token}").as_bytes()),
            format!(
                "Bearer realm=\"http://{}/token/\",service=\"public.ecr.aws\",scope=\"aws\"",
                proxy.own
            ),
        ),
    };
    let response = match &proxy.auth {
        Auth::AnonymousBearer(token) if path.starts_with("/token/") => {
            axum::Json(serde_json::json!({"token": token})).into_response()
        }
        _ if authorized => relay(&proxy, request, &path).await,
        _ => {
            let mut response = (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"errors": [{
                    "code": "UNAUTHORIZED", "message": "authentication required", "detail": null,
                }]})),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).expect("ascii"),
            );
            response
        }
    };
    proxy
        .requests
        .lock()
        .expect("requests")
        .push(ProxiedRequest {
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
            authorized,
        });
    response
}

async fn relay(proxy: &Proxy, request: Request, path: &str) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let url = format!("http://{}{path}", proxy.upstream);
    let mut builder = proxy.http.request(parts.method.clone(), &url);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "authorization" | "content-length" | "connection" | "transfer-encoding"
        ) {
            builder = builder.header(name, value);
        }
    }
    let upstream = match builder.body(bytes).send().await {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = upstream.status();
    let mut headers = HeaderMap::new();
    for (name, value) in upstream.headers() {
        if matches!(name.as_str(), "connection" | "transfer-encoding") {
            continue;
        }
        let value = if name == header::LOCATION {
            let text = value.to_str().unwrap_or("").replace(
                &format!("http://{}", proxy.upstream),
                &format!("http://{}", proxy.own),
            );
            HeaderValue::from_str(&text).unwrap_or_else(|_| value.clone())
        } else {
            value.clone()
        };
        headers.append(name.clone(), value);
    }
    let body = upstream.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
