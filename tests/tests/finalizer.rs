//! The finalizer on real backing services: GitHub's REST API over real git repositories,
//! the local Postgres cluster, Fly's Machines API over a real OCI registry and real node
//! processes, S3 and DynamoDB on moto, and sandboxes where `npm` really runs. Each test has
//! its own fakes, AWS resources, database prefix and app names.
//!
//! Needs `AWS_ENDPOINT_URL` (moto), `TB_TEST_REGISTRY` (registry) and Postgres on
//! 127.0.0.1:5432; `scripts/test` provides them.

use std::sync::Arc;

use serde_json::{Value, json};
use tb_aws::S3Archive;
use tb_codehost::{GitHubCodeHost, GitHubConfig, GitHubToken};
use tb_core::domain::{Phase, ProjectId};
use tb_core::encoding::sha256_hex;
use tb_core::ports::PlatformRecords;
use tb_deploy::FlyDeployer;
use tb_pipeline::{FinalizeDone, RequestRecord, StateStore};
use tb_tests::faults::{FaultyStore, Strike};
use tb_tests::finalize::{
    Files, GITHUB_LOGIN, Parts, RECEIPT_KEY, RECEIPT_MESSAGE, Services, assert_no_database_secrets,
    calls, cluster_address, cluster_via, finalize, get, project_files, with_failing_build,
};
use tb_tests::flaky::FlakyProxy;

fn v1() -> Files {
    project_files("v1", &["Ada", "Grace"])
}

/// Another snapshot of the same project: a changed module and a new migration.
fn v2() -> Files {
    let mut files = project_files("v2", &["Ada", "Grace", "Katherine"]);
    files.insert(
        "migrations/002_users_email.sql".into(),
        b"ALTER TABLE users ADD COLUMN email text;\n".to_vec(),
    );
    files
}

fn succeeded() -> FinalizeDone {
    FinalizeDone::Finished {
        phase: Phase::Succeeded,
        failure: None,
    }
}

async fn load(store: &dyn StateStore, rec: &RequestRecord) -> RequestRecord {
    store.load(&rec.id).await.unwrap().expect("the request")
}

/// Finalizes a new finished request for `project` with `files` on `parts`, expecting it to
/// succeed; returns the stored record.
async fn finalize_ok(
    s: &Services,
    parts: Parts,
    project: &ProjectId,
    files: &Files,
) -> RequestRecord {
    let store = parts.store.clone();
    let rec = s.finished_request(store.as_ref(), project, files).await;
    let finalizer = s.finalizer(parts);
    let done = finalize(&finalizer, &rec.id, "finalizer-1").await.unwrap();
    let after = load(store.as_ref(), &rec).await;
    assert_eq!(
        done,
        succeeded(),
        "{:?}\n{:?}\nfake Fly: {}",
        after.failure,
        after.activity,
        s.fly.log(&s.app(project))
    );
    after
}

/// A step's result as stored.
fn step(rec: &RequestRecord, name: &str) -> Value {
    rec.steps
        .get(name)
        .unwrap_or_else(|| panic!("no `{name}` step in {:?}", rec.steps))
}

fn text(rec: &RequestRecord, name: &str, field: &str) -> String {
    step(rec, name)[field]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| panic!("`{name}.{field}` missing: {}", step(rec, name)))
}

/// The app answers its health check through the Fly proxy.
/// The signed receipt of `rec` is committed on top of its source commit: a fresh clone has
/// `.turbobackend/receipt.json` at main's head (when `rec` is the project's latest
/// request), it verifies with the platform's key and names the source commit. Returns the
/// receipt commit.
fn assert_receipt_committed(s: &Services, project: &ProjectId, rec: &RequestRecord) -> String {
    let source = text(rec, "repository", "commit_sha");
    let receipt_commit = text(rec, "receipt", "receipt_commit_sha");
    let clone = s.clone_repo(project);
    assert_eq!(
        clone.head(),
        receipt_commit,
        "the receipt commit is main's head"
    );
    assert_eq!(
        clone.subject(&receipt_commit),
        format!("{RECEIPT_MESSAGE}{}", rec.id)
    );
    let receipts = clone.receipt_commits();
    assert!(
        receipts.contains(&(receipt_commit.clone(), vec![source.clone()])),
        "{receipts:?}"
    );
    let mut tree = clone.tree(&receipt_commit);
    let committed = tree
        .remove(".turbobackend/receipt.json")
        .expect("the receipt file");
    let mut source_tree = clone.tree(&source);
    source_tree.remove(".turbobackend/receipt.json");
    assert_eq!(
        tree, source_tree,
        "the source commit's tree plus the receipt"
    );
    let signing = tb_pipeline::receipt::SigningKey::new(RECEIPT_KEY);
    let receipt =
        tb_pipeline::receipt::verify_document(&signing, std::str::from_utf8(&committed).unwrap())
            .unwrap();
    assert_eq!(receipt["commit_sha"], source.as_str());
    assert_eq!(receipt["request_id"], rec.id.as_str());
    assert_eq!(receipt, step(rec, "receipt")["document"]["receipt"]);
    let note = step(rec, "receipt")["note"].as_str().unwrap().to_owned();
    assert!(note.contains(&receipt_commit), "{note}");
    receipt_commit
}

async fn assert_healthy(s: &Services, project: &ProjectId) {
    let url = format!("{}/api/health", s.fly.app_url(&s.app(project)));
    assert_eq!(get(&url).await, (200, json!({"status": "ok"})), "{url}");
}

/// The ledger has one row per call, and the user's spend is the request's cost.
async fn assert_billed(s: &Services, rec: &RequestRecord) {
    let expected: Vec<(i64, i64)> = calls()
        .iter()
        .map(|c| (i64::from(c.iteration), c.cost.micros()))
        .collect();
    assert_eq!(s.ledger(&rec.id).await, expected);
    assert_eq!(
        rec.agent.cost.micros(),
        expected.iter().map(|(_, c)| c).sum::<i64>()
    );
}

