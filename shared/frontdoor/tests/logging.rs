//! API keys never reach the logs, whatever is logged, at every level (alone in its test
//! binary, so its global subscriber sees everything).

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::is_error;

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}})
}

/// A subscriber that keeps everything logged, at every level.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn keys_never_appear_in_the_logs() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    // Global (this test is alone in its binary): callsites hit on any thread are captured.
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let s = support::start().await;
    let key = s.key("user_a").await;
    let wrong = format!("{key}wrong");
    let (status, _) = s.mcp(&key, initialize()).await;
    assert_eq!(status, StatusCode::OK);
    let r = s
        .call(&key, "execute_request", json!({"description": "log me"}))
        .await;
    assert!(!is_error(&r), "{r}");
    let (status, _) = s.mcp(&wrong, initialize()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = s.rest(&key, Method::GET, "/v1/requests", None).await;
    assert_eq!(status, StatusCode::OK);

    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(
        logged.contains("tool call"),
        "nothing was captured: {logged}"
    );
    assert!(logged.contains("invalid or revoked API key"), "{logged}");
    // The secret part of the key (the visible prefix is `tb_` and a few characters).
    let secret = &key[10..];
    assert!(!logged.contains(secret), "a key was logged");
    assert!(!logged.contains(&wrong[10..]), "a presented key was logged");
}
