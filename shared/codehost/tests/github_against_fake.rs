//! `GitHubCodeHost` against the fake GitHub, whose repositories are real bare git
//! repositories read back here with `git clone`.

mod common;

use std::time::Duration;

use common::{Clone, expected, git, snapshot};
use tb_codehost::{GitHubCodeHost, GitHubConfig, GitHubToken, RetryPolicy};
use tb_core::domain::ProjectId;
use tb_core::ports::{CodeHost, PortError, Snapshot};
use tb_testkit::fake_github::{FakeGitHub, Ruleset};

const TOKEN: &str = "test-github-token-0123456789-SECRET";
const LOGIN: &str = "octo-user";
const REPO: &str = "turbobackend-proj_gh1";

fn project() -> ProjectId {
    ProjectId::parse("proj_gh1").unwrap()
}

fn config(fake: &FakeGitHub, token: &str) -> GitHubConfig {
    GitHubConfig {
        api_base: fake.api_url().to_owned(),
        retry: RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_wait: Duration::from_secs(5),
        },
        ..GitHubConfig::new(GitHubToken::new(token))
    }
}

fn host(fake: &FakeGitHub) -> GitHubCodeHost {
    GitHubCodeHost::new(config(fake, TOKEN)).unwrap()
}

fn first_snapshot() -> Snapshot {
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
        ("public/favicon.ico", &[0u8, 0, 1, 0, 255, 254, 10], false),
    ])
}

fn changed_snapshot() -> Snapshot {
    snapshot(&[
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
            true,
        ),
        ("public/favicon.ico", &[0u8, 0, 1, 0, 255, 254, 10], false),
        ("public/logo.png", &[137u8, 80, 78, 71, 0, 200], false),
    ])
}

/// Requests whose path starts with `prefix`, as `(method, status)`.
fn statuses(fake: &FakeGitHub, prefix: &str) -> Vec<(String, u16)> {
    fake.requests()
        .into_iter()
        .filter(|r| r.path.starts_with(prefix))
        .map(|r| (r.method, r.status))
        .collect()
}

#[tokio::test]
async fn a_first_push_creates_a_private_repository_with_one_commit_holding_exactly_the_snapshot() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let snap = first_snapshot();

    let pushed = host(&fake)
        .push(&project(), &snap, "Build the users API")
        .await
        .unwrap();

    assert!(pushed.committed);
    assert_eq!(fake.repo_is_private(LOGIN, REPO), Some(true));
    assert_eq!(
        pushed.repo_url,
        format!("{}/{LOGIN}/{REPO}", fake.api_url())
    );
    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    assert_eq!(
        clone.files(),
        expected(&snap),
        "exactly the snapshot, executable bits included"
    );
    // The snapshot is committed on top of the placeholder that got the empty repository
    // past the Git Data API, a fast-forward: nothing was ever forced.
    let log = clone.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0], (pushed.commit_sha.clone(), vec![log[1].0.clone()]));
    assert!(log[1].1.is_empty(), "the placeholder is the root commit");
    for r in fake.requests().iter().filter(|r| r.method == "PATCH") {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["force"], false, "{}", r.body);
    }
    assert_eq!(
        clone.head_format("%an <%ae>|%cn <%ce>|%s"),
        "turbobackend <bot@turbobackend.dev>|turbobackend <bot@turbobackend.dev>|Build the users API"
    );
    let create = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/user/repos")
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&create.body).unwrap();
    assert_eq!(body["private"], true);
    assert_eq!(body["auto_init"], false);
}

#[tokio::test]
async fn pushing_the_same_snapshot_again_makes_no_commit_and_creates_no_git_objects() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let host = host(&fake);
    let first = host
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();
    let git_writes = |fake: &FakeGitHub| {
        fake.requests()
            .iter()
            .filter(|r| r.method != "GET" && r.path.contains("/git/"))
            .count()
    };
    let writes_before = git_writes(&fake);

    let second = host
        .push(&project(), &first_snapshot(), "second")
        .await
        .unwrap();

    assert!(!second.committed);
    assert_eq!(second.commit_sha, first.commit_sha);
    assert_eq!(
        git_writes(&fake),
        writes_before,
        "no blob, tree, commit or ref written"
    );
    // The placeholder and the first snapshot's commit.
    assert_eq!(Clone::of(&fake.clone_url(LOGIN, REPO)).log().len(), 2);
}

#[tokio::test]
async fn a_changed_snapshot_makes_exactly_one_new_commit_whose_parent_is_the_previous_head() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let host = host(&fake);
    let first = host
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();
    let blobs_before = fake.count("POST", &format!("/repos/{LOGIN}/{REPO}/git/blobs"));

    let second = host
        .push(&project(), &changed_snapshot(), "second")
        .await
        .unwrap();

    assert!(second.committed);
    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    assert_eq!(
        clone.files(),
        expected(&changed_snapshot()),
        "removed files are gone"
    );
    let log = clone.log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(
        log[..2],
        [
            (second.commit_sha.clone(), vec![first.commit_sha.clone()]),
            (first.commit_sha.clone(), vec![log[2].0.clone()]),
        ]
    );
    assert_eq!(
        fake.count("POST", &format!("/repos/{LOGIN}/{REPO}/git/blobs")) - blobs_before,
        1,
        "only the new binary file is uploaded as a blob; the known one is reused"
    );
}