#[tokio::test]
async fn a_finished_request_is_archived_pushed_provisioned_built_and_deployed_end_to_end() {
    let s = Services::start().await;
    let project = s.project();
    let app = s.app(&project);
    // A workflow the agent wrote: archived, never pushed (Actions would run it with the
    // organisation's secrets).
    let mut files = v1();
    let workflow = ".github/workflows/ci.yml";
    files.insert(workflow.into(), b"on: push\njobs: {}\n".to_vec());

    let rec = finalize_ok(&s, s.parts(), &project, &files).await;

    assert_eq!(rec.phase, Phase::Succeeded);
    assert_eq!((rec.failure.clone(), rec.lease.clone()), (None, None));
    let step_names = rec.steps.names();
    assert_eq!(
        step_names,
        [
            "archive",
            "build",
            "build:compile",
            "build:install",
            "database",
            "deploy",
            "receipt",
            "repository",
            "verify"
        ]
    );
    assert_no_database_secrets(&rec);

    // The app runs and answers, through Fly's proxy, with its database URL set.
    assert_healthy(&s, &project).await;
    let (status, users) = get(&format!("{}/api/users", s.fly.app_url(&app))).await;
    assert_eq!(status, 200, "{users}");
    assert_eq!(users["version"], "v1");
    assert_eq!(users["users"][1]["name"], "Grace");
    assert_eq!(users["database_url_set"], true);
    let url_secret = s.fly.secrets(&app)["DATABASE_URL"].clone();
    let names = s.database_names(&project);
    assert!(url_secret.contains(&names.database));
    assert!(
        !serde_json::to_string(&rec).unwrap().contains(&url_secret),
        "the deployment's database URL is in the record"
    );

    // Archive: the object is the snapshot of the sandbox, with its SHA-256.
    let key = text(&rec, "archive", "key");
    let (bytes, metadata) = s.archived(&key).await;
    assert_eq!(sha256_hex(&bytes), text(&rec, "archive", "sha256"));
    assert_eq!(
        metadata.as_deref(),
        Some(text(&rec, "archive", "sha256").as_str())
    );
    let archived: Files = tb_pipeline::snapshot::unpack(&bytes)
        .unwrap()
        .files
        .into_iter()
        .map(|f| (f.path.as_str().to_owned(), f.contents))
        .collect();
    assert_eq!(archived, files);
    let (artifact, _) = s.archived(&text(&rec, "build", "key")).await;
    assert_eq!(sha256_hex(&artifact), text(&rec, "build", "sha256"));

    // Repository: one commit whose tree is the snapshot.
    let repo = s.repo(&project);
    assert_eq!(
        text(&rec, "repository", "repo_url"),
        format!("{}/{GITHUB_LOGIN}/{repo}", s.github.api_url())
    );
    assert_eq!(step(&rec, "repository")["committed"], true);
    let sha = text(&rec, "repository", "commit_sha");
    assert_eq!(s.github.repo_is_private(GITHUB_LOGIN, &repo), Some(true));
    let clone = s.clone_repo(&project);
    assert_eq!(clone.source_commits(), [sha.as_str()]);
    let mut pushed = files.clone();
    pushed.remove(workflow);
    assert_eq!(clone.tree(&sha), pushed);
    // The signed receipt, committed on top of it.
    let receipt_commit = assert_receipt_committed(&s, &project, &rec);
    assert_eq!(clone.commits(), [sha.as_str(), receipt_commit.as_str()]);
    assert_eq!(step(&rec, "repository")["left_out"], json!([workflow]));
    assert!(
        rec.activity
            .iter()
            .any(|l| l.starts_with("repository: done") && l.contains("left out of the repository")),
        "{:?}",
        rec.activity
    );

    // Database: provisioned with the project's migration applied.
    assert_eq!(text(&rec, "database", "database"), names.database);
    assert_eq!(text(&rec, "database", "role"), names.role);
    assert_eq!(step(&rec, "database")["applied"], json!(["001_users.sql"]));
    let (applied, tables) = s.project_database(&project).await;
    assert_eq!(applied, ["001_users.sql"]);
    assert!(tables.contains(&"users".to_owned()), "{tables:?}");

    // Deploy: one machine running the pushed digest.
    let version = text(&rec, "deploy", "version");
    assert!(version.starts_with("sha256:"), "{version}");
    assert_eq!(text(&rec, "deploy", "url"), s.fly.app_url(&app));
    let machines = s.fly.machines(&app);
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].image, format!("{}/{app}@{version}", s.registry));
    assert_eq!(
        step(&rec, "deploy")["details"]["machine_id"],
        machines[0].id
    );

    // Cleanup: sandbox released, ledger and project written.
    assert!(!s.sandbox_dir(&rec).exists(), "the sandbox was released");
    assert_billed(&s, &rec).await;
    assert_eq!(s.records.spent(&s.owner).await.unwrap(), rec.agent.cost);
    let p = s.records.project(&project).await.unwrap().expect("project");
    assert_eq!(
        (
            p.repo_url.as_deref(),
            p.deploy_url.as_deref(),
            p.database.as_deref()
        ),
        (
            Some(text(&rec, "repository", "repo_url").as_str()),
            Some(s.fly.app_url(&app).as_str()),
            Some(names.database.as_str())
        )
    );
    assert_eq!(
        (p.deployed_version.as_deref(), p.previous_version.as_deref()),
        (Some(version.as_str()), None)
    );
    assert_eq!(p.last_request, Some(rec.id.clone()));
    assert_eq!(s.deployments(&project).await, [version]);
}

