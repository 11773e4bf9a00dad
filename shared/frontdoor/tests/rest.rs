//! The REST API end to end over HTTP: create (idempotent on the key), status, list and
//! cancel, only for the owner; bad input gets a clear error, never a panic or a 500.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tb_core::domain::RequestId;
use tb_core::ports::PlatformRecords;
use tb_pipeline::StateStore;

/// A REST call with a raw body.
async fn raw(
    s: &support::Server,
    key: &str,
    method: Method,
    path: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    let r = s
        .http
        .request(method, format!("{}{path}", s.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("REST call");
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn the_rest_api_creates_reports_and_cancels_only_for_the_owner() {
    let s = support::start().await;
    let (alice_key_record, alice) = s
        .records
        .create_key(&support::user("user_alice"), "test")
        .await
        .unwrap();
    let bob = s.key("user_bob").await;

    let body = br#"{"description": "Create a simple API with a users endpoint", "idempotency_key": "once"}"#;
    let (status, created) = raw(&s, &alice, Method::POST, "/v1/requests", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["request_id"].as_str().unwrap().to_string();
    let (status, again) = raw(&s, &alice, Method::POST, "/v1/requests", body).await;
    assert_eq!(
        (status, &again["request_id"]),
        (StatusCode::OK, &created["request_id"])
    );

    let path = format!("/v1/requests/{id}");
    let (status, st) = raw(&s, &alice, Method::GET, &path, b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            st["phase"].as_str(),
            st["iteration"].as_u64(),
            st["max_iterations"].as_u64()
        ),
        (Some("queued"), Some(0), Some(60))
    );
    assert_eq!(
        s.store
            .load(&RequestId::parse(&id).unwrap())
            .await
            .unwrap()
            .unwrap()
            .key_id,
        Some(alice_key_record.id)
    );

    // Bob sees nothing of Alice's: the same 404 as for an id that does not exist.
    assert_eq!(
        raw(&s, &bob, Method::GET, &path, b"").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw(&s, &bob, Method::POST, &format!("{path}/cancel"), b"")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw(&s, &bob, Method::GET, "/v1/requests", b"").await.1["requests"],
        json!([])
    );
    assert_eq!(
        raw(&s, &alice, Method::GET, "/v1/requests", b"").await.1["requests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let (status, st) = raw(&s, &alice, Method::POST, &format!("{path}/cancel"), b"").await;
    assert_eq!(
        (status, st["cancel_requested"].as_bool()),
        (StatusCode::OK, Some(true))
    );

    // Bad input: a clear error, never a panic or a 500.
    let big = vec![b'x'; s.fd.requests.limits.max_body_bytes + 1];
    assert_eq!(
        raw(&s, &alice, Method::POST, "/v1/requests", &big).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    for bad in [
        &b"{"[..],
        br#"{"description": 5}"#,
        br#"{"description": "x", "extra": 1}"#,
        br#"{"description": "  "}"#,
        br#"{"description": "x", "callback_url": "ftp://x"}"#,
    ] {
        let (status, e) = raw(&s, &alice, Method::POST, "/v1/requests", bad).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(bad)
        );
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A project id that cannot exist is a project that does not exist: the same answer as
    // someone else's (see auth_and_tenancy.rs).
    let (status, e) = raw(
        &s,
        &alice,
        Method::POST,
        "/v1/requests",
        br#"{"description": "x", "project_id": "a b"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(
        raw(&s, &alice, Method::GET, "/v1/requests/..%2F..%2Fetc", b"")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        raw(&s, &alice, Method::DELETE, &path, b"").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        raw(&s, &alice, Method::GET, "/nope", b"").await.0,
        StatusCode::NOT_FOUND
    );
}
