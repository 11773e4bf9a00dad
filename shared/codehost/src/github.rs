//! [`CodeHost`] on GitHub: one private repository per project, one commit per push made
//! with the Git Data API (no `git` binary, no clone, the token never in a URL).
//!
//! A push:
//!
//! 1. Creates `{prefix}{project}` (`POST /user/repos` or `POST /orgs/{org}/repos`,
//!    `private`, `auto_init: false`). A 422 whose `errors` say the name already exists
//!    means it is there: `GET /repos/{owner}/{name}` and go on.
//! 2. Reads the head of the default branch (`GET …/git/ref/heads/{branch}`; 404 = no such
//!    branch, 409 = the repository has no commit at all) and its commit's tree.
//! 3. Compares the snapshot's tree id, computed locally, with the head's: equal means
//!    nothing changed, and the push ends with `committed: false` having created nothing.
//!    The head's `.turbobackend/` (the platform's: see [`CodeHost`]) counts: when the
//!    head has one, its tree is listed (`GET …/git/trees/{sha}?recursive=1`) and the id
//!    compared is the snapshot's with that directory added.
//! 4. Otherwise creates the tree (`POST …/git/trees`, the head's `.turbobackend/` as an
//!    entry of mode `040000`, type `tree`, by `sha`): UTF-8 files go inline as `content`
//!    (one request for all of them, which matters under GitHub's limit of 80
//!    content-creating requests a minute), other files as blobs (`POST …/git/blobs`,
//!    base64) unless the head tree already holds that blob. GitHub's tree id is compared
//!    with the head's again, then a commit is created (`POST …/git/commits`, parent = the
//!    head, author and committer `turbobackend <bot@turbobackend.dev>`) and the branch
//!    moved to it (`PATCH …/git/refs/heads/{branch}` with `force: false`, or
//!    `POST …/git/refs` if the branch does not exist). If the branch moved meanwhile the
//!    push starts again from step 2 (a few times, then [`PortError::Conflict`]).
//!
//! **Empty repositories.** GitHub's Git Data API refuses to write blobs and trees into a
//! repository with no commit (`409 Git Repository is empty.`), while the contents API
//! (`PUT …/contents/{path}`) may create the first commit. So the first push creates a
//! placeholder commit that way (file `.turbobackend-init`, message
//! [`BOOTSTRAP_MESSAGE`]) and commits the snapshot on top of it, a fast-forward like every
//! other push: organisations commonly forbid force pushes with a ruleset, so the branch is
//! never moved any other way. The repository's history starts with the placeholder. A
//! push that dies in between leaves the placeholder as the head; the next push builds on
//! it the same way.
//!
//! **Refused ref updates.** A 422 on `PATCH …/git/refs/heads/{branch}` that says `Update is
//! not a fast forward` (or that the ref is gone) means another writer moved the branch:
//! the push starts again from step 2. Any other 422 (`Repository rule violations found`,
//! a validation error) will not change by trying again: the push fails at once with
//! GitHub's message.
//!
//! **One file on top of a commit** ([`CodeHost::commit_file`], decided in
//! `crate::file_commit`): a tree made with `base_tree` (the parent's tree) and the one
//! file, a commit, and a fast-forward of the branch from exactly that parent, never
//! forced.
//!
//! **Workflows are never pushed.** Files under `.github/workflows/` are left out of every
//! commit: GitHub Actions in the owner's organisation would run agent-written code with
//! that organisation's secrets. (The archive keeps them.)
//!
//! Retries: 5xx, 429, secondary rate limits (403 with `retry-after`, with
//! `x-ratelimit-remaining: 0`, or saying "rate limit") and network failures are retried
//! with exponential backoff and jitter, honouring `retry-after` and `x-ratelimit-reset`;
//! a wait longer than [`RetryPolicy::max_wait`] ends the push with a transient error.
//! 401, 403 and 404 are permanent errors that say what to check.
//!
//! [`PortError::Conflict`]: tb_core::ports::PortError::Conflict
//! [`CodeHost`]: tb_core::ports::CodeHost
//! [`CodeHost::commit_file`]: tb_core::ports::CodeHost::commit_file

mod api;
mod config;
mod retry;
mod wire;

