//! The isolation boundary of local commands: bubblewrap namespaces, cgroup or rlimit
//! limits, and the sandbox's one way out, to the egress proxy.
//!
//! Each command runs as `bwrap --args 3 bash /run/tb/command.sh`: bubblewrap reads its
//! options (host paths, the environment) from a pipe, so nothing of them shows in the
//! sandbox's `/proc`, and the command's shell is the PID namespace's init (`--as-pid-1`):
//! when it exits, everything left in the namespace is killed.
//!
//! The sandbox's network namespace has only its loopback. Commands find the egress proxy
//! at `127.0.0.1:3128` there (`HTTPS_PROXY`). As root, the platform opens that listener
//! itself inside the namespace (bwrap reports the sandbox's pid on `--info-fd`, the
//! platform `setns`es a thread of its own into the namespace and binds, then releases
//! `--block-fd`), so the command starts with the proxy already there and nothing extra
//! runs inside. Otherwise (`setns` needs `CAP_SYS_ADMIN`), a bridge started inside
//! (socat, else a few lines of Node) forwards that port to the proxy's Unix socket, bound
//! into the sandbox, and the command starts once it listens. What the sandbox sees:
//!
//! ```text
//! /usr, /etc (secrets masked)   read-only, /bin /lib /lib64 /sbin as on the host
//! /proc /dev                    its own (PID namespace; minimal devices)
//! /workspace                    <sandbox>/workspace, read-write, the working directory
//! /home/sandbox                 <sandbox>/home, read-write, $HOME
//! /tmp                          <sandbox>/tmp, read-write, $TMPDIR
//! /run/tb/command.sh            the command, read-only
//! /run/tb/egress.sock           the egress proxy's socket (bridge mode only)
//! ```
//!
//! plus what [`Isolation::read_only`] and [`Isolation::shared`] add. Nothing else of the
//! host: not its processes, its environment, the data directory, other sandboxes, the
//! platform's working directory or its HOME.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::egress::EgressPolicy;

/// Where a command finds the egress proxy, inside the sandbox.
pub const PROXY_URL: &str = "http://127.0.0.1:3128";
const PROXY_SOCKET: &str = "/run/tb/egress.sock";
const COMMAND_PATH: &str = "/run/tb/command.sh";
pub const WORKSPACE: &str = "/workspace";
pub const HOME: &str = "/home/sandbox";

/// Files and directories of `/etc` hidden from commands (password hashes, host keys,
/// private TLS keys).
const ETC_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/security/opasswd",
];

/// How commands are confined (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// The `bwrap` binary.
    pub bwrap: PathBuf,
    pub limits: Limits,
    pub egress: EgressPolicy,
    /// More host paths commands may read (e.g. a Node.js installed outside `/usr`), at the
    /// same path.
    pub read_only: Vec<PathBuf>,
    /// Host directories shared read-write by every sandbox: `(host path, path inside)`
    /// (npm's cache).
    pub shared: Vec<(PathBuf, String)>,
    /// Reach the proxy through a bridge started inside the sandbox instead of a listener
    /// the platform opens in its namespace (default: only when not root, see the module
    /// docs).
    pub bridge: bool,
}

/// Per-command limits. Processes, memory and CPU go through cgroups (v1) where this host
/// lets us create them, rlimits otherwise; file size and CPU time are rlimits always.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Processes and threads at once (`pids.max`; else `RLIMIT_NPROC`, which counts all
    /// processes of the user).
    pub processes: u64,
    /// Memory (`memory.limit_in_bytes`; else `RLIMIT_AS`, address space per process).
    pub memory_bytes: u64,
    /// CPU share in thousandths of a core (`cpu.cfs_quota_us`); no rlimit equivalent.
    pub cpu_millicores: u64,
    /// The largest file a command may write (`RLIMIT_FSIZE`).
    pub file_size_bytes: u64,
    /// CPU seconds per process (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Bytes the sandbox's directory may hold, checked after each command.
    pub disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            processes: 1024,
            memory_bytes: 2 << 30,
            cpu_millicores: 1000,
            file_size_bytes: 1 << 30,
            cpu_seconds: 1800,
            disk_bytes: 2 << 30,
        }
    }
}

