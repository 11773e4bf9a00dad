//! `LocalGitCodeHost` against real bare repositories, read back with `git clone`.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Clone, expected, git, snapshot};
use tb_codehost::LocalGitCodeHost;
use tb_core::domain::ProjectId;
use tb_core::ports::{CodeHost, PortError};
use tempfile::TempDir;

fn project() -> ProjectId {
    ProjectId::parse("proj_local1").unwrap()
}

fn fixed_clock(seconds: u64) -> tb_codehost::local_git::Clock {
    Arc::new(move || UNIX_EPOCH + Duration::from_secs(seconds))
}

fn first_snapshot() -> tb_core::ports::Snapshot {
    snapshot(&[
        ("package.json", b"{\"name\":\"app\"}\n", false),
        (
            "server/api/health.get.ts",
            b"export default () => ({ ok: true })\n",
            false,
        ),
        (
            "scripts/start.sh",
            b"#!/bin/sh\nnode .output/server/index.mjs\n",
            true,
        ),
        (
            "migrations/001 users.sql",
            b"create table users (id serial);\n",
            false,
        ),
        ("assets/logo.bin", &[0u8, 159, 146, 150, 255], false),
    ])
}

#[tokio::test]
async fn a_first_push_creates_a_bare_repository_whose_clone_has_exactly_the_snapshot() {
    let root = TempDir::new().unwrap();
    let host = LocalGitCodeHost::new(root.path()).unwrap();
    let snap = first_snapshot();

    let pushed = host
        .push(&project(), &snap, "Build the users API")
        .await
        .unwrap();

    assert!(pushed.committed);
    let bare = root.path().join("turbobackend-proj_local1.git");
    assert_eq!(host.repo_path(&project()), bare);
    assert_eq!(pushed.repo_url, format!("file://{}", bare.display()));
    let clone = Clone::of(&pushed.repo_url);
    assert_eq!(clone.files(), expected(&snap));
    assert_eq!(clone.log(), vec![(pushed.commit_sha.clone(), vec![])]);
    assert_eq!(
        clone.head_format("%an <%ae>|%cn <%ce>|%s"),
        "turbobackend <bot@turbobackend.dev>|turbobackend <bot@turbobackend.dev>|Build the users API"
    );
    assert_eq!(
        git(&clone.path(), &["branch", "--show-current"]).trim(),
        "main"
    );
}

#[tokio::test]
async fn pushing_the_same_tree_twice_makes_one_commit() {
    let root = TempDir::new().unwrap();
    let host = LocalGitCodeHost::new(root.path()).unwrap();
    let snap = first_snapshot();

    let first = host.push(&project(), &snap, "first").await.unwrap();
    let second = host.push(&project(), &snap, "second").await.unwrap();

    assert!(first.committed);
    assert!(!second.committed);
    assert_eq!(second.commit_sha, first.commit_sha);
    assert_eq!(Clone::of(&first.repo_url).log().len(), 1);
}

#[tokio::test]
async fn a_changed_snapshot_makes_one_commit_on_top_of_the_previous_head() {
    let root = TempDir::new().unwrap();
    let host = LocalGitCodeHost::new(root.path()).unwrap();
    let first = host
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();
    let changed = snapshot(&[
        (
            "package.json",
            b"{\"name\":\"app\",\"version\":\"2\"}\n",
            false,
        ),
        (
            "server/api/health.get.ts",
            b"export default () => ({ ok: true })\n",
            false,
        ),
        (
            "scripts/start.sh",
            b"#!/bin/sh\nnode .output/server/index.mjs\n",
            false,
        ),
        (
            "server/api/users.get.ts",
            b"export default () => []\n",
            false,
        ),
    ]);

    let second = host.push(&project(), &changed, "second").await.unwrap();

    assert!(second.committed);
    let clone = Clone::of(&second.repo_url);
    assert_eq!(
        clone.files(),
        expected(&changed),
        "removed files are gone, modes follow"
    );
    assert_eq!(
        clone.log(),
        vec![
            (second.commit_sha.clone(), vec![first.commit_sha.clone()]),
            (first.commit_sha.clone(), vec![]),
        ]
    );
}

#[tokio::test]
async fn commits_are_deterministic_for_the_same_tree_parent_message_and_time() {
    let snap = first_snapshot();
    let mut shas = Vec::new();
    for seconds in [1_700_000_000, 1_700_000_000, 1_700_000_001] {
        let root = TempDir::new().unwrap();
        let host = LocalGitCodeHost::new(root.path())
            .unwrap()
            .with_clock(fixed_clock(seconds));
        let pushed = host.push(&project(), &snap, "same message").await.unwrap();
        let clone = Clone::of(&pushed.repo_url);
        assert_eq!(clone.head_format("%at %ct"), format!("{seconds} {seconds}"));
        shas.push(pushed.commit_sha);
    }
    assert_eq!(shas[0], shas[1], "same tree, parent, message and time");
    assert_ne!(shas[0], shas[2], "another time is another commit");
}

#[tokio::test]
async fn a_branch_moved_by_another_writer_becomes_the_parent() {
    let root = TempDir::new().unwrap();
    let host = LocalGitCodeHost::new(root.path()).unwrap();
    let first = host
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();
    let outside = Clone::of(&first.repo_url);
    std::fs::write(outside.path().join("NOTES.md"), "by hand\n").unwrap();
    git(&outside.path(), &["add", "NOTES.md"]);
    git(&outside.path(), &["commit", "-q", "-m", "by hand"]);
    git(&outside.path(), &["push", "-q", "origin", "main"]);
    let by_hand = outside.head_format("%H");

    let pushed = host
        .push(&project(), &first_snapshot(), "back to the snapshot")
        .await
        .unwrap();

    assert!(pushed.committed, "the tree differs from the moved head");
    let clone = Clone::of(&pushed.repo_url);
    assert_eq!(clone.log()[0], (pushed.commit_sha.clone(), vec![by_hand]));
    assert_eq!(clone.files(), expected(&first_snapshot()));
}

#[tokio::test]
async fn a_snapshot_git_cannot_hold_is_a_permanent_error_and_writes_nothing() {
    let root = TempDir::new().unwrap();
    let host = LocalGitCodeHost::new(root.path()).unwrap();
    for bad in [
        snapshot(&[]),
        snapshot(&[("a", b"1", false), ("a/b", b"2", false)]),
        snapshot(&[(".git/hooks/post-checkout", b"x", true)]),
    ] {
        let err = host.push(&project(), &bad, "bad").await.unwrap_err();
        assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
    }
    assert!(!host.repo_path(&project()).exists());
}

#[tokio::test]
async fn the_system_clock_dates_commits_by_default() {
    let root = TempDir::new().unwrap();
    let host = LocalGitCodeHost::new(root.path()).unwrap();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let pushed = host
        .push(&project(), &first_snapshot(), "now")
        .await
        .unwrap();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let dated: u64 = Clone::of(&pushed.repo_url)
        .head_format("%ct")
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&dated),
        "{before} <= {dated} <= {after}"
    );
}

#[tokio::test]
async fn a_file_commits_on_top_of_its_parent_once_and_pushes_carry_the_platform_directory() {
    let root = TempDir::new().unwrap();
    let host = LocalGitCodeHost::new(root.path()).unwrap();
    let url = format!("file://{}", host.repo_path(&project()).display());
    let changed = snapshot(&[("package.json", b"{\"name\":\"app2\"}\n", false)]);
    common::one_file_commits_and_the_platform_directory(
        &host,
        &project(),
        &first_snapshot(),
        &changed,
        &url,
    )
    .await;
}
