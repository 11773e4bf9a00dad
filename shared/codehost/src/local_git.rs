//! [`CodeHost`] on disk: one bare repository per project at
//! `{root}/turbobackend-{project}.git`, written with git plumbing through the `git` CLI.
//!
//! A push writes the blobs (`git hash-object -w --stdin`), builds the tree in a temporary
//! index (`GIT_INDEX_FILE`; the head's `.turbobackend/`, listed by `ls-tree -r`, and the
//! snapshot by `update-index -z --add --index-info`; `write-tree`), compares it with the
//! tree of `main`'s head (equal → no commit), makes the commit (`commit-tree -p <head>`)
//! and moves `main` with a compare-and-swap (`update-ref refs/heads/main <new> <old>`),
//! starting again if another push moved it. [`LocalGitCodeHost::commit_file_on_main`]
//! adds one file to a given parent's tree the same way, and moves `main` only from that
//! parent.
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
use tb_core::ports::{CodeHost, FileCommit, PLATFORM_DIR, PortError, Pushed, Snapshot};
use tb_core::sandbox::WorkspacePath;

use crate::error::{CodeHostError, logged};
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
        let tree = ProjectTree::project(snapshot)?;
        let repo = self.repo_path(project);
        self.ensure_repository(&repo).await?;
        self.write_blobs(&repo, &tree).await?;
        let repo_url = format!("file://{}", repo.display());
        for _ in 0..MAX_BRANCH_ATTEMPTS {
            let head = self.head(&repo).await?;
            let platform_dir = match &head {
                Some(head) => self.platform_dir(&repo, head).await?,
                None => None,
            };
            let tree_id = self
                .write_tree(&repo, &tree, platform_dir.as_deref())
                .await?;
            if let Some(head) = &head
                && self.tree_of(&repo, head).await? == tree_id
            {
                return Ok(Pushed {
                    repo_url,
                    commit_sha: head.clone(),
                    committed: false,
                });
            }
            let commit = self
                .commit_tree(&repo, &tree_id, head.as_deref(), message)
                .await?;
            if self.move_main(&repo, &commit, head.as_deref()).await? {
                return Ok(Pushed {
                    repo_url,
                    commit_sha: commit,
                    committed: true,
                });
            }
        }
        Err(CodeHostError::BranchMoved {
            branch: BRANCH.into(),
        })
    }

    /// [`CodeHost::commit_file`] with this crate's error type: the parent's tree in a
    /// temporary index (`read-tree`), the file added (`update-index --cacheinfo`), then
    /// `write-tree`, `commit-tree -p <parent>` and the compare-and-swap of `main` from the
    /// parent to the new commit.
    pub async fn commit_file_on_main(
        &self,
        project: &ProjectId,
        parent: &str,
        path: &WorkspacePath,
        contents: &[u8],
        message: &str,
    ) -> Result<FileCommit, CodeHostError> {
        let one = crate::tree::one_file(path, contents);
        let file_tree = ProjectTree::new(&one)?;
        let file = &file_tree.files[0];
        let repo = self.repo_path(project);
        let repo_url = format!("file://{}", repo.display());
        let not_on_main = || CodeHostError::NotOnBranch {
            commit: parent.to_owned(),
            branch: BRANCH.into(),
        };
        if !repo.join("HEAD").is_file() {
            return Err(not_on_main());
        }
        let found = self
            .git
            .run(
                Some(&repo),
                &[
                    "rev-parse",
                    "-q",
                    "--verify",
                    &format!("{parent}^{{commit}}"),
                ],
                &[],
                None,
            )
            .await?;
        if !found.success || found.line() != parent {
            return Err(not_on_main());
        }
        self.write_blobs(&repo, &file_tree).await?;
        let parent_tree = self.tree_of(&repo, parent).await?;
        let (_scratch, index) = scratch_index()?;
        let env = [("GIT_INDEX_FILE", index.as_str())];
        self.git
            .check(Some(&repo), &["read-tree", &parent_tree], &env, None)
            .await?;
        let cacheinfo = format!("{},{},{}", file.mode(), file.blob_id, file.path);
        self.git
            .check(
                Some(&repo),
                &["update-index", "--add", "--cacheinfo", &cacheinfo],
                &env,
                None,
            )
            .await?;
        let tree_id = self
            .git
            .check(Some(&repo), &["write-tree"], &env, None)
            .await?
            .line();
        for _ in 0..MAX_BRANCH_ATTEMPTS {
            let Some(head) = self.head(&repo).await? else {
                return Err(not_on_main());
            };
            if head != parent {
                // An earlier call's commit (its answer lost) is this very commit.
                let parents = self
                    .git
                    .check(
                        Some(&repo),
                        &["rev-list", "--parents", "-n", "1", &head],
                        &[],
                        None,
                    )
                    .await?
                    .line();
                let same = parents == format!("{head} {parent}")
                    && self.tree_of(&repo, &head).await? == tree_id;
                return Ok(if same {
                    FileCommit::Committed {
                        pushed: Pushed {
                            repo_url,
                            commit_sha: head,
                            committed: false,
                        },
                    }
                } else {
                    FileCommit::BranchMoved { repo_url, head }
                });
            }
            if tree_id == parent_tree {
                return Ok(FileCommit::Committed {
                    pushed: Pushed {
                        repo_url,
                        commit_sha: head,
                        committed: false,
                    },
                });
            }
            let commit = self
                .commit_tree(&repo, &tree_id, Some(parent), message)
                .await?;
            if self.move_main(&repo, &commit, Some(parent)).await? {
                return Ok(FileCommit::Committed {
                    pushed: Pushed {
                        repo_url,
                        commit_sha: commit,
                        committed: true,
                    },
                });
            }
        }
        Err(CodeHostError::BranchMoved {
            branch: BRANCH.into(),
        })
    }

    /// `commit-tree` with the fixed author and committer, dated by the clock.
    async fn commit_tree(
        &self,
        repo: &Path,
        tree_id: &str,
        parent: Option<&str>,
        message: &str,
    ) -> Result<String, CodeHostError> {
        let seconds = (self.clock)()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let date = format!("@{seconds} +0000");
        let mut args = vec!["commit-tree", tree_id];
        if let Some(parent) = parent {
            args.extend(["-p", parent]);
        }
        let env = [
            ("GIT_AUTHOR_NAME", AUTHOR_NAME),
            ("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL),
            ("GIT_AUTHOR_DATE", date.as_str()),
            ("GIT_COMMITTER_NAME", AUTHOR_NAME),
            ("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL),
            ("GIT_COMMITTER_DATE", date.as_str()),
        ];
        Ok(self
            .git
            .check(Some(repo), &args, &env, Some(message.as_bytes()))
            .await?
            .line())
    }

    /// Moves `main` from `old` (`None`: it does not exist yet) to `commit`; false if it
    /// was no longer at `old`.
    async fn move_main(
        &self,
        repo: &Path,
        commit: &str,
        old: Option<&str>,
    ) -> Result<bool, CodeHostError> {
        let reference = format!("refs/heads/{BRANCH}");
        let moved = self
            .git
            .run(
                Some(repo),
                &["update-ref", &reference, commit, old.unwrap_or(ZERO_ID)],
                &[],
                None,
            )
            .await?;
        if !moved.success {
            tracing::info!(repo = %repo.display(), error = %moved.stderr, "main moved meanwhile; reading it again");
        }
        Ok(moved.success)
    }

    /// The tree of `commit`.
    async fn tree_of(&self, repo: &Path, commit: &str) -> Result<String, CodeHostError> {
        Ok(self
            .git
            .check(
                Some(repo),
                &["rev-parse", "--verify", &format!("{commit}^{{tree}}")],
                &[],
                None,
            )
            .await?
            .line())
    }

    /// The tree `commit` has as the platform's directory, if any.
    async fn platform_dir(
        &self,
        repo: &Path,
        commit: &str,
    ) -> Result<Option<String>, CodeHostError> {
        let listing = self
            .git
            .check(
                Some(repo),
                &["ls-tree", "-z", commit, "--", PLATFORM_DIR],
                &[],
                None,
            )
            .await?;
        // `<mode> SP <type> SP <id> TAB <path>`
        Ok(listing
            .stdout
            .split('\0')
            .filter_map(|record| record.split_once('\t'))
            .find(|(_, path)| *path == PLATFORM_DIR)
            .and_then(|(meta, _)| match meta.split(' ').collect::<Vec<_>>()[..] {
                ["040000", "tree", id] => Some(id.to_owned()),
                _ => None,
            }))
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

    /// Writes the files' blobs.
    async fn write_blobs(&self, repo: &Path, tree: &ProjectTree<'_>) -> Result<(), CodeHostError> {
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
        Ok(())
    }

    /// Writes the tree of `tree`'s files (their blobs written) with `platform_dir` as the
    /// platform's directory; returns its id.
    async fn write_tree(
        &self,
        repo: &Path,
        tree: &ProjectTree<'_>,
        platform_dir: Option<&str>,
    ) -> Result<String, CodeHostError> {
        let mut index_info = Vec::new();
        if let Some(dir) = platform_dir {
            // Every entry of the carried directory, below it (`ls-tree -r`: `<mode> SP
            // <type> SP <id> TAB <path>`).
            let listing = self
                .git
                .check(Some(repo), &["ls-tree", "-r", "-z", dir], &[], None)
                .await?;
            for record in listing.stdout.split('\0').filter(|r| !r.is_empty()) {
                let Some((meta, path)) = record.split_once('\t') else {
                    continue;
                };
                let mut fields = meta.split(' ');
                let (Some(mode), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                index_info.extend_from_slice(format!("{mode} {id}\t{PLATFORM_DIR}/").as_bytes());
                index_info.extend_from_slice(path.as_bytes());
                index_info.push(0);
            }
        }
        for file in &tree.files {
            index_info.extend_from_slice(format!("{} {}\t", file.mode(), file.blob_id).as_bytes());
            index_info.extend_from_slice(file.path.as_bytes());
            index_info.push(0);
        }
        let (_scratch, index) = scratch_index()?;
        let env = [("GIT_INDEX_FILE", index.as_str())];
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
        let expected = tree.tree_id_with(platform_dir)?;
        if tree_id != expected {
            return Err(CodeHostError::Internal(format!(
                "git wrote tree {tree_id}, expected {expected}"
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

/// A temporary index file's path (for `GIT_INDEX_FILE`), in a directory removed when the
/// returned guard is dropped.
fn scratch_index() -> Result<(tempfile::TempDir, String), CodeHostError> {
    let scratch = tempfile::tempdir().map_err(|source| CodeHostError::Io {
        what: "creating a temporary index".into(),
        source,
    })?;
    let index = scratch.path().join("index").to_string_lossy().into_owned();
    Ok((scratch, index))
}

#[async_trait]
impl CodeHost for LocalGitCodeHost {
    async fn push(
        &self,
        project: &ProjectId,
        snapshot: &Snapshot,
        message: &str,
    ) -> Result<Pushed, PortError> {
        let pushed = self.push_snapshot(project, snapshot, message).await;
        logged("local git", project, "push", pushed)
    }

    async fn commit_file(
        &self,
        project: &ProjectId,
        parent: &str,
        path: &WorkspacePath,
        contents: &[u8],
        message: &str,
    ) -> Result<FileCommit, PortError> {
        let done = self
            .commit_file_on_main(project, parent, path, contents, message)
            .await;
        logged("local git", project, &format!("committing {path}"), done)
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