#[tokio::test]
async fn a_changed_project_gets_a_second_commit_on_the_same_machine_and_an_unchanged_one_no_commit()
{
    let s = Services::start().await;
    let project = s.project();
    let app = s.app(&project);

    let first = finalize_ok(&s, s.parts(), &project, &v1()).await;
    let second = finalize_ok(&s, s.parts(), &project, &v2()).await;

    // The second deploy updated the first machine; the project keeps the first digest as
    // its rollback target.
    let (d1, d2) = (
        text(&first, "deploy", "version"),
        text(&second, "deploy", "version"),
    );
    assert_ne!(d1, d2);
    let p = s.records.project(&project).await.unwrap().unwrap();
    assert_eq!(
        (p.deployed_version.as_deref(), p.previous_version.as_deref()),
        (Some(d2.as_str()), Some(d1.as_str()))
    );
    assert_eq!(
        step(&second, "deploy")["details"]["machine_id"],
        step(&first, "deploy")["details"]["machine_id"]
    );
    assert_eq!(
        step(&second, "database")["applied"],
        json!(["002_users_email.sql"])
    );
    let (_, users) = get(&format!("{}/api/users", s.fly.app_url(&app))).await;
    assert_eq!(users["version"], "v2");

    let r2 = assert_receipt_committed(&s, &project, &second);
    let commits_before_third = s.source_commit_creations(&project);
    let third = finalize_ok(&s, s.parts(), &project, &v2()).await;

    // Git: two source commits whose trees are the two snapshots; the third request made
    // none. Each request's receipt is committed on top of the commit it names: the first's
    // and the second's on their source commits, the third's on the second's receipt commit,
    // which its push found unchanged (the tree compared carries `.turbobackend/` over).
    let c1 = text(&first, "repository", "commit_sha");
    let c2 = text(&second, "repository", "commit_sha");
    let r1 = text(&first, "receipt", "receipt_commit_sha");
    let clone = s.clone_repo(&project);
    assert_eq!(clone.source_commits(), [c1.as_str(), c2.as_str()]);
    assert_eq!(clone.tree(&c1), v1());
    let mut v2_with_first_receipt = v2();
    v2_with_first_receipt.insert(
        ".turbobackend/receipt.json".into(),
        clone.tree(&r1)[".turbobackend/receipt.json"].clone(),
    );
    assert_eq!(
        clone.tree(&c2),
        v2_with_first_receipt,
        "the snapshot, with the first receipt carried over"
    );
    assert_eq!(step(&third, "repository")["committed"], false);
    assert_eq!(text(&third, "repository", "commit_sha"), r2);
    assert_eq!(s.source_commit_creations(&project), commits_before_third);
    assert_eq!(s.source_commit_creations(&project), 2);
    let r3 = assert_receipt_committed(&s, &project, &third);
    assert_eq!(
        clone.receipt_commits(),
        [
            (r1.clone(), vec![c1.clone()]),
            (r2.clone(), vec![c2.clone()]),
            (r3.clone(), vec![r2.clone()]),
        ]
    );
    assert_eq!(
        clone.commits(),
        [&c1, &r1, &c2, &r2, &r3].map(String::as_str)
    );
    assert_eq!(s.receipt_commit_creations(&project), 3);
    assert_eq!(step(&third, "database")["applied"], json!([]));

    // Fly: one machine in all, created once, now on the third deploy's digest.
    assert_eq!(s.machine_creations(&project), 1);
    let machines = s.fly.all_machines(&app);
    assert_eq!(machines.len(), 1, "{machines:?}");
    let d3 = text(&third, "deploy", "version");
    assert_eq!(machines[0].image, format!("{}/{app}@{d3}", s.registry));
    assert_eq!(
        s.deployments(&project).await.len(),
        [d1, d2, d3]
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );

    // A restart boots the same image again, pulled by digest, and it answers.
    let before = machines[0].clone();
    let api = format!("{}/apps/{app}/machines/{}", s.fly.api_url(), before.id);
    let http = reqwest::Client::new();
    let restarted = http
        .post(format!("{api}/restart"))
        .header("authorization", &s.fly_token)
        .send()
        .await
        .unwrap();
    assert_eq!(restarted.status(), 200);
    let waited = http
        .get(format!("{api}/wait?state=started&timeout=30"))
        .header("authorization", &s.fly_token)
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 200, "{}", s.fly.log(&app));
    let after = s.fly.machines(&app)[0].clone();
    assert_eq!(
        (after.id.as_str(), after.state.as_str()),
        (before.id.as_str(), "started")
    );
    assert_eq!(after.image, before.image);
    assert_ne!(after.pid, before.pid, "a new process");
    assert_eq!(after.pulls.len(), before.pulls.len() + 1);
    assert_eq!(after.pulls.last(), Some(&before.image));
    assert_healthy(&s, &project).await;
    let (_, users) = get(&format!("{}/api/users", s.fly.app_url(&app))).await;
    assert_eq!(users["version"], "v2");
    assert_eq!(s.fly.running_processes(), 1);
}

// Transient failures. Each adapter is set up so that the injected fault outlasts its own
// retries: only the finalizer's retry of the step can make the request succeed.

#[tokio::test]
async fn github_answering_500_to_commit_creation_is_retried_and_the_request_succeeds() {
    let s = Services::start().await;
    let project = s.project();
    let attempts = s.github_config().retry.max_attempts as usize;
    s.github
        .fail_next_matching("POST", "/git/commits", attempts as u32, 500, &[]);

    let rec = finalize_ok(&s, s.parts(), &project, &v1()).await;

    let failed = s
        .github
        .requests()
        .iter()
        .filter(|r| r.status == 500)
        .count();
    assert_eq!(
        failed, attempts,
        "the fault outlasted the adapter's retries"
    );
    assert_eq!(s.source_commit_creations(&project), 1);
    let sha = text(&rec, "repository", "commit_sha");
    assert_eq!(s.clone_repo(&project).source_commits(), [sha]);
    assert_eq!(s.receipt_commit_creations(&project), 1);
    assert_healthy(&s, &project).await;
}