use std::collections::{HashMap, HashSet};
use std::fmt;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::Method;
use serde_json::{Value, json};
use tb_core::domain::ProjectId;
use tb_core::ports::{PLATFORM_DIR, Pushed, Snapshot};
use tokio::sync::OnceCell;

pub use config::{GitHubConfig, GitHubToken};
pub use retry::RetryPolicy;

use crate::MAX_BRANCH_ATTEMPTS;
use crate::error::CodeHostError;
use crate::file_commit::{Call, FileCommits, HeadCommit};
use crate::tree::{ProjectTree, TreeFile};
use crate::{AUTHOR_EMAIL, AUTHOR_NAME};
use api::{Answer, Api, segment};

/// The message of the placeholder commit that gets an empty repository past the Git Data
/// API's refusal; the first snapshot is committed on top of it.
pub const BOOTSTRAP_MESSAGE: &str = "turbobackend: initialize repository";
const BOOTSTRAP_PATH: &str = ".turbobackend-init";
/// UTF-8 files up to this size go inline in the tree request; larger ones as blobs.
const MAX_INLINE_BYTES: usize = 512 * 1024;

/// Publishes projects to GitHub. The HTTP client is built on first use, inside the
/// caller's Tokio runtime (octocrab spawns a worker task there), and reused: use one
/// value within one runtime. The token's login is looked up once.
pub struct GitHubCodeHost {
    config: GitHubConfig,
    api: OnceCell<Api>,
    login: OnceCell<String>,
}

impl fmt::Debug for GitHubCodeHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitHubCodeHost")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The repository a push goes to.
pub(crate) struct Repo {
    owner: String,
    name: String,
    html_url: String,
    branch: String,
}

impl From<wire::Repository> for Repo {
    fn from(repository: wire::Repository) -> Repo {
        Repo {
            owner: repository.owner.login,
            name: repository.name,
            html_url: repository.html_url,
            branch: repository
                .default_branch
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| "main".to_owned()),
        }
    }
}

impl Repo {
    /// `/repos/{owner}/{name}{rest}`, escaped.
    fn path(&self, rest: &str) -> String {
        format!(
            "/repos/{}/{}{rest}",
            segment(&self.owner),
            segment(&self.name)
        )
    }

    fn ref_path(&self) -> String {
        let branch: Vec<String> = self.branch.split('/').map(segment).collect();
        self.path(&format!("/git/ref/heads/{}", branch.join("/")))
    }

    fn refs_path(&self) -> String {
        let branch: Vec<String> = self.branch.split('/').map(segment).collect();
        self.path(&format!("/git/refs/heads/{}", branch.join("/")))
    }

    fn pushed(&self, commit_sha: String, committed: bool) -> Pushed {
        Pushed {
            repo_url: self.html_url.clone(),
            commit_sha,
            committed,
        }
    }
}

/// The branch as a push finds it.
#[derive(Debug)]
enum Head {
    /// The repository has no commit at all (GitHub answers 409).
    EmptyRepository,
    /// The repository has commits, but not on this branch.
    NoBranch,
    Commit {
        sha: String,
        tree: String,
        parents: Vec<String>,
    },
}

impl Head {
    /// The commit a new commit builds on (the placeholder of an empty repository too).
    fn parent(&self) -> Option<(&str, &str)> {
        match self {
            Head::Commit { sha, tree, .. } => Some((sha, tree)),
            _ => None,
        }
    }

    fn of(commit: wire::Commit) -> Head {
        Head::Commit {
            sha: commit.sha,
            tree: commit.tree.sha,
            parents: commit.parents.into_iter().map(|p| p.sha).collect(),
        }
    }
}

/// How [`GitHubCodeHost::update_branch`] points the branch at a commit.
#[derive(Clone, Copy, Debug)]
enum BranchUpdate {
    /// The branch does not exist yet.
    Create,
    /// From the head it has now, never forced.
    FastForward,
}

/// What a push needs of the head's tree.
struct HeadTree {
    /// Every blob id in it (so they are not uploaded again).
    blobs: HashSet<String>,
    /// The tree id of its `.turbobackend/`, carried into the new tree.
    platform_dir: Option<String>,
}

/// Whether `path` is a GitHub Actions workflow (or anything else under
/// `.github/workflows/`, which Actions reads). Matched without regard to ASCII case.
pub fn is_ci_workflow(path: &str) -> bool {
    const DIR: &str = ".github/workflows/";
    path.len() > DIR.len()
        && path
            .get(..DIR.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(DIR))
}

