//! Configuration: the environment over an optional file.
//!
//! The file is `TB_CONFIG` if set, else `turbobackend.env` in the working directory if it
//! exists: `KEY=VALUE` lines, `#` comments, optional quotes around values. Variables from the
//! environment win over the file. A key the file does not know is an error (a typo would
//! otherwise be silently ignored), and so is a malformed line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// Every key the local binary reads.
pub const KNOWN: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "TB_MODEL",
    "TB_MODEL_CONTEXT_WINDOW",
    "TB_MODEL_PRICES",
    "TB_ALLOW_UNPRICED_MODELS",
    "TB_MAX_ITERATIONS",
    "TB_BUDGET_USD",
    "TB_WALL_CLOCK_SECS",
    "TB_MAX_TOKENS",
    "TB_COMMAND_TIMEOUT_SECS",
    "TB_TOOL_TIMEOUT_SECS",
    "TB_PROMPT_CACHING",
    "TB_FINISH_ATTEMPTS",
    "TB_REPAIR_ROUNDS",
    "DB_CLUSTER_HOST",
    "DB_CLUSTER_PORT",
    "DB_CLUSTER_USER",
    "DB_CLUSTER_PASSWORD",
    "DB_CLUSTER_SSLMODE",
    "TB_DATA_DIR",
    "TB_PORT",
    "TB_NPM_CACHE",
    "TB_CALLBACK_SECRET",
    "TB_MAX_CONCURRENT_REQUESTS",
    "TB_SPENDING_CAP_USD",
    "TB_WORKERS",
    "TB_OUTAGE_RETRY_SECS",
    "TB_LOG",
    "TB_ALLOW_UNISOLATED_COMMANDS",
    "TB_SANDBOX_EGRESS_HOSTS",
    "TB_SANDBOX_PROCESSES",
    "TB_SANDBOX_MEMORY_MB",
    "TB_SANDBOX_CPUS",
    "TB_SANDBOX_FILE_SIZE_MB",
    "TB_SANDBOX_CPU_SECONDS",
    "TB_SANDBOX_DISK_MB",
];

pub struct Config {
    file: BTreeMap<String, String>,
}

impl Config {
    pub fn load() -> anyhow::Result<Config> {
        let explicit = std::env::var("TB_CONFIG")
            .ok()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        let path = explicit
            .clone()
            .or_else(|| Some(PathBuf::from("turbobackend.env")).filter(|p| p.exists()));
        let Some(path) = path else {
            return Ok(Config {
                file: BTreeMap::new(),
            });
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        warn_if_readable_by_others(&path);
        Ok(Config {
            file: parse(&text).with_context(|| format!("in {}", path.display()))?,
        })
    }

    /// The value of `key`: the environment's, else the file's; empty counts as unset.
    pub fn var(&self, key: &str) -> Option<String> {
        std::env::var(key)
            .ok()
            .or_else(|| self.file.get(key).cloned())
            .filter(|v| !v.trim().is_empty())
    }
}

/// The file holds model keys and the database password: say so when others can read it
/// (it is the operator's file; its mode is theirs to change).
fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{} is readable by other users and may hold API keys and passwords; `chmod 600` it",
            path.display()
        );
    }
}

pub fn parse(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            bail!(
                "line {}: expected KEY=VALUE, found `{}`",
                n + 1,
                line.chars().take(40).collect::<String>()
            );
        };
        let key = key.trim();
        if !KNOWN.contains(&key) {
            bail!(
                "line {}: unknown setting `{key}`; known settings: {}",
                n + 1,
                KNOWN.join(", ")
            );
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hold_known_keys_with_optional_quotes_and_comments() {
        let m = parse(
            "# model\nTB_MODEL=claude-haiku-4-5\nexport TB_BUDGET_USD=\"2.50\"\n\nTB_PORT='9000'\n",
        )
        .unwrap();
        assert_eq!(m["TB_MODEL"], "claude-haiku-4-5");
        assert_eq!(m["TB_BUDGET_USD"], "2.50");
        assert_eq!(m["TB_PORT"], "9000");
    }

    #[test]
    fn typos_and_malformed_lines_name_the_line() {
        let e = parse("TB_MODEL=x\nTB_BUGDET_USD=3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("TB_BUGDET_USD"), "{e}");
        assert!(
            parse("just words")
                .unwrap_err()
                .to_string()
                .contains("KEY=VALUE")
        );
    }
}