#[tokio::test]
async fn github_rate_limits_429_and_403_with_retry_after_0_are_retried_and_the_request_succeeds() {
    let s = Services::start().await;
    let project = s.project();
    let attempts = s.github_config().retry.max_attempts;
    let retry_now = [("retry-after", "0")];
    s.github
        .fail_next_matching("POST", "/git/trees", attempts, 429, &retry_now);
    s.github
        .fail_next_matching("PATCH", "/git/refs", attempts, 403, &retry_now);

    let rec = finalize_ok(&s, s.parts(), &project, &v1()).await;

    let count = |status| {
        s.github
            .requests()
            .iter()
            .filter(|r| r.status == status)
            .count()
    };
    assert_eq!(
        (count(429), count(403)),
        (attempts as usize, attempts as usize)
    );
    let clone = s.clone_repo(&project);
    assert_eq!(
        clone.source_commits(),
        [text(&rec, "repository", "commit_sha")]
    );
    assert_eq!(clone.tree(&text(&rec, "repository", "commit_sha")), v1());
    assert_receipt_committed(&s, &project, &rec);
    assert_healthy(&s, &project).await;
}

#[tokio::test]
async fn fly_throttling_the_deploy_with_429_is_retried_and_the_request_succeeds() {
    let s = Services::start().await;
    let project = s.project();
    let mut parts = s.parts();
    let mut config = s.fly_config();
    config.max_429_retries = 0;
    parts.deployer = Arc::new(FlyDeployer::new(config).unwrap());
    s.fly.fail_next_mutations_with_429(1);

    finalize_ok(&s, parts, &project, &v1()).await;

    let throttled = s.fly.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 1);
    assert_eq!(s.machine_creations(&project), 1);
    assert_healthy(&s, &project).await;
}

#[tokio::test]
async fn a_dropped_postgres_connection_is_retried_and_the_request_succeeds() {
    let s = Services::start().await;
    let project = s.project();
    let proxy = FlakyProxy::start(&cluster_address()).await;
    let mut parts = s.parts();
    parts.databases = Arc::new(s.provisioner(cluster_via(proxy.port())));
    proxy.drop_next(1);

    let rec = finalize_ok(&s, parts, &project, &v1()).await;

    assert_eq!(proxy.dropped(), 1);
    assert!(proxy.accepted() > 1, "the retry went through the proxy");
    assert_eq!(step(&rec, "database")["applied"], json!(["001_users.sql"]));
    assert_eq!(s.project_database(&project).await.0, ["001_users.sql"]);
    assert_healthy(&s, &project).await;
}

#[tokio::test]
async fn a_dropped_s3_connection_is_retried_and_the_request_succeeds() {
    use aws_sdk_s3::config::retry::RetryConfig;
    let s = Services::start().await;
    let project = s.project();
    let moto = s
        .aws
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let proxy = FlakyProxy::start(moto).await;
    // The SDK does not retry on its own here: the finalizer must.
    let s3 = aws_sdk_s3::Client::from_conf(
        s.aws
            .clients
            .s3
            .config()
            .to_builder()
            .endpoint_url(proxy.http_url())
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build(),
    );
    let mut parts = s.parts();
    parts.archive = Arc::new(S3Archive::new(s3, &s.aws.settings.bucket));
    proxy.drop_next(1);

    let rec = finalize_ok(&s, parts, &project, &v1()).await;

    assert_eq!(proxy.dropped(), 1);
    let (bytes, _) = s.archived(&text(&rec, "archive", "key")).await;
    assert_eq!(sha256_hex(&bytes), text(&rec, "archive", "sha256"));
    assert_healthy(&s, &project).await;
}

// Permanent failures: the request fails at once naming the step; the sandbox is still
// released and the ledger written.

#[tokio::test]
async fn a_rejected_github_token_fails_the_request_at_the_repository_step_and_still_cleans_up() {
    let s = Services::start().await;
    let project = s.project();
    let mut parts = s.parts();
    parts.code_host = Arc::new(
        GitHubCodeHost::new(GitHubConfig {
            token: GitHubToken::new("test-github-token-revoked"),
            ..s.github_config()
        })
        .unwrap(),
    );
    let rec = s
        .finished_request(parts.store.as_ref(), &project, &v1())
        .await;

    let done = finalize(&s.finalizer(parts), &rec.id, "finalizer-1")
        .await
        .unwrap();

    let FinalizeDone::Finished {
        phase: Phase::Failed,
        failure: Some(failure),
    } = &done
    else {
        panic!("a failed request expected: {done:?}");
    };
    assert_eq!(failure.step, "repository");
    assert!(
        failure.reason.contains("401") && failure.reason.contains("token"),
        "{}",
        failure.reason
    );
    let stored = load(s.store.as_ref(), &rec).await;
    assert_eq!(
        (stored.phase, stored.failure.as_ref()),
        (Phase::Failed, Some(failure))
    );
    assert_eq!(
        stored.steps.names(),
        ["archive"],
        "nothing after the failed step ran"
    );
    assert_eq!(
        s.github.requests().len(),
        1,
        "a permanent error is not retried"
    );
    assert!(s.fly.requests().is_empty());
    assert!(!s.sandbox_dir(&rec).exists(), "the sandbox was released");
    assert_billed(&s, &stored).await;
    assert_eq!(s.records.spent(&s.owner).await.unwrap(), stored.agent.cost);
    assert_no_database_secrets(&stored);
}

#[tokio::test]
async fn a_build_whose_script_exits_1_fails_the_request_at_the_build_step_with_its_output() {
    let s = Services::start().await;
    let project = s.project();
    let parts = s.parts();
    let store = parts.store.clone();
    let rec = s
        .finished_request(store.as_ref(), &project, &with_failing_build(v1()))
        .await;

    let done = finalize(&s.finalizer(parts), &rec.id, "finalizer-1")
        .await
        .unwrap();

    let FinalizeDone::Finished {
        phase: Phase::Failed,
        failure: Some(failure),
    } = &done
    else {
        panic!("a failed request expected: {done:?}");
    };
    assert_eq!(failure.step, "build");
    for expected in [
        "npm run build failed",
        "exit Some(1)",
        "cannot resolve ./server/missing.mjs",
    ] {
        assert!(failure.reason.contains(expected), "{}", failure.reason);
    }
    let stored = load(store.as_ref(), &rec).await;
    assert_eq!(stored.phase, Phase::Failed);
    assert_eq!(
        stored.steps.names(),
        ["archive", "build:install", "database", "repository"]
    );
    assert!(s.fly.all_machines(&s.app(&project)).is_empty());
    assert!(!s.sandbox_dir(&rec).exists(), "the sandbox was released");
    assert_billed(&s, &stored).await;
    let p = s.records.project(&project).await.unwrap().unwrap();
    assert!(p.repo_url.is_some() && p.database.is_some());
    assert_eq!((p.deploy_url, p.deployed_version), (None, None));
    assert_no_database_secrets(&stored);
}

