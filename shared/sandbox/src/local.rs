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
//! # Commands run inside an isolation boundary
//!
//! With [`LocalSandboxConfig::isolation`] set (the local binary sets it wherever
//! bubblewrap works), each command runs under `bwrap` in new user, PID, IPC, UTS, cgroup,
//! mount and network namespaces ([`boundary`] has the details):
//!
//! - it sees a read-only system (`/usr`, `/etc` without its secrets), its workspace at
//!   `/workspace` (the only writable path besides its own `/home/sandbox` and `/tmp`), and
//!   nothing else of the host: not the platform's processes, environment, data directory,
//!   working directory or HOME, nor other sandboxes;
//! - its environment is built from nothing ([`LocalSandboxConfig::extra_env`] added);
//! - its network is its own loopback; the only way out is the platform's egress proxy
//!   ([`crate::egress`]), which allows npm's registry by default and never a loopback,
//!   private or link-local address;
//! - npm's cache ([`Isolation::shared`]) is the one directory shared by all sandboxes,
//!   read-write, so that installs stay fast; npm checks each package's integrity against
//!   the lockfile, but a command could still plant cache entries another project's
//!   install would use where there is no lockfile;
//! - processes, memory and CPU are bounded by cgroups where the host lets us, by rlimits
//!   otherwise; file size and CPU time by rlimits; the sandbox's disk use is checked after
//!   each command ([`Limits`]);
//! - when the command exits (or times out) its PID namespace ends, and every process it
//!   started (`setsid`, double forks, daemons) dies with it.
//!
//! Without isolation (no bubblewrap, or user namespaces refused) commands run as
//! `bash <script>` as the host user in a process group of their own, with the same minimal
//! environment: the file tools stay confined, the commands are not (they can read what the
//! host user can, open the network, and leave the group with `setsid`). The local binary
//! says so at start and refuses to `serve` that way unless told to.
//!
//! In both modes stdin is `/dev/null`, stdout and stderr are merged into one pipe in the
//! order written and capped in memory ([`crate::OutputCap`]), and the command is killed at
//! its timeout.

pub mod boundary;
mod exec;
mod files;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tb_core::sandbox::{
    ExecOutput, FileEntry, Sandbox, SandboxError, SandboxInfo, SandboxProvider, SandboxSpec,
    WorkspacePath,
};

pub use boundary::{Isolation, Limits};
pub use exec::adopt_orphans;
use files::Workspace;

use crate::egress::{EgressProxy, SystemNetwork};

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
    /// Run commands inside the isolation boundary; `None` runs them as the host user.
    pub isolation: Option<Isolation>,
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
            isolation: None,
        }
    }
}

/// Creates, reattaches to and destroys [`LocalSandbox`]es under one root directory.
#[derive(Clone, Debug)]
pub struct LocalSandboxProvider {
    config: Arc<LocalSandboxConfig>,
    boundary: Option<Arc<Boundary>>,
}

/// What isolated sandboxes of one provider share: the cgroup hierarchies found usable, and
/// the egress proxy (started with the first command).
#[derive(Debug)]
struct Boundary {
    cgroups: boundary::Cgroups,
    proxy: OnceLock<Result<EgressProxy, String>>,
    /// Sandboxes whose last command left them over their disk budget: their next command
    /// runs only once files are deleted (with the file tools).
    over_budget: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Boundary {
    fn proxy_socket(&self, isolation: &Isolation) -> Result<&Path, SandboxError> {
        let started = self.proxy.get_or_init(|| {
            EgressProxy::start(isolation.egress.clone(), Arc::new(SystemNetwork))
                .map_err(|e| format!("starting the egress proxy: {e}"))
        });
        match started {
            Ok(proxy) => Ok(proxy.socket()),
            Err(e) => Err(SandboxError::Unavailable(e.clone())),
        }
    }
}

impl LocalSandboxProvider {
    pub fn new(config: LocalSandboxConfig) -> Self {
        let boundary = config.isolation.as_ref().map(|_| {
            Arc::new(Boundary {
                cgroups: boundary::Cgroups::detect(),
                proxy: OnceLock::new(),
                over_budget: Default::default(),
            })
        });
        LocalSandboxProvider {
            config: Arc::new(config),
            boundary,
        }
    }

    /// The cgroup controllers limits go through (empty: rlimits only, or no isolation).
    pub fn cgroup_controllers(&self) -> Vec<&'static str> {
        self.boundary
            .as_ref()
            .map(|b| b.cgroups.controllers())
            .unwrap_or_default()
    }

    pub fn config(&self) -> &LocalSandboxConfig {
        &self.config
    }

    /// [`SandboxProvider::create`], typed: the id is `spec.name` when it is a valid id
    /// (`[A-Za-z0-9_-]{1,64}`) not in use, otherwise `sbx-<random hex>`.
    pub async fn create_local(&self, spec: &SandboxSpec) -> Result<LocalSandbox, SandboxError> {
        let config = self.config.clone();
        let boundary = self.boundary.clone();
        let spec = spec.clone();
        blocking(move || create_dirs(&config, boundary, &spec)).await
    }

