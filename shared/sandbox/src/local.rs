//! Sandboxes as directories on this host.
//!
//! Layout, one directory per sandbox under [`LocalSandboxConfig::root`]:
//!
//! ```text
//! <root>/<id>/workspace   the project; commands start here, file paths are relative to it
//! <root>/<id>/home        $HOME of commands
//! <root>/<id>/tmp         $TMPDIR of commands
//! <root>/<id>/meta.json   labels and creation time
//! ```
//!
//! Commands run as `bash <script>` (the script lives beside the workspace, not in it) in a
//! process group of their own, with a minimal environment (`PATH`, `HOME`, `TMPDIR`,
//! `LANG`, `CI` and [`LocalSandboxConfig::extra_env`]; nothing of the host's leaks in),
//! stdin from `/dev/null`, and stdout and stderr merged into one pipe in the order written.
//! The whole group is killed at the timeout and also when the script exits, so
//! `server &` does not outlive the command. Killed processes are reaped by PID 1, or by
//! this process after [`adopt_orphans`].
//!
//! # Not a security boundary for commands
//!
//! The file *tools* ([`Sandbox::read_file`], [`Sandbox::write_file`], …) are confined to
//! the workspace, symlinks included. *Commands* are not: they run as the host user and can
//! read and write whatever that user can, open the network, and escape the process group
//! with `setsid`. Use this provider for development and tests with trusted input; use
//! [`crate::daytona`] when the commands need isolation.

mod exec;
mod files;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tb_core::sandbox::{
    ExecOutput, FileEntry, Sandbox, SandboxError, SandboxInfo, SandboxProvider, SandboxSpec,
    WorkspacePath,
};

pub use exec::adopt_orphans;
use files::Workspace;

/// Where local sandboxes live and how commands are bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSandboxConfig {
    /// The directory holding one subdirectory per sandbox (created when needed).
    pub root: PathBuf,
    /// Added to every command's environment (e.g. `npm_config_cache` pointing at a cache
    /// shared by all sandboxes). Never put secrets here: commands print their environment.
    pub extra_env: BTreeMap<String, String>,
    /// Output kept per command: the first and last half of it.
    pub output_cap_bytes: usize,
    /// Files larger than this are refused by `read_file`.
    pub read_limit_bytes: u64,
}

impl LocalSandboxConfig {
    pub const DEFAULT_OUTPUT_CAP_BYTES: usize = 256 * 1024;
    pub const DEFAULT_READ_LIMIT_BYTES: u64 = 10 * 1024 * 1024;

    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalSandboxConfig {
            root: root.into(),
            extra_env: BTreeMap::new(),
            output_cap_bytes: Self::DEFAULT_OUTPUT_CAP_BYTES,
            read_limit_bytes: Self::DEFAULT_READ_LIMIT_BYTES,
        }
    }
}

/// Creates, reattaches to and destroys [`LocalSandbox`]es under one root directory.
#[derive(Clone, Debug)]
pub struct LocalSandboxProvider {
    config: Arc<LocalSandboxConfig>,
}

impl LocalSandboxProvider {
    pub fn new(config: LocalSandboxConfig) -> Self {
        LocalSandboxProvider {
            config: Arc::new(config),
        }
    }

    pub fn config(&self) -> &LocalSandboxConfig {
        &self.config
    }

    /// [`SandboxProvider::create`], typed: the id is `spec.name` when it is a valid id
    /// (`[A-Za-z0-9_-]{1,64}`) not in use, otherwise `sbx-<random hex>`.
    pub async fn create_local(&self, spec: &SandboxSpec) -> Result<LocalSandbox, SandboxError> {
        let config = self.config.clone();
        let spec = spec.clone();
        blocking(move || create_dirs(&config, &spec)).await
    }

    /// [`SandboxProvider::connect`], typed.
    pub async fn open(&self, id: &str) -> Result<LocalSandbox, SandboxError> {
        let config = self.config.clone();
        let id = id.to_owned();
        blocking(move || LocalSandbox::open(config, &id)).await
    }
}

#[async_trait]
impl SandboxProvider for LocalSandboxProvider {
    async fn create(&self, spec: &SandboxSpec) -> Result<Arc<dyn Sandbox>, SandboxError> {
        Ok(Arc::new(self.create_local(spec).await?))
    }

    async fn connect(&self, id: &str) -> Result<Arc<dyn Sandbox>, SandboxError> {
        Ok(Arc::new(self.open(id).await?))
    }

    async fn destroy(&self, id: &str) -> Result<(), SandboxError> {
        if !is_valid_id(id) {
            return Ok(()); // no such directory can exist
        }
        let dir = self.config.root.join(id);
        blocking(move || match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SandboxError::Unavailable(
                format!("removing sandbox directory: {e}"),
            )),
            _ => Ok(()),
        })
        .await
    }

    async fn list(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        let root = self.config.root.clone();
        blocking(move || list_sandboxes(&root)).await
    }
}

/// One sandbox directory; cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalSandbox {
    id: String,
    dir: PathBuf,
    workspace: Workspace,
    env: Arc<BTreeMap<String, String>>,
    config: Arc<LocalSandboxConfig>,
}

impl LocalSandbox {
    /// The canonical path of the project directory on this host.
    pub fn workspace_dir(&self) -> &Path {
        self.workspace.root()
    }

    /// `<root>/<id>`: the workspace, home, tmp and metadata.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `mkdir -p` inside the workspace, with the same symlink checks as `write_file`.
    pub async fn create_dir_all(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        let workspace = self.workspace.clone();
        let path = path.clone();
        blocking(move || workspace.create_dir_all(&path)).await
    }

