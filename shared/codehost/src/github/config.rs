//! How the GitHub adapter is set up: the token (a secret), whose account the repositories
//! go to, and the API it talks to.

use std::time::Duration;

use tb_core::secret::Secret;

use super::RetryPolicy;
use crate::error::CodeHostError;

/// A GitHub token (PAT, fine-grained PAT, OAuth or installation token). It is only ever
/// sent in the `Authorization` header: never formatted by `Debug`, never put in a URL,
/// never written to disk. `Debug` prints `GitHubToken(<redacted>)`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GitHubToken(Secret);

impl GitHubToken {
    pub fn new(token: impl Into<String>) -> Self {
        GitHubToken(Secret::new(token))
    }

    pub(crate) fn expose(&self) -> &str {
        self.0.expose()
    }
}

#[derive(Clone, Debug)]
pub struct GitHubConfig {
    pub token: GitHubToken,
    /// The organization that owns the repositories; `None` = the token's own user (looked
    /// up once with `GET /user`).
    pub owner: Option<String>,
    /// The REST API root, without a trailing slash: `https://api.github.com`, or
    /// `https://HOST/api/v3` for GitHub Enterprise Server, or a local test server.
    pub api_base: String,
    /// Repository name = prefix + project id.
    pub repo_prefix: String,
    /// Create repositories private (the default).
    pub private: bool,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// Bound on waiting for an answer's bytes.
    pub read_timeout: Duration,
}

impl GitHubConfig {
    pub const DEFAULT_API_BASE: &'static str = "https://api.github.com";
    pub const DEFAULT_REPO_PREFIX: &'static str = "turbobackend-";

    /// Private repositories of the token's user on github.com.
    pub fn new(token: GitHubToken) -> Self {
        GitHubConfig {
            token,
            owner: None,
            api_base: Self::DEFAULT_API_BASE.to_owned(),
            repo_prefix: Self::DEFAULT_REPO_PREFIX.to_owned(),
            private: true,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), CodeHostError> {
        let invalid = |m: String| Err(CodeHostError::Config(m));
        let token = self.token.expose();
        if token.is_empty() {
            return invalid("the GitHub token is empty".into());
        }
        if token.bytes().any(|b| !b.is_ascii_graphic()) {
            return invalid("the GitHub token has whitespace or non-ASCII characters".into());
        }
        if let Some(owner) = &self.owner
            && !is_account_name(owner)
        {
            return invalid(format!(
                "owner `{owner}` is not a GitHub account name (letters, digits and `-`)"
            ));
        }
        if !(self.api_base.starts_with("https://") || self.api_base.starts_with("http://")) {
            return invalid(format!(
                "api_base `{}` is not an http(s) URL",
                self.api_base
            ));
        }
        if self.api_base.contains('@') || self.api_base.contains('?') {
            return invalid("api_base must not carry credentials or a query".into());
        }
        if !self
            .repo_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return invalid(format!(
                "repo_prefix `{}` has characters GitHub does not allow in names",
                self.repo_prefix
            ));
        }
        if self.retry.max_attempts == 0 {
            return invalid("retry.max_attempts must be at least 1".into());
        }
        Ok(())
    }
}

/// GitHub logins and organization names: 1-39 of letters, digits and `-`.
pub(crate) fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 39
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_token() {
        let config = GitHubConfig::new(GitHubToken::new("ghp_supersecret123"));
        let shown = format!("{config:?} {:?}", config.token);
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn a_bad_configuration_is_refused() {
        let ok = GitHubConfig::new(GitHubToken::new("t"));
        assert!(ok.validate().is_ok());
        for config in [
            GitHubConfig::new(GitHubToken::new("")),
            GitHubConfig::new(GitHubToken::new("a b")),
            GitHubConfig {
                owner: Some("acme/evil".into()),
                ..ok.clone()
            },
            GitHubConfig {
                api_base: "ftp://x".into(),
                ..ok.clone()
            },
            GitHubConfig {
                api_base: "https://user:pw@x".into(),
                ..ok.clone()
            },
            GitHubConfig {
                repo_prefix: "a/b".into(),
                ..ok.clone()
            },
        ] {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
