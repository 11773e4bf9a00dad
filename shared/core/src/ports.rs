//! The ports of the core, all in this one file: the model, the sandbox and its provider,
//! the dev database, the archive, the code host, the database provisioner, the deployer,
//! the platform records, callbacks and the OAuth store. Each is a small trait; adapters
//! live in other crates. The types they exchange stay beside their subject (`model`,
//! `sandbox`), which also name the model and sandbox traits (`model::Model`,
//! `sandbox::{Sandbox, SandboxProvider}`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_with::skip_serializing_none;

use crate::model::{ModelError, ModelRequest, ModelResponse};
use crate::sandbox::{
    ExecOutput, FileEntry, SandboxError, SandboxInfo, SandboxSpec, WorkspacePath,
};

/// Errors of the outside world, by how the caller must react.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PortError {
    /// Retry with backoff.
    #[error("temporarily unavailable: {0}")]
    Transient(String),
    /// Someone else wrote first (optimistic concurrency); reload and decide again.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Will not succeed as asked.
    #[error("{0}")]
    Permanent(String),
}

/// Rows a `query_database` call returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Rows affected, for statements that do not return rows.
    pub rows_affected: u64,
    /// More rows existed than were returned.
    pub truncated: bool,
}

/// One chat-model call with tools.
#[async_trait]
pub trait Model: Send + Sync {
    /// The model id requests are made with.
    fn id(&self) -> &str;

    /// The context window in tokens (for compaction).
    fn context_window(&self) -> u64 {
        200_000
    }

    async fn complete(&self, request: ModelRequest<'_>) -> Result<ModelResponse, ModelError>;
}

/// Where the agent's commands run: one workspace.
#[async_trait]
pub trait Sandbox: Send + Sync {
    fn id(&self) -> &str;
    /// Runs `command` with `bash` in the workspace root; the whole process tree is killed
    /// at `timeout`.
    async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SandboxError>;
    /// Creates parent directories as needed.
    async fn write_file(&self, path: &WorkspacePath, contents: &[u8]) -> Result<(), SandboxError>;
    async fn read_file(&self, path: &WorkspacePath) -> Result<Vec<u8>, SandboxError>;
    /// Deletes a file or a directory tree.
    async fn delete(&self, path: &WorkspacePath) -> Result<(), SandboxError>;
    /// The direct children of a directory.
    async fn list(&self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, SandboxError>;
}

/// Creates, reattaches to and destroys sandboxes.
#[async_trait]
pub trait SandboxProvider: Send + Sync {
    async fn create(&self, spec: &SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError>;
    /// Reattaches to a sandbox made earlier (by this or another process).
    async fn connect(&self, id: &str) -> Result<Arc<dyn Sandbox>, SandboxError>;
    /// Idempotent: destroying a missing sandbox succeeds.
    async fn destroy(&self, id: &str) -> Result<(), SandboxError>;
    async fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError>;
}

/// The project's development database, which the agent may query while it works. Never the
/// production database of the project, and never with admin rights.
#[async_trait]
pub trait DevDatabase: Send + Sync {
    /// Runs one SQL statement and returns at most `max_rows` rows. Errors are plain text the
    /// model can act on (syntax errors, missing tables).
    async fn query(&self, sql: &str, max_rows: usize) -> Result<QueryRows, String>;

    /// Applies `migrations` in order to a throwaway database and discards it: whether they
    /// apply to an empty database. `Ok(false)`: this database cannot rehearse them.
    async fn rehearse_migrations(&self, migrations: &[Migration]) -> Result<bool, String> {
        let _ = migrations;
        Ok(false)
    }
}

/// Hands out each project's development database (provisioned on first use).
pub trait DevDatabases: Send + Sync {
    fn for_project(&self, project: &crate::domain::ProjectId) -> std::sync::Arc<dyn DevDatabase>;
}

/// Where finished project snapshots and build artifacts are kept.
#[async_trait]
pub trait Archive: Send + Sync {
    /// Stores `bytes` under `key` with its SHA-256 as metadata; storing the same bytes again
    /// is a no-op.
    async fn put(&self, key: &str, bytes: &[u8], sha256: &str) -> Result<(), PortError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError>;
    /// Removes every object whose key starts with `prefix`; returns how many were removed.
    /// Idempotent.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, PortError> {
        Err(PortError::Permanent(format!(
            "this archive cannot remove {prefix}"
        )))
    }
}

/// The project files taken out of the sandbox (no `node_modules`, `.output`, `.git`), sorted
/// by path. `tb-core` has no archive format; adapters pack it as they need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub files: Vec<SnapshotFile>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: crate::sandbox::WorkspacePath,
    pub contents: Vec<u8>,
    pub executable: bool,
}

/// Where a project's source is published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// Browsable URL of the repository.
    pub repo_url: String,
    pub commit_sha: String,
    /// False when the tree was unchanged and no commit was made.
    pub committed: bool,
}

