//! The MCP endpoint against real clients: the official Python SDK in its three modes
//! (legacy handshake, auto-detection, 2026-07-28 only) and the official conformance suite
//! (`@modelcontextprotocol/conformance`). `tests/clients.sh` installs them on first use; when
//! they cannot be installed these tests fail and say how to install them.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, header};
use axum::response::Response;
use serde_json::Value;
use support::clients;

async fn run_python_client(mode: &str) -> Value {
    let tools = clients::prepare("python");
    let s = support::start().await;
    let key = s.key("user_py").await;
    let python = tools["PYTHON"].clone();
    let url = s.mcp_url();
    let script = clients::python_client_script();
    let mode_env = mode.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(url)
            .env("MCP_MODE", mode_env)
            .env("MCP_BEARER", key)
            .output()
            .expect("run the Python MCP client")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python client failed in {mode} mode ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report from the Python client ({e}):\n{stdout}\n{stderr}"));

    // The request it created is really in the pipeline, owned by the key's user.
    let id = report["execute"]["request_id"]
        .as_str()
        .expect("request_id");
    let rec =
        s.fd.pipeline
            .store
            .load(&tb_core::domain::RequestId::parse(id).unwrap())
            .await
            .unwrap()
            .expect("the request exists");
    assert_eq!(rec.owner, support::user("user_py"));
    report
}

fn assert_client_report(report: &Value, protocol: &str) {
    let all = [
        "cancel_request",
        "delete_project",
        "execute_request",
        "get_project",
        "get_request_status",
        "list_projects",
        "rollback_project",
    ];
    assert_eq!(report["protocol"], protocol, "{report}");
    for key in [
        "tools",
        "tools_with_output_schema",
        "tools_with_annotations",
    ] {
        assert_eq!(report[key], serde_json::json!(all), "{key}: {report}");
    }
    assert_eq!(report["execute"]["phase"], "queued", "{report}");
    assert_eq!(report["execute"]["created"], true, "{report}");
    assert_eq!(
        report["status"]["request_id"], report["execute"]["request_id"],
        "{report}"
    );
    assert_eq!(report["status"]["phase"], "queued", "{report}");
    assert_eq!(report["status"]["max_iterations"], 60, "{report}");
    assert_eq!(
        report["project"]["project_id"], report["execute"]["project_id"],
        "{report}"
    );
    assert_eq!(report["project"]["state"], "building", "{report}");
    assert_eq!(report["projects"]["total"], 1, "{report}");
    assert_eq!(report["cancelled"]["cancel_requested"], true, "{report}");
    assert_eq!(report["unknown_is_error"], true, "{report}");
    assert!(
        report["unknown_text"]
            .as_str()
            .unwrap()
            .contains("no request req_doesnotexist"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_works_in_legacy_mode_with_the_initialize_handshake() {
    let report = run_python_client("legacy").await;
    assert_client_report(&report, "2025-11-25");
    assert_eq!(report["server"], "turbobackend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_in_auto_mode_discovers_the_2026_07_28_era() {
    let report = run_python_client("auto").await;
    assert_client_report(&report, "2026-07-28");
    assert_eq!(report["server"], "turbobackend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_works_pinned_to_2026_07_28() {
    let report = run_python_client("2026-07-28").await;
    assert_client_report(&report, "2026-07-28");
}

/// The conformance suite has no option to send a header, so it talks to a loopback proxy that
/// adds the API key to every request (as a client configured with a header would) and passes
/// everything else through unchanged.
struct KeyProxy {
    target: String,
    key: String,
    http: reqwest::Client,
}

async fn forward(State(p): State<Arc<KeyProxy>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = p
        .http
        .request(parts.method.clone(), format!("{}{path}", p.target))
        .body(body);
    let skip = [
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
    ];
    for (name, value) in parts.headers.iter() {
        if !skip.contains(name) {
            out = out.header(name, value);
        }
    }
    if !parts.headers.contains_key(header::AUTHORIZATION) {
        out = out.bearer_auth(&p.key);
    }
    let resp = out.send().await.expect("the front door answers");
    let mut builder = Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        let hop: [HeaderName; 3] = [
            header::CONTENT_LENGTH,
            header::CONNECTION,
            header::TRANSFER_ENCODING,
        ];
        if !hop.contains(name) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Body::from(resp.bytes().await.unwrap_or_default()))
        .unwrap()
}

/// One scenario's checks, as the suite wrote them to `checks.json`.
fn read_checks(dir: &Path) -> Vec<Value> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let file = entry.path().join("checks.json");
        if let Ok(text) = std::fs::read_to_string(&file) {
            let checks: Vec<Value> = serde_json::from_str(&text).unwrap();
            found.extend(checks);
        }
    }
    found
}

fn untestable(check: &Value) -> bool {
    check["details"]["untestable"] == true
        || check["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("Not testable"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_conformance_scenarios_pass() {
    let tools = clients::prepare("conformance");
    let s = support::start().await;
    let key = s.key("user_conformance").await;
    let proxy = Arc::new(KeyProxy {
        target: s.url.clone(),
        key,
        http: reqwest::Client::new(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    let proxy_task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut summary = Vec::new();
    let mut failures = Vec::new();
    for scenario in [
        "server-initialize",
        "ping",
        "tools-list",
        "http-header-validation",
        "server-stateless",
    ] {
        let out_dir = tempfile::tempdir().unwrap();
        let (node, entry, url, dir) = (
            tools["NODE"].clone(),
            tools["CONFORMANCE"].clone(),
            proxy_url.clone(),
            out_dir.path().to_path_buf(),
        );
        let scenario_name = scenario.to_string();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(node)
                .arg(entry)
                .args(["server", "--url", &url, "--scenario", &scenario_name, "-o"])
                .arg(&dir)
                .output()
                .expect("run the conformance suite")
        })
        .await
        .unwrap();
        let checks = read_checks(out_dir.path());
        assert!(
            !checks.is_empty(),
            "{scenario}: the suite wrote no checks ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let passed = checks.iter().filter(|c| c["status"] == "SUCCESS").count();
        let skipped = checks.iter().filter(|c| untestable(c)).count();
        for c in &checks {
            let ok = matches!(c["status"].as_str(), Some("SUCCESS" | "INFO" | "SKIPPED"));
            if !ok && !untestable(c) {
                failures.push(format!(
                    "{scenario}/{}: {} {}",
                    c["id"], c["status"], c["errorMessage"]
                ));
            }
        }
        let others: Vec<String> = checks
            .iter()
            .filter(|c| c["status"] != "SUCCESS")
            .map(|c| {
                let why = if untestable(c) { " (not testable)" } else { "" };
                format!(
                    "{} {}{why}",
                    c["id"].as_str().unwrap_or("?"),
                    c["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        summary.push(format!(
            "{scenario}: {passed}/{} passed, {skipped} not testable without the suite's fixture tools; others: [{}]",
            checks.len(),
            others.join(", ")
        ));
    }
    proxy_task.abort();
    println!("conformance:\n  {}", summary.join("\n  "));
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}\n\nsummary:\n{}",
        failures.join("\n"),
        summary.join("\n")
    );
}
