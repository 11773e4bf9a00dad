//! Running `git` in a clean environment: no system or user configuration, no prompts, a
//! fixed locale, `HOME` an empty directory, so results do not depend on the host.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::CodeHostError;

/// What a finished `git` command said.
pub(crate) struct GitOutput {
    /// The git command (`hash-object`, `write-tree`, …).
    pub command: String,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl GitOutput {
    /// The first line of stdout, trimmed (object ids and ref values).
    pub fn line(&self) -> String {
        self.stdout.lines().next().unwrap_or("").trim().to_owned()
    }

    /// This output if git exited 0, else the failure.
    pub fn checked(self) -> Result<GitOutput, CodeHostError> {
        if !self.success {
            return Err(CodeHostError::Git {
                command: self.command,
                message: self.stderr,
            });
        }
        Ok(self)
    }
}

pub(crate) struct GitCli {
    home: PathBuf,
    path: Option<std::ffi::OsString>,
}

impl GitCli {
    /// `home` must be an empty directory that stays so.
    pub fn new(home: PathBuf) -> Self {
        GitCli {
            home,
            path: std::env::var_os("PATH"),
        }
    }

    /// Runs `git args…` with `GIT_DIR` = `git_dir` (if any), extra `env`, and `stdin`;
    /// [`GitOutput::checked`] fails unless git exits 0.
    pub async fn run(
        &self,
        git_dir: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> Result<GitOutput, CodeHostError> {
        let command_name = args.first().copied().unwrap_or("").to_owned();
        let mut command = Command::new("git");
        command
            .args(args)
            .env_clear()
            .env("HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .current_dir(&self.home)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = &self.path {
            command.env("PATH", path);
        }
        if let Some(dir) = git_dir {
            command.env("GIT_DIR", dir);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let io_error = |source| CodeHostError::Io {
            what: format!("running git {command_name}"),
            source,
        };
        let mut child = command.spawn().map_err(io_error)?;
        let writer = match (stdin, child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => {
                let bytes = bytes.to_vec();
                Some(tokio::spawn(async move {
                    pipe.write_all(&bytes).await?;
                    pipe.shutdown().await
                }))
            }
            _ => None,
        };
        let output = child.wait_with_output().await.map_err(io_error)?;
        if let Some(writer) = writer {
            match writer.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if output.status.success() => return Err(io_error(e)),
                _ => {}
            }
        }
        Ok(GitOutput {
            command: command_name,
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