#[tokio::test]
async fn an_existing_repository_reported_by_a_422_is_used() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    fake.create_repo(LOGIN, REPO, true);

    let pushed = host(&fake)
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();

    assert!(pushed.committed);
    assert_eq!(statuses(&fake, "/user/repos"), vec![("POST".into(), 422)]);
    assert_eq!(
        statuses(&fake, &format!("/repos/{LOGIN}/{REPO}"))[0],
        ("GET".into(), 200)
    );
    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    assert_eq!(clone.files(), expected(&first_snapshot()));
}

#[tokio::test]
async fn a_secondary_rate_limit_403_with_retry_after_is_retried() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    fake.fail_next_matching("POST", "/git/trees", 1, 403, &[("retry-after", "0")]);
    fake.fail_next_matching("POST", "/git/commits", 1, 502, &[]);

    let pushed = host(&fake)
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();

    assert!(pushed.committed);
    let path = format!("/repos/{LOGIN}/{REPO}/git/trees");
    let trees: Vec<_> = statuses(&fake, &path)
        .into_iter()
        .filter(|(m, _)| m == "POST")
        .collect();
    assert_eq!(trees, vec![("POST".into(), 403), ("POST".into(), 201)]);
    let path = format!("/repos/{LOGIN}/{REPO}/git/commits");
    let commits: Vec<_> = statuses(&fake, &path)
        .into_iter()
        .filter(|(m, _)| m == "POST")
        .collect();
    assert_eq!(commits, vec![("POST".into(), 502), ("POST".into(), 201)]);
    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    assert_eq!(clone.files(), expected(&first_snapshot()));
}

#[tokio::test]
async fn a_rate_limit_longer_than_the_adapter_waits_is_a_transient_error() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    fake.fail_next_matching("POST", "/user/repos", 1, 429, &[("retry-after", "3600")]);

    let err = host(&fake)
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap_err();

    let PortError::Transient(message) = err else {
        panic!("expected a transient error, got {err:?}");
    };
    assert!(message.contains("3600s"), "{message}");
    assert_eq!(
        fake.count("POST", "/user/repos"),
        1,
        "not retried before the wait"
    );
}

#[tokio::test]
async fn a_bad_token_is_a_clear_permanent_error() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let wrong = "ghp_WrongToken999";
    let host = GitHubCodeHost::new(config(&fake, wrong)).unwrap();

    let err = host
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap_err();

    let PortError::Permanent(message) = err else {
        panic!("expected a permanent error, got {err:?}");
    };
    assert!(
        message.contains("401") && message.contains("token"),
        "{message}"
    );
    assert!(
        !message.contains(wrong),
        "the token is not in the error: {message}"
    );
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried");
}

#[tokio::test]
async fn the_token_never_appears_in_any_path_body_or_other_header_the_fake_recorded() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let host = host(&fake);
    host.push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();
    host.push(&project(), &changed_snapshot(), "second")
        .await
        .unwrap();
    assert!(!format!("{host:?}").contains(TOKEN));

    let requests = fake.requests();
    assert!(requests.len() > 10);
    for request in &requests {
        assert!(
            request.had_authorization,
            "{} {}",
            request.method, request.path
        );
        assert!(
            !request.path.contains(TOKEN),
            "token in path {}",
            request.path
        );
        assert!(
            !request.body.contains(TOKEN),
            "token in body of {}",
            request.path
        );
        for (name, value) in &request.headers {
            assert!(!value.contains(TOKEN), "token in header {name}");
        }
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert!(header("user-agent").is_some_and(|ua| !ua.is_empty()));
        assert_eq!(header("x-github-api-version"), Some("2022-11-28"));
        assert_eq!(header("accept"), Some("application/vnd.github+json"));
    }
}

#[tokio::test]
async fn an_organization_owner_creates_and_pushes_the_repository_under_the_organization() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    fake.add_org("acme");
    let host = GitHubCodeHost::new(GitHubConfig {
        owner: Some("acme".into()),
        ..config(&fake, TOKEN)
    })
    .unwrap();

    let pushed = host
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();

    assert_eq!(fake.count("POST", "/orgs/acme/repos"), 1);
    assert_eq!(fake.count("POST", "/user/repos"), 0);
    assert_eq!(
        fake.count("GET", "/user"),
        0,
        "no user lookup with an organization"
    );
    assert_eq!(fake.repo_is_private("acme", REPO), Some(true));
    assert_eq!(fake.repo_is_private(LOGIN, REPO), None);
    assert!(pushed.repo_url.ends_with(&format!("/acme/{REPO}")));
    let clone = Clone::of(&fake.clone_url("acme", REPO));
    assert_eq!(clone.files(), expected(&first_snapshot()));
}

