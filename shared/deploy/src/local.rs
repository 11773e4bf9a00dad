//! The local deployer of the embedded default: the artifact unpacked under
//! `<root>/<project>/<sha256>/` and run as `node .output/server/index.mjs` on a free port of
//! `127.0.0.1`.
//!
//! A deploy starts the new process next to the old one and switches only once the new one
//! answers `/api/health`: then the old one is stopped. If the new one does not get healthy
//! in time it is killed and the old one keeps serving. The running process of each project
//! is tracked in memory and in `<root>/<project>/app.pid`, so a process left by an earlier
//! run of the server is still found and stopped on the next deploy. Processes started here
//! are stopped when the deployer is dropped.
//!
//! The process gets a clean environment: `PATH`, `PORT`, `HOST=127.0.0.1`,
//! `NODE_ENV=production` and the secrets (which cannot override the first four).
//!
//! Apps run agent-written code, so with [`LocalConfig::confine`] set (the local binary sets
//! it wherever commands are isolated) each runs inside the same kind of boundary as the
//! sandboxes' commands: its own user, PID, IPC and mount namespaces, a read-only system, its
//! unpacked directory read-only as its working directory, a private `/tmp`. It shares the
//! host's network (the platform must reach its port, and it must reach its database on the
//! local cluster). The boundary dies with the process that started it.
//!
//! Each version's output (stdout and stderr) goes to `<root>/<project>/<version>.log`;
//! [`Deployer::recent_logs`] reads the end of the running version's (bounded, the app's
//! secret values redacted). A deploy removes every unpacked version but the current one,
//! the one before it and the one [`Deployer::retain`] named (the project's last verified
//! version, recorded in `<root>/<project>/retained`), with their logs.
//!
//! Apps do not outlive the server: each is tied to the server's life, and stopped when the
//! deployer is dropped. [`LocalDeployer::restore`] starts every recorded app again on its
//! recorded port (the next `serve` calls it), with the environment kept beside it in
//! `<root>/<project>/app.env.json` (mode 0600: it holds the database URL).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tb_core::domain::ProjectId;
use tb_core::ports::{APP_LOG_BYTES, APP_LOG_LINES, Artifact, Deployer, Deployment, PortError};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::error::answer;
use crate::{DeployError, artifact};

/// Wraps an app in an isolation boundary: given the unpacked app's directory and the
/// command (`node .output/server/index.mjs`), the program and arguments that run that
/// command inside it, in that directory. The environment is passed to the program.
pub type Confine = Arc<dyn Fn(&Path, &[OsString]) -> Vec<OsString> + Send + Sync>;

/// Where and how apps run.
#[derive(Clone)]
pub struct LocalConfig {
    /// Unpacked artifacts, pid files and logs live under here.
    pub root: PathBuf,
    /// The `node` binary (looked up on `PATH` unless absolute).
    pub node: PathBuf,
    /// How long a new process may take to answer `/api/health`.
    pub health_timeout: Duration,
    pub poll_interval: Duration,
    /// How long a stopped process gets between `SIGTERM` and `SIGKILL`.
    pub stop_grace: Duration,
    /// The isolation boundary apps run in; `None` runs them as plain processes.
    pub confine: Option<Confine>,
}

impl fmt::Debug for LocalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalConfig")
            .field("root", &self.root)
            .field("node", &self.node)
            .field("health_timeout", &self.health_timeout)
            .field("confined", &self.confine.is_some())
            .finish()
    }
}

impl LocalConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalConfig {
            root: root.into(),
            node: PathBuf::from("node"),
            health_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(100),
            stop_grace: Duration::from_secs(5),
            confine: None,
        }
    }
}

/// A process this deployer started.
#[derive(Debug)]
struct Running {
    child: Child,
    pid: u32,
    version: String,
}

type Slot = Arc<tokio::sync::Mutex<Option<Running>>>;

/// Runs apps as local processes. See the module documentation.
#[derive(Debug)]
pub struct LocalDeployer {
    config: LocalConfig,
    http: reqwest::Client,
    /// One slot per project: its running process, locked for the length of a deploy.
    slots: Mutex<HashMap<ProjectId, Slot>>,
}

