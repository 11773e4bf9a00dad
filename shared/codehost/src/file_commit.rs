//! [`CodeHost::commit_file`]: one file committed on top of a given commit, a fast-forward
//! of the branch from exactly that commit. The decisions are made here, the same for
//! every code host; each adapter does the reads and writes ([`FileCommits`]).
//!
//! 1. The parent is looked up, with its tree ([`FileCommits::find_parent`]); a parent the
//!    repository does not have is [`CodeHostError::NotOnBranch`].
//! 2. The branch's head is read. A head that is neither the parent nor a commit whose only
//!    parent is the parent: nothing is committed ([`FileCommit::BranchMoved`]).
//! 3. The parent's tree with the file in it is written (once per call).
//! 4. A head past the parent is this very commit when its tree is that tree (an earlier
//!    call's commit, its answer lost): returned with `committed: false`. Otherwise the
//!    branch moved.
//! 5. At the parent: the parent's own tree back means the file already holds those bytes,
//!    no commit. Otherwise the commit is made and the branch moved from the parent to it;
//!    if it was no longer at the parent, the head is read again (step 2), a few times.
//!
//! [`CodeHost::commit_file`]: tb_core::ports::CodeHost::commit_file

use async_trait::async_trait;
use tb_core::domain::ProjectId;
use tb_core::ports::{FileCommit, Pushed};
use tb_core::sandbox::WorkspacePath;

use crate::MAX_BRANCH_ATTEMPTS;
use crate::error::CodeHostError;
use crate::tree::ProjectTree;

/// A branch's head commit.
pub(crate) struct HeadCommit {
    pub sha: String,
    pub tree: String,
    pub parents: Vec<String>,
}

/// A file commit under way.
pub(crate) struct Call<'a, R> {
    /// The repository, as the code host found it.
    pub repo: R,
    /// The commit the file goes on top of.
    pub parent: &'a str,
    /// The parent's tree.
    pub parent_tree: String,
    /// The one file, laid out as a tree.
    pub file: &'a ProjectTree<'a>,
    pub message: &'a str,
}

/// What committing one file needs of a code host.
#[async_trait]
pub(crate) trait FileCommits: Sync {
    /// A project's repository, as found for the commit.
    type Repo: Send + Sync;

    /// The project's repository and the tree of `parent` in it;
    /// [`CodeHostError::NotOnBranch`] if the repository does not have that commit.
    async fn find_parent(
        &self,
        project: &ProjectId,
        parent: &str,
    ) -> Result<(Self::Repo, String), CodeHostError>;

    /// The repository's URL, as answers name it.
    fn repo_url(repo: &Self::Repo) -> String;

    /// The branch commits go on.
    fn branch(repo: &Self::Repo) -> String;

    /// The branch's head; `None` when the branch does not exist.
    async fn head_commit(&self, repo: &Self::Repo) -> Result<Option<HeadCommit>, CodeHostError>;

    /// Writes the parent's tree with the file added or replaced; returns its id.
    async fn file_tree(&self, call: &Call<'_, Self::Repo>) -> Result<String, CodeHostError>;

    /// Makes the commit of `tree` on top of the parent and moves the branch from the
    /// parent to it: the commit, or `None` when the branch was no longer at the parent.
    async fn commit_on_parent(
        &self,
        call: &Call<'_, Self::Repo>,
        tree: &str,
    ) -> Result<Option<String>, CodeHostError>;
}

/// Commits `contents` as `path` on top of `parent` (see the module's documentation).
pub(crate) async fn commit_file<H: FileCommits>(
    host: &H,
    project: &ProjectId,
    parent: &str,
    path: &WorkspacePath,
    contents: &[u8],
    message: &str,
) -> Result<FileCommit, CodeHostError> {
    let one = crate::tree::one_file(path, contents);
    let file = ProjectTree::new(&one)?;
    let (repo, parent_tree) = host.find_parent(project, parent).await?;
    let call = Call {
        repo,
        parent,
        parent_tree,
        file: &file,
        message,
    };
    let committed = |commit_sha, committed| FileCommit::Committed {
        pushed: Pushed {
            repo_url: H::repo_url(&call.repo),
            commit_sha,
            committed,
        },
    };
    let moved = |head| FileCommit::BranchMoved {
        repo_url: H::repo_url(&call.repo),
        head,
    };
    let mut tree = None;
    for _ in 0..MAX_BRANCH_ATTEMPTS {
        let Some(head) = host.head_commit(&call.repo).await? else {
            return Err(CodeHostError::NotOnBranch {
                commit: parent.to_owned(),
                branch: H::branch(&call.repo),
            });
        };
        if head.sha != parent && head.parents != [parent] {
            return Ok(moved(head.sha));
        }
        let tree = match &tree {
            Some(tree) => tree,
            None => tree.insert(host.file_tree(&call).await?),
        };
        if head.sha != parent {
            // An earlier call's commit (its answer lost) is this very commit.
            return Ok(if head.tree == *tree {
                committed(head.sha, false)
            } else {
                moved(head.sha)
            });
        }
        if *tree == call.parent_tree {
            return Ok(committed(head.sha, false));
        }
        if let Some(commit) = host.commit_on_parent(&call, tree).await? {
            return Ok(committed(commit, true));
        }
    }
    Err(CodeHostError::BranchMoved {
        branch: H::branch(&call.repo),
    })
}