// A finalizer that dies: the store goes away right at a commit (the process is gone), then
// the finalize message is delivered again to a new process.

/// What the finalizer records, in order: the steps, and the build's sub-steps before it.
const RECORDED: [&str; 9] = [
    "archive",
    "repository",
    "database",
    "build:install",
    "build:compile",
    "build",
    "deploy",
    "verify",
    "receipt",
];

/// The finalizer's commits, in order: 1 claims the request, 2..=10 record the steps and
/// sub-steps, 11 is the final one (phase, lease released).
const FINAL_COMMIT: usize = RECORDED.len() + 2;

struct Killed {
    project: ProjectId,
    /// The record as the dead finalizer left it.
    left: RequestRecord,
    /// The record after the redelivery.
    after: RequestRecord,
    redelivery: FinalizeDone,
    /// Requests the fakes received during the redelivery.
    github_requests: usize,
    fly_requests: usize,
}

async fn kill_at(s: &Services, at: usize, strike: Strike) -> Killed {
    kill_at_with_checks(s, at, strike, None).await
}

/// [`kill_at`] for a request whose `finish` declared `checks`.
async fn kill_at_with_checks(
    s: &Services,
    at: usize,
    strike: Strike,
    checks: Option<Value>,
) -> Killed {
    let project = s.project();
    let checks = checks.map(|c| serde_json::from_value(c).unwrap());
    let rec = s
        .finished_request_with_checks(s.store.as_ref(), &project, &v1(), checks)
        .await;
    let faulty = Arc::new(FaultyStore::new(s.store.clone(), at, strike));
    let finalizer = |store: Arc<FaultyStore>| {
        let mut parts = s.parts();
        parts.store = store;
        // Expired at once: the redelivery does not wait for the dead finalizer's lease.
        parts.settings.lease = std::time::Duration::from_millis(1);
        s.finalizer(parts)
    };

    let died = finalize(&finalizer(faulty.clone()), &rec.id, "finalizer-1").await;
    assert!(faulty.struck(), "commit {at} never came");
    assert!(died.is_err(), "{strike:?} at commit {at}: {died:?}");
    let left = load(s.store.as_ref(), &rec).await;

    faulty.revive();
    let (github_before, fly_before) = (s.github.requests().len(), s.fly.requests().len());
    let redelivery = finalize(&finalizer(faulty.clone()), &rec.id, "finalizer-2")
        .await
        .unwrap();
    let after = load(s.store.as_ref(), &rec).await;
    Killed {
        project,
        left,
        after,
        redelivery,
        github_requests: s.github.requests().len() - github_before,
        fly_requests: s.fly.requests().len() - fly_before,
    }
}

/// What must hold however the finalizer died: the request succeeded with one source
/// commit and one receipt commit, one machine, one ledger row per call, and the app answers.
async fn assert_finished_once(s: &Services, k: &Killed) {
    assert_eq!(k.after.phase, Phase::Succeeded, "{:?}", k.after.activity);
    assert_eq!(s.source_commit_creations(&k.project), 1);
    assert_eq!(s.receipt_commit_creations(&k.project), 1);
    assert_eq!(s.machine_creations(&k.project), 1);
    assert_eq!(s.fly.all_machines(&s.app(&k.project)).len(), 1);
    assert_eq!(s.clone_repo(&k.project).commits().len(), 2);
    assert_receipt_committed(s, &k.project, &k.after);
    assert_billed(s, &k.after).await;
    assert_eq!(s.deployments(&k.project).await.len(), 1);
    assert!(!s.sandbox_dir(&k.after).exists());
    assert_healthy(s, &k.project).await;
}

#[tokio::test]
async fn a_finalizer_killed_after_any_commit_resumes_at_the_next_step_without_repeating_done_ones()
{
    let s = Services::start().await;
    for at in 1..=FINAL_COMMIT {
        let k = kill_at(&s, at, Strike::AfterWrite).await;
        let done: Vec<&str> = RECORDED
            .iter()
            .take(at.saturating_sub(1))
            .copied()
            .collect();
        let names = k.left.steps.names();
        let mut left_steps: Vec<&str> = names.iter().map(String::as_str).collect();
        left_steps.sort_by_key(|name| RECORDED.iter().position(|s| s == name));
        assert_eq!(left_steps, done, "commit {at}");

        if at == FINAL_COMMIT {
            // It died after finishing: the redelivery finds nothing to do.
            assert_eq!(k.left.phase, Phase::Succeeded);
            assert!(
                matches!(k.redelivery, FinalizeDone::Stale(_)),
                "{:?}",
                k.redelivery
            );
        } else {
            assert_eq!(k.left.phase, Phase::Finalizing);
            assert_eq!(k.redelivery, succeeded(), "commit {at}");
        }
        // The steps done before the kill were not run again: their results (durations
        // included) are exactly as the dead finalizer recorded them.
        for name in &done {
            assert_eq!(
                k.after.steps.get(name),
                k.left.steps.get(name),
                "commit {at}: {name}"
            );
        }
        if done.contains(&"receipt") {
            assert_eq!(
                k.github_requests, 0,
                "commit {at}: GitHub was not called again"
            );
        }
        if done.contains(&"deploy") {
            assert_eq!(k.fly_requests, 0, "commit {at}: Fly was not called again");
        }
        assert_finished_once(&s, &k).await;
    }
}

