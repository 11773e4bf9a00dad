//! Running one command (`bash <script>`, or `bwrap … bash` inside the boundary) in its own
//! process group, output merged into one pipe and capped, the whole group killed at the
//! deadline or when the command exits.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tb_core::sandbox::ExecOutput;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::time::Instant;

use super::boundary::PreExec;
use crate::OutputCap;

/// How long to keep reading after the script exited and its group was killed: only a
/// process that left the group (`setsid`) can hold the pipe open that long.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long to keep reading what was already written after a timeout kill.
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(500);

pub(crate) struct Run<'a> {
    /// The program and its arguments (`bash <script>`, or `bwrap … bash -c …`).
    pub argv: Vec<OsString>,
    pub cwd: &'a Path,
    /// The complete environment (nothing is inherited).
    pub env: &'a BTreeMap<String, String>,
    pub timeout: Duration,
    pub output_cap: usize,
    /// Limits the child sets on itself before exec.
    pub pre_exec: Option<PreExec>,
    /// Our copies of descriptors meant for the child: closed once it is spawned.
    pub child_fds: Vec<OwnedFd>,
}

pub(crate) async fn run(req: Run<'_>) -> io::Result<ExecOutput> {
    // A year stands for "no limit" without overflowing the clock.
    let deadline = Instant::now() + req.timeout.min(Duration::from_secs(365 * 24 * 3600));
    let (reader, writer) = io::pipe()?;
    let (program, args) = req
        .argv
        .split_first()
        .ok_or_else(|| io::Error::other("no program to run"))?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(req.cwd)
        .env_clear()
        .envs(req.env)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0)
        .kill_on_drop(true);
    if let Some(pre) = req.pre_exec {
        // SAFETY: `PreExec::apply` makes only async-signal-safe calls (write, setrlimit)
        // on data prepared before the fork.
        unsafe {
            command.pre_exec(move || pre.apply());
        }
    }
    let spawned = command.spawn();
    // The command holds our copies of the write end; without dropping it the pipe never
    // reaches end-of-file.
    drop(command);
    drop(req.child_fds);
    let mut child = spawned?;
    let mut group = GroupKiller {
        pgid: child.id().map(|id| id as libc::pid_t),
    };
    let mut pipe = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;

    let mut output = OutputCap::new(req.output_cap);
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    let mut status = None;
    let mut stop_reading_at = deadline;
    let mut timed_out = false;
    while !(eof && status.is_some()) {
        tokio::select! {
            read = pipe.read(&mut buf), if !eof => match read {
                Ok(0) => eof = true,
                Ok(n) => output.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited?);
                // Background children (`server &`) die with the script and release the pipe.
                group.kill();
                stop_reading_at = stop_reading_at.min(Instant::now() + DRAIN_AFTER_EXIT);
            },
            _ = tokio::time::sleep_until(stop_reading_at) => {
                if status.is_none() {
                    timed_out = true;
                    group.kill();
                }
                break;
            },
        }
    }
    let mut leader_reaped = status.is_some();
    if timed_out {
        leader_reaped = matches!(
            tokio::time::timeout(Duration::from_secs(5), child.wait()).await,
            Ok(Ok(_))
        );
        let drain_until = Instant::now() + DRAIN_AFTER_KILL;
        while !eof {
            match tokio::time::timeout_at(drain_until, pipe.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => eof = true,
                Ok(Ok(n)) => output.push(&buf[..n]),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => eof = true,
            }
        }
    }
    if let (Some(pgid), true) = (group.disarm(), leader_reaped) {
        // Reaps what remains of the killed group once it is ours (see `adopt_orphans`);
        // needs no waiting from this call.
        tokio::task::spawn_blocking(move || reap_group(pgid));
    }
    let total_bytes = output.total_bytes();
    Ok(ExecOutput {
        exit_code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        output: output.finish(),
        total_bytes,
        timed_out,
    })
}

/// Kills the process group when told to, and when dropped while armed (the exec future was
/// cancelled).
struct GroupKiller {
    pgid: Option<libc::pid_t>,
}

impl GroupKiller {
    fn kill(&self) {
        if let Some(pgid) = self.pgid.filter(|&p| p > 0) {
            // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the
            // process group this module created with `process_group(0)`.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }

    /// Stops killing on drop; returns the group id.
    fn disarm(&mut self) -> Option<libc::pid_t> {
        self.pgid.take()
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reaps the dead members of process group `pgid` that became children of this process
/// (it is PID 1 or a child subreaper); returns at once when none are. Only processes of
/// that group are waited for, so no one else's exit status is taken.
fn reap_group(pgid: libc::pid_t) {
    let give_up_at = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; waiting on a negative pid waits only for
        // children in that process group.
        let reaped = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        if reaped > 0 {
            continue;
        }
        if reaped < 0 || std::time::Instant::now() >= give_up_at {
            return; // ECHILD: no child of ours is left in the group
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): processes a command
/// left behind are re-parented here instead of to PID 1, and `exec` reaps them once their
/// group is killed. Useful where PID 1 reaps slowly or never (some containers); process-
/// wide, so orphans of other children of this process become its to reap as well.
pub fn adopt_orphans() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
