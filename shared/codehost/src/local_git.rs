//! [`CodeHost`] on disk: one bare repository per project at
//! `{root}/turbobackend-{project}.git`, written with git plumbing through the `git` CLI.
//!
//! A push writes the blobs (`git hash-object -w --stdin`), builds the tree in a temporary
//! index (`GIT_INDEX_FILE`; the head's `.turbobackend/`, listed by `ls-tree -r`, and the
//! snapshot by `update-index -z --add --index-info`; `write-tree`), compares it with the
//! tree of `main`'s head (equal → no commit), makes the commit (`commit-tree -p <head>`)
//! and moves `main` with a compare-and-swap (`update-ref refs/heads/main <new> <old>`),
//! starting again if another push moved it. A file commit
//! ([`CodeHost::commit_file`](tb_core::ports::CodeHost::commit_file)) adds one file to a
//! given parent's tree the same way, and moves `main` only from that parent.
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
use tb_core::ports::{PLATFORM_DIR, Pushed, Snapshot};

use crate::MAX_BRANCH_ATTEMPTS;
use crate::error::CodeHostError;
use crate::file_commit::{Call, FileCommits, HeadCommit};
use crate::tree::ProjectTree;
use crate::{AUTHOR_EMAIL, AUTHOR_NAME};
use git_cli::GitCli;

/// The branch every project is committed on.
pub const BRANCH: &str = "main";
const REPO_PREFIX: &str = "turbobackend-";
const ZERO_ID: &str = "0000000000000000000000000000000000000000";

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

    /// [`CodeHost::push`](tb_core::ports::CodeHost::push) with this crate's error type.
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
        let repo_url = file_url(&repo);
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

    /// [`CodeHost::archive`](tb_core::ports::CodeHost::archive) with this crate's error
    /// type. The local repository is kept as it is: deleting a project never loses its
    /// code.
    pub async fn archive_repository(
        &self,
        project: &ProjectId,
    ) -> Result<serde_json::Value, CodeHostError> {
        let repo = self.repo_path(project);
        let exists = tokio::fs::try_exists(&repo).await.unwrap_or(false);
        Ok(serde_json::json!({
            "repository": repo.display().to_string(),
            "kept": exists,
        }))
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
            .run(Some(repo), &args, &env, Some(message.as_bytes()))
            .await?
            .checked()?
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
            .run(
                Some(repo),
                &["rev-parse", "--verify", &format!("{commit}^{{tree}}")],
                &[],
                None,
            )
            .await?
            .checked()?
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
            .run(
                Some(repo),
                &["ls-tree", "-z", commit, "--", PLATFORM_DIR],
                &[],
                None,
            )
            .await?
            .checked()?;
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
            .run(
                None,
                &["init", "--bare", "-q", "-b", BRANCH, &path],
                &[],
                None,
            )
            .await?
            .checked()?;
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
                .run(
                    Some(repo),
                    &["hash-object", "-w", "--stdin"],
                    &[],
                    Some(file.contents),
                )
                .await?
                .checked()?
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
                .run(Some(repo), &["ls-tree", "-r", "-z", dir], &[], None)
                .await?
                .checked()?;
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
            .run(
                Some(repo),
                &["update-index", "-z", "--add", "--index-info"],
                &env,
                Some(&index_info),
            )
            .await?
            .checked()?;
        let tree_id = self
            .git
            .run(Some(repo), &["write-tree"], &env, None)
            .await?
            .checked()?
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

/// `file://` and the repository's path.
fn file_url(repo: &Path) -> String {
    format!("file://{}", repo.display())
}

/// [`CodeHost::commit_file`](tb_core::ports::CodeHost::commit_file) on the bare repository:
/// the parent's tree in a temporary index (`read-tree`), the file added (`update-index
/// --cacheinfo`), then `write-tree`, `commit-tree -p <parent>` and the compare-and-swap of
/// `main` from the parent to the new commit.
#[async_trait]
impl FileCommits for LocalGitCodeHost {
    /// The bare repository's path.
    type Repo = PathBuf;

    async fn find_parent(
        &self,
        project: &ProjectId,
        parent: &str,
    ) -> Result<(PathBuf, String), CodeHostError> {
        let repo = self.repo_path(project);
        let not_on_main = || CodeHostError::NotOnBranch {
            commit: parent.to_owned(),
            branch: BRANCH.into(),
        };
        if !repo.join("HEAD").is_file() {
            return Err(not_on_main());
        }
        let commit = format!("{parent}^{{commit}}");
        let found = self
            .git
            .run(
                Some(&repo),
                &["rev-parse", "-q", "--verify", &commit],
                &[],
                None,
            )
            .await?;
        if !found.success || found.line() != parent {
            return Err(not_on_main());
        }
        let parent_tree = self.tree_of(&repo, parent).await?;
        Ok((repo, parent_tree))
    }

    fn repo_url(repo: &PathBuf) -> String {
        file_url(repo)
    }

    fn branch(_: &PathBuf) -> String {
        BRANCH.into()
    }

    /// `main`'s commit, then `rev-parse <commit>^{tree} <commit>^@`: its tree, then each
    /// parent, a line each.
    async fn head_commit(&self, repo: &PathBuf) -> Result<Option<HeadCommit>, CodeHostError> {
        let Some(sha) = self.head(repo).await? else {
            return Ok(None);
        };
        let (tree, parents) = (format!("{sha}^{{tree}}"), format!("{sha}^@"));
        let output = self
            .git
            .run(Some(repo), &["rev-parse", &tree, &parents], &[], None)
            .await?
            .checked()?;
        let mut lines = output.stdout.lines().map(|line| line.trim().to_owned());
        Ok(Some(HeadCommit {
            sha,
            tree: lines.next().unwrap_or_default(),
            parents: lines.collect(),
        }))
    }

    async fn file_tree(&self, call: &Call<'_, PathBuf>) -> Result<String, CodeHostError> {
        let repo = &call.repo;
        self.write_blobs(repo, call.file).await?;
        let (_scratch, index) = scratch_index()?;
        let env = [("GIT_INDEX_FILE", index.as_str())];
        self.git
            .run(Some(repo), &["read-tree", &call.parent_tree], &env, None)
            .await?
            .checked()?;
        let file = &call.file.files[0];
        let cacheinfo = format!("{},{},{}", file.mode(), file.blob_id, file.path);
        self.git
            .run(
                Some(repo),
                &["update-index", "--add", "--cacheinfo", &cacheinfo],
                &env,
                None,
            )
            .await?
            .checked()?;
        Ok(self
            .git
            .run(Some(repo), &["write-tree"], &env, None)
            .await?
            .checked()?
            .line())
    }

    async fn commit_on_parent(
        &self,
        call: &Call<'_, PathBuf>,
        tree: &str,
    ) -> Result<Option<String>, CodeHostError> {
        let (repo, parent) = (&call.repo, Some(call.parent));
        let commit = self.commit_tree(repo, tree, parent, call.message).await?;
        let moved = self.move_main(repo, &commit, parent).await?;
        Ok(moved.then_some(commit))
    }
}

impl_code_host!(LocalGitCodeHost, "local git");