impl GitHubCodeHost {
    pub fn new(config: GitHubConfig) -> Result<Self, CodeHostError> {
        config.validate()?;
        Ok(GitHubCodeHost {
            config,
            api: OnceCell::new(),
            login: OnceCell::new(),
        })
    }

    /// The repository name of `project`.
    pub fn repo_name(&self, project: &ProjectId) -> String {
        format!("{}{}", self.config.repo_prefix, project.as_str())
    }

    /// [`CodeHost::push`](tb_core::ports::CodeHost::push) with this crate's error type.
    pub async fn push_snapshot(
        &self,
        project: &ProjectId,
        snapshot: &Snapshot,
        message: &str,
    ) -> Result<Pushed, CodeHostError> {
        let kept = Snapshot {
            files: snapshot
                .files
                .iter()
                .filter(|f| !is_ci_workflow(f.path.as_str()))
                .cloned()
                .collect(),
        };
        if kept.files.len() != snapshot.files.len() {
            tracing::info!(
                project = %project,
                left_out = snapshot.files.len() - kept.files.len(),
                "workflows under .github/workflows/ are not pushed"
            );
        }
        let tree = ProjectTree::project(&kept)?;
        let api = self.api().await?;
        let repo = self
            .ensure_repository(api, &self.repo_name(project))
            .await?;
        for _ in 0..MAX_BRANCH_ATTEMPTS {
            if let Some(pushed) = self.commit_once(api, &repo, &tree, message).await? {
                return Ok(pushed);
            }
            tracing::info!(repo = %repo.name, branch = %repo.branch, "branch moved during the push; reading it again");
        }
        Err(CodeHostError::BranchMoved {
            branch: repo.branch.clone(),
        })
    }

