//! The api function: the HTTP front door (API Gateway HTTP API → Lambda).
//!
//! Today it answers `GET /health`; request creation, status and the MCP endpoint arrive
//! with the serverless pipeline and the MCP front door.

use lambda_http::{Body, Error, Request, Response, run, service_fn};

async fn handler(req: Request) -> Result<Response<Body>, Error> {
    let (status, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/health") => (200, serde_json::json!({"status": "ok"})),
        _ => (
            404,
            serde_json::json!({"error": "not_found", "message": "no such route"}),
        ),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(body.to_string()))?)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .without_time()
        .init();
    run(service_fn(handler)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_answers_ok_and_unknown_routes_404() {
        let req = lambda_http::http::Request::builder()
            .uri("/health")
            .body(Body::Empty)
            .unwrap();
        let resp = handler(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let req = lambda_http::http::Request::builder()
            .uri("/nope")
            .body(Body::Empty)
            .unwrap();
        assert_eq!(handler(req).await.unwrap().status(), 404);
    }
}
