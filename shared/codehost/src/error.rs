//! What can go wrong while publishing a snapshot, and how the caller must react
//! ([`PortError`]). Messages never hold a token.

use std::time::Duration;

use tb_core::ports::PortError;

#[derive(Debug, thiserror::Error)]
pub enum CodeHostError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the snapshot cannot be committed: {0}")]
    InvalidSnapshot(String),
    /// 401: the token is wrong, expired or revoked.
    #[error("{what}: GitHub rejected the token (401 {message}); check the configured token")]
    Unauthorized { what: String, message: String },
    /// 403 that is not a rate limit: the token lacks a permission or scope.
    #[error(
        "{what}: GitHub refused the request (403 {message}); the token lacks the permission (classic: `repo`; fine-grained: Administration and Contents write)"
    )]
    Forbidden { what: String, message: String },
    /// 404: what was asked for does not exist, or the token cannot see it.
    #[error("{what}: not found (404 {message}); it does not exist or the token cannot see it")]
    NotFound { what: String, message: String },
    /// Any other 4xx: the request will not succeed as sent.
    #[error("{what}: GitHub refused the request ({status} {message})")]
    Rejected {
        what: String,
        status: u16,
        message: String,
    },
    /// Rate limited for longer than this adapter waits; try again after `wait`.
    #[error("{what}: rate limited by GitHub ({status}); retry in about {}s", wait.as_secs())]
    RateLimited {
        what: String,
        status: u16,
        wait: Duration,
    },
    /// 5xx or a network failure, still failing after the retries.
    #[error("{what}: GitHub unavailable: {message}")]
    Unavailable { what: String, message: String },
    /// A 2xx answer this adapter cannot read.
    #[error("{what}: unexpected answer from GitHub: {message}")]
    Protocol { what: String, message: String },
    /// The branch kept moving under this push (another writer).
    #[error("the branch `{branch}` moved while pushing; try again")]
    BranchMoved { branch: String },
    /// A file was to be committed on top of a commit the branch does not have.
    #[error("commit {commit} is not on the branch `{branch}` of the repository")]
    NotOnBranch { commit: String, branch: String },
    /// A `git` command failed.
    #[error("git {command} failed: {message}")]
    Git { command: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CodeHostError> for PortError {
    fn from(error: CodeHostError) -> PortError {
        let message = error.to_string();
        match error {
            CodeHostError::RateLimited { .. }
            | CodeHostError::Unavailable { .. }
            | CodeHostError::Io { .. } => PortError::Transient(message),
            CodeHostError::BranchMoved { .. } => PortError::Conflict(message),
            CodeHostError::Config(_)
            | CodeHostError::InvalidSnapshot(_)
            | CodeHostError::Unauthorized { .. }
            | CodeHostError::Forbidden { .. }
            | CodeHostError::NotFound { .. }
            | CodeHostError::Rejected { .. }
            | CodeHostError::Protocol { .. }
            | CodeHostError::Git { .. }
            | CodeHostError::NotOnBranch { .. }
            | CodeHostError::Internal(_) => PortError::Permanent(message),
        }
    }
}

/// An adapter operation's result for the port, logged once: its outcome at info, its
/// failure at warn (`host`: which code host, `what`: which operation).
pub(crate) fn logged<T: std::fmt::Debug>(
    host: &str,
    project: &tb_core::domain::ProjectId,
    what: &str,
    result: Result<T, CodeHostError>,
) -> Result<T, PortError> {
    match &result {
        Ok(done) => tracing::info!(project = %project, outcome = ?done, "{host}: {what} done"),
        Err(e) => tracing::warn!(project = %project, error = %e, "{host}: {what} failed"),
    }
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_how_the_caller_must_react() {
        let transient = CodeHostError::RateLimited {
            what: "creating a blob".into(),
            status: 403,
            wait: Duration::from_secs(60),
        };
        assert!(matches!(PortError::from(transient), PortError::Transient(m) if m.contains("60s")));
        let unauthorized = CodeHostError::Unauthorized {
            what: "GET /user".into(),
            message: "Bad credentials".into(),
        };
        assert!(
            matches!(PortError::from(unauthorized), PortError::Permanent(m) if m.contains("token"))
        );
        let moved = CodeHostError::BranchMoved {
            branch: "main".into(),
        };
        assert!(matches!(PortError::from(moved), PortError::Conflict(_)));
    }
}