    /// [`CodeHost::archive`](tb_core::ports::CodeHost::archive) with this crate's error
    /// type: `PATCH /repos/{owner}/{repo}` with `{"archived": true}` (GitHub REST, "Update a repository",
    /// <https://docs.github.com/en/rest/repos/repos#update-a-repository>: "archived: Whether
    /// to archive this repository. `false` will unarchive a previously archived
    /// repository."). The repository stays, read-only, with all its history. An already
    /// archived one is left as it is; a missing one (404) is noted, not an error.
    pub async fn archive_repository(&self, project: &ProjectId) -> Result<Value, CodeHostError> {
        let api = self.api().await?;
        let owner = self.owner(api).await?;
        let name = self.repo_name(project);
        let path = format!("/repos/{}/{}", segment(&owner), segment(&name));
        let what = format!("reading repository {owner}/{name}");
        let answer = api.send(Method::GET, &path, None, &what).await?;
        if answer.status == 404 {
            return Ok(json!({"repository": format!("{owner}/{name}"), "already_gone": true}));
        }
        if !answer.is_success() {
            return Err(answer.refusal(&what));
        }
        let url = answer.body["html_url"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if answer.body["archived"] == json!(true) {
            return Ok(
                json!({"repository": format!("{owner}/{name}"), "url": url, "archived": true, "already_archived": true}),
            );
        }
        let what = format!("archiving repository {owner}/{name}");
        let answer = api
            .send(
                Method::PATCH,
                &path,
                Some(&json!({"archived": true})),
                &what,
            )
            .await?;
        if !answer.is_success() {
            return Err(answer.refusal(&what));
        }
        tracing::info!(owner = %owner, repo = %name, "archived the repository");
        Ok(json!({"repository": format!("{owner}/{name}"), "url": url, "archived": true}))
    }

    async fn api(&self) -> Result<&Api, CodeHostError> {
        self.api
            .get_or_try_init(|| async { Api::new(&self.config) })
            .await
    }

    /// The account the repositories belong to: the organization, or the token's user.
    async fn owner(&self, api: &Api) -> Result<String, CodeHostError> {
        if let Some(org) = &self.config.owner {
            return Ok(org.clone());
        }
        let login = self
            .login
            .get_or_try_init(|| async {
                let what = "reading the token's user (GET /user)";
                let answer = api.send(Method::GET, "/user", None, what).await?;
                if !answer.is_success() {
                    return Err(answer.refusal(what));
                }
                let user: wire::User = answer.json(what)?;
                if !config::is_account_name(&user.login) {
                    return Err(CodeHostError::Protocol {
                        what: what.into(),
                        message: format!("login `{}` is not an account name", user.login),
                    });
                }
                Ok(user.login)
            })
            .await?;
        Ok(login.clone())
    }

    /// Creates the repository, or finds it when it already exists.
    async fn ensure_repository(&self, api: &Api, name: &str) -> Result<Repo, CodeHostError> {
        let owner = self.owner(api).await?;
        let create_path = match &self.config.owner {
            Some(org) => format!("/orgs/{}/repos", segment(org)),
            None => "/user/repos".to_owned(),
        };
        let what = format!("creating repository {owner}/{name}");
        let body = json!({
            "name": name,
            "private": self.config.private,
            "auto_init": false,
            "description": "Created by turbobackend",
            "has_wiki": false,
            "has_projects": false,
        });
        let answer = api
            .send(Method::POST, &create_path, Some(&body), &what)
            .await?;
        let repository: wire::Repository = if answer.is_success() {
            tracing::info!(owner = %owner, repo = %name, "created the repository");
            answer.json(&what)?
        } else if answer.status == 422 && name_already_exists(&answer) {
            let what = format!("reading repository {owner}/{name}");
            let path = format!("/repos/{}/{}", segment(&owner), segment(name));
            let answer = api.send(Method::GET, &path, None, &what).await?;
            if !answer.is_success() {
                return Err(answer.refusal(&what));
            }
            answer.json(&what)?
        } else {
            return Err(answer.refusal(&what));
        };
        if repository.private != self.config.private {
            tracing::warn!(repo = %name, private = repository.private, "the existing repository's visibility differs from the configured one; left as it is");
        }
        Ok(Repo::from(repository))
    }

    /// The existing repository `name` (`GET /repos/{owner}/{name}`); `None` on a 404.
    async fn find_repository(&self, api: &Api, name: &str) -> Result<Option<Repo>, CodeHostError> {
        let owner = self.owner(api).await?;
        let what = format!("reading repository {owner}/{name}");
        let path = format!("/repos/{}/{}", segment(&owner), segment(name));
        let answer = api.send(Method::GET, &path, None, &what).await?;
        if answer.status == 404 {
            return Ok(None);
        }
        if !answer.is_success() {
            return Err(answer.refusal(&what));
        }
        Ok(Some(Repo::from(answer.json::<wire::Repository>(&what)?)))
    }

    /// Creates `base_tree` with `file` added or replaced; returns the new tree's id.
    async fn create_file_tree(
        &self,
        api: &Api,
        repo: &Repo,
        base_tree: &str,
        file: &TreeFile<'_>,
    ) -> Result<String, CodeHostError> {
        let entry = self
            .file_entry(api, repo, file, &HashSet::new(), &mut HashMap::new())
            .await?;
        let what = format!(
            "creating a tree with {} in {}/{}",
            file.path, repo.owner, repo.name
        );
        let body = json!({ "base_tree": base_tree, "tree": [entry] });
        Self::create_object(api, repo, "trees", &body, what).await
    }

    /// One attempt at committing `tree` on the branch. `None` when the branch moved.
    async fn commit_once(
        &self,
        api: &Api,
        repo: &Repo,
        tree: &ProjectTree<'_>,
        message: &str,
    ) -> Result<Option<Pushed>, CodeHostError> {
        let mut head = self.head(api, repo).await?;
        if matches!(head, Head::EmptyRepository) {
            head = self.create_placeholder(api, repo).await?;
        }
        if let Some((sha, head_tree)) = head.parent()
            && head_tree == tree.tree_id
        {
            return Ok(Some(repo.pushed(sha.to_owned(), false)));
        }
        let head_tree = match head.parent() {
            Some((_, head_tree)) => self.head_tree(api, repo, head_tree).await?,
            None => HeadTree {
                blobs: HashSet::new(),
                platform_dir: None,
            },
        };
        let platform_dir = head_tree.platform_dir.as_deref();
        let local_id = tree.tree_id_with(platform_dir)?;
        if let Some((sha, head_tree)) = head.parent()
            && head_tree == local_id
        {
            return Ok(Some(repo.pushed(sha.to_owned(), false)));
        }
        let tree_sha = self
            .create_tree(api, repo, tree, &head_tree.blobs, platform_dir)
            .await?;
        if tree_sha != local_id {
            tracing::warn!(repo = %repo.name, github = %tree_sha, local = %local_id, "GitHub's tree id differs from the locally computed one");
        }
        if let Some((sha, head_tree)) = head.parent()
            && head_tree == tree_sha
        {
            return Ok(Some(repo.pushed(sha.to_owned(), false)));
        }
        let parent = head.parent().map(|(sha, _)| sha);
        let commit = self
            .create_commit(api, repo, &tree_sha, parent, message)
            .await?;
        let update = match &head {
            Head::NoBranch | Head::EmptyRepository => BranchUpdate::Create,
            Head::Commit { .. } => BranchUpdate::FastForward,
        };
        if self.update_branch(api, repo, &commit, update).await? {
            return Ok(Some(repo.pushed(commit, true)));
        }
        // An earlier attempt's update may have landed with its answer lost.
        match self.head(api, repo).await? {
            Head::Commit { sha, .. } if sha == commit => Ok(Some(repo.pushed(commit, true))),
            _ => Ok(None),
        }
    }

    async fn head(&self, api: &Api, repo: &Repo) -> Result<Head, CodeHostError> {
        let what = format!(
            "reading branch {} of {}/{}",
            repo.branch, repo.owner, repo.name
        );
        let answer = api.send(Method::GET, &repo.ref_path(), None, &what).await?;
        let sha = match answer.status {
            409 => return Ok(Head::EmptyRepository),
            404 => return Ok(Head::NoBranch),
            _ if answer.is_success() => answer.json::<wire::GitRef>(&what)?.object.sha,
            _ => return Err(answer.refusal(&what)),
        };
        let what = format!("reading commit {sha} of {}/{}", repo.owner, repo.name);
        let path = repo.path(&format!("/git/commits/{}", segment(&sha)));
        let answer = api.send(Method::GET, &path, None, &what).await?;
        if !answer.is_success() {
            return Err(answer.refusal(&what));
        }
        Ok(Head::of(answer.json(&what)?))
    }

    /// Creates the placeholder first commit through the contents API.
    async fn create_placeholder(&self, api: &Api, repo: &Repo) -> Result<Head, CodeHostError> {
        let what = format!("initializing empty repository {}/{}", repo.owner, repo.name);
        let body = json!({
            "message": BOOTSTRAP_MESSAGE,
            "content": BASE64.encode(b"This repository is being set up by turbobackend.\n"),
            "author": { "name": AUTHOR_NAME, "email": AUTHOR_EMAIL },
            "committer": { "name": AUTHOR_NAME, "email": AUTHOR_EMAIL },
        });
        let path = repo.path(&format!("/contents/{BOOTSTRAP_PATH}"));
        let answer = api.send(Method::PUT, &path, Some(&body), &what).await?;
        if answer.is_success() {
            return Ok(Head::of(answer.json::<wire::ContentsPut>(&what)?.commit));
        }
        if matches!(answer.status, 409 | 422) {
            // Someone else made the first commit meanwhile.
            return match self.head(api, repo).await? {
                Head::EmptyRepository => Err(CodeHostError::Unavailable {
                    what,
                    message: "the repository still looks empty".into(),
                }),
                head => Ok(head),
            };
        }
        Err(answer.refusal(&what))
    }

    /// The blob ids in a tree (all levels), so they are not uploaded again, and its
    /// `.turbobackend/` (`GET …/git/trees/{sha}?recursive=1`, which lists trees too). A
    /// truncated listing still names blobs that exist; the top level is then read alone if
    /// it did not name `.turbobackend`.
    async fn head_tree(
        &self,
        api: &Api,
        repo: &Repo,
        tree_sha: &str,
    ) -> Result<HeadTree, CodeHostError> {
        let listing = self.list_tree(api, repo, tree_sha, true).await?;
        let platform_dir = |items: &[wire::TreeItem]| {
            items
                .iter()
                .find(|item| item.path == PLATFORM_DIR && item.kind == "tree")
                .map(|item| item.sha.clone())
        };
        let mut found = platform_dir(&listing.tree);
        if listing.truncated {
            tracing::debug!(repo = %repo.name, "tree listing truncated; some blobs may be uploaded again");
            if found.is_none() {
                found = platform_dir(&self.list_tree(api, repo, tree_sha, false).await?.tree);
            }
        }
        Ok(HeadTree {
            blobs: listing
                .tree
                .into_iter()
                .filter(|item| item.kind == "blob")
                .map(|item| item.sha)
                .collect(),
            platform_dir: found,
        })
    }

    async fn list_tree(
        &self,
        api: &Api,
        repo: &Repo,
        tree_sha: &str,
        recursive: bool,
    ) -> Result<wire::Tree, CodeHostError> {
        let what = format!("listing tree {tree_sha} of {}/{}", repo.owner, repo.name);
        let query = if recursive { "?recursive=1" } else { "" };
        let path = repo.path(&format!("/git/trees/{}{query}", segment(tree_sha)));
        let answer = api.send(Method::GET, &path, None, &what).await?;
        if !answer.is_success() {
            return Err(answer.refusal(&what));
        }
        answer.json(&what)
    }

    /// Creates the whole tree, with `platform_dir` (a tree of the repository) as
    /// `.turbobackend/`; returns GitHub's id for it.
    async fn create_tree(
        &self,
        api: &Api,
        repo: &Repo,
        tree: &ProjectTree<'_>,
        known: &HashSet<String>,
        platform_dir: Option<&str>,
    ) -> Result<String, CodeHostError> {
        let mut uploaded: HashMap<&str, String> = HashMap::new();
        let mut entries = Vec::with_capacity(tree.files.len() + 1);
        for file in &tree.files {
            entries.push(
                self.file_entry(api, repo, file, known, &mut uploaded)
                    .await?,
            );
        }
        if let Some(dir) = platform_dir {
            // GitHub REST, "Create a tree": `mode` `040000` "for subdirectory (tree)",
            // `type` `tree`, `sha` of an existing tree.
            entries.push(
                json!({ "path": PLATFORM_DIR, "mode": "040000", "type": "tree", "sha": dir }),
            );
        }
        let what = format!(
            "creating a tree of {} files in {}/{}",
            tree.files.len(),
            repo.owner,
            repo.name
        );
        let body = json!({ "tree": entries });
        Self::create_object(api, repo, "trees", &body, what).await
    }

    /// The tree entry of `file`: by `sha` when the repository holds the blob, else inline
    /// `content` (UTF-8), else a blob uploaded now (once per id, kept in `uploaded`).
    async fn file_entry<'f>(
        &self,
        api: &Api,
        repo: &Repo,
        file: &'f TreeFile<'_>,
        known: &HashSet<String>,
        uploaded: &mut HashMap<&'f str, String>,
    ) -> Result<Value, CodeHostError> {
        let mut entry = json!({ "path": file.path, "mode": file.mode(), "type": "blob" });
        if known.contains(&file.blob_id) {
            entry["sha"] = json!(file.blob_id);
        } else if let Some(text) = inline_text(file) {
            entry["content"] = json!(text);
        } else {
            if !uploaded.contains_key(file.blob_id.as_str()) {
                let sha = self.create_blob(api, repo, file).await?;
                uploaded.insert(&file.blob_id, sha);
            }
            entry["sha"] = json!(uploaded[file.blob_id.as_str()]);
        }
        Ok(entry)
    }