    /// [`SandboxProvider::connect`], typed.
    pub async fn open(&self, id: &str) -> Result<LocalSandbox, SandboxError> {
        let config = self.config.clone();
        let boundary = self.boundary.clone();
        let id = id.to_owned();
        blocking(move || LocalSandbox::open(config, boundary, &id)).await
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
    boundary: Option<Arc<Boundary>>,
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

    fn open(
        config: Arc<LocalSandboxConfig>,
        boundary: Option<Arc<Boundary>>,
        id: &str,
    ) -> Result<Self, SandboxError> {
        let not_found = || SandboxError::NotFound(format!("sandbox `{id}`"));
        if !is_valid_id(id) {
            return Err(not_found());
        }
        let dir = config.root.join(id);
        let workspace = Workspace::open(&dir.join("workspace")).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => not_found(),
            _ => SandboxError::Unavailable(format!("opening sandbox `{id}`: {e}")),
        })?;
        let (home, tmp) = match &config.isolation {
            Some(_) => (boundary::HOME.to_owned(), "/tmp".to_owned()),
            None => (
                dir.join("home").to_string_lossy().into_owned(),
                dir.join("tmp").to_string_lossy().into_owned(),
            ),
        };
        let mut path = "/usr/local/bin:/usr/bin:/bin".to_owned();
        if let Some(iso) = &config.isolation {
            for p in &iso.read_only {
                path = format!("{}:{path}", p.join("bin").display());
            }
        }
        let mut env = BTreeMap::from([
            ("PATH".to_owned(), path),
            ("HOME".to_owned(), home),
            ("TMPDIR".to_owned(), tmp),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
            ("CI".to_owned(), "true".to_owned()),
        ]);
        if config.isolation.is_some() {
            // The only way out: the egress proxy, through its bridge on the sandbox's own
            // loopback (see `boundary`).
            for k in [
                "HTTPS_PROXY",
                "HTTP_PROXY",
                "https_proxy",
                "http_proxy",
                "npm_config_proxy",
                "npm_config_https_proxy",
            ] {
                env.insert(k.to_owned(), boundary::PROXY_URL.to_owned());
            }
            env.insert("NO_PROXY".to_owned(), "localhost,127.0.0.1,::1".to_owned());
            env.insert("no_proxy".to_owned(), "localhost,127.0.0.1,::1".to_owned());
        }
        env.extend(config.extra_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(LocalSandbox {
            id: id.to_owned(),
            dir,
            workspace,
            env: Arc::new(env),
            config,
            boundary,
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
        let (Some(isolation), Some(shared)) = (&self.config.isolation, &self.boundary) else {
            return exec::run(exec::Run {
                argv: vec!["bash".into(), script.0.clone().into()],
                cwd: self.workspace.root(),
                env: &self.env,
                timeout,
                output_cap: self.config.output_cap_bytes,
                pre_exec: None,
                child_fds: Vec::new(),
            })
            .await
            .map_err(|e| SandboxError::Unavailable(format!("running the command: {e}")));
        };
        let budget = isolation.limits.disk_bytes;
        let was_over = shared
            .over_budget
            .lock()
            .expect("over_budget")
            .contains(&self.id);
        if was_over {
            let dir = self.dir.clone();
            let used = tokio::task::spawn_blocking(move || boundary::disk_usage(&dir))
                .await
                .unwrap_or(u64::MAX);
            if used > budget {
                return Err(SandboxError::Invalid(format!(
                    "not run: the sandbox holds {} MiB, over its disk budget of {} MiB; delete files with delete_file first",
                    used >> 20,
                    budget >> 20
                )));
            }
            shared
                .over_budget
                .lock()
                .expect("over_budget")
                .remove(&self.id);
        }
        let socket = shared.proxy_socket(isolation)?;
        // As root the platform puts the proxy's listener into the sandbox's namespace
        // itself; otherwise a bridge started inside forwards to the proxy's socket.
        let listener_path = !isolation.bridge;
        let proxy_path = if listener_path {
            boundary::ProxyPath::Listener
        } else {
            boundary::ProxyPath::Bridge(socket)
        };
        let args = isolation.bwrap_args(&self.dir, &script.0, &self.env, proxy_path);
        let unavailable =
            |what: &str, e: io::Error| SandboxError::Unavailable(format!("{what}: {e}"));
        let args_pipe = Isolation::args_pipe(&args)
            .map_err(|e| unavailable("passing the sandbox's arguments", e))?;
        let mut argv = vec![
            isolation.bwrap.clone().into_os_string(),
            "--args".into(),
            "3".into(),
        ];
        argv.extend(Isolation::command(!listener_path));
        let cgroups = shared
            .cgroups
            .for_command(
                &format!("{}-{:08x}", self.id, rand::random::<u32>()),
                &isolation.limits,
            )
            .map_err(|e| unavailable("creating the command's cgroups", e))?;
        let mut pre_exec = boundary::PreExec::new(&isolation.limits, Some(&cgroups));
        pre_exec.fds.push((args_pipe.as_raw_fd(), 3));
        let mut child_fds: Vec<std::os::fd::OwnedFd> = vec![args_pipe.into()];
        let mut listening = None;
        if listener_path {
            let (info_reader, info_writer) =
                io::pipe().map_err(|e| unavailable("making a pipe", e))?;
            let (block_reader, block_writer) =
                io::pipe().map_err(|e| unavailable("making a pipe", e))?;
            pre_exec.fds.push((info_writer.as_raw_fd(), 4));
            pre_exec.fds.push((block_reader.as_raw_fd(), 5));
            child_fds.push(info_writer.into());
            child_fds.push(block_reader.into());
            listening = Some(tokio::spawn(open_proxy_listener(
                shared.clone(),
                info_reader,
                block_writer,
            )));
        }
        let ran = exec::run(exec::Run {
            argv,
            cwd: &self.dir,
            env: &BTreeMap::new(),
            timeout,
            output_cap: self.config.output_cap_bytes,
            pre_exec: Some(pre_exec),
            child_fds,
        })
        .await
        .map_err(|e| SandboxError::Unavailable(format!("running the command: {e}")));
        if let Some(task) = listening {
            task.abort();
            match task.await {
                Ok(Err(e)) => tracing::warn!(sandbox = %self.id, "no egress in the sandbox: {e}"),
                Ok(Ok(guard)) => drop(guard),
                Err(_) => {}
            }
        }
        let forks_refused = cgroups.forks_refused();
        let dir = self.dir.clone();
        // The emptied groups can take a moment to go: not on the command's time.
        tokio::task::spawn_blocking(move || drop(cgroups));
        let used = tokio::task::spawn_blocking(move || boundary::disk_usage(&dir))
            .await
            .unwrap_or(0);
        let out = ran?;
        if used > budget {
            shared
                .over_budget
                .lock()
                .expect("over_budget")
                .insert(self.id.clone());
            return Err(SandboxError::Invalid(format!(
                "the command ran (exit code {}), but the sandbox now holds {} MiB, over its disk budget of {} MiB: delete files (e.g. build outputs, large downloads) with delete_file; no command runs until then",
                out.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "none".into()),
                used >> 20,
                budget >> 20
            )));
        }
        if forks_refused > 0 {
            return Err(SandboxError::Invalid(format!(
                "the command reached the sandbox's process limit ({} processes at once): {forks_refused} process creations were refused, so it was stopped (a runaway fork loop?). Its output:\n{}",
                isolation.limits.processes, out.output
            )));
        }
        Ok(out)
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

/// Waits for bubblewrap to report the sandbox's pid (`--info-fd`), opens the proxy's
/// listener inside its network namespace, then lets the command start (`--block-fd`).
/// On failure the block pipe closes, and the command starts without a way out.
async fn open_proxy_listener(
    shared: Arc<Boundary>,
    info: io::PipeReader,
    block: io::PipeWriter,
) -> io::Result<crate::egress::ListenerGuard> {
    use tokio::io::AsyncReadExt;
    let mut info = tokio::net::unix::pipe::Receiver::from_owned_fd(info.into())?;
    let mut text = Vec::new();
    let mut buf = [0u8; 512];
    while !text.contains(&b'}') {
        let n = tokio::time::timeout(Duration::from_secs(10), info.read(&mut buf))
            .await
            .map_err(|_| io::Error::other("bwrap did not report the sandbox's pid"))??;
        if n == 0 {
            return Err(io::Error::other(
                "bwrap ended before reporting the sandbox's pid",
            ));
        }
        text.extend_from_slice(&buf[..n]);
    }
    let end = text.iter().position(|b| *b == b'}').unwrap_or(0) + 1;
    let report: serde_json::Value = serde_json::from_slice(&text[..end])
        .map_err(|e| io::Error::other(format!("bwrap's report: {e}")))?;
    let pid = report["child-pid"]
        .as_i64()
        .ok_or_else(|| io::Error::other("bwrap's report has no child-pid"))? as i32;
    let listener = tokio::task::spawn_blocking(move || boundary::listen_in_namespace_of(pid))
        .await
        .map_err(io::Error::other)??;
    let proxy = match shared.proxy.get() {
        Some(Ok(proxy)) => proxy,
        _ => return Err(io::Error::other("the egress proxy is not running")),
    };
    let guard = proxy.serve_listener(listener)?;
    use std::io::Write;
    (&block).write_all(b"1")?;
    Ok(guard)
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
    boundary: Option<Arc<Boundary>>,
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
    let created_at = tb_core::clock::now_secs();
    let meta = Meta {
        id: id.clone(),
        labels: spec.labels.clone(),
        created_at,
    };
    let json = serde_json::to_vec_pretty(&meta).expect("metadata serialises");
    fs::write(dir.join("meta.json"), json)
        .map_err(|e| unavailable("writing sandbox metadata", e))?;
    LocalSandbox::open(config.clone(), boundary, &id)
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