/// The directory of a project's repository that belongs to the platform
/// (`.turbobackend/receipt.json`): never taken from a snapshot, carried over by every push.
pub const PLATFORM_DIR: &str = ".turbobackend";

/// What [`CodeHost::commit_file`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FileCommit {
    /// `main` holds the file: `commit_sha` is the commit made now (`committed`), or the
    /// head that already held those bytes on top of the parent (`committed: false`).
    Committed {
        #[serde(flatten)]
        pushed: Pushed,
    },
    /// `main` had moved past the parent (a newer push): nothing was committed.
    BranchMoved { repo_url: String, head: String },
}

/// A git host: GitHub in the cloud, a bare repository on disk locally.
///
/// The repository's [`PLATFORM_DIR`] (`.turbobackend/`) belongs to the platform: [`push`]
/// ignores whatever a snapshot has there and carries the head's `.turbobackend/` over into
/// the new tree unchanged, so the tree it compares (to make no commit for an unchanged
/// project) includes it; only [`commit_file`] writes there.
///
/// [`push`]: CodeHost::push
/// [`commit_file`]: CodeHost::commit_file
#[async_trait]
pub trait CodeHost: Send + Sync {
    /// Creates the project's repository if missing, then commits `snapshot` as the whole tree
    /// (plus the head's `.turbobackend/`, see above) on `main` (parent: the current head)
    /// unless the tree is unchanged. Idempotent.
    async fn push(
        &self,
        project: &crate::domain::ProjectId,
        snapshot: &Snapshot,
        message: &str,
    ) -> Result<Pushed, PortError>;
    /// Commits one file on `main` on top of `parent` (a commit of `main`): the parent's tree
    /// with `path` holding `contents` (not executable). A fast-forward only: when `main` is
    /// no longer at `parent` nothing is committed ([`FileCommit::BranchMoved`]), unless its
    /// head is already that very commit (`parent` its only parent, that tree its tree: an
    /// earlier call whose answer was lost), which is returned with `committed: false`; so is `parent` itself when `path` already holds
    /// `contents` there. Idempotent.
    async fn commit_file(
        &self,
        project: &crate::domain::ProjectId,
        parent: &str,
        path: &WorkspacePath,
        contents: &[u8],
        message: &str,
    ) -> Result<FileCommit, PortError> {
        let _ = (parent, contents, message);
        Err(PortError::Permanent(format!(
            "this code host cannot commit {path} to the repository of {project}"
        )))
    }
    /// Archives the project's repository (read-only, nothing lost) or keeps it as it is;
    /// says what it did. Idempotent.
    async fn archive(&self, project: &crate::domain::ProjectId) -> Result<Value, PortError> {
        Err(PortError::Permanent(format!(
            "this code host cannot archive the repository of {project}"
        )))
    }
}

/// A project's database, as provisioned. `url` is a secret: never log or show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectDatabase {
    pub database: String,
    pub role: String,
    pub url: String,
}

impl std::fmt::Debug for ProjectDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectDatabase")
            .field("database", &self.database)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// One SQL migration file of a project (`migrations/001_users.sql`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub name: String,
    pub sql: String,
}

/// Creates project databases on a Postgres cluster.
#[async_trait]
pub trait DatabaseProvisioner: Send + Sync {
    /// Creates (or finds) the project's role and database, `dev` or production. Idempotent:
    /// a second call returns the same database (with a freshly set password in `url`).
    async fn provision(
        &self,
        project: &crate::domain::ProjectId,
        dev: bool,
    ) -> Result<ProjectDatabase, PortError>;
    /// Applies the migrations not yet applied, in name order; returns the names applied now.
    async fn migrate(
        &self,
        db: &ProjectDatabase,
        migrations: &[Migration],
    ) -> Result<Vec<String>, PortError>;
    /// Drops the project's databases (production and development) and their roles; says
    /// what was dropped. Idempotent: what is already gone is skipped.
    async fn drop_project(&self, project: &crate::domain::ProjectId) -> Result<Value, PortError> {
        Err(PortError::Permanent(format!(
            "this provisioner cannot drop the databases of {project}"
        )))
    }
}