    async fn create_blob(
        &self,
        api: &Api,
        repo: &Repo,
        file: &TreeFile<'_>,
    ) -> Result<String, CodeHostError> {
        let what = format!("uploading {} to {}/{}", file.path, repo.owner, repo.name);
        let body = json!({ "content": BASE64.encode(file.contents), "encoding": "base64" });
        let sha = Self::create_object(api, repo, "blobs", &body, what.clone()).await?;
        if sha != file.blob_id {
            return Err(CodeHostError::Protocol {
                what,
                message: format!("blob id {sha}, expected {}", file.blob_id),
            });
        }
        Ok(sha)
    }

    async fn create_commit(
        &self,
        api: &Api,
        repo: &Repo,
        tree_sha: &str,
        parent: Option<&str>,
        message: &str,
    ) -> Result<String, CodeHostError> {
        let what = format!("creating a commit in {}/{}", repo.owner, repo.name);
        let person = json!({ "name": AUTHOR_NAME, "email": AUTHOR_EMAIL });
        let body = json!({
            "message": message,
            "tree": tree_sha,
            "parents": parent.into_iter().collect::<Vec<_>>(),
            "author": person,
            "committer": person,
        });
        Self::create_object(api, repo, "commits", &body, what).await
    }

    /// Points the branch at `commit`: creates it (`POST …/git/refs`), or moves it
    /// (`PATCH …/git/refs/heads/{branch}`, a fast-forward, never forced). False when
    /// another writer got there first: the branch exists already, or it moved. Any other
    /// refusal (a repository rule, a validation error) is returned as GitHub worded it.
    async fn update_branch(
        &self,
        api: &Api,
        repo: &Repo,
        commit: &str,
        update: BranchUpdate,
    ) -> Result<bool, CodeHostError> {
        let (method, path, body, doing) = match update {
            BranchUpdate::Create => (
                Method::POST,
                repo.path("/git/refs"),
                json!({ "ref": format!("refs/heads/{}", repo.branch), "sha": commit }),
                "creating",
            ),
            BranchUpdate::FastForward => (
                Method::PATCH,
                repo.refs_path(),
                json!({ "sha": commit, "force": false }),
                "moving",
            ),
        };
        let what = format!(
            "{doing} branch {} of {}/{}",
            repo.branch, repo.owner, repo.name
        );
        let answer = api.send(method, &path, Some(&body), &what).await?;
        let overtaken = match update {
            BranchUpdate::Create => answer.message.contains("Reference already exists"),
            BranchUpdate::FastForward => branch_moved(&answer.message),
        };
        match answer.status {
            _ if answer.is_success() => Ok(true),
            422 if overtaken => Ok(false),
            _ => Err(answer.refusal(&what)),
        }
    }

