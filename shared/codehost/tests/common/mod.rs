//! Helpers shared by the code host tests: snapshots, and reading a repository back
//! through a real `git clone`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use tb_core::ports::{Snapshot, SnapshotFile};
use tb_core::sandbox::WorkspacePath;
use tempfile::TempDir;

/// A snapshot of `(path, contents, executable)`.
pub fn snapshot(files: &[(&str, &[u8], bool)]) -> Snapshot {
    let mut files: Vec<SnapshotFile> = files
        .iter()
        .map(|(path, contents, executable)| SnapshotFile {
            path: WorkspacePath::parse(path).unwrap(),
            contents: contents.to_vec(),
            executable: *executable,
        })
        .collect();
    files.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
    Snapshot { files }
}

/// What a snapshot should look like on disk: path → (contents, executable).
pub fn expected(snapshot: &Snapshot) -> BTreeMap<String, (Vec<u8>, bool)> {
    snapshot
        .files
        .iter()
        .map(|f| {
            (
                f.path.as_str().to_owned(),
                (f.contents.clone(), f.executable),
            )
        })
        .collect()
}

/// `git` with no user or system configuration.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let home = TempDir::new().unwrap();
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("HOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "someone")
        .env("GIT_AUTHOR_EMAIL", "someone@example.com")
        .env("GIT_COMMITTER_NAME", "someone")
        .env("GIT_COMMITTER_EMAIL", "someone@example.com")
        .output()
        .expect("running git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A working copy made with `git clone`.
pub struct Clone {
    pub dir: TempDir,
}

impl Clone {
    /// Clones `source` (a path or `file://` URL).
    pub fn of(source: &str) -> Clone {
        let dir = TempDir::new().unwrap();
        git(dir.path(), &["clone", "-q", source, "work"]);
        Clone { dir }
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("work")
    }

    /// Every file outside `.git`: path → (contents, executable).
    pub fn files(&self) -> BTreeMap<String, (Vec<u8>, bool)> {
        let mut out = BTreeMap::new();
        let root = self.path();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                if entry.file_name() == ".git" {
                    continue;
                }
                if entry.file_type().unwrap().is_dir() {
                    stack.push(path);
                    continue;
                }
                let relative = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let executable = entry.metadata().unwrap().permissions().mode() & 0o111 != 0;
                out.insert(relative, (std::fs::read(&path).unwrap(), executable));
            }
        }
        out
    }

    /// The history of `HEAD`, newest first: (commit, parents).
    pub fn log(&self) -> Vec<(String, Vec<String>)> {
        git(&self.path(), &["log", "--format=%H %P"])
            .lines()
            .map(|line| {
                let mut parts = line.split_whitespace().map(str::to_owned);
                let sha = parts.next().unwrap();
                (sha, parts.collect())
            })
            .collect()
    }

    /// `git log -1 --format=<format>` of `HEAD`.
    pub fn head_format(&self, format: &str) -> String {
        git(&self.path(), &["log", "-1", &format!("--format={format}")])
            .trim()
            .to_owned()
    }
}