#[tokio::test]
async fn a_finalizer_killed_after_recording_a_failed_verify_or_its_restore_fails_the_request_on_redelivery()
 {
    let s = Services::start().await;
    // Commit 9 records `verify` (failed: no repair round is left), 10 `restore`.
    for at in [9, 10] {
        let checks = json!([{"method": "GET", "path": "/api/users", "status": 201}]);
        let Killed {
            project,
            left,
            after,
            redelivery,
            ..
        } = kill_at_with_checks(&s, at, Strike::AfterWrite, Some(checks)).await;
        assert_eq!(left.phase, Phase::Finalizing);
        assert_eq!(step(&left, "verify")["passed"], false);
        assert_eq!(left.steps.get("restore").is_some(), at == 10, "commit {at}");
        assert!(
            matches!(
                redelivery,
                FinalizeDone::Finished {
                    phase: Phase::Failed,
                    ..
                }
            ),
            "commit {at}: {redelivery:?}"
        );
        let failure = after.failure.clone().unwrap();
        assert_eq!(failure.step, "verify", "commit {at}");
        assert!(
            failure.reason.contains("answered 200 instead of 201"),
            "{}",
            failure.reason
        );
        assert!(after.steps.get("receipt").is_none(), "commit {at}");
        let version = text(&after, "deploy", "version");
        assert_eq!(step(&after, "restore")["unverified"], version.as_str());
        if at == 10 {
            assert_eq!(after.steps.get("restore"), left.steps.get("restore"));
        }
        let record = s.records.project(&project).await.unwrap().unwrap();
        assert_eq!(record.deployed_verified, Some(false), "commit {at}");
        assert_healthy(&s, &project).await;
    }
}

#[tokio::test]
async fn a_finalizer_killed_before_recording_a_step_redoes_it_without_a_second_commit_or_machine() {
    let s = Services::start().await;
    // Commit 3 would record `repository`, 8 `deploy`, 10 `receipt` (its commit made), 11
    // the end (after the sandbox was released, the ledger and the project written).
    for at in [3, 8, 10, FINAL_COMMIT] {
        let k = kill_at(&s, at, Strike::BeforeWrite).await;
        assert_eq!(k.left.phase, Phase::Finalizing);
        assert_eq!(
            k.left.steps.len(),
            (at - 2).min(RECORDED.len()),
            "commit {at}"
        );
        assert_eq!(k.redelivery, succeeded(), "commit {at}");
        if at == 3 {
            // Pushed again: the tree is already there, so no new commit.
            assert_eq!(step(&k.after, "repository")["committed"], false);
        }
        if at == 8 {
            assert!(k.fly_requests > 0, "deployed again");
        }
        if at == 10 {
            // Made again: the receipt commit is already main's head, so none is added.
            assert!(k.github_requests > 0, "committed again");
        }
        assert_finished_once(&s, &k).await;
        assert_no_database_secrets(&k.after);
    }
}

// Deadlines: Lambda's timeout, scaled down (a 6 s invocation, a 0.5 s margin).

/// `npm install` and `npm run build` take about 2.5 s each (a `postinstall` and a build
/// script that sleep), so the steps up to the end of the build do not fit in one 6 s
/// invocation: each invocation returns before its deadline, the next continues after the
/// last recorded sub-step, and the request succeeds.
#[tokio::test]
async fn a_build_longer_than_one_invocation_continues_in_the_next_and_the_request_succeeds() {
    let s = Services::start().await;
    let project = s.project();
    let mut files = v1();
    let package = String::from_utf8(files["package.json"].clone()).unwrap();
    let slow = package.replace(
        r#""build": "node scripts/build.mjs","#,
        r#""postinstall": "sleep 2", "build": "sleep 2.5 && node scripts/build.mjs","#,
    );
    assert_ne!(slow, package);
    files.insert("package.json".into(), slow.into_bytes());
    let mut parts = s.parts();
    parts.settings.safety_margin = std::time::Duration::from_millis(500);
    let rec = s
        .finished_request(parts.store.as_ref(), &project, &files)
        .await;
    let finalizer = s.finalizer(parts);
    let body = json!({"kind": "finalize", "request_id": rec.id}).to_string();
    let timeout = std::time::Duration::from_secs(6);

    let mut invocations = Vec::new();
    loop {
        assert!(
            invocations.len() < 6,
            "not done in 6 invocations: {invocations:?}"
        );
        let started = std::time::Instant::now();
        let done = finalizer
            .handle_until(&body, "finalizer-1", Some(started + timeout))
            .await
            .unwrap();
        let took = started.elapsed();
        let after = load(s.store.as_ref(), &rec).await;
        invocations.push((took, after.steps.names()));
        assert!(
            took < timeout,
            "invocation {} outran its deadline ({took:?}): {invocations:?}",
            invocations.len()
        );
        if done != FinalizeDone::Continue {
            assert_eq!(
                done,
                succeeded(),
                "{:?}\n{:?}",
                after.failure,
                after.activity
            );
            break;
        }
    }
    println!("{invocations:?}");
    assert!(invocations.len() >= 2, "{invocations:?}");
    let rec = load(s.store.as_ref(), &rec).await;
    for sub in ["build:install", "build:compile", "build", "deploy"] {
        step(&rec, sub);
    }
    assert!(
        rec.activity
            .iter()
            .any(|l| l.contains("continues in the next invocation")),
        "{:?}",
        rec.activity
    );
    assert_healthy(&s, &project).await;
}

// Outages: the deploy target (Fly's Machines API) refuses connections (nothing listens on
// its port) for longer than the deploy step's own attempts last.

/// The deployer on the fake Fly, but at `port` (a reserved one: down until something
/// listens there); returns it with the fake's real API address.
fn fly_at(s: &Services, port: &tb_tests::slow_http::ReservedPort) -> (Arc<FlyDeployer>, String) {
    let mut config = s.fly_config();
    // `http://127.0.0.1:PORT/v1`: the forwarder keeps the path.
    let real = config.api_base.trim_end_matches("/v1").to_owned();
    config.api_base = format!("http://{port}/v1");
    (Arc::new(FlyDeployer::new(config).unwrap()), real)
}