    /// Creates a Git object of `kind` (`blobs`, `trees`, `commits`: `POST …/git/{kind}`);
    /// returns the `sha` of the 201 answer.
    async fn create_object(
        api: &Api,
        repo: &Repo,
        kind: &str,
        body: &Value,
        what: String,
    ) -> Result<String, CodeHostError> {
        let path = repo.path(&format!("/git/{kind}"));
        let answer = api.send(Method::POST, &path, Some(body), &what).await?;
        if answer.status == 409 {
            // The repository looks empty again (replication lag right after its first
            // commit): worth another try later.
            return Err(CodeHostError::Unavailable {
                what,
                message: format!("409 {}", answer.message),
            });
        }
        if !answer.is_success() {
            return Err(answer.refusal(&what));
        }
        Ok(answer.json::<wire::Sha>(&what)?.sha)
    }
}

/// [`CodeHost::commit_file`](tb_core::ports::CodeHost::commit_file) over the Git Data API
/// (GitHub REST, "Git trees", "Git commits", "Git references"): the parent read with
/// `GET …/git/commits/{parent}`; the tree created with `{"base_tree": <the parent's tree>,
/// "tree": [<the file>]}` ("Entries defined in the tree parameter will overwrite items
/// from base_tree with the same path"); the branch moved with `force: false`, a 422
/// `Update is not a fast forward` meaning it moved meanwhile.
#[async_trait]
impl FileCommits for GitHubCodeHost {
    type Repo = Repo;