/// The built app: `.output/` of a Nitro build, as a gzip'd tar with its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub tar_gz: Vec<u8>,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The public URL; `{url}/api/health` answers.
    pub url: String,
    /// What was deployed (an image digest, or a local path), for rollback.
    pub version: String,
    /// Provider-specific ids (app, machine).
    pub details: Value,
}

/// At most this many of an app's log lines are read ([`Deployer::recent_logs`]).
pub const APP_LOG_LINES: usize = 50;
/// At most this many bytes of an app's log are read ([`Deployer::recent_logs`]).
pub const APP_LOG_BYTES: usize = 4096;

/// Runs a built app: Fly.io Machines in the cloud, a local process locally.
#[async_trait]
pub trait Deployer: Send + Sync {
    /// Deploys `artifact` for `project` with `secrets` as environment, waits until
    /// `/api/health` answers (bounded), and returns where it runs. Re-deploying a project
    /// updates it in place. A failed deploy leaves nothing half-running.
    async fn deploy(
        &self,
        project: &crate::domain::ProjectId,
        artifact: &Artifact,
        secrets: &std::collections::BTreeMap<String, String>,
    ) -> Result<Deployment, PortError>;
    /// Runs `version` (an earlier [`Deployment::version`]) again in place of the current one,
    /// and waits until `/api/health` answers. Idempotent.
    async fn rollback(
        &self,
        project: &crate::domain::ProjectId,
        version: &str,
    ) -> Result<Deployment, PortError> {
        let _ = version;
        Err(PortError::Permanent(format!(
            "this deploy target cannot roll {project} back"
        )))
    }
    /// Keeps `version` (the project's last verified version) available to
    /// [`Deployer::rollback`] however many versions are deployed after it. The default does
    /// nothing: a target that keeps every version it ran (Fly's registry keeps each image by
    /// digest) has nothing to do.
    async fn retain(
        &self,
        project: &crate::domain::ProjectId,
        version: &str,
    ) -> Result<(), PortError> {
        let _ = (project, version);
        Ok(())
    }
    /// The running app's most recent log lines, oldest first: at most [`APP_LOG_LINES`]
    /// lines and [`APP_LOG_BYTES`] bytes, the values of the app's secrets (the database URL
    /// and its password) replaced by [`crate::secret::REDACTED`]. `None`: this target cannot
    /// read its apps' logs (the default).
    async fn recent_logs(
        &self,
        project: &crate::domain::ProjectId,
    ) -> Result<Option<Vec<String>>, PortError> {
        let _ = project;
        Ok(None)
    }
    /// Stops and removes everything the project runs on (machines, addresses, the app);
    /// says what was removed. Idempotent: what is already gone is skipped.
    async fn destroy(&self, project: &crate::domain::ProjectId) -> Result<Value, PortError> {
        Err(PortError::Permanent(format!(
            "this deploy target cannot remove {project}"
        )))
    }
}

/// An API key as stored: never the key itself, only its hash and a visible prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub user: crate::domain::UserId,
    /// The first characters of the key, shown in listings (`tb_3f9a1c…`).
    pub prefix: String,
    pub label: String,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// A project as the platform knows it (what `list_projects` / `get_project` show).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub id: crate::domain::ProjectId,
    pub owner: crate::domain::UserId,
    pub name: String,
    pub repo_url: Option<String>,
    pub deploy_url: Option<String>,
    pub database: Option<String>,
    /// The deployed version and the one before it (rollback target).
    pub deployed_version: Option<String>,
    pub previous_version: Option<String>,
    pub last_request: Option<crate::domain::RequestId>,
    /// The newest version that passed the `verify` step: a request whose checks still fail
    /// after its repair rounds goes back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_version: Option<String>,
    /// Whether `deployed_version` passed the `verify` step (`Some(false)`: a first deploy
    /// that failed it stays up for the user to look at, unverified); `None` for versions
    /// deployed before verification existed. After a project rollback: whether the version
    /// rolled back to is `last_verified_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_verified: Option<bool>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Deletion and rollbacks: written only through [`PlatformRecords::save_lifecycle`]
    /// (`save_project` keeps what is stored).
    #[serde(default)]
    pub lifecycle: Lifecycle,
}