impl Isolation {
    /// bubblewrap from `PATH`, default limits, npm's registry only.
    pub fn new() -> Self {
        Isolation {
            bwrap: PathBuf::from("bwrap"),
            limits: Limits::default(),
            egress: EgressPolicy::default(),
            read_only: Vec::new(),
            shared: Vec::new(),
            // SAFETY: geteuid(2) has no preconditions.
            bridge: unsafe { libc::geteuid() } != 0,
        }
    }

    /// Whether bubblewrap runs here with every namespace (it is installed and user
    /// namespaces are allowed); the error says why not.
    pub fn probe(&self) -> Result<(), String> {
        let mut args = system_binds();
        args.extend(["--proc", "/proc", "--dev", "/dev"].map(OsString::from));
        let out = std::process::Command::new(&self.bwrap)
            .args(["--unshare-all", "--die-with-parent", "--new-session"])
            .args(args)
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bwrap.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} cannot create namespaces here: {}",
                self.bwrap.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Where `node` lives when it is outside `/usr` (e.g. `~/.nvm/...`): its installation
    /// directory, to add to [`Isolation::read_only`] and to `PATH`.
    pub fn node_outside_usr() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        let node = std::env::split_paths(&path)
            .map(|d| d.join("node"))
            .find(|p| p.is_file())?;
        let real = node.canonicalize().ok()?;
        let prefix = real.parent()?.parent()?.to_path_buf();
        (!real.starts_with("/usr")).then_some(prefix)
    }

    /// The `bwrap` arguments as `--args` reads them (each ends with a NUL), in a pipe whose
    /// read end the child gets as descriptor 3: they hold host paths and the environment,
    /// which the sandbox's `/proc/1/cmdline` would otherwise show.
    pub(crate) fn args_pipe(args: &[OsString]) -> io::Result<std::io::PipeReader> {
        use std::io::Write;
        use std::os::unix::ffi::OsStrExt;
        let (reader, mut writer) = std::io::pipe()?;
        let mut bytes = Vec::with_capacity(4096);
        for a in args {
            bytes.extend_from_slice(a.as_bytes());
            bytes.push(0);
        }
        if bytes.len() > 60 * 1024 {
            // More than a pipe holds without a reader.
            return Err(io::Error::other("the sandbox's arguments exceed 60 KiB"));
        }
        writer.write_all(&bytes)?;
        Ok(reader)
    }

    /// The `bwrap` options for one command of the sandbox in `dir` (everything before the
    /// command itself, see [`Isolation::command`]).
    pub(crate) fn bwrap_args(
        &self,
        dir: &Path,
        script: &Path,
        env: &BTreeMap<String, String>,
        proxy: ProxyPath<'_>,
    ) -> Vec<OsString> {
        let mut a: Vec<OsString> = [
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            // The command is the namespace's init: when it exits, every process left in the
            // namespace is killed, and no bwrap reaper outlives its parent as a zombie
            // (re-parented to this process, a subreaper).
            "--as-pid-1",
            "--hostname",
            "sandbox",
            "--clearenv",
        ]
        .map(OsString::from)
        .to_vec();
        for (k, v) in env {
            a.extend([OsString::from("--setenv"), k.into(), v.into()]);
        }
        self.read_only_system(&mut a);
        a.extend(["--proc", "/proc", "--dev", "/dev"].map(OsString::from));
        for (sub, inside) in [("workspace", WORKSPACE), ("home", HOME), ("tmp", "/tmp")] {
            a.extend([
                OsString::from("--bind"),
                dir.join(sub).into(),
                inside.into(),
            ]);
        }
        for (host, inside) in &self.shared {
            a.extend([
                OsString::from("--bind-try"),
                host.clone().into(),
                inside.into(),
            ]);
        }
        a.extend([
            OsString::from("--ro-bind"),
            script.into(),
            COMMAND_PATH.into(),
        ]);
        match proxy {
            ProxyPath::Bridge(socket) => {
                a.extend([OsString::from("--bind"), socket.into(), PROXY_SOCKET.into()])
            }
            // bwrap reports the sandbox's pid on 4 and waits on 5 until the platform has
            // put the proxy's listener into the sandbox's network namespace.
            ProxyPath::Listener => {
                a.extend(["--info-fd", "4", "--block-fd", "5"].map(OsString::from))
            }
        }
        a.extend(["--chdir", WORKSPACE].map(OsString::from));
        a
    }

    /// The program and arguments that run `app` (a deployed app's command) inside a
    /// boundary like the commands' one, with `dir` (the unpacked app) read-only as its
    /// working directory at `/app`. It shares the host's network: the platform reaches its
    /// port, and it reaches its database. Its environment is the one bubblewrap is given.
    pub fn app_args(&self, dir: &Path, app: &[OsString]) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![self.bwrap.clone().into()];
        a.extend(
            [
                "--unshare-all",
                "--share-net",
                "--die-with-parent",
                "--new-session",
                "--as-pid-1",
                "--hostname",
                "app",
            ]
            .map(OsString::from),
        );
        self.read_only_system(&mut a);
        a.extend(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"].map(OsString::from));
        a.extend([OsString::from("--ro-bind"), dir.into(), "/app".into()]);
        a.extend(["--chdir", "/app", "--"].map(OsString::from));
        a.extend(app.iter().cloned());
        a
    }

    /// The system, read-only, with `/etc`'s masks and the configured read-only paths: what
    /// both boundaries see of the host.
    fn read_only_system(&self, a: &mut Vec<OsString>) {
        a.extend(system_binds());
        a.extend(etc_masks());
        for p in &self.read_only {
            a.extend([
                OsString::from("--ro-bind-try"),
                p.clone().into(),
                p.clone().into(),
            ]);
        }
    }

    /// The command bubblewrap runs (after its options; `--args` cannot carry it).
    pub(crate) fn command(bridge: bool) -> Vec<OsString> {
        if !bridge {
            return vec!["bash".into(), COMMAND_PATH.into()];
        }
        vec!["bash".into(), "-c".into(), init_script().into()]
    }
}