    async fn find_parent(
        &self,
        project: &ProjectId,
        parent: &str,
    ) -> Result<(Repo, String), CodeHostError> {
        let api = self.api().await?;
        let not_on = |branch: &str| CodeHostError::NotOnBranch {
            commit: parent.to_owned(),
            branch: branch.to_owned(),
        };
        let Some(repo) = self.find_repository(api, &self.repo_name(project)).await? else {
            return Err(not_on("main"));
        };
        let what = format!("reading commit {parent} of {}/{}", repo.owner, repo.name);
        let path = repo.path(&format!("/git/commits/{}", segment(parent)));
        let answer = api.send(Method::GET, &path, None, &what).await?;
        let parent_tree = match answer.status {
            404 | 409 | 422 => return Err(not_on(&repo.branch)),
            _ if answer.is_success() => answer.json::<wire::Commit>(&what)?.tree.sha,
            _ => return Err(answer.refusal(&what)),
        };
        Ok((repo, parent_tree))
    }

    fn repo_url(repo: &Repo) -> String {
        repo.html_url.clone()
    }

    fn branch(repo: &Repo) -> String {
        repo.branch.clone()
    }

    async fn head_commit(&self, repo: &Repo) -> Result<Option<HeadCommit>, CodeHostError> {
        let api = self.api().await?;
        Ok(match self.head(api, repo).await? {
            Head::Commit { sha, tree, parents } => Some(HeadCommit { sha, tree, parents }),
            Head::EmptyRepository | Head::NoBranch => None,
        })
    }

