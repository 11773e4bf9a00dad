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

/// The receipt file a platform commits with `commit_file`.
pub const RECEIPT: &str = ".turbobackend/receipt.json";

/// `commit_file` then `push` against `host`, read back from `clone_url`: one file on top
/// of the parent, idempotent; pushes carry `.turbobackend/` over (an unchanged project
/// makes no commit, a snapshot's own `.turbobackend/` is ignored); a parent `main` has
/// moved past gets no commit; a commit `main` never had is an error.
pub async fn one_file_commits_and_the_platform_directory(
    host: &dyn tb_core::ports::CodeHost,
    project: &tb_core::domain::ProjectId,
    first: &Snapshot,
    changed: &Snapshot,
    clone_url: &str,
) {
    use tb_core::ports::{FileCommit, PortError};
    let receipt_path = WorkspacePath::parse(RECEIPT).unwrap();
    let source = host.push(project, first, "first").await.unwrap();
    let commits_before = Clone::of(clone_url).log().len();
    let receipt = b"{\"receipt\": {\"request_id\": \"req_1\"}}\n";

    let done = host
        .commit_file(
            project,
            &source.commit_sha,
            &receipt_path,
            receipt,
            "Verification receipt for request req_1",
        )
        .await
        .unwrap();

    let FileCommit::Committed { pushed } = done else {
        panic!("{done:?}")
    };
    assert!(pushed.committed);
    assert_eq!(pushed.repo_url, source.repo_url);
    let clone = Clone::of(clone_url);
    let log = clone.log();
    assert_eq!(log.len(), commits_before + 1);
    assert_eq!(
        log[0],
        (pushed.commit_sha.clone(), vec![source.commit_sha.clone()])
    );
    let mut with_receipt = expected(first);
    with_receipt.insert(RECEIPT.into(), (receipt.to_vec(), false));
    assert_eq!(
        clone.files(),
        with_receipt,
        "the parent's tree plus the file"
    );
    assert_eq!(
        clone.head_format("%an <%ae>|%s"),
        "turbobackend <bot@turbobackend.dev>|Verification receipt for request req_1"
    );

    // Again, on the same parent (an answer lost) or on the commit itself: no commit.
    for parent in [&source.commit_sha, &pushed.commit_sha] {
        let again = host
            .commit_file(project, parent, &receipt_path, receipt, "again")
            .await
            .unwrap();
        assert_eq!(
            again,
            FileCommit::Committed {
                pushed: tb_core::ports::Pushed {
                    committed: false,
                    ..pushed.clone()
                }
            }
        );
    }
    assert_eq!(Clone::of(clone_url).log().len(), commits_before + 1);

    // The same snapshot pushed again: the tree compared carries the receipt over, so
    // nothing changed and no commit is made.
    let unchanged = host.push(project, first, "unchanged").await.unwrap();
    assert!(!unchanged.committed);
    assert_eq!(unchanged.commit_sha, pushed.commit_sha);

    // A changed snapshot with its own `.turbobackend/`: that is ignored, the head's is kept.
    let mut forged = changed.clone();
    forged.files.push(tb_core::ports::SnapshotFile {
        path: receipt_path.clone(),
        contents: b"forged".to_vec(),
        executable: false,
    });
    forged.files.push(tb_core::ports::SnapshotFile {
        path: WorkspacePath::parse(".turbobackend/other").unwrap(),
        contents: b"x".to_vec(),
        executable: false,
    });
    let second = host.push(project, &forged, "second").await.unwrap();
    assert!(second.committed);
    let clone = Clone::of(clone_url);
    let mut kept = expected(changed);
    kept.insert(RECEIPT.into(), (receipt.to_vec(), false));
    assert_eq!(
        clone.files(),
        kept,
        "the head's .turbobackend/ is carried over"
    );
    assert_eq!(clone.log()[0].1, vec![pushed.commit_sha.clone()]);

    // `main` moved past the source commit: nothing is committed, and that is said.
    let late = host
        .commit_file(
            project,
            &source.commit_sha,
            &receipt_path,
            b"{\"late\": true}\n",
            "late receipt",
        )
        .await
        .unwrap();
    assert_eq!(
        late,
        FileCommit::BranchMoved {
            repo_url: source.repo_url.clone(),
            head: second.commit_sha.clone(),
        }
    );
    let clone = Clone::of(clone_url);
    assert_eq!(clone.log()[0].0, second.commit_sha);
    assert_eq!(clone.files(), kept);

    // A commit the repository does not have.
    let err = host
        .commit_file(
            project,
            "0123456789012345678901234567890123456789",
            &receipt_path,
            receipt,
            "nowhere",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
}