#[tokio::test]
async fn a_deploy_target_down_for_a_while_is_waited_out_and_the_request_succeeds() {
    let s = Services::start().await;
    let project = s.project();
    let port = tb_tests::slow_http::reserve_port();
    let mut parts = s.parts();
    let (deployer, real) = fly_at(&s, &port);
    parts.deployer = deployer;
    parts.settings.outage_retry = std::time::Duration::from_secs(60);
    // The deploy target comes back once the finalizer has shown that it waits for it (not
    // after a fixed time, which the earlier steps may outlast on a loaded machine).
    let store = parts.store.clone();
    let rec = s.finished_request(store.as_ref(), &project, &v1()).await;
    let watched = rec.clone();
    let back = tokio::spawn(async move {
        for _ in 0..600 {
            let now = load(store.as_ref(), &watched).await;
            if now
                .activity
                .iter()
                .any(|l| l.starts_with("waiting for the deploy target: "))
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        tb_tests::slow_http::SlowHttp::start_on(port, &real, std::time::Duration::ZERO).await
    });
    let store = parts.store.clone();
    let finalizer = s.finalizer(parts);
    let done = finalize(&finalizer, &rec.id, "finalizer-1").await.unwrap();
    let rec = load(store.as_ref(), &rec).await;
    assert_eq!(done, succeeded(), "{:?}\n{:?}", rec.failure, rec.activity);

    println!("{:#?}", rec.activity);
    assert!(
        rec.activity
            .iter()
            .any(|l| l.starts_with("waiting for the deploy target: ")
                && l.contains("; attempt 1, next in")),
        "{:?}",
        rec.activity
    );
    assert!(
        rec.activity
            .iter()
            .any(|l| l.starts_with("the deploy target is back after")),
        "{:?}",
        rec.activity
    );
    assert!(rec.outage.is_none());
    let _forwarder = back.await.unwrap();
    assert_healthy(&s, &project).await;
}

#[tokio::test]
async fn a_deploy_target_down_for_good_fails_the_request_naming_it_within_the_bound() {
    let s = Services::start().await;
    let project = s.project();
    let mut parts = s.parts();
    let held = tb_tests::slow_http::reserve_port();
    let (deployer, _) = fly_at(&s, &held);
    parts.deployer = deployer;
    let bound = std::time::Duration::from_secs(3);
    parts.settings.outage_retry = bound;
    let store = parts.store.clone();
    let rec = s.finished_request(store.as_ref(), &project, &v1()).await;
    let finalizer = s.finalizer(parts);

    let started = std::time::Instant::now();
    let done = finalize(&finalizer, &rec.id, "finalizer-1").await.unwrap();
    let took = started.elapsed();

    let FinalizeDone::Finished {
        phase: Phase::Failed,
        failure: Some(failure),
    } = &done
    else {
        panic!("a failed request expected: {done:?}");
    };
    assert_eq!(failure.step, "deploy");
    assert!(
        failure
            .reason
            .starts_with("the deploy target was unreachable for"),
        "{}",
        failure.reason
    );
    let stored = load(store.as_ref(), &rec).await;
    assert!(
        stored
            .activity
            .iter()
            .any(|l| l.starts_with("waiting for the deploy target: ")),
        "{:?}",
        stored.activity
    );
    // The steps before the deploy, the bound, and one last round of the step's attempts.
    println!("{took:?}");
    assert!(
        took < bound + std::time::Duration::from_secs(20),
        "{took:?}"
    );
}

/// Finalizes a finished request of `files` whose `finish` declared `checks`; the stored
/// record.
async fn finalize_with_checks(
    s: &Services,
    project: &ProjectId,
    files: &Files,
    checks: Value,
) -> RequestRecord {
    let parts = s.parts();
    let store = parts.store.clone();
    let checks = serde_json::from_value(checks).unwrap();
    let rec = s
        .finished_request_with_checks(store.as_ref(), project, files, Some(checks))
        .await;
    let finalizer = s.finalizer(parts);
    finalize(&finalizer, &rec.id, "finalizer-1").await.unwrap();
    load(store.as_ref(), &rec).await
}

#[tokio::test]
async fn the_declared_checks_run_against_the_app_deployed_on_the_fly_stand_in() {
    let s = Services::start().await;
    let project = s.project();
    let rec = finalize_with_checks(
        &s,
        &project,
        &v1(),
        json!([
            {"method": "GET", "path": "/api/users", "status": 200,
             "expect": {"version": "v1", "users.1.name": "Grace", "database_url_set": true}},
            {"method": "GET", "path": "/api/users?first={{1.users.0.name}}", "status": 200}
        ]),
    )
    .await;
    assert_eq!(rec.phase, Phase::Succeeded, "{:?}", rec.failure);
    let verify = step(&rec, "verify");
    assert_eq!(verify["passed"], true);
    assert_eq!(verify["url"], s.fly.app_url(&s.app(&project)));
    let calls = verify["calls"].as_array().unwrap();
    let paths: Vec<&str> = calls.iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/api/health", "/api/users", "/api/users?first=Ada"]);
    for c in calls {
        assert_eq!(c["status"], 200, "{c}");
        assert!(c["latency_ms"].is_u64(), "{c}");
    }
    assert!(calls[1]["excerpt"].as_str().unwrap().contains("Grace"));

    // The receipt: archived beside the source and committed on top of it, signed with the
    // platform's key, naming the commit, the image digest, the migrations with their
    // hashes and every check.
    assert_receipt_committed(&s, &project, &rec);
    let key = text(&rec, "receipt", "key");
    assert!(key.ends_with(&format!("{}/receipt.json", rec.id)), "{key}");
    let (bytes, _) = s.archived(&key).await;
    let archived = String::from_utf8(bytes).unwrap();
    let signing = tb_pipeline::receipt::SigningKey::new(RECEIPT_KEY);
    let receipt = tb_pipeline::receipt::verify_document(&signing, &archived).unwrap();
    assert_eq!(receipt, step(&rec, "receipt")["document"]["receipt"]);
    assert_eq!(
        receipt["commit_sha"],
        text(&rec, "repository", "commit_sha")
    );
    let digest = text(&rec, "deploy", "version");
    assert!(
        digest.starts_with("sha256:") || digest.contains("@sha256:"),
        "{digest}"
    );
    assert_eq!(receipt["deployment"]["version"], digest);
    assert_eq!(
        receipt["migrations"],
        json!([{"name": "001_users.sql", "applied_now": true,
                "sha256": sha256_hex(&v1()["migrations/001_users.sql"])}])
    );
    let checked: Vec<(&str, u64, bool)> = receipt["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap(),
                c["status"].as_u64().unwrap(),
                c["latency_ms"].is_u64(),
            )
        })
        .collect();
    assert_eq!(
        checked,
        [
            ("/api/health", 200, true),
            ("/api/users", 200, true),
            ("/api/users?first=Ada", 200, true)
        ]
    );
    assert_eq!(receipt["cost_micro_usd"]["agent"], rec.agent.cost.micros());
    // A tampered receipt does not verify.
    let tampered = archived.replacen("\"passed\": true", "\"passed\": false", 1);
    assert_ne!(tampered, archived);
    assert_eq!(
        tb_pipeline::receipt::verify_document(&signing, &tampered),
        Err(tb_pipeline::receipt::ReceiptError::BadSignature)
    );
}