    async fn file_tree(&self, call: &Call<'_, Repo>) -> Result<String, CodeHostError> {
        let api = self.api().await?;
        let file = &call.file.files[0];
        self.create_file_tree(api, &call.repo, &call.parent_tree, file)
            .await
    }

    /// GitHub refuses a branch update that is not a fast-forward: the parent is not sent.
    async fn commit_on_parent(
        &self,
        call: &Call<'_, Repo>,
        tree: &str,
    ) -> Result<Option<String>, CodeHostError> {
        let (api, repo) = (self.api().await?, &call.repo);
        let commit = self
            .create_commit(api, repo, tree, Some(call.parent), call.message)
            .await?;
        let moved = self
            .update_branch(api, repo, &commit, BranchUpdate::FastForward)
            .await?;
        Ok(moved.then_some(commit))
    }
}

/// The file's text if it can travel inline in a tree request.
fn inline_text<'a>(file: &TreeFile<'a>) -> Option<&'a str> {
    if file.contents.len() > MAX_INLINE_BYTES || file.contents.contains(&0) {
        return None;
    }
    std::str::from_utf8(file.contents).ok()
}

/// Whether a 422 on a ref update says the branch moved: GitHub's `Update is not a fast
/// forward`, or `Reference does not exist` (deleted meanwhile). Rule violations
/// (`Repository rule violations found…`) and validation errors (`Object does not exist`,
/// `Validation Failed`) are not: trying again cannot help.
fn branch_moved(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("not a fast forward")
        || m.contains("not a fast-forward")
        || m.contains("reference does not exist")
}

/// Whether a 422 from repository creation says the name is taken.
fn name_already_exists(answer: &Answer) -> bool {
    let Some(errors) = answer.body.get("errors").and_then(Value::as_array) else {
        return false;
    };
    errors.iter().any(|error| {
        let text = match error {
            Value::String(s) => s.as_str(),
            other => {
                let field = other.get("field").and_then(Value::as_str);
                if field.is_some_and(|f| f != "name") {
                    return false;
                }
                other.get("message").and_then(Value::as_str).unwrap_or("")
            }
        };
        text.contains("already exists")
    })
}

impl_code_host!(GitHubCodeHost, "GitHub");

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: Value) -> Answer {
        Answer {
            status: 422,
            message: "Repository creation failed.".into(),
            body,
        }
    }

    #[test]
    fn only_a_non_fast_forward_422_means_the_branch_moved() {
        assert!(branch_moved("Update is not a fast forward"));
        assert!(branch_moved("Reference does not exist"));
        assert!(!branch_moved(
            "Repository rule violations found\n\nCannot force-push to this branch\n\n"
        ));
        assert!(!branch_moved(
            "Repository rule violations found\n\nCannot update this protected ref.\n\n"
        ));
        assert!(!branch_moved("Object does not exist"));
        assert!(!branch_moved("Validation Failed"));
    }

    #[test]
    fn workflows_are_recognised_in_any_case() {
        assert!(is_ci_workflow(".github/workflows/ci.yml"));
        assert!(is_ci_workflow(".GitHub/Workflows/deploy.yaml"));
        assert!(is_ci_workflow(".github/workflows/nested/x.yml"));
        assert!(!is_ci_workflow(".github/CODEOWNERS"));
        assert!(!is_ci_workflow(".github/workflows"));
        assert!(!is_ci_workflow("docs/.github/workflows/ci.yml"));
    }

    #[test]
    fn only_a_name_conflict_counts_as_an_existing_repository() {
        assert!(name_already_exists(&answer(json!({
            "message": "Repository creation failed.",
            "errors": [{"resource": "Repository", "code": "custom", "field": "name", "message": "name already exists on this account"}]
        }))));
        assert!(!name_already_exists(&answer(json!({
            "message": "Repository creation failed.",
            "errors": [{"resource": "Repository", "code": "custom", "field": "visibility", "message": "Visibility can't be private. Please upgrade your plan."}]
        }))));
        assert!(!name_already_exists(&answer(
            json!({"message": "Validation Failed"})
        )));
    }
}