impl Default for Isolation {
    fn default() -> Self {
        Self::new()
    }
}

/// How a sandbox's `127.0.0.1:3128` reaches the egress proxy.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ProxyPath<'a> {
    /// The platform opens the listener inside the sandbox's network namespace itself
    /// (`setns`, which needs `CAP_SYS_ADMIN`: root): nothing to start in the sandbox.
    Listener,
    /// A bridge started in the sandbox (socat, else Node) to the proxy's Unix socket.
    Bridge(&'a Path),
}

/// Opens a listener on `127.0.0.1:3128` inside the network namespace of process `pid`
/// (from a thread of its own, which ends there: the namespace is per thread).
pub(crate) fn listen_in_namespace_of(pid: i32) -> io::Result<std::net::TcpListener> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::spawn(move || {
        // SAFETY: setns(2) on an open namespace descriptor; affects this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = std::net::TcpListener::bind(("127.0.0.1", 3128))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// `/usr` and `/etc` read-only, and `/bin`, `/lib`, `/lib64`, `/sbin` as the host has
/// them (symlinks into `/usr` on merged-/usr systems, directories elsewhere).
fn system_binds() -> Vec<OsString> {
    let mut a: Vec<OsString> = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
        .map(OsString::from)
        .to_vec();
    for top in ["/bin", "/lib", "/lib64", "/lib32", "/sbin"] {
        match std::fs::read_link(top) {
            Ok(target) => a.extend([OsString::from("--symlink"), target.into(), top.into()]),
            Err(_) if Path::new(top).is_dir() => {
                a.extend(["--ro-bind", top, top].map(OsString::from))
            }
            Err(_) => {}
        }
    }
    a
}

/// Hides [`ETC_SECRETS`] under the read-only `/etc`.
fn etc_masks() -> Vec<OsString> {
    let mut a = Vec::new();
    for secret in ETC_SECRETS {
        let p = Path::new(secret);
        if p.is_dir() {
            a.extend(["--tmpfs", secret].map(OsString::from));
        } else if p.exists() {
            a.extend(["--ro-bind", "/dev/null", secret].map(OsString::from));
        }
    }
    a
}

/// Starts the bridge to the proxy (socat where installed, else a few lines of Node), waits
/// until it listens, then runs the command.
fn init_script() -> String {
    let run = format!("bash {COMMAND_PATH}");
    const NODE_BRIDGE: &str = "require('net').createServer(c=>{const u=require('net').connect('/run/tb/egress.sock');c.pipe(u).pipe(c);c.on('error',()=>u.destroy());u.on('error',()=>c.destroy())}).listen(3128,'127.0.0.1')";
    format!(
        "if [ -x /usr/bin/socat ]; then /usr/bin/socat TCP-LISTEN:3128,bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{PROXY_SOCKET} 2>/dev/null & \
         else node -e \"{NODE_BRIDGE}\" 2>/dev/null & fi\n\
         for i in $(seq 1000); do case \"$(< /proc/net/tcp)\" in *' 0100007F:0C38 00000000:0000 0A '*) break;; esac; sleep 0.005; done\n\
         {run}"
    )
}

/// The cgroup (v1) hierarchies limits go through, found writable at start.
#[derive(Debug, Default)]
pub(crate) struct Cgroups {
    /// `/sys/fs/cgroup/<controller>/turbobackend` for each usable controller.
    parents: Vec<(&'static str, PathBuf)>,
}

/// One command's cgroups: created before the command, joined by it (pre-exec), removed
/// after.
pub(crate) struct CommandCgroups {
    dirs: Vec<PathBuf>,
    /// The `pids` group, whose `pids.events` counts the forks the limit refused.
    pids_dir: Option<PathBuf>,
    procs: Vec<OwnedFd>,
    pub has_pids: bool,
    pub has_memory: bool,
}

impl Cgroups {
    /// The controllers among `pids`, `memory`, `cpu` whose v1 hierarchy lets us make a
    /// `turbobackend` group.
    pub fn detect() -> Cgroups {
        let mut parents = Vec::new();
        for controller in ["pids", "memory", "cpu"] {
            let parent = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("turbobackend");
            let usable = parent.is_dir() || std::fs::create_dir(&parent).is_ok();
            if usable && parent.join("cgroup.procs").exists() {
                parents.push((controller, parent));
            }
        }
        Cgroups { parents }
    }

    pub fn controllers(&self) -> Vec<&'static str> {
        self.parents.iter().map(|(c, _)| *c).collect()
    }

    /// Makes the groups of one command with `limits` written.
    pub fn for_command(&self, name: &str, limits: &Limits) -> io::Result<CommandCgroups> {
        let mut made = CommandCgroups {
            dirs: Vec::new(),
            pids_dir: None,
            procs: Vec::new(),
            has_pids: false,
            has_memory: false,
        };
        for (controller, parent) in &self.parents {
            let dir = parent.join(name);
            std::fs::create_dir(&dir)?;
            made.dirs.push(dir.clone());
            let write = |file: &str, value: String| std::fs::write(dir.join(file), value);
            match *controller {
                "pids" => {
                    write("pids.max", limits.processes.to_string())?;
                    made.has_pids = true;
                    made.pids_dir = Some(dir.clone());
                }
                "memory" => {
                    write("memory.limit_in_bytes", limits.memory_bytes.to_string())?;
                    // Swap counted too, where the kernel accounts it.
                    let _ = write(
                        "memory.memsw.limit_in_bytes",
                        limits.memory_bytes.to_string(),
                    );
                    made.has_memory = true;
                }
                _ => {
                    write("cpu.cfs_period_us", "100000".into())?;
                    write(
                        "cpu.cfs_quota_us",
                        (limits.cpu_millicores * 100).max(1000).to_string(),
                    )?;
                }
            }
            made.procs.push(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))?
                    .into(),
            );
        }
        Ok(made)
    }
}