    /// Whether `path` exists and is a directory (a symlink to one is not).
    pub async fn is_dir(&self, path: &WorkspacePath) -> Result<bool, SandboxError> {
        let workspace = self.workspace.clone();
        let path = path.clone();
        blocking(move || workspace.is_dir(&path)).await
    }

    fn open(config: Arc<LocalSandboxConfig>, id: &str) -> Result<Self, SandboxError> {
        let not_found = || SandboxError::NotFound(format!("sandbox `{id}`"));
        if !is_valid_id(id) {
            return Err(not_found());
        }
        let dir = config.root.join(id);
        let workspace = Workspace::open(&dir.join("workspace")).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => not_found(),
            _ => SandboxError::Unavailable(format!("opening sandbox `{id}`: {e}")),
        })?;
        let mut env = BTreeMap::from([
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            (
                "HOME".to_owned(),
                dir.join("home").to_string_lossy().into_owned(),
            ),
            (
                "TMPDIR".to_owned(),
                dir.join("tmp").to_string_lossy().into_owned(),
            ),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
            ("CI".to_owned(), "true".to_owned()),
        ]);
        env.extend(config.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(LocalSandbox {
            id: id.to_owned(),
            dir,
            workspace,
            env: Arc::new(env),
            config,
        })
    }
}

#[async_trait]
impl Sandbox for LocalSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SandboxError> {
        let script = ScriptFile(
            self.dir
                .join(format!("exec-{:016x}.sh", rand::random::<u64>())),
        );
        tokio::fs::write(&script.0, command)
            .await
            .map_err(|e| SandboxError::Unavailable(format!("writing the command script: {e}")))?;
        exec::run(exec::Run {
            script: &script.0,
            cwd: self.workspace.root(),
            env: &self.env,
            timeout,
            output_cap: self.config.output_cap_bytes,
        })
        .await
        .map_err(|e| SandboxError::Unavailable(format!("running the command: {e}")))
    }

    async fn write_file(&self, path: &WorkspacePath, contents: &[u8]) -> Result<(), SandboxError> {
        let workspace = self.workspace.clone();
        let path = path.clone();
        let contents = contents.to_vec();
        blocking(move || workspace.write(&path, &contents)).await
    }

    async fn read_file(&self, path: &WorkspacePath) -> Result<Vec<u8>, SandboxError> {
        let workspace = self.workspace.clone();
        let path = path.clone();
        let limit = self.config.read_limit_bytes;
        blocking(move || workspace.read(&path, limit)).await
    }

    async fn delete(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        let workspace = self.workspace.clone();
        let path = path.clone();
        blocking(move || workspace.delete(&path)).await
    }

    async fn list(&self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, SandboxError> {
        let workspace = self.workspace.clone();
        let dir = dir.clone();
        blocking(move || workspace.list(&dir)).await
    }
}

/// `[A-Za-z0-9_-]{1,64}`: safe as a directory name.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Serialize, Deserialize)]
struct Meta {
    id: String,
    labels: BTreeMap<String, String>,
    created_at: u64,
}

/// Removes the command script when the exec ends or is cancelled.
struct ScriptFile(PathBuf);

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn create_dirs(
    config: &Arc<LocalSandboxConfig>,
    spec: &SandboxSpec,
) -> Result<LocalSandbox, SandboxError> {
    let unavailable = |what: &str, e: io::Error| SandboxError::Unavailable(format!("{what}: {e}"));
    fs::create_dir_all(&config.root).map_err(|e| unavailable("creating the sandbox root", e))?;
    let mut preferred = is_valid_id(&spec.name).then(|| spec.name.clone());
    let id = loop {
        let id = preferred
            .take()
            .unwrap_or_else(|| format!("sbx-{:016x}", rand::random::<u64>()));
        // Claims the id atomically: two creates never share a directory.
        match fs::create_dir(config.root.join(&id)) {
            Ok(()) => break id,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(unavailable("creating the sandbox directory", e)),
        }
    };
    let dir = config.root.join(&id);
    for sub in ["workspace", "home", "tmp"] {
        fs::create_dir(dir.join(sub))
            .map_err(|e| unavailable("creating the sandbox directory", e))?;
    }
    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let meta = Meta {
        id: id.clone(),
        labels: spec.labels.clone(),
        created_at,
    };
    let json = serde_json::to_vec_pretty(&meta).expect("metadata serialises");
    fs::write(dir.join("meta.json"), json)
        .map_err(|e| unavailable("writing sandbox metadata", e))?;
    LocalSandbox::open(config.clone(), &id)
}

fn list_sandboxes(root: &Path) -> Result<Vec<SandboxInfo>, SandboxError> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SandboxError::Unavailable(format!("listing sandboxes: {e}"))),
    };
    let mut infos = Vec::new();
    for entry in entries.flatten() {
        let Ok(json) = fs::read(entry.path().join("meta.json")) else {
            continue;
        };
        match serde_json::from_slice::<Meta>(&json) {
            Ok(meta) => infos.push(SandboxInfo {
                id: meta.id,
                labels: meta.labels,
                created_at: meta.created_at,
            }),
            Err(e) => {
                tracing::warn!(dir = %entry.path().display(), error = %e, "skipping sandbox with unreadable meta.json")
            }
        }
    }
    infos.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(infos)
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SandboxError::Unavailable(format!("file task failed: {e}")))?
}