#[tokio::test]
async fn an_unknown_organization_is_a_clear_permanent_error() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let host = GitHubCodeHost::new(GitHubConfig {
        owner: Some("nowhere".into()),
        ..config(&fake, TOKEN)
    })
    .unwrap();

    let err = host
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap_err();

    assert!(
        matches!(&err, PortError::Permanent(m) if m.contains("404") && m.contains("nowhere")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_push_that_died_after_the_placeholder_commit_is_completed_by_the_next_one() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let host = host(&fake);
    // Every attempt at the tree fails: the push ends after the placeholder commit.
    fake.fail_next_matching("POST", "/git/trees", 3, 500, &[]);
    let err = host
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap_err();
    assert!(matches!(err, PortError::Transient(_)), "{err:?}");
    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    assert_eq!(
        clone.files().keys().collect::<Vec<_>>(),
        [".turbobackend-init"]
    );

    let pushed = host
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();

    assert!(pushed.committed);
    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    assert_eq!(clone.files(), expected(&first_snapshot()));
    let log = clone.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0], (pushed.commit_sha, vec![log[1].0.clone()]));
}

#[tokio::test]
async fn a_branch_moved_by_another_writer_becomes_the_parent() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let host = host(&fake);
    host.push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();
    let outside = Clone::of(&fake.clone_url(LOGIN, REPO));
    std::fs::write(outside.path().join("NOTES.md"), "by hand\n").unwrap();
    git(&outside.path(), &["add", "NOTES.md"]);
    git(&outside.path(), &["commit", "-q", "-m", "by hand"]);
    git(&outside.path(), &["push", "-q", "origin", "main"]);
    let by_hand = outside.head_format("%H");

    let pushed = host
        .push(&project(), &changed_snapshot(), "second")
        .await
        .unwrap();

    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    assert_eq!(clone.log()[0], (pushed.commit_sha, vec![by_hand]));
    assert_eq!(clone.files(), expected(&changed_snapshot()));
}

#[tokio::test]
async fn a_ruleset_blocking_force_pushes_does_not_stop_the_first_push() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    fake.add_ruleset(
        LOGIN,
        REPO,
        Ruleset {
            branch: "main".into(),
            block_force_pushes: true,
            ..Ruleset::default()
        },
    );

    let pushed = host(&fake)
        .push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();

    assert!(pushed.committed);
    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    assert_eq!(clone.files(), expected(&first_snapshot()));
    assert!(
        fake.requests().iter().all(|r| r.status != 422),
        "{:?}",
        statuses(&fake, "/repos/")
    );
}

#[tokio::test]
async fn a_rule_violation_fails_at_once_with_githubs_message() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let host = host(&fake);
    host.push(&project(), &first_snapshot(), "first")
        .await
        .unwrap();
    fake.add_ruleset(
        LOGIN,
        REPO,
        Ruleset {
            branch: "main".into(),
            restrict_updates: true,
            ..Ruleset::default()
        },
    );
    let patches_before = fake.count("PATCH", "/repos/");

    let err = host
        .push(&project(), &changed_snapshot(), "second")
        .await
        .unwrap_err();

    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Repository rule violations found")
            && text.contains("Cannot update this protected ref"),
        "{text}"
    );
    assert_eq!(
        fake.count("PATCH", "/repos/") - patches_before,
        1,
        "no retry"
    );
    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    assert_eq!(clone.files(), expected(&first_snapshot()), "nothing moved");
}

#[tokio::test]
async fn workflows_are_never_pushed() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    let with_workflows = snapshot(&[
        ("package.json", b"{\"name\":\"app\"}\n", false),
        (".github/workflows/ci.yml", b"on: push\njobs: {}\n", false),
        (".github/CODEOWNERS", b"* @someone\n", false),
    ]);

    host(&fake)
        .push(&project(), &with_workflows, "first")
        .await
        .unwrap();

    let clone = Clone::of(&fake.clone_url(LOGIN, REPO));
    let files: Vec<String> = clone.files().into_keys().collect();
    assert_eq!(files, vec![".github/CODEOWNERS", "package.json"]);
}

#[tokio::test]
async fn a_file_commits_on_top_of_its_parent_once_and_pushes_carry_the_platform_directory() {
    let fake = FakeGitHub::start(TOKEN, LOGIN).await;
    common::one_file_commits_and_the_platform_directory(
        &host(&fake),
        &project(),
        &first_snapshot(),
        &changed_snapshot(),
        &fake.clone_url(LOGIN, REPO),
    )
    .await;
    // Every ref update was a fast-forward, never forced.
    for r in fake.requests().iter().filter(|r| r.method == "PATCH") {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["force"], false, "{}", r.body);
    }
    // The receipt's tree was made on the parent's tree.
    let with_base = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/git/trees"))
        .filter(|r| r.body.contains("base_tree"))
        .count();
    assert!(with_base >= 1);
}