#[tokio::test]
async fn a_failing_check_on_the_live_app_fails_the_request_at_verify_with_every_call_recorded() {
    let s = Services::start().await;
    let project = s.project();
    let rec = finalize_with_checks(
        &s,
        &project,
        &v1(),
        json!([
            {"method": "POST", "path": "/api/users", "body": {"name": "Ada"}, "status": 201},
            {"method": "GET", "path": "/api/users", "status": 200, "expect": {"version": "v2"}}
        ]),
    )
    .await;
    assert_eq!(rec.phase, Phase::Failed);
    let failure = rec.failure.clone().unwrap();
    assert_eq!(failure.step, "verify");
    assert!(
        failure.reason.contains("POST /api/users -> 200")
            && failure.reason.contains("answered 200 instead of 201")
            && failure
                .reason
                .contains("`version` is \"v1\" instead of \"v2\""),
        "{}",
        failure.reason
    );
    let calls = step(&rec, "verify")["calls"].as_array().unwrap().clone();
    let passed: Vec<bool> = calls
        .iter()
        .map(|c| c["passed"].as_bool().unwrap())
        .collect();
    assert_eq!(passed, [true, false, false]);

    // A first deploy: no earlier version passed, so the app stays up for the user to look
    // at, and the project record says it is unverified.
    let version = text(&rec, "deploy", "version");
    assert_eq!(step(&rec, "restore")["unverified"], version.as_str());
    assert!(
        failure.reason.contains("stays up for you to look at"),
        "{}",
        failure.reason
    );
    assert_healthy(&s, &project).await;
    let record = s.records.project(&project).await.unwrap().unwrap();
    assert_eq!(record.deployed_version.as_deref(), Some(version.as_str()));
    assert_eq!(record.deployed_verified, Some(false));
    assert_eq!(record.last_verified_version, None);
}

#[tokio::test]
async fn a_change_that_never_passes_its_checks_goes_back_to_the_last_verified_version() {
    let s = Services::start().await;
    let project = s.project();
    let app = s.app(&project);
    let first = finalize_with_checks(
        &s,
        &project,
        &v1(),
        json!([{"method": "GET", "path": "/api/users", "status": 200, "expect": {"version": "v1"}}]),
    )
    .await;
    assert_eq!(first.phase, Phase::Succeeded, "{:?}", first.failure);
    let verified = text(&first, "deploy", "version");
    let record = s.records.project(&project).await.unwrap().unwrap();
    assert_eq!(
        (
            record.last_verified_version.as_deref(),
            record.deployed_verified
        ),
        (Some(verified.as_str()), Some(true))
    );

    // The change deploys, but its declared check fails (and no repair round is left).
    let second = finalize_with_checks(
        &s,
        &project,
        &v2(),
        json!([{"method": "GET", "path": "/api/users", "status": 200, "expect": {"version": "v3"}}]),
    )
    .await;
    assert_eq!(second.phase, Phase::Failed);
    let failure = second.failure.clone().unwrap();
    assert_eq!(failure.step, "verify");
    assert!(
        failure.reason.contains("GET /api/users -> 200")
            && failure
                .reason
                .contains("`version` is \"v2\" instead of \"v3\"")
            && failure
                .reason
                .contains(&format!("back on the last verified version {verified}")),
        "{}",
        failure.reason
    );
    let failed = text(&second, "deploy", "version");
    assert_ne!(failed, verified);
    let restore = step(&second, "restore");
    assert_eq!(
        restore["restored"]["version"],
        verified.as_str(),
        "{restore}"
    );
    assert_eq!(restore["failed_version"], failed.as_str());

    // The deployer runs the earlier version again: the machine's image is its digest, and
    // the app answers as v1.
    let machines = s.fly.machines(&app);
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert!(
        machines[0].image.ends_with(&format!("@{verified}")),
        "{machines:?}"
    );
    let (status, users) = get(&format!("{}/api/users", s.fly.app_url(&app))).await;
    assert_eq!((status, users["version"].clone()), (200, json!("v1")));
    let record = s.records.project(&project).await.unwrap().unwrap();
    assert_eq!(record.deployed_version.as_deref(), Some(verified.as_str()));
    assert_eq!(record.deployed_verified, Some(true));
    assert_eq!(
        record.last_verified_version.as_deref(),
        Some(verified.as_str())
    );
    assert_eq!(record.last_request.as_ref(), Some(&second.id));
}
