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

/// Implements [`CodeHost`](tb_core::ports::CodeHost) for an adapter from its own methods
/// (`push_snapshot`, `archive_repository`, and `file_commit::FileCommits` for
/// `commit_file`), which return [`CodeHostError`]: each call's result is logged once
/// (`error::logged`, `$host` naming the code host) and handed to the port as a
/// [`PortError`](tb_core::ports::PortError).
macro_rules! impl_code_host {
    ($adapter:ty, $host:literal) => {
        #[async_trait::async_trait]
        impl tb_core::ports::CodeHost for $adapter {
            async fn push(
                &self,
                project: &tb_core::domain::ProjectId,
                snapshot: &tb_core::ports::Snapshot,
                message: &str,
            ) -> Result<tb_core::ports::Pushed, tb_core::ports::PortError> {
                let pushed = self.push_snapshot(project, snapshot, message).await;
                $crate::error::logged($host, project, "push", pushed)
            }

            async fn commit_file(
                &self,
                project: &tb_core::domain::ProjectId,
                parent: &str,
                path: &tb_core::sandbox::WorkspacePath,
                contents: &[u8],
                message: &str,
            ) -> Result<tb_core::ports::FileCommit, tb_core::ports::PortError> {
                let done = $crate::file_commit::commit_file(
                    self, project, parent, path, contents, message,
                )
                .await;
                $crate::error::logged($host, project, &format!("committing {path}"), done)
            }

            async fn archive(
                &self,
                project: &tb_core::domain::ProjectId,
            ) -> Result<serde_json::Value, tb_core::ports::PortError> {
                let archived = self.archive_repository(project).await;
                $crate::error::logged($host, project, "archiving the repository", archived)
            }
        }
    };
}

pub mod error;
pub mod github;
pub mod local_git;

mod file_commit;
mod git_object;
mod tree;

pub use error::CodeHostError;
pub use github::{GitHubCodeHost, GitHubConfig, GitHubToken, RetryPolicy};
pub use local_git::LocalGitCodeHost;

/// Times a push or a file commit reads the branch again after finding it moved.
const MAX_BRANCH_ATTEMPTS: u32 = 3;

/// The author and committer name of every commit.
pub const AUTHOR_NAME: &str = "turbobackend";
/// The author and committer email of every commit.
pub const AUTHOR_EMAIL: &str = "bot@turbobackend.dev";
