//! The real MCP clients (Python SDK, conformance suite), prepared by `tests/clients.sh`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/clients.sh <what>` and returns its `NAME=value` lines. Panics with the
/// script's instructions when the tools cannot be made available: these tests never pass
/// without the real clients.
pub fn prepare(what: &str) -> HashMap<String, String> {
    let script = crate_dir().join("tests/clients.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(what)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (bash is required)", script.display()));
    if !out.status.success() {
        panic!(
            "the {what} MCP client is not available; this test needs it and does not skip.\n{}\n\
             Install it with: shared/frontdoor/tests/clients.sh {what}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn python_client_script() -> PathBuf {
    crate_dir().join("tests/mcp_client.py")
}
