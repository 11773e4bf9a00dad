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
//! `.turbobackend/` belongs to the platform ([`PLATFORM_DIR`]): a push leaves out whatever
//! the snapshot has there and carries the head's `.turbobackend/` over into the new tree,
//! so the tree compared includes it (an unchanged project still makes no commit).
//! [`CodeHost::commit_file`] writes there: the finalizer commits the signed verification
//! receipt as `.turbobackend/receipt.json` on top of the source commit it names, a
//! fast-forward from exactly that commit (none when `main` moved on, none again when the
//! file already holds those bytes).
//!
//! [`PLATFORM_DIR`]: tb_core::ports::PLATFORM_DIR
//! [`CodeHost::commit_file`]: tb_core::ports::CodeHost::commit_file
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
