//! Where commands cannot be isolated (here: no `bwrap` on `PATH`), `serve` refuses to start
//! for its several users unless told to, and `run` says so at start.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// The binary with a `PATH` that has no bubblewrap (nor anything else).
fn without_bwrap(data: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turbobackend"));
    cmd.args(args)
        .current_dir(data)
        .env("PATH", data.join("empty-path"))
        .env("TB_DATA_DIR", data)
        .env("TB_NPM_CACHE", data.join("npm-cache"))
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("DB_CLUSTER_HOST")
        .env_remove("TB_ALLOW_UNISOLATED_COMMANDS")
        .env_remove("TB_CONFIG");
    cmd
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

#[test]
fn serve_refuses_unisolated_commands_unless_the_setting_accepts_them() {
    let data = tempfile::tempdir().unwrap();
    let out = without_bwrap(data.path(), &["serve"])
        .env("TB_PORT", free_port())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("commands cannot be isolated here")
            && stderr.contains("TB_ALLOW_UNISOLATED_COMMANDS=true"),
        "{stderr}"
    );

    // Accepted: it serves, and says plainly what that means.
    let mut serve = without_bwrap(data.path(), &["serve"])
        .env("TB_PORT", free_port())
        .env("TB_ALLOW_UNISOLATED_COMMANDS", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first_out = BufReader::new(serve.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    assert!(
        first_out.starts_with("turbobackend serving at"),
        "{first_out}"
    );
    let warning = BufReader::new(serve.stderr.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    assert!(warning.contains("commands are NOT isolated"), "{warning}");
    unsafe { libc::kill(serve.id() as i32, libc::SIGKILL) };
    serve.wait().unwrap();
}

#[test]
fn run_says_at_start_that_commands_are_not_isolated() {
    let data = tempfile::tempdir().unwrap();
    let mut run = without_bwrap(data.path(), &["run", "--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(run.stderr.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    unsafe { libc::kill(run.id() as i32, libc::SIGKILL) };
    run.wait().unwrap();
    assert!(
        first.starts_with("WARNING: commands are NOT isolated"),
        "{first}"
    );
}
