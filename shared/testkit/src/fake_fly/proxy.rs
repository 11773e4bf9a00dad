//! The fake's stand-in for `https://<app>.fly.dev`: `/<app>/<path>` is forwarded to
//! `<path>` on the app's started machine, as Fly's proxy forwards to `internal_port`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use super::Fly;

pub(super) fn routes() -> Router<Arc<Fly>> {
    Router::new()
        .route("/{app}", any(forward_root))
        .route("/{app}/{*path}", any(forward))
}

async fn forward_root(
    State(fly): State<Arc<Fly>>,
    Path(app): Path<String>,
    request: Request,
) -> Response {
    proxy(fly, app, String::new(), request).await
}

async fn forward(
    State(fly): State<Arc<Fly>>,
    Path((app, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    proxy(fly, app, path, request).await
}

async fn proxy(fly: Arc<Fly>, app: String, path: String, request: Request) -> Response {
    let port = {
        let mut inner = fly.lock();
        let mut machines: Vec<_> = inner
            .machines
            .values_mut()
            .filter(|m| m.app == app && m.state == "started")
            .collect();
        machines.sort_by_key(|m| m.seq);
        machines.into_iter().find_map(|m| {
            let p = m.process.as_mut()?;
            p.is_running().then(|| p.port())
        })
    };
    let Some(port) = port else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{app} has no started machine"),
        )
            .into_response();
    };
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("http://127.0.0.1:{port}/{path}{query}");
    let method = request.method().clone();
    let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
    let body = match axum::body::to_bytes(request.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut outgoing = fly.http.request(method, &url).body(body);
    if let Some(ct) = content_type {
        outgoing = outgoing.header(header::CONTENT_TYPE, ct);
    }
    match outgoing.send().await {
        Ok(resp) => {
            let status = resp.status();
            let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            if let Some(ct) = ct {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{app}: {e}")).into_response(),
    }
}
