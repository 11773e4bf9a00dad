//! The local server as a remote connector sees it: the official Python MCP SDK's OAuth
//! client discovers the authorization server, registers, signs in through the page with the
//! key `serve` printed, and calls the tools; the grant is kept in the local database.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn frontdoor_tests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/frontdoor/tests")
}

/// The Python interpreter with the MCP SDK (`clients.sh python` installs it on first use).
fn python() -> String {
    let out = Command::new("bash")
        .arg(frontdoor_tests().join("clients.sh"))
        .arg("python")
        .output()
        .expect("run clients.sh");
    assert!(
        out.status.success(),
        "the Python MCP SDK is not available; install it with shared/frontdoor/tests/clients.sh python\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("PYTHON="))
        .expect("PYTHON=")
        .to_string()
}

#[test]
fn the_python_sdk_oauth_client_connects_to_the_local_server() {
    let python = python();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_turbobackend"))
        .arg("serve")
        .env("TB_DATA_DIR", data.path())
        .env("TB_NPM_CACHE", data.path().join("npm"))
        .env("TB_PORT", "0")
        .env("TB_WORKERS", "0")
        .env("TB_ALLOW_UNISOLATED_COMMANDS", "true")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("DB_CLUSTER_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start turbobackend serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut key) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("turbobackend serving at ") {
            base = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("API key for") {
            key = line.rsplit(": ").next().map(str::to_string);
        }
        if base.is_some() && key.is_some() {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let (base, key) = (base.expect("the serving line"), key.expect("the key line"));
    let out = Command::new(python)
        .arg(frontdoor_tests().join("oauth_client.py"))
        .arg(format!("{base}/mcp"))
        .env("OAUTH_API_KEY", &key)
        .output()
        .expect("run the Python OAuth client");
    let _ = child.kill();
    let _ = child.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python OAuth client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(report["access_token_prefix"], "tbat_", "{report}");
    assert_eq!(report["execute"]["created"], true, "{report}");
    assert_eq!(
        report["tools"],
        serde_json::json!([
            "cancel_request",
            "delete_project",
            "execute_request",
            "get_project",
            "get_request_status",
            "list_projects",
            "rollback_project"
        ]),
        "{report}"
    );
}
