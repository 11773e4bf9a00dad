#![allow(dead_code)] // each test file uses its own part of these helpers
//! Helpers shared by the tests that drive the `turbobackend` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The binary with a clean model configuration (the scripted model unless the test sets
/// one), its own data directory, and npm's cache shared between test runs.
pub fn turbobackend(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turbobackend"));
    cmd.args(args)
        .env("TB_DATA_DIR", data)
        .env("TB_NPM_CACHE", npm_cache())
        .env("TB_PROMPT_CACHING", "false")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("DB_CLUSTER_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// npm's cache, shared between test runs so installs stay fast.
pub fn npm_cache() -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    format!("{home}/.cache/turbobackend/npm-cache")
}

/// Reads JSON events from the child's stdout until `stop` says so (or the stream ends).
pub fn events(child: &mut Child, mut stop: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let out = child.stdout.take().expect("piped stdout");
    let mut all = Vec::new();
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let done = stop(&event);
        all.push(event);
        if done {
            break;
        }
    }
    all
}

/// Drops the project's databases and roles (production and development), however the test
/// ends.
pub struct DropDatabases(pub Option<tb_core::domain::ProjectId>);

impl Drop for DropDatabases {
    fn drop(&mut self) {
        let Some(project) = &self.0 else { return };
        for dev in [false, true] {
            let n = tb_postgres::naming::database_names(
                tb_postgres::PgProvisioner::DEFAULT_PREFIX,
                project,
                dev,
            );
            let _ = Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    n.database
                ))
                .arg("-c")
                .arg(format!("DROP ROLE IF EXISTS \"{}\"", n.role))
                .output();
        }
    }
}