impl CommandCgroups {
    /// How many process creations the `pids` limit refused (`max` in `pids.events`), where
    /// the pids controller is in use. A command that reached its process limit (a fork
    /// loop) may still exit 0; this tells it apart.
    pub fn forks_refused(&self) -> u64 {
        let Some(dir) = &self.pids_dir else { return 0 };
        std::fs::read_to_string(dir.join("pids.events"))
            .ok()
            .and_then(|events| {
                events.lines().find_map(|l| {
                    l.strip_prefix("max ")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
            })
            .unwrap_or(0)
    }

    /// The raw descriptors the child writes "0" to before exec.
    pub fn procs_fds(&self) -> Vec<i32> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }
}

impl Drop for CommandCgroups {
    fn drop(&mut self) {
        self.procs.clear();
        for dir in &self.dirs {
            // Empty once the PID namespace is gone; that can take a moment after exit.
            for _ in 0..100 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }
}

/// What the child sets before exec: rlimits and cgroup membership. Only async-signal-safe
/// calls (it runs between fork and exec).
#[derive(Clone, Debug)]
pub(crate) struct PreExec {
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    pub cgroup_procs: Vec<i32>,
    /// Descriptors the child gets at fixed numbers: `(ours, theirs)` (bubblewrap's
    /// `--args 3`, `--info-fd 4`, `--block-fd 5`).
    pub fds: Vec<(i32, i32)>,
}

impl PreExec {
    pub fn new(limits: &Limits, cgroups: Option<&CommandCgroups>) -> PreExec {
        let mut rlimits = vec![
            (libc::RLIMIT_FSIZE, limits.file_size_bytes),
            (libc::RLIMIT_CPU, limits.cpu_seconds),
        ];
        if !cgroups.is_some_and(|c| c.has_pids) {
            rlimits.push((libc::RLIMIT_NPROC, limits.processes));
        }
        if !cgroups.is_some_and(|c| c.has_memory) {
            rlimits.push((libc::RLIMIT_AS, limits.memory_bytes));
        }
        PreExec {
            rlimits,
            cgroup_procs: cgroups.map(|c| c.procs_fds()).unwrap_or_default(),
            fds: Vec::new(),
        }
    }

