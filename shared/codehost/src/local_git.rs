//! [`CodeHost`] on disk: one bare repository per project at
//! `{root}/turbobackend-{project}.git`, written with git plumbing through the `git` CLI.
//!
//! A push writes the blobs (`git hash-object -w --stdin`), builds the tree in a temporary
//! index (`GIT_INDEX_FILE` + `update-index -z --add --index-info` + `write-tree`),
//! compares it with the tree of `main`'s head (equal → no commit), makes the commit
//! (`commit-tree -p <head>`) and moves `main` with a compare-and-swap
//! (`update-ref refs/heads/main <new> <old>`), starting again if another push moved it.
//!
//! `git` runs with a clean environment (see `git_cli`), and author and committer are
//! fixed (`turbobackend <bot@turbobackend.dev>`) with both dates taken from the host's
//! clock at push time (whole seconds, UTC), so a commit id depends only on the tree, the
//! parent, the message and that time. The clock can be replaced
//! ([`LocalGitCodeHost::with_clock`]).

mod git_cli;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tb_core::domain::ProjectId;
use tb_core::ports::{CodeHost, PortError, Pushed, Snapshot};

use crate::error::CodeHostError;
use crate::tree::ProjectTree;
use crate::{AUTHOR_EMAIL, AUTHOR_NAME};
use git_cli::GitCli;

/// The branch every project is committed on.
pub const BRANCH: &str = "main";
const REPO_PREFIX: &str = "turbobackend-";
const ZERO_ID: &str = "0000000000000000000000000000000000000000";
/// Times a push re-reads `main` after finding it moved.
const MAX_BRANCH_ATTEMPTS: u32 = 3;

/// The time a push's commit is dated with.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub struct LocalGitCodeHost {
    root: PathBuf,
    git: GitCli,
    clock: Clock,
    /// The empty `HOME` git runs with; removed on drop.
    _home: tempfile::TempDir,
}