impl ProjectRecord {
    /// A project nothing has happened to yet: named `turbobackend-<id>`, created and
    /// updated at `at_ms`.
    pub fn new(id: crate::domain::ProjectId, owner: crate::domain::UserId, at_ms: u64) -> Self {
        ProjectRecord {
            name: format!("turbobackend-{id}"),
            id,
            owner,
            repo_url: None,
            deploy_url: None,
            database: None,
            deployed_version: None,
            previous_version: None,
            last_request: None,
            last_verified_version: None,
            deployed_verified: None,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
            lifecycle: Lifecycle::default(),
        }
    }
}

/// What happened to a project besides its requests: its deletion and its rollbacks, with
/// who asked and when.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Bumped by every write: [`PlatformRecords::save_lifecycle`] stores a lifecycle only
    /// over the one before it (version one less), so of two writers the later is refused.
    #[serde(default)]
    pub version: u64,
    /// Set when every step of the deletion is done.
    pub deleted_at_ms: Option<u64>,
    pub deletion: Option<Operation>,
    /// The last rollback asked for.
    pub rollback: Option<Operation>,
    /// Oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// A deletion or a rollback: a sequence of steps, each recorded with its result when done
/// (a redelivery skips it).
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub requested_by: crate::domain::UserId,
    pub requested_at_ms: u64,
    /// Step name → what it did (what it removed, the version it deployed).
    #[serde(default)]
    pub steps: std::collections::BTreeMap<String, Value>,
    /// The step a service refused for good, and why; asking again retries it.
    pub failure: Option<OperationFailure>,
    /// Requests running on the project that were cancelled first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled_requests: Vec<crate::domain::RequestId>,
    /// For a rollback: the version it goes back to, and the one it leaves.
    pub target_version: Option<String>,
    pub from_version: Option<String>,
    pub finished_at_ms: Option<u64>,
}

impl Operation {
    pub fn new(by: crate::domain::UserId, at_ms: u64) -> Self {
        Operation {
            requested_by: by,
            requested_at_ms: at_ms,
            steps: Default::default(),
            failure: None,
            cancelled_requests: Vec::new(),
            target_version: None,
            from_version: None,
            finished_at_ms: None,
        }
    }

    /// Neither finished nor stopped by a refused step.
    pub fn under_way(&self) -> bool {
        self.finished_at_ms.is_none() && self.failure.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationFailure {
    pub step: String,
    pub reason: String,
}

/// One line of a project's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// `delete requested`, `deleted`, `delete failed`, `rollback requested`, `rolled back`,
    /// `rollback failed`.
    pub action: String,
    /// Who asked.
    pub by: crate::domain::UserId,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// History lines kept per project (the oldest are dropped).
pub const HISTORY_KEPT: usize = 100;

impl Lifecycle {
    /// Bumps the version before a write.
    pub fn next_version(&mut self) {
        self.version += 1;
    }

    pub fn record(&mut self, action: &str, by: &crate::domain::UserId, at_ms: u64, detail: String) {
        self.history.push(HistoryEntry {
            action: action.into(),
            by: by.clone(),
            at_ms,
            detail,
        });
        let excess = self.history.len().saturating_sub(HISTORY_KEPT);
        self.history.drain(..excess);
    }
}

/// Platform records: API keys, projects, the usage ledger. Postgres in the cloud, SQLite
/// locally.
#[async_trait]
pub trait PlatformRecords: Send + Sync {
    /// Creates a key for `user`; returns the record and the key itself (shown once).
    async fn create_key(
        &self,
        user: &crate::domain::UserId,
        label: &str,
    ) -> Result<(ApiKey, String), PortError>;
    /// The live (unrevoked) key matching `presented`, if any.
    async fn authenticate(&self, presented: &str) -> Result<Option<ApiKey>, PortError>;
    async fn list_keys(&self, user: &crate::domain::UserId) -> Result<Vec<ApiKey>, PortError>;
    /// True if a live key of `user` with this id was revoked now.
    async fn revoke_key(
        &self,
        user: &crate::domain::UserId,
        key_id: &str,
    ) -> Result<bool, PortError>;

    /// Creates or updates a project record (keyed by id; the owner never changes).
    async fn save_project(&self, project: &ProjectRecord) -> Result<(), PortError>;
    async fn project(
        &self,
        id: &crate::domain::ProjectId,
    ) -> Result<Option<ProjectRecord>, PortError>;
    async fn projects(
        &self,
        owner: &crate::domain::UserId,
    ) -> Result<Vec<ProjectRecord>, PortError>;
    /// Writes the project's [`Lifecycle`] (and nothing else) if the stored one's version is
    /// `lifecycle.version - 1`; `Conflict` when someone else wrote first, `NotFound` for an
    /// unknown project.
    async fn save_lifecycle(
        &self,
        id: &crate::domain::ProjectId,
        lifecycle: &Lifecycle,
    ) -> Result<(), PortError>;

    /// Writes one ledger row per call (keyed by request and iteration: writing twice is a
    /// no-op).
    async fn record_usage(
        &self,
        request: &crate::domain::RequestId,
        owner: &crate::domain::UserId,
        project: &crate::domain::ProjectId,
        calls: &[crate::usage::ModelCall],
    ) -> Result<(), PortError>;
    /// What `owner` has spent in all (sum of the ledger).
    async fn spent(
        &self,
        owner: &crate::domain::UserId,
    ) -> Result<crate::money::MicroUsd, PortError>;
}

/// Tells a request's caller that it finished: a signed JSON summary POSTed to the request's
/// callback URL. `delivery_id` is the same for every attempt of one notification, so a
/// receiver can drop duplicates.
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn notify(&self, url: &str, delivery_id: &str, payload: &Value) -> Result<(), PortError>;
}

/// An OAuth client the authorization server knows: registered dynamically (RFC 7591). Clients
/// identified by a client ID metadata document are not stored; their document is fetched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_name: Option<String>,
    /// Compared exactly with the `redirect_uri` of each authorization request.
    pub redirect_uris: Vec<String>,
    pub created_at_ms: u64,
}

