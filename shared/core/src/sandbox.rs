//! What the sandbox port exchanges: workspace paths, command output, file entries, errors. The
//! [`Sandbox`] and [`SandboxProvider`] traits are in [`crate::ports`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A path inside the sandbox workspace, relative and normalised (`a/b/c`).
///
/// Parsing refuses absolute paths, `..`, NUL and backslashes, so a value of this type can be
/// joined to the workspace root without leaving it lexically. Symlinks are the adapter's job.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkspacePath(String);

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("path `{path}` refused: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: &'static str,
}

impl WorkspacePath {
    pub const MAX_LEN: usize = 1024;

    /// The workspace root itself (`""`, shown as `.`).
    pub fn root() -> Self {
        WorkspacePath(String::new())
    }

    pub fn parse(path: &str) -> Result<Self, PathError> {
        let refuse = |reason| {
            Err(PathError {
                path: path.chars().take(200).collect(),
                reason,
            })
        };
        if path.len() > Self::MAX_LEN {
            return refuse("longer than 1024 bytes");
        }
        if path.contains('\0') {
            return refuse("contains a NUL byte");
        }
        if path.contains('\\') {
            return refuse("contains a backslash; use `/`");
        }
        if path.starts_with('/') || path.starts_with('~') {
            return refuse(
                "absolute paths are not allowed; use a path relative to the project root",
            );
        }
        let mut parts = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => return refuse("`..` is not allowed; paths stay inside the project"),
                p => parts.push(p),
            }
        }
        Ok(WorkspacePath(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        if self.is_root() {
            Self::parse(name)
        } else {
            Self::parse(&format!("{}/{name}", self.0))
        }
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "." } else { &self.0 })
    }
}

crate::domain::parsed_string!(WorkspacePath, PathError);

/// What a command printed (stdout and stderr merged, in order), bounded in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// `None` when the command was killed (timeout or signal).
    pub exit_code: Option<i32>,
    /// The output, or its head and tail when it was larger than the adapter's cap.
    pub output: String,
    /// Bytes the command printed in all (may exceed `output.len()`).
    pub total_bytes: u64,
    pub timed_out: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the workspace root.
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SandboxError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The sandbox service or host failed; retrying later may help.
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
}

impl SandboxError {
    /// Errors the model caused and can act on (become tool errors), as opposed to
    /// infrastructure failures (end the step; the caller retries).
    pub fn is_model_fault(&self) -> bool {
        !matches!(self, SandboxError::Unavailable(_))
    }
}

/// What to create a sandbox with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxInfo {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

pub use crate::ports::{Sandbox, SandboxProvider};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalised() {
        assert_eq!(
            WorkspacePath::parse("./server//api/health.get.ts")
                .unwrap()
                .as_str(),
            "server/api/health.get.ts"
        );
        assert!(WorkspacePath::parse(".").unwrap().is_root());
        assert!(WorkspacePath::parse("").unwrap().is_root());
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "../../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "a/..",
            "~/x",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(
                WorkspacePath::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(WorkspacePath::parse(&"a".repeat(2000)).is_err());
    }

    #[test]
    fn deserialising_parses() {
        let p: Result<WorkspacePath, _> = serde_json::from_str("\"../x\"");
        assert!(p.is_err());
    }
}