impl LocalDeployer {
    pub fn new(config: LocalConfig) -> Self {
        LocalDeployer {
            config,
            http: tb_tls::http_client()
                .build()
                .expect("the HTTP client builds"),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// With the default settings, under `root`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self::new(LocalConfig::new(root))
    }

    pub fn root(&self) -> &Path {
        &self.config.root
    }

    fn slot(&self, project: &ProjectId) -> Slot {
        self.slots
            .lock()
            .expect("slots")
            .entry(project.clone())
            .or_default()
            .clone()
    }

    /// Stops the project's process, if one runs. Returns whether one did.
    pub async fn stop(&self, project: &ProjectId) -> bool {
        let slot = self.slot(project);
        let mut running = slot.lock().await;
        let project_dir = self.config.root.join(project.as_str());
        let stopped = match running.take() {
            Some(r) => {
                stop_child(r, self.config.stop_grace).await;
                true
            }
            None => stop_recorded(&project_dir, self.config.stop_grace).await,
        };
        let _ = std::fs::remove_file(project_dir.join(PID_FILE));
        stopped
    }

    async fn run(
        &self,
        project: &ProjectId,
        artifact: &Artifact,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Deployment, DeployError> {
        artifact::verify(artifact)?;
        let slot = self.slot(project);
        let mut running = slot.lock().await;
        let project_dir = self.config.root.join(project.as_str());
        let version = artifact.sha256.to_ascii_lowercase();
        let dir = project_dir.join(&version);
        self.unpack(artifact, &project_dir, &dir).await?;

        let port = free_port()?;
        let (child, pid) = self
            .start_healthy(project, &project_dir, &version, port, secrets)
            .await?;

        // The new version serves: retire the old one.
        let previous_version = self.retire(running.take(), &project_dir).await;
        write_env_file(&project_dir, secrets)?;
        write_pid_file(&project_dir, pid, port, &version)?;
        *running = Some(Running {
            child,
            pid,
            version: version.clone(),
        });
        let retained = std::fs::read_to_string(project_dir.join(RETAINED_FILE)).ok();
        prune(
            &project_dir,
            &[
                Some(version.as_str()),
                previous_version.as_deref(),
                retained.as_deref().map(str::trim),
            ],
        );
        let url = format!("http://127.0.0.1:{port}");
        tracing::info!(project = %project, %url, pid, "deployed locally");
        Ok(Deployment {
            url,
            version,
            details: json!({
                "pid": pid,
                "port": port,
                "dir": dir.display().to_string(),
                "previous_version": previous_version,
            }),
        })
    }

    /// Stops the version that served until now (this process's child, or the one a
    /// previous process recorded); its version.
    async fn retire(&self, running: Option<Running>, project_dir: &Path) -> Option<String> {
        match running {
            Some(old) => {
                let v = old.version.clone();
                stop_child(old, self.config.stop_grace).await;
                Some(v)
            }
            None => {
                let recorded = read_pid_file(project_dir);
                stop_recorded(project_dir, self.config.stop_grace).await;
                recorded.map(|r| r.version)
            }
        }
    }

    /// Runs `version` (kept beside the current one: a deploy prunes all but the current
    /// and the previous version) in place of the current process, the same way a deploy
    /// switches: the old one stops only once the earlier one answers `/api/health`.
    async fn run_version(
        &self,
        project: &ProjectId,
        version: &str,
    ) -> Result<Deployment, DeployError> {
        let is_version = version.len() == 64 && version.bytes().all(|b| b.is_ascii_hexdigit());
        let project_dir = self.config.root.join(project.as_str());
        let dir = project_dir.join(version);
        if !is_version || !dir.join(".output/server/index.mjs").is_file() {
            return Err(DeployError::Config(format!(
                "version {version} of {project} is not kept here any more"
            )));
        }
        let slot = self.slot(project);
        let mut running = slot.lock().await;
        let secrets = read_env_file(&project_dir);
        let port = free_port()?;
        let (child, pid) = self
            .start_healthy(project, &project_dir, version, port, &secrets)
            .await?;
        let previous_version = self.retire(running.take(), &project_dir).await;
        write_pid_file(&project_dir, pid, port, version)?;
        *running = Some(Running {
            child,
            pid,
            version: version.to_owned(),
        });
        let url = format!("http://127.0.0.1:{port}");
        tracing::info!(project = %project, %url, pid, version, "rolled back locally");
        Ok(Deployment {
            url,
            version: version.to_owned(),
            details: json!({
                "pid": pid,
                "port": port,
                "dir": dir.display().to_string(),
                "previous_version": previous_version,
            }),
        })
    }

    /// The end of the running version's log: at most [`APP_LOG_BYTES`] bytes and
    /// [`APP_LOG_LINES`] lines, the app's secret values redacted. `None`: nothing runs.
    async fn log_lines(&self, project: &ProjectId) -> Option<Vec<String>> {
        let project_dir = self.config.root.join(project.as_str());
        let version = match self.slot(project).lock().await.as_ref() {
            Some(r) => r.version.clone(),
            None => read_pid_file(&project_dir)?.version,
        };
        let secrets = read_env_file(&project_dir);
        let text = read_tail(&project_dir.join(format!("{version}.log")), APP_LOG_BYTES)
            .unwrap_or_default();
        Some(recent_lines(&text, &secrets))
    }

    /// Stops the project's app and removes its directory (unpacked versions, logs, the
    /// kept environment).
    async fn remove(&self, project: &ProjectId) -> Result<serde_json::Value, DeployError> {
        let stopped = self.stop(project).await;
        let project_dir = self.config.root.join(project.as_str());
        let removed = match std::fs::remove_dir_all(&project_dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(DeployError::Local(format!(
                    "removing {}: {e}",
                    project_dir.display()
                )));
            }
        };
        self.slots.lock().expect("slots").remove(project);
        Ok(
            json!({"stopped": stopped, "removed": removed, "dir": project_dir.display().to_string()}),
        )
    }

    /// Starts every app recorded under the root again, on its recorded port, unless it
    /// runs already (e.g. after the server was killed: its apps died with it). Returns
    /// each project's URL or why it did not start.
    pub async fn restore(&self) -> Vec<(ProjectId, Result<String, DeployError>)> {
        let mut restored = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.config.root) else {
            return restored;
        };
        for entry in entries.flatten() {
            let Ok(project) = ProjectId::parse(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let project_dir = entry.path();
            let Some(record) = read_pid_file(&project_dir) else {
                continue;
            };
            let slot = self.slot(&project);
            let mut running = slot.lock().await;
            if running.is_some() {
                continue;
            }
            // A process from a server that was not killed outright may still hold the port.
            stop_recorded(&project_dir, self.config.stop_grace).await;
            let env = read_env_file(&project_dir);
            let port = if port_free(record.port) {
                record.port
            } else {
                match free_port() {
                    Ok(p) => p,
                    Err(e) => {
                        restored.push((project, Err(e)));
                        continue;
                    }
                }
            };
            let result = match self
                .start_healthy(&project, &project_dir, &record.version, port, &env)
                .await
            {
                Ok((child, pid)) => {
                    match write_pid_file(&project_dir, pid, port, &record.version) {
                        Ok(()) => {
                            *running = Some(Running {
                                child,
                                pid,
                                version: record.version.clone(),
                            });
                            tracing::info!(project = %project, port, pid, "restarted locally");
                            Ok(format!("http://127.0.0.1:{port}"))
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                tracing::warn!(project = %project, "restarting the app failed: {e}");
            }
            restored.push((project, result));
        }
        restored
    }

    /// Starts the unpacked `version` on `port` and waits until it answers `/api/health`;
    /// kills it if it does not.
    async fn start_healthy(
        &self,
        project: &ProjectId,
        project_dir: &Path,
        version: &str,
        port: u16,
        secrets: &BTreeMap<String, String>,
    ) -> Result<(Child, u32), DeployError> {
        let dir = project_dir.join(version);
        let log_path = project_dir.join(format!("{version}.log"));
        let mut child = self.spawn(project, &dir, &log_path, port, secrets)?;
        let pid = child.id().unwrap_or(0);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + self.config.health_timeout;
        let health = crate::health::wait_healthy(
            &self.http,
            &format!("{url}/api/health"),
            deadline,
            self.config.poll_interval,
            || match child.try_wait() {
                Ok(Some(status)) => Some(format!("the process exited ({status})")),
                _ => None,
            },
        )
        .await;
        if let Err(reason) = health {
            stop_child(
                Running {
                    child,
                    pid,
                    version: version.to_owned(),
                },
                self.config.stop_grace,
            )
            .await;
            let tail = log_tail(&log_path, secrets);
            return Err(DeployError::Unhealthy(format!(
                "{reason}; the previous version keeps running; last output:\n{tail}"
            )));
        }
        Ok((child, pid))
    }

    async fn unpack(
        &self,
        artifact: &Artifact,
        project_dir: &Path,
        dir: &Path,
    ) -> Result<(), DeployError> {
        if dir.join(artifact::ENTRY_POINT).is_file() {
            return Ok(()); // Unpacked before: directories appear whole (renamed into place).
        }
        let tar_gz = artifact.tar_gz.clone();
        let project_dir = project_dir.to_owned();
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            let tree = artifact::read(&tar_gz)?;
            let local =
                |e: std::io::Error| DeployError::Local(format!("unpacking the artifact: {e}"));
            std::fs::create_dir_all(&project_dir).map_err(local)?;
            let tmp = tempfile_dir(&project_dir).map_err(local)?;
            artifact::unpack(&tree, &tmp).map_err(local)?;
            if let Err(e) = std::fs::rename(&tmp, &dir) {
                let _ = std::fs::remove_dir_all(&tmp);
                if !dir.join(artifact::ENTRY_POINT).is_file() {
                    return Err(local(e));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| DeployError::Local(format!("unpacking the artifact: {e}")))?
    }

    fn spawn(
        &self,
        project: &ProjectId,
        dir: &Path,
        log_path: &Path,
        port: u16,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Child, DeployError> {
        let local = |what: &str, e: std::io::Error| DeployError::Local(format!("{what}: {e}"));
        let log = std::fs::File::create(log_path).map_err(|e| local("creating the log", e))?;
        let log2 = log.try_clone().map_err(|e| local("creating the log", e))?;
        let app = [
            self.config.node.clone().into_os_string(),
            OsString::from(artifact::ENTRY_POINT),
        ];
        let argv = match &self.config.confine {
            Some(confine) => confine(dir, &app),
            None => app.to_vec(),
        };
        let Some((program, args)) = argv.split_first() else {
            return Err(DeployError::Local(
                "no program to start the app with".into(),
            ));
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(secrets)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("NODE_ENV", "production")
            // Names the app's processes (`/proc/<pid>/environ`) for the operator.
            .env("TB_PROJECT", project.as_str())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group, so stopping it also stops what it started.
            .process_group(0);
        // The app dies with the server, whichever way the server ends; the next server
        // starts it again (`restore`).
        // SAFETY: prctl(2) with plain integer arguments, async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .spawn()
            .map_err(|e| local(&format!("starting {}", self.config.node.display()), e))
    }
}

impl Drop for LocalDeployer {
    fn drop(&mut self) {
        let slots = self.slots.get_mut().map(std::mem::take).unwrap_or_default();
        for slot in slots.into_values() {
            if let Ok(mut running) = slot.try_lock()
                && let Some(r) = running.as_mut()
            {
                signal_group(r.pid, libc::SIGKILL);
                let _ = r.child.start_kill();
            }
        }
    }
}

#[async_trait]
impl Deployer for LocalDeployer {
    async fn deploy(
        &self,
        project: &ProjectId,
        artifact: &Artifact,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Deployment, PortError> {
        answer(
            project,
            "local deploy",
            self.run(project, artifact, secrets).await,
        )
    }

    async fn rollback(&self, project: &ProjectId, version: &str) -> Result<Deployment, PortError> {
        answer(
            project,
            "local rollback",
            self.run_version(project, version).await,
        )
    }

    /// Records `version` in `<root>/<project>/retained`: deploys do not remove it.
    async fn retain(&self, project: &ProjectId, version: &str) -> Result<(), PortError> {
        let project_dir = self.config.root.join(project.as_str());
        let tmp = project_dir.join(format!("{RETAINED_FILE}.tmp"));
        std::fs::write(&tmp, version)
            .and_then(|()| std::fs::rename(&tmp, project_dir.join(RETAINED_FILE)))
            .map_err(|e| {
                PortError::Transient(format!("recording the version to keep of {project}: {e}"))
            })
    }

    async fn recent_logs(&self, project: &ProjectId) -> Result<Option<Vec<String>>, PortError> {
        Ok(self.log_lines(project).await)
    }

    async fn destroy(&self, project: &ProjectId) -> Result<serde_json::Value, PortError> {
        Ok(self.remove(project).await?)
    }
}

const PID_FILE: &str = "app.pid";
/// The version [`Deployer::retain`] keeps.
const RETAINED_FILE: &str = "retained";
/// The app's environment (secrets included), to start it again after a restart.
const ENV_FILE: &str = "app.env.json";

fn write_env_file(project_dir: &Path, env: &BTreeMap<String, String>) -> Result<(), DeployError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = project_dir.join(format!("{ENV_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&serde_json::to_vec(env).expect("serialisable")))
        .and_then(|()| std::fs::rename(&tmp, project_dir.join(ENV_FILE)))
        .map_err(|e| DeployError::Local(format!("writing the app's environment: {e}")))
}

fn read_env_file(project_dir: &Path) -> BTreeMap<String, String> {
    std::fs::read(project_dir.join(ENV_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PidRecord {
    pid: u32,
    port: u16,
    version: String,
}

fn write_pid_file(
    project_dir: &Path,
    pid: u32,
    port: u16,
    version: &str,
) -> Result<(), DeployError> {
    let record = PidRecord {
        pid,
        port,
        version: version.to_owned(),
    };
    let tmp = project_dir.join(format!("{PID_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&record).expect("serialisable"))
        .and_then(|()| std::fs::rename(&tmp, project_dir.join(PID_FILE)))
        .map_err(|e| DeployError::Local(format!("writing the pid file: {e}")))
}

fn read_pid_file(project_dir: &Path) -> Option<PidRecord> {
    let bytes = std::fs::read(project_dir.join(PID_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Stops the process named in the project's pid file, if it still runs and still is ours
/// (its working directory lies in the project's directory: pids get reused).
async fn stop_recorded(project_dir: &Path, grace: Duration) -> bool {
    let Some(record) = read_pid_file(project_dir) else {
        return false;
    };
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", record.pid)).ok();
    let ours = cwd.is_some_and(|cwd| {
        std::fs::canonicalize(project_dir).is_ok_and(|dir| cwd.starts_with(dir))
    });
    if !ours || !alive(record.pid) {
        return false;
    }
    signal_group(record.pid, libc::SIGTERM);
    let until = Instant::now() + grace;
    while alive(record.pid) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(record.pid) {
        signal_group(record.pid, libc::SIGKILL);
    }
    true
}

/// `SIGTERM` to the process group, `SIGKILL` after `grace`, then reaps the child.
async fn stop_child(mut r: Running, grace: Duration) {
    signal_group(r.pid, libc::SIGTERM);
    if tokio::time::timeout(grace, r.child.wait()).await.is_err() {
        signal_group(r.pid, libc::SIGKILL);
        let _ = r.child.kill().await;
    }
    // Whatever the app left in its group goes too.
    signal_group(r.pid, libc::SIGKILL);
}

fn signal_group(pid: u32, signal: i32) {
    if pid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
        unsafe {
            libc::kill(-(pid as i32), signal);
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still accepts signal 0; /proc tells it apart.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    // SAFETY: signal 0 only checks that the process exists.
    pid > 1 && unsafe { libc::kill(pid as i32, 0) } == 0 && !zombie
}

fn free_port() -> Result<u16, DeployError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DeployError::Local(format!("finding a free port: {e}")))
}

fn tempfile_dir(parent: &Path) -> std::io::Result<PathBuf> {
    let dir = parent.join(format!(".unpack-{}", tb_core::ids::random_hex(8)));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

/// The last lines of the app's output, with secret values blanked.
fn log_tail(path: &Path, secrets: &BTreeMap<String, String>) -> String {
    let text = read_tail(path, 2000).unwrap_or_default();
    tb_core::secret::scrub_values(&text, secrets.values().map(String::as_str))
}

/// The last `max_bytes` of the file at `path`, as text; when that cuts the file, from the
/// first whole line on (a secret cut in two by the cut is dropped with its line, never
/// left half there to escape its redaction).
fn read_tail(path: &Path, max_bytes: usize) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let start = file.metadata()?.len().saturating_sub(max_bytes as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity(max_bytes);
    file.take(max_bytes as u64).read_to_end(&mut bytes)?;
    if start > 0 {
        let first_line = bytes
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |i| i + 1);
        bytes.drain(..first_line);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last [`APP_LOG_LINES`] lines of `text`, secrets redacted, within [`APP_LOG_BYTES`].
fn recent_lines(text: &str, secrets: &BTreeMap<String, String>) -> Vec<String> {
    let text = tb_core::secret::scrub_values(text, secrets.values().map(String::as_str));
    let lines: Vec<&str> = text.lines().collect();
    let mut kept: Vec<String> = Vec::new();
    let mut bytes = 0;
    for line in lines.iter().rev().take(APP_LOG_LINES) {
        bytes += line.len() + 1;
        if bytes > APP_LOG_BYTES {
            break;
        }
        kept.push((*line).to_owned());
    }
    kept.reverse();
    kept
}

/// Removes unpacked versions (and their logs) other than those in `keep`.
fn prune(project_dir: &Path, keep: &[Option<&str>]) {
    let Ok(entries) = std::fs::read_dir(project_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let version = name.strip_suffix(".log").unwrap_or(&name);
        let is_version = version.len() == 64 && version.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_version || keep.contains(&Some(version)) {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}