/// What an OAuth grant record is: an authorization code, an access token or a refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    Code,
    Access,
    Refresh,
}

impl GrantKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            GrantKind::Code => "code",
            GrantKind::Access => "access",
            GrantKind::Refresh => "refresh",
        }
    }

    pub fn parse(s: &str) -> Option<GrantKind> {
        match s {
            "code" => Some(GrantKind::Code),
            "access" => Some(GrantKind::Access),
            "refresh" => Some(GrantKind::Refresh),
            _ => None,
        }
    }
}

/// An authorization code or token, as stored: only its SHA-256, never the value. All the
/// codes and tokens that descend from one authorization share a `family`, revoked together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthGrant {
    /// SHA-256 (hex) of the code or token.
    pub hash: String,
    pub kind: GrantKind,
    pub family: String,
    pub client_id: String,
    pub user: crate::domain::UserId,
    /// The API key the user signed in with; its revocation ends the grant.
    pub key_id: String,
    /// The RFC 8707 resource (audience) the grant is for.
    pub resource: String,
    pub scope: String,
    /// For codes: the redirect URI and the PKCE S256 challenge of the authorization request.
    pub redirect_uri: Option<String>,
    pub code_challenge: Option<String>,
    pub expires_at_ms: u64,
    /// Codes and refresh tokens are used once; a second use is a replay.
    pub used_at_ms: Option<u64>,
    pub revoked_at_ms: Option<u64>,
}

/// Grants that expired longer ago than this may be deleted by an [`OAuthStore`] adapter (the
/// Postgres and SQLite ones do when a new code is saved).
pub const PURGE_AFTER_MS: u64 = 24 * 60 * 60 * 1000;

/// What [`OAuthStore::use_grant`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantUse {
    /// Unused until now; marked used by this call.
    First(OAuthGrant),
    /// Used before (a replay); the record as stored.
    Again(OAuthGrant),
    Unknown,
}

/// The authorization server's state: registered clients and grants. Postgres in the cloud,
/// SQLite locally.
#[async_trait]
pub trait OAuthStore: Send + Sync {
    async fn save_client(&self, client: &OAuthClient) -> Result<(), PortError>;
    async fn client(&self, client_id: &str) -> Result<Option<OAuthClient>, PortError>;
    async fn save_grant(&self, grant: &OAuthGrant) -> Result<(), PortError>;
    /// The grant with this hash, if any (used, revoked and expired ones too).
    async fn grant(&self, hash: &str) -> Result<Option<OAuthGrant>, PortError>;
    /// Marks a code or refresh token used, atomically: of two concurrent calls, one sees
    /// [`GrantUse::First`].
    async fn use_grant(&self, hash: &str) -> Result<GrantUse, PortError>;
    /// Revokes every grant of `family` (a no-op for an unknown family).
    async fn revoke_family(&self, family: &str) -> Result<(), PortError>;
}