    /// Runs in the child: joins the cgroups, then lowers the rlimits.
    pub fn apply(&self) -> io::Result<()> {
        // Cgroups first: their descriptors may have the numbers the others are moved to.
        for fd in &self.cgroup_procs {
            // SAFETY: write(2) on a descriptor opened by the parent, with a valid buffer.
            if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        // Out of the way first (a source may sit on another's target), then in place;
        // dup2 leaves the copies without close-on-exec.
        let mut moved = [0i32; 8];
        for (i, (ours, _)) in self.fds.iter().enumerate().take(moved.len()) {
            // SAFETY: fcntl(2) on a descriptor of this process.
            moved[i] = unsafe { libc::fcntl(*ours, libc::F_DUPFD_CLOEXEC, 100) };
            if moved[i] < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for (i, (_, theirs)) in self.fds.iter().enumerate().take(moved.len()) {
            // SAFETY: dup2(2) on descriptors of this process.
            if unsafe { libc::dup2(moved[i], *theirs) } != *theirs {
                return Err(io::Error::last_os_error());
            }
        }
        for (resource, value) in &self.rlimits {
            let limit = libc::rlimit {
                rlim_cur: *value,
                rlim_max: *value,
            };
            // SAFETY: setrlimit(2) reads the struct passed by reference.
            if unsafe { libc::setrlimit(*resource, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Bytes held under `dir` (apparent sizes: a sparse file counts at its length, as an
/// archive would read it), without following symlinks.
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_sees_only_the_sandbox_directories_read_write() {
        let iso = Isolation {
            shared: vec![("/var/cache/x".into(), "/npm-cache".into())],
            ..Isolation::new()
        };
        let args = iso.bwrap_args(
            Path::new("/data/sandboxes/s1"),
            Path::new("/data/sandboxes/s1/exec-1.sh"),
            &BTreeMap::from([("HOME".into(), HOME.into())]),
            ProxyPath::Bridge(Path::new("/tmp/tb-egress-1/egress.sock")),
        );
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let binds: Vec<String> = args
            .windows(3)
            .filter(|w| w[0] == "--bind" || w[0] == "--bind-try")
            .map(|w| format!("{} -> {}", w[1], w[2]))
            .collect();
        assert_eq!(
            binds,
            [
                "/data/sandboxes/s1/workspace -> /workspace",
                "/data/sandboxes/s1/home -> /home/sandbox",
                "/data/sandboxes/s1/tmp -> /tmp",
                "/var/cache/x -> /npm-cache",
                "/tmp/tb-egress-1/egress.sock -> /run/tb/egress.sock",
            ]
        );
        for flag in [
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ] {
            assert!(args.contains(&flag.to_string()), "{flag}");
        }
        assert!(!args.contains(&"--share-net".to_string()));
    }
}
