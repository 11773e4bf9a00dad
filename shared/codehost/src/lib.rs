//! Adapters for the [`CodeHost`] port: where a project's source is published.
//!
//! - [`GitHubCodeHost`]: a private GitHub repository per project, written with the Git
//!   Data API over octocrab's HTTP client (the cloud adapter).
//! - [`LocalGitCodeHost`]: a bare git repository per project on disk (the embedded
//!   default).
//!
//! Both commit the whole snapshot as the tree of `main` (the repository's default branch
//! on GitHub), with the head as parent, author and committer
//! `turbobackend <bot@turbobackend.dev>`, and make no commit when the tree is unchanged.
//! A snapshot git cannot hold (no files, a duplicate path, a path that is both a file and
//! a directory, anything under `.git`) is refused before anything is written.
//!
//! [`CodeHost`]: tb_core::ports::CodeHost

pub mod error;
pub mod github;
pub mod local_git;

mod git_object;
mod tree;

pub use error::CodeHostError;
pub use github::{GitHubCodeHost, GitHubConfig, GitHubToken, RetryPolicy};
pub use local_git::LocalGitCodeHost;

/// The author and committer name of every commit.
pub const AUTHOR_NAME: &str = "turbobackend";
/// The author and committer email of every commit.
pub const AUTHOR_EMAIL: &str = "bot@turbobackend.dev";
