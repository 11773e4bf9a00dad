//! Secrets at rest, through the real binary: once `serve` or `run` has started, the data
//! directory is 0700 and every file holding a secret is 0600, whether the binary made them
//! or found them (made by an older version, or loosened by hand).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn turbobackend(data: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_turbobackend"))
        .args(args)
        .env("TB_DATA_DIR", data)
        .env("TB_PORT", "0")
        .env("TB_WORKERS", "1")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("DB_CLUSTER_HOST")
        .env_remove("TB_CALLBACK_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits for the first line on stdout (the binary has opened its data directory by then).
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

fn assert_private(data: &Path) {
    assert_eq!(format!("{:o}", mode(data)), "700", "the data directory");
    for name in [
        "callback-secret",
        "turbobackend.sqlite",
        "turbobackend.sqlite-wal",
        "turbobackend.sqlite-shm",
    ] {
        assert_eq!(format!("{:o}", mode(&data.join(name))), "600", "{name}");
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn serve_makes_a_new_data_directory_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut child = turbobackend(&data, &["serve"]);
    let line = first_line(&mut child);
    assert!(line.contains("serving at"), "{line}");
    assert_private(&data);
    stop(child);
}

#[test]
fn run_tightens_a_data_directory_left_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A first start makes everything; then it is loosened as an older version left it.
    let mut first = turbobackend(&data, &["serve"]);
    first_line(&mut first);
    stop(first);
    for name in [
        "",
        "callback-secret",
        "turbobackend.sqlite",
        "turbobackend.sqlite-wal",
        "turbobackend.sqlite-shm",
    ] {
        let path = data.join(name);
        let loose = if name.is_empty() { 0o755 } else { 0o644 };
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
        }
    }
    let mut child = turbobackend(&data, &["run", "--output", "json"]);
    let line = first_line(&mut child);
    assert!(line.contains("request_id"), "{line}");
    assert_private(&data);
    stop(child);
}

#[test]
fn a_configuration_file_others_can_read_is_named_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("turbobackend.env");
    std::fs::write(&config, "TB_WORKERS=1\n").unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_turbobackend"))
        .arg("serve")
        .env("TB_CONFIG", &config)
        .env("TB_DATA_DIR", tmp.path().join("data"))
        .env("TB_PORT", "0")
        .env_remove("TB_LOG")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("DB_CLUSTER_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    stop(child);
    assert!(line.contains("readable by other users"), "{line}");
    assert!(line.contains("chmod 600"), "{line}");
}
