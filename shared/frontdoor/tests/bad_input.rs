//! Malformed, oversized and inconsistent input gets the right error, never a 5xx or a panic;
//! and ~500 random and mutated bodies (a seeded generator) never cause a 5xx either.

mod support;

use std::time::Duration;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{ACCEPT, user};
use tb_pipeline::StateStore;

const V2026: &str = "2026-07-28";

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": V2026,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"}
    })
}

/// A 2026-07-28 request with its headers: (headers, body).
fn modern(method: &str, params: Value) -> (Vec<(&'static str, String)>, Value) {
    let mut params = params;
    params["_meta"] = meta();
    let mut headers = vec![
        ("mcp-protocol-version", V2026.to_string()),
        ("mcp-method", method.to_string()),
    ];
    if let Some(name) = params.get("name").and_then(Value::as_str) {
        headers.push(("mcp-name", name.to_string()));
    }
    (
        headers,
        json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}),
    )
}

async fn post_raw(
    s: &support::Server,
    key: &str,
    path: &str,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut req = s
        .http
        .post(format!("{}{path}", s.url))
        .bearer_auth(key)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(30));
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    let r = req.body(body).send().await.expect("a response");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn malformed_json_batches_and_non_messages_get_jsonrpc_errors_with_400() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let cases: [(&str, i64); 8] = [
        ("{", -32700),
        ("not json", -32700),
        ("", -32700),
        (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, -32600),
        ("[]", -32600),
        (r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#, -32600),
        (r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, -32600),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_project","arguments":"x"}}"#,
            -32602,
        ),
    ];
    for (body, code) in cases {
        let (status, reply) = post_raw(&s, &key, "/mcp", &[], body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["jsonrpc"], "2.0", "{body}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{body}: {reply}");
    }
    // A wrong Content-Type or Accept is refused by the transport.
    let r = s
        .http
        .post(s.mcp_url())
        .bearer_auth(&key)
        .header("accept", ACCEPT)
        .header("content-type", "text/plain")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = s
        .http
        .post(s.mcp_url())
        .bearer_auth(&key)
        .header("accept", "text/html")
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    // A Host not in the allowed list (DNS rebinding) is refused.
    let r = s
        .http
        .post(s.mcp_url())
        .bearer_auth(&key)
        .header("host", "evil.example.com")
        .header("accept", ACCEPT)
        .json(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unknown_tools_and_methods_are_protocol_errors_in_both_eras() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    // Legacy era: JSON-RPC errors in a 200.
    let (status, reply) = s
        .mcp(
            &key,
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm_rf","arguments":{}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool `rm_rf`; the tools are execute_request"),
        "{reply}"
    );
    let (_, reply) = s
        .mcp(&key, json!({"jsonrpc":"2.0","id":1,"method":"no/such"}))
        .await;
    assert_eq!(reply["error"]["code"], -32601, "{reply}");

    // A legacy initialize without its params is invalid params, not an unknown method.
    let (status, reply) = s
        .mcp(&key, json!({"jsonrpc":"2.0","id":1,"method":"initialize"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], -32602, "{reply}");

    // 2026-07-28: the unknown tool is still -32602; an unknown method is 404 + -32601, and so
    // are ping and initialize (removed in 2026-07-28).
    let (headers, body) = modern("tools/call", json!({"name": "rm_rf", "arguments": {}}));
    let (status, reply) = post_raw(&s, &key, "/mcp", &headers, body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    for method in ["no/such", "ping", "initialize"] {
        let (headers, body) = modern(method, json!({}));
        let (status, reply) = post_raw(&s, &key, "/mcp", &headers, body.to_string()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}: {reply}");
        assert_eq!(reply["error"]["code"], -32601, "{method}: {reply}");
    }
    // A modern call that works, for contrast.
    let (headers, body) = modern(
        "tools/call",
        json!({"name": "list_projects", "arguments": {}}),
    );
    let (status, reply) = post_raw(&s, &key, "/mcp", &headers, body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["result"]["isError"], false, "{reply}");
    assert_eq!(reply["result"]["resultType"], "complete", "{reply}");
}

#[tokio::test]
async fn modern_headers_that_contradict_the_body_are_refused_with_400() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let (good_headers, body) = modern(
        "tools/call",
        json!({"name": "execute_request", "arguments": {"description": "x"}}),
    );
    let with = |name: &'static str, value: Option<&str>| {
        let mut h: Vec<(&'static str, String)> = good_headers
            .iter()
            .filter(|(n, _)| *n != name)
            .cloned()
            .collect();
        if let Some(v) = value {
            h.push((name, v.to_string()));
        }
        h
    };
    let cases = [
        (
            "Mcp-Method differs",
            with("mcp-method", Some("tools/list")),
            -32020,
        ),
        ("Mcp-Method missing", with("mcp-method", None), -32020),
        (
            "Mcp-Name differs",
            with("mcp-name", Some("cancel_request")),
            -32020,
        ),
        ("Mcp-Name missing", with("mcp-name", None), -32020),
        (
            "version header differs from _meta",
            with("mcp-protocol-version", Some("2025-11-25")),
            -32020,
        ),
        (
            "version header missing",
            with("mcp-protocol-version", None),
            -32020,
        ),
    ];
    for (what, headers, code) in cases {
        let (status, reply) = post_raw(&s, &key, "/mcp", &headers, body.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {reply}");
        assert_eq!(reply["error"]["code"], code, "{what}: {reply}");
    }
    // An unsupported version is 400 (with -32022 when it is in _meta).
    let (status, _) = post_raw(
        &s,
        &key,
        "/mcp",
        &[("mcp-protocol-version", "1999-01-01".to_string())],
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut old = body.clone();
    old["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let (status, reply) = post_raw(
        &s,
        &key,
        "/mcp",
        &with("mcp-protocol-version", Some("2099-01-01")),
        old.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(reply["error"]["code"], -32022, "{reply}");
    // None of these created anything; the consistent request does.
    assert!(
        s.store
            .list_for_owner(&user("user_a"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (status, reply) = post_raw(&s, &key, "/mcp", &good_headers, body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["result"]["isError"], false, "{reply}");
}

/// POSTs `chunks` chunks of `size` spaces with `Transfer-Encoding: chunked` (no length) and
/// returns the status code.
async fn post_chunked(
    s: &support::Server,
    key: &str,
    path: &str,
    chunks: usize,
    size: usize,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = s.url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Accept: {ACCEPT}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..chunks {
        let chunk = format!("{size:x}\r\n{}\r\n", " ".repeat(size));
        // The server may answer and close before reading everything.
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = tcp.read_to_end(&mut reply).await;
    let line = String::from_utf8_lossy(&reply);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {line}"))
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413_before_parsing() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let limit = s.fd.requests.limits.max_body_bytes;
    assert_eq!(limit, 64 * 1024);
    // Valid JSON just over the limit, and garbage far over it: both 413, not 400.
    let padding = "x".repeat(limit);
    let big_valid = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"execute_request","arguments":{"description": padding}}})
    .to_string();
    let garbage = "{".repeat(limit * 4);
    for path in ["/mcp", "/v1/requests"] {
        for body in [big_valid.clone(), garbage.clone()] {
            let (status, reply) = post_raw(&s, &key, path, &[], body).await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {reply}");
        }
        // Without a Content-Length (chunked), the limit still holds.
        assert_eq!(
            post_chunked(&s, &key, path, 20, 8 * 1024).await,
            413,
            "{path}"
        );
        assert_ne!(post_chunked(&s, &key, path, 2, 8).await, 413, "{path}");
    }
    // Just under the limit is parsed (and refused for what it says, not its size).
    let description = "y".repeat(9000);
    let (status, reply) = post_raw(
        &s,
        &key,
        "/v1/requests",
        &[],
        json!({"description": description}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("the limit is 8000")
    );
    assert!(
        s.store
            .list_for_owner(&user("user_a"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn rest_rejects_malformed_bodies_with_400() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    for body in [
        "{",
        "[]",
        "null",
        r#"{"description": 5}"#,
        r#"{"description": "x", "extra": 1}"#,
        r#"{"description": "x", "project_id": ["p"]}"#,
        r#"{"project_id": "proj_1"}"#,
    ] {
        let (status, reply) = post_raw(&s, &key, "/v1/requests", &[], body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["error"], "invalid_json", "{body}: {reply}");
    }
}

// ---- Random and mutated bodies --------------------------------------------------------------

fn seeds() -> Vec<Value> {
    let args = |tool: &str, a: Value| json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name": tool, "arguments": a}});
    vec![
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"f","version":"0"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":"a","method":"ping"}),
        json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
        json!({"jsonrpc":"2.0","id":3,"method":"server/discover","params":{"_meta": meta()}}),
        args(
            "execute_request",
            json!({"description": "fuzz", "project_id": "proj_x", "idempotency_key": "k", "callback_url": "https://x"}),
        ),
        args("get_request_status", json!({"request_id": "req_1"})),
        args("cancel_request", json!({"request_id": "req_1"})),
        args("list_projects", json!({})),
        args("get_project", json!({"project_id": "proj_1"})),
        json!({"jsonrpc":"2.0","id":9,"result":{}}),
    ]
}

fn rest_seeds() -> Vec<Value> {
    vec![
        json!({"description": "a REST body"}),
        json!({"description": "with a key", "idempotency_key": "k1"}),
        json!({"description": "with a project", "project_id": "proj_1"}),
        json!({"description": "with a callback", "callback_url": "https://example.com/cb"}),
    ]
}

fn random_scalar(rng: &mut StdRng) -> Value {
    match rng.random_range(0..9) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e300),
        4 => json!(""),
        5 => json!("\u{0000}\u{202e}ünï©ødé\u{1F600}"),
        6 => json!("x".repeat(rng.random_range(0..20_000))),
        7 => json!([1, "two", {"three": null}]),
        _ => json!({"nested": {"deeper": [null, {}]}}),
    }
}

/// Replaces, removes or adds something somewhere in `v`.
fn mutate_value(rng: &mut StdRng, v: &mut Value, depth: usize) {
    match v {
        Value::Object(map) if !map.is_empty() && depth < 6 => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let k = keys[rng.random_range(0..keys.len())].clone();
            match rng.random_range(0..4) {
                0 => {
                    map.remove(&k);
                }
                1 => {
                    map.insert(k, random_scalar(rng));
                }
                2 => {
                    map.insert(format!("{k}_extra"), random_scalar(rng));
                }
                _ => mutate_value(rng, map.get_mut(&k).unwrap(), depth + 1),
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 6 => {
            let i = rng.random_range(0..items.len());
            mutate_value(rng, &mut items[i], depth + 1)
        }
        _ => *v = random_scalar(rng),
    }
}

fn mutate_bytes(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..6) {
        if bytes.is_empty() {
            bytes.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..bytes.len());
        match rng.random_range(0..5) {
            0 => bytes[i] = rng.random(),
            1 => {
                bytes.remove(i);
            }
            2 => {
                const SPECIAL: &[u8] = b"{}[]\",:\\0\x00\xff";
                bytes.insert(i, SPECIAL[rng.random_range(0..SPECIAL.len())])
            }
            3 => bytes.truncate(i),
            _ => {
                let piece = bytes[i..].to_vec();
                bytes.extend_from_slice(&piece[..piece.len().min(64)]);
            }
        }
    }
}

fn random_body(rng: &mut StdRng, seeds: &[Value]) -> Vec<u8> {
    let mut v = seeds[rng.random_range(0..seeds.len())].clone();
    match rng.random_range(0..20) {
        0 | 1 => (0..rng.random_range(0..300))
            .map(|_| rng.random())
            .collect(),
        2 => {
            // Deep nesting, past serde_json's recursion limit.
            let n = rng.random_range(100..3000);
            format!("{}1{}", "[".repeat(n), "]".repeat(n)).into_bytes()
        }
        3 => json!([v, v]).to_string().into_bytes(),
        4..=7 => {
            let mut b = v.to_string().into_bytes();
            mutate_bytes(rng, &mut b);
            b
        }
        8..=15 => {
            for _ in 0..rng.random_range(1..4) {
                mutate_value(rng, &mut v, 0);
            }
            v.to_string().into_bytes()
        }
        _ => v.to_string().into_bytes(),
    }
}

fn random_headers(rng: &mut StdRng) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    if rng.random_bool(0.25) {
        let versions = [
            "2025-03-26",
            "2025-06-18",
            "2025-11-25",
            V2026,
            "1999-01-01",
            "garbage",
            "",
        ];
        h.push((
            "mcp-protocol-version",
            versions[rng.random_range(0..versions.len())].to_string(),
        ));
    }
    if rng.random_bool(0.15) {
        let methods = ["tools/call", "tools/list", "initialize", "ping", "x"];
        h.push((
            "mcp-method",
            methods[rng.random_range(0..methods.len())].to_string(),
        ));
    }
    if rng.random_bool(0.2) {
        h.push(("mcp-name", "execute_request".to_string()));
    }
    if rng.random_bool(0.1) {
        h.push(("mcp-session-id", "stale-session".to_string()));
    }
    h
}

/// (path, headers, body)
type Case = (&'static str, Vec<(&'static str, String)>, Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_random_and_mutated_bodies_never_get_a_5xx() {
    let seed: u64 = std::env::var("TB_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7b_f00d);
    let mut rng = StdRng::seed_from_u64(seed);
    // Limits high enough that well-formed creates are served rather than refused.
    let s = support::start_with(tb_frontdoor::Limits {
        max_concurrent_per_user: 10_000,
        spending_cap_per_user: tb_core::MicroUsd::from_micros(i64::MAX / 2),
        ..Default::default()
    })
    .await;
    let key = s.key("user_fuzz").await;
    let (mcp_seeds, rest_seeds) = (seeds(), rest_seeds());
    let cases: Vec<Case> = (0..500)
        .map(|i| {
            let (path, seeds) = if i % 2 == 0 {
                ("/mcp", &mcp_seeds)
            } else {
                ("/v1/requests", &rest_seeds)
            };
            (path, random_headers(&mut rng), random_body(&mut rng, seeds))
        })
        .collect();
    let results: Vec<(usize, StatusCode, Value)> = futures::stream::iter(cases.iter().enumerate())
        .map(|(i, (path, headers, body))| {
            let s = &s;
            let key = &key;
            async move {
                let (status, reply) = post_raw(s, key, path, headers, body.clone()).await;
                (i, status, reply)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut by_status = std::collections::BTreeMap::new();
    for (i, status, reply) in &results {
        *by_status.entry(status.as_u16()).or_insert(0) += 1;
        let (path, headers, body) = &cases[*i];
        assert!(
            status.as_u16() < 500,
            "seed {seed}, case {i}: {path} {headers:?} {} → {status} {reply}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
    }
    println!("seed {seed}: statuses {by_status:?}");
    if std::env::var("TB_FUZZ_VERBOSE").is_ok() {
        for (i, status, reply) in &results {
            let (path, headers, body) = &cases[*i];
            println!(
                "{path} {headers:?} {} -> {status} {reply}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        }
    }
    assert_eq!(results.len(), 500);
    // The generator reaches past the validators: some bodies were accepted as well-formed.
    assert!(
        by_status.get(&200).copied().unwrap_or(0) > 20,
        "{by_status:?}"
    );
    assert!(
        by_status.get(&400).copied().unwrap_or(0) > 20,
        "{by_status:?}"
    );
    // The server is still healthy.
    let (status, _) = s
        .mcp(&key, json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(status, StatusCode::OK);
}