impl fmt::Debug for LocalGitCodeHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalGitCodeHost")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl LocalGitCodeHost {
    /// Repositories go under `root` (created on first push; made absolute now).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, CodeHostError> {
        let root = std::path::absolute(root.into()).map_err(|source| CodeHostError::Io {
            what: "resolving the repository root".into(),
            source,
        })?;
        let home = tempfile::Builder::new()
            .prefix("tb-git-home-")
            .tempdir()
            .map_err(|source| CodeHostError::Io {
                what: "creating an empty HOME for git".into(),
                source,
            })?;
        Ok(LocalGitCodeHost {
            root,
            git: GitCli::new(home.path().to_path_buf()),
            clock: Arc::new(SystemTime::now),
            _home: home,
        })
    }

    /// Dates commits with `clock` instead of the system time.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The bare repository of `project`.
    pub fn repo_path(&self, project: &ProjectId) -> PathBuf {
        self.root
            .join(format!("{REPO_PREFIX}{}.git", project.as_str()))
    }

    /// [`CodeHost::push`] with this crate's error type.
    pub async fn push_snapshot(
        &self,
        project: &ProjectId,
        snapshot: &Snapshot,
        message: &str,
    ) -> Result<Pushed, CodeHostError> {
        let tree = ProjectTree::new(snapshot)?;
        let repo = self.repo_path(project);
        self.ensure_repository(&repo).await?;
        let tree_id = self.write_tree(&repo, &tree).await?;
        let repo_url = format!("file://{}", repo.display());
        let seconds = (self.clock)()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let date = format!("@{seconds} +0000");
        for _ in 0..MAX_BRANCH_ATTEMPTS {
            let head = self.head(&repo).await?;
            if let Some(head) = &head {
                let head_tree = self
                    .git
                    .check(
                        Some(&repo),
                        &["rev-parse", "--verify", &format!("{head}^{{tree}}")],
                        &[],
                        None,
                    )
                    .await?
                    .line();
                if head_tree == tree_id {
                    return Ok(Pushed {
                        repo_url,
                        commit_sha: head.clone(),
                        committed: false,
                    });
                }
            }
            let mut args = vec!["commit-tree", tree_id.as_str()];
            if let Some(head) = &head {
                args.extend(["-p", head.as_str()]);
            }
            let env = [
                ("GIT_AUTHOR_NAME", AUTHOR_NAME),
                ("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL),
                ("GIT_AUTHOR_DATE", date.as_str()),
                ("GIT_COMMITTER_NAME", AUTHOR_NAME),
                ("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL),
                ("GIT_COMMITTER_DATE", date.as_str()),
            ];
            let commit = self
                .git
                .check(Some(&repo), &args, &env, Some(message.as_bytes()))
                .await?
                .line();
            let old = head.as_deref().unwrap_or(ZERO_ID);
            let reference = format!("refs/heads/{BRANCH}");
            let moved = self
                .git
                .run(
                    Some(&repo),
                    &["update-ref", &reference, &commit, old],
                    &[],
                    None,
                )
                .await?;
            if moved.success {
                return Ok(Pushed {
                    repo_url,
                    commit_sha: commit,
                    committed: true,
                });
            }
            tracing::info!(repo = %repo.display(), error = %moved.stderr, "main moved during the push; reading it again");
        }
        Err(CodeHostError::BranchMoved {
            branch: BRANCH.into(),
        })
    }

    async fn ensure_repository(&self, repo: &Path) -> Result<(), CodeHostError> {
        if repo.join("HEAD").is_file() {
            return Ok(());
        }
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|source| CodeHostError::Io {
                what: format!("creating {}", self.root.display()),
                source,
            })?;
        let path = repo.to_string_lossy();
        self.git
            .check(
                None,
                &["init", "--bare", "-q", "-b", BRANCH, &path],
                &[],
                None,
            )
            .await?;
        Ok(())
    }

    /// Writes the blobs and the tree; returns the tree id.
    async fn write_tree(
        &self,
        repo: &Path,
        tree: &ProjectTree<'_>,
    ) -> Result<String, CodeHostError> {
        let mut written = HashSet::new();
        for file in &tree.files {
            if !written.insert(file.blob_id.as_str()) {
                continue;
            }
            let id = self
                .git
                .check(
                    Some(repo),
                    &["hash-object", "-w", "--stdin"],
                    &[],
                    Some(file.contents),
                )
                .await?
                .line();
            if id != file.blob_id {
                return Err(CodeHostError::Internal(format!(
                    "git stored {} as {id}, expected {}",
                    file.path, file.blob_id
                )));
            }
        }
        let mut index_info = Vec::new();
        for file in &tree.files {
            index_info.extend_from_slice(format!("{} {}\t", file.mode(), file.blob_id).as_bytes());
            index_info.extend_from_slice(file.path.as_bytes());
            index_info.push(0);
        }
        let scratch = tempfile::tempdir().map_err(|source| CodeHostError::Io {
            what: "creating a temporary index".into(),
            source,
        })?;
        let index = scratch.path().join("index");
        let index = index.to_string_lossy();
        let env = [("GIT_INDEX_FILE", index.as_ref())];
        self.git
            .check(
                Some(repo),
                &["update-index", "-z", "--add", "--index-info"],
                &env,
                Some(&index_info),
            )
            .await?;
        let tree_id = self
            .git
            .check(Some(repo), &["write-tree"], &env, None)
            .await?
            .line();
        if tree_id != tree.tree_id {
            return Err(CodeHostError::Internal(format!(
                "git wrote tree {tree_id}, expected {}",
                tree.tree_id
            )));
        }
        Ok(tree_id)
    }

    /// The commit `main` points at, if any.
    async fn head(&self, repo: &Path) -> Result<Option<String>, CodeHostError> {
        let reference = format!("refs/heads/{BRANCH}^{{commit}}");
        let output = self
            .git
            .run(
                Some(repo),
                &["rev-parse", "-q", "--verify", &reference],
                &[],
                None,
            )
            .await?;
        Ok(output.success.then(|| output.line()))
    }
}

#[async_trait]
impl CodeHost for LocalGitCodeHost {
    async fn push(
        &self,
        project: &ProjectId,
        snapshot: &Snapshot,
        message: &str,
    ) -> Result<Pushed, PortError> {
        let pushed = self
            .push_snapshot(project, snapshot, message)
            .await
            .inspect_err(
                |e| tracing::warn!(project = %project, error = %e, "local git push failed"),
            )?;
        tracing::info!(project = %project, repo = %pushed.repo_url, commit = %pushed.commit_sha, committed = pushed.committed, "committed to the local repository");
        Ok(pushed)
    }

    /// The local repository is kept as it is: deleting a project never loses its code.
    async fn archive(&self, project: &ProjectId) -> Result<serde_json::Value, PortError> {
        let repo = self.repo_path(project);
        let exists = tokio::fs::try_exists(&repo).await.unwrap_or(false);
        Ok(serde_json::json!({
            "repository": repo.display().to_string(),
            "kept": exists,
        }))
    }
}
