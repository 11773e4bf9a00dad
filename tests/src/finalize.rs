//! The finalizer on real backing services: GitHub's REST API over real bare git repositories
//! ([`FakeGitHub`]), the local Postgres cluster, Fly's Machines API pulling from a real OCI
//! registry and running real node processes ([`FakeFly`]), S3 and DynamoDB on moto, and
//! local sandboxes where `npm` really runs.
//!
//! Needs what `scripts/test` starts: moto (`AWS_ENDPOINT_URL`), the registry
//! (`TB_TEST_REGISTRY`) and Postgres on `127.0.0.1:5432` with trust auth (or
//! `TB_POSTGRES_TEST_URL`).

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};
use tb_aws::testing::TestAws;
use tb_codehost::{GitHubCodeHost, GitHubConfig, GitHubToken, RetryPolicy};
use tb_core::agent::Outcome;
use tb_core::clock::now_ms;
use tb_core::domain::{Description, Phase, ProjectId, RequestId, UserId};
use tb_core::ids;
use tb_core::model::StopReason;
use tb_core::ports::{Archive, CodeHost, DatabaseProvisioner, Deployer};
use tb_core::pricing::PriceTable;
use tb_core::sandbox::{Sandbox, SandboxSpec, WorkspacePath};
use tb_core::usage::{ModelCall, TokenUsage};
use tb_deploy::registry::RegistryClient;
use tb_deploy::{FlyConfig, FlyDeployer, ImageRef, Secret};
use tb_pipeline::ports::save_next;
use tb_pipeline::{
    Appended, Created, FinalizeDone, FinalizeError, FinalizeMessage, Finalizer, FinalizerSettings,
    RequestRecord, StateStore,
};
use tb_postgres::testing::Cleanup;
use tb_postgres::{ClusterSettings, DatabaseNames, PgPlatformRecords, PgProvisioner, quote_ident};
use tb_testkit::TempLocalProvider;
use tb_testkit::fake_fly::FakeFly;
use tb_testkit::fake_github::FakeGitHub;
use tempfile::TempDir;

pub const GITHUB_TOKEN: &str = "test-github-token-finalizer-SECRET";
pub const GITHUB_LOGIN: &str = "tb-bot";
pub const DESCRIPTION: &str = "Create a simple API with a users endpoint";
/// The model of the calls a test request carries (priced by the default table).
pub const MODEL: &str = "claude-sonnet-4-5";

/// A project's files: path → contents.
pub type Files = BTreeMap<String, Vec<u8>>;

/// The key the tests' finalizers sign receipts with.
pub const RECEIPT_KEY: &str = "test-receipt-key";
/// How the message of a receipt commit begins.
pub const RECEIPT_MESSAGE: &str = "Verification receipt for request ";

/// A small Nitro-like project with no dependencies, so `npm ci` and `npm run build` are
/// real but instant: the build script copies `server/` to `.output/server/`, whose
/// `index.mjs` is a plain `node:http` server answering `/api/health` and `/api/users`
/// (`version`, the users, and whether `DATABASE_URL` is set, never its value).
pub fn project_files(version: &str, users: &[&str]) -> Files {
    let users: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, name)| serde_json::json!({"id": i + 1, "name": name}))
        .collect();
    let mut files = Files::new();
    let mut put = |path: &str, text: String| {
        files.insert(path.to_owned(), text.into_bytes());
    };
    put(
        "package.json",
        r#"{
  "name": "users-api",
  "version": "1.0.0",
  "private": true,
  "type": "module",
  "scripts": {
    "build": "node scripts/build.mjs",
    "start": "node .output/server/index.mjs"
  }
}
"#
        .into(),
    );
    put(
        "package-lock.json",
        r#"{
  "name": "users-api",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": {
      "name": "users-api",
      "version": "1.0.0"
    }
  }
}
"#
        .into(),
    );
    put(
        "scripts/build.mjs",
        r#"// Stands in for `nitro build`: the server, as is, into .output/server/.
import { cpSync, mkdirSync, writeFileSync } from 'node:fs';
mkdirSync('.output/server', { recursive: true });
cpSync('server', '.output/server', { recursive: true });
writeFileSync('.output/nitro.json', JSON.stringify({ preset: 'node-server' }) + '\n');
console.log('built .output/server/index.mjs');
"#
        .into(),
    );
    put(
        "server/index.mjs",
        r#"import http from 'node:http';
import { VERSION, users } from './users.mjs';

const send = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

http
  .createServer((req, res) => {
    const path = new URL(req.url, 'http://app').pathname;
    if (path === '/api/health') return send(res, 200, { status: 'ok' });
    if (path === '/api/users') {
      return send(res, 200, { version: VERSION, users, database_url_set: Boolean(process.env.DATABASE_URL) });
    }
    send(res, 404, { error: 'not found' });
  })
  .listen(Number(process.env.PORT || 3000), process.env.HOST || '0.0.0.0', () => {
    console.log('listening on', process.env.PORT);
  });
"#
        .into(),
    );
    put(
        "server/users.mjs",
        format!(
            "export const VERSION = {version:?};\nexport const users = {};\n",
            Value::Array(users)
        ),
    );
    put(
        "migrations/001_users.sql",
        "CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);\n".into(),
    );
    files
}

/// `files` with a build script that fails the way a broken build does.
pub fn with_failing_build(mut files: Files) -> Files {
    files.insert(
        "scripts/build.mjs".into(),
        b"console.error('build error: cannot resolve ./server/missing.mjs');\nprocess.exit(1);\n"
            .to_vec(),
    );
    files
}

/// Fast retries and a short build bound; the lease as in production unless a test needs
/// a redelivery to find it expired.
pub fn settings() -> FinalizerSettings {
    FinalizerSettings {
        attempts: 4,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(40),
        build_timeout: Duration::from_secs(120),
        lease: Duration::from_secs(60),
        safety_margin: Duration::from_secs(60),
        // A test whose fault outlasts the step's attempts fails soon.
        outage_retry: Duration::from_secs(5),
        // These finalizers have no worker to hand a request back to.
        repair_rounds: 0,
        verify: tb_core::checks::RunPolicy {
            warm_up: Duration::from_secs(20),
            ..tb_core::checks::RunPolicy::standard()
        },
    }
}

/// What a finalizer is assembled from; tests swap single parts.
pub struct Parts {
    pub store: Arc<dyn StateStore>,
    pub archive: Arc<dyn Archive>,
    pub code_host: Arc<dyn CodeHost>,
    pub databases: Arc<dyn DatabaseProvisioner>,
    pub deployer: Arc<dyn Deployer>,
    pub settings: FinalizerSettings,
}

/// Every backing service of one test, each with names no other test uses.
pub struct Services {
    pub github: FakeGitHub,
    pub fly: FakeFly,
    pub fly_token: String,
    /// `host:port` of the registry.
    pub registry: String,
    pub aws: TestAws,
    /// The request state store: DynamoDB on moto.
    pub store: Arc<dyn StateStore>,
    pub sandboxes: TempLocalProvider,
    /// Platform records in a database of this test's own.
    pub records: PgPlatformRecords,
    pub owner: UserId,
    db_prefix: String,
    app_prefix: String,
    base_image: ImageRef,
    cleanup: Cleanup,
}

impl Services {
    pub async fn start() -> Services {
        let registry = test_registry();
        let fly_token = format!("FlyV1 fm2_{}", ids::random_hex(16));
        let fly = FakeFly::start(&fly_token, &registry).await;
        let github = FakeGitHub::start(GITHUB_TOKEN, GITHUB_LOGIN).await;
        let base_image =
            push_synthetic_base(&registry, &format!("tb-test/node-{}", ids::random_hex(5))).await;
        let aws = TestAws::new().await;
        let store: Arc<dyn StateStore> = Arc::new(aws.store());
        let cleanup = Cleanup::default();
        let records_url = fresh_database(&cleanup).await;
        let records = PgPlatformRecords::connect(&records_url)
            .await
            .expect("connecting the platform records");
        Services {
            github,
            fly,
            fly_token,
            registry,
            aws,
            store,
            sandboxes: TempLocalProvider::new(),
            records,
            owner: UserId::parse("user_finalizer").unwrap(),
            db_prefix: format!("t{}", ids::random_hex(5)),
            app_prefix: format!("tbfin-{}-", ids::random_hex(4)),
            base_image,
            cleanup,
        }
    }

    /// The GitHub adapter on the fake. It makes two attempts at most, quickly: a fault that
    /// outlasts them reaches the finalizer as a transient error.
    pub fn github_config(&self) -> GitHubConfig {
        GitHubConfig {
            api_base: self.github.api_url().to_owned(),
            retry: RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(5),
                max_backoff: Duration::from_millis(20),
                max_wait: Duration::from_secs(5),
            },
            ..GitHubConfig::new(GitHubToken::new(GITHUB_TOKEN))
        }
    }

    /// The Fly deployer on the fake, pushing to the test registry on the synthetic base.
    pub fn fly_config(&self) -> FlyConfig {
        let mut config = FlyConfig::new(Secret::new(self.fly_token.clone()), "test-org");
        config.api_base = self.fly.api_url().to_owned();
        config.registry = self.registry.clone();
        config.base_image = self.base_image.clone();
        config.public_url_template = self.fly.public_url_template();
        config.app_prefix = self.app_prefix.clone();
        config.health_timeout = Duration::from_secs(30);
        config.health_poll_interval = Duration::from_millis(100);
        config
    }

    /// The project-database provisioner on `cluster`, naming everything with this test's
    /// prefix.
    pub fn provisioner(&self, cluster: ClusterSettings) -> PgProvisioner {
        PgProvisioner::new(cluster)
            .with_prefix(&self.db_prefix)
            .expect("a valid prefix")
    }

    /// Every part on the real services.
    pub fn parts(&self) -> Parts {
        Parts {
            store: self.store.clone(),
            archive: Arc::new(self.aws.archive()),
            code_host: Arc::new(GitHubCodeHost::new(self.github_config()).expect("config")),
            databases: Arc::new(self.provisioner(cluster())),
            deployer: Arc::new(FlyDeployer::new(self.fly_config()).expect("config")),
            settings: settings(),
        }
    }

    pub fn finalizer(&self, parts: Parts) -> Finalizer {
        Finalizer {
            store: parts.store,
            sandboxes: self.sandboxes.shared(),
            archive: parts.archive,
            code_host: parts.code_host,
            databases: Some(parts.databases),
            deployer: parts.deployer,
            records: Arc::new(self.records.clone()),
            notifier: None,
            // The fake Fly's apps answer on loopback.
            prober: Arc::new(tb_notify::HttpProber::new(true)),
            receipt_key: Some(tb_pipeline::receipt::SigningKey::new(RECEIPT_KEY)),
            queue: Arc::new(tb_pipeline::memory::MemoryQueue::default()),
            settings: parts.settings,
        }
    }

    /// A new project; its database and role are dropped when the test ends.
    pub fn project(&self) -> ProjectId {
        let project = ProjectId::generate();
        let names = self.database_names(&project);
        self.cleanup.database(&names.database);
        self.cleanup.role(&names.role);
        project
    }

    pub fn database_names(&self, project: &ProjectId) -> DatabaseNames {
        tb_postgres::naming::database_names(&self.db_prefix, project, false)
    }

    /// The Fly app of `project`.
    pub fn app(&self, project: &ProjectId) -> String {
        tb_deploy::fly::naming::app_name(&self.app_prefix, project)
    }

    /// The GitHub repository of `project` (under the token's user).
    pub fn repo(&self, project: &ProjectId) -> String {
        format!("{}{}", GitHubConfig::DEFAULT_REPO_PREFIX, project.as_str())
    }

    /// A request whose agent finished in a sandbox holding `files`, as the worker leaves it
    /// for the finalizer: phase `finalizing`, two model calls committed with their cost.
    pub async fn finished_request(
        &self,
        store: &dyn StateStore,
        project: &ProjectId,
        files: &Files,
    ) -> RequestRecord {
        self.finished_request_with_checks(store, project, files, None)
            .await
    }

    /// [`Services::finished_request`] whose `finish` declared `checks`.
    pub async fn finished_request_with_checks(
        &self,
        store: &dyn StateStore,
        project: &ProjectId,
        files: &Files,
        checks: Option<Vec<tb_core::checks::EndpointCheck>>,
    ) -> RequestRecord {
        let id = RequestId::generate();
        let (mut rec, first) = RequestRecord::new(
            id.clone(),
            self.owner.clone(),
            project.clone(),
            Description::parse(DESCRIPTION).unwrap(),
            now_ms(),
        );
        assert_eq!(store.create(&rec, &first).await.unwrap(), Created::New);
        let sandbox = self
            .sandboxes
            .provider()
            .create_local(&SandboxSpec {
                name: format!("sbx-{}", ids::random_hex(6)),
                labels: [(
                    tb_pipeline::worker::REQUEST_LABEL.to_owned(),
                    id.to_string(),
                )]
                .into(),
            })
            .await
            .expect("a sandbox");
        for (path, contents) in files {
            sandbox
                .write_file(&WorkspacePath::parse(path).unwrap(), contents)
                .await
                .unwrap();
        }
        let calls = calls();
        rec.phase = Phase::Finalizing;
        rec.sandbox_id = Some(sandbox.id().to_owned());
        rec.agent.outcome = Some(Outcome::Finished {
            summary: "A users API with a health check.".into(),
            checks,
        });
        rec.agent.iteration = calls.len() as u32;
        rec.agent.calls = calls.len();
        rec.agent.cost = calls.iter().map(|c| c.cost).sum();
        for c in &calls {
            rec.agent.usage += c.usage;
        }
        save_next(
            store,
            &mut rec,
            Appended {
                first_index: 1,
                messages: &[],
                calls: &calls,
            },
        )
        .await
        .unwrap();
        rec
    }

    /// The sandbox directory of a request (gone once it is released).
    pub fn sandbox_dir(&self, rec: &RequestRecord) -> std::path::PathBuf {
        self.sandboxes
            .provider()
            .config()
            .root
            .join(rec.sandbox_id.as_deref().expect("a sandbox"))
    }

    /// `(iteration, cost)` of the ledger rows of `request`.
    pub async fn ledger(&self, request: &RequestId) -> Vec<(i64, i64)> {
        sqlx::query(
            "SELECT iteration, cost_micro_usd FROM usage_ledger WHERE request_id = $1 \
             ORDER BY iteration",
        )
        .bind(request.as_str())
        .fetch_all(self.records.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("iteration"), r.get("cost_micro_usd")))
        .collect()
    }

    /// The versions recorded in the project's deployment history, oldest first.
    pub async fn deployments(&self, project: &ProjectId) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT version FROM deployments WHERE project_id = $1 ORDER BY created_at, version",
        )
        .bind(project.as_str())
        .fetch_all(self.records.pool())
        .await
        .unwrap()
    }

    /// The migrations applied to the project's database, and its tables.
    pub async fn project_database(&self, project: &ProjectId) -> (Vec<String>, Vec<String>) {
        let names = self.database_names(project);
        let mut c = connect(&admin_url_for(&names.database)).await;
        let applied = sqlx::query_scalar("SELECT name FROM _turbobackend_migrations ORDER BY name")
            .fetch_all(&mut c)
            .await
            .unwrap();
        let tables = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let _ = c.close().await;
        (applied, tables)
    }

    /// An archived object's bytes and its `sha256` metadata.
    pub async fn archived(&self, key: &str) -> (Vec<u8>, Option<String>) {
        let out = self
            .aws
            .clients
            .s3
            .get_object()
            .bucket(&self.aws.settings.bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("reading {key}: {e:?}"));
        let sha = out
            .metadata()
            .and_then(|m| m.get(tb_aws::archive::SHA256_METADATA))
            .cloned();
        let bytes = out.body.collect().await.unwrap().into_bytes().to_vec();
        (bytes, sha)
    }

    /// A fresh clone of the project's repository.
    pub fn clone_repo(&self, project: &ProjectId) -> GitClone {
        let dir = tempfile::tempdir().unwrap();
        git(
            Path::new("."),
            &[
                "clone",
                "--quiet",
                &self.github.clone_url(GITHUB_LOGIN, &self.repo(project)),
                &dir.path().join("repo").to_string_lossy(),
            ],
        );
        GitClone { dir }
    }

    /// Source commits the fake GitHub created (`POST …/git/commits` answered 201, receipt
    /// commits left out).
    pub fn source_commit_creations(&self, project: &ProjectId) -> usize {
        self.commit_creations(project, false)
    }

    /// Receipt commits the fake GitHub created (`POST …/git/commits` answered 201 whose
    /// message is [`RECEIPT_MESSAGE`]'s).
    pub fn receipt_commit_creations(&self, project: &ProjectId) -> usize {
        self.commit_creations(project, true)
    }

    fn commit_creations(&self, project: &ProjectId, receipts: bool) -> usize {
        let path = format!("/repos/{GITHUB_LOGIN}/{}/git/commits", self.repo(project));
        self.github
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == path && r.status == 201)
            .filter(|r| r.body.contains(RECEIPT_MESSAGE) == receipts)
            .count()
    }

    /// Machine creations the fake Fly accepted for the project's app.
    pub fn machine_creations(&self, project: &ProjectId) -> usize {
        let path = format!("/v1/apps/{}/machines", self.app(project));
        self.fly
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == path && r.status == 200)
            .count()
    }
}

/// Runs the finalizer on the finalize message of `id`, as the queue would deliver it.
pub async fn finalize(
    finalizer: &Finalizer,
    id: &RequestId,
    worker: &str,
) -> Result<FinalizeDone, FinalizeError> {
    let body = serde_json::to_string(&FinalizeMessage::Finalize {
        request_id: id.clone(),
    })
    .unwrap();
    finalizer.handle(&body, worker).await
}

/// Two model calls, priced by the default table.
pub fn calls() -> Vec<ModelCall> {
    let price = PriceTable::with_defaults().price_for(MODEL).unwrap();
    [
        (1u32, 1_800u64, 420u64, StopReason::ToolUse),
        (2, 2_600, 90, StopReason::EndTurn),
    ]
    .into_iter()
    .map(|(iteration, input, output, stop_reason)| {
        let usage = TokenUsage {
            input,
            output,
            cache_write: 0,
            cache_read: 0,
        };
        ModelCall {
            iteration,
            model: MODEL.into(),
            usage,
            cost: price.cost(&usage),
            latency_ms: 900,
            stop_reason,
        }
    })
    .collect()
}

/// The status and JSON body of `GET url`.
pub async fn get(url: &str) -> (u16, Value) {
    let resp = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Panics if the serialised record holds anything like a database password or URL.
pub fn assert_no_database_secrets(rec: &RequestRecord) {
    let text = serde_json::to_string(rec).unwrap().to_lowercase();
    for needle in ["password", "postgres://", "postgresql://"] {
        assert!(
            !text.contains(needle),
            "the record holds `{needle}`: {text}"
        );
    }
}

/// A clone of a project repository.
pub struct GitClone {
    dir: TempDir,
}

impl GitClone {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("repo")
    }

    /// The commits of `main` made by pushes, oldest first: without the placeholder that
    /// got the empty repository past the Git Data API (the first snapshot is committed on
    /// top of it).
    pub fn commits(&self) -> Vec<String> {
        git(&self.path(), &["rev-list", "--reverse", "HEAD"])
            .lines()
            .filter(|sha| {
                git(&self.path(), &["log", "-1", "--format=%s", sha]).trim()
                    != tb_codehost::github::BOOTSTRAP_MESSAGE
            })
            .map(str::to_owned)
            .collect()
    }

    /// [`GitClone::commits`] without the receipt commits.
    pub fn source_commits(&self) -> Vec<String> {
        self.commits()
            .into_iter()
            .filter(|sha| !self.subject(sha).starts_with(RECEIPT_MESSAGE))
            .collect()
    }

    /// The receipt commits of `main`, oldest first: (commit, its parents).
    pub fn receipt_commits(&self) -> Vec<(String, Vec<String>)> {
        self.commits()
            .into_iter()
            .filter(|sha| self.subject(sha).starts_with(RECEIPT_MESSAGE))
            .map(|sha| {
                let parents = git(&self.path(), &["log", "-1", "--format=%P", &sha])
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                (sha, parents)
            })
            .collect()
    }

    /// The commit `main` points at.
    pub fn head(&self) -> String {
        git(&self.path(), &["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// The subject line of `commit`'s message.
    pub fn subject(&self, commit: &str) -> String {
        git(&self.path(), &["log", "-1", "--format=%s", commit])
            .trim()
            .to_owned()
    }

    /// The files of `commit`'s tree.
    pub fn tree(&self, commit: &str) -> Files {
        git(
            &self.path(),
            &["ls-tree", "-r", "--name-only", "-z", commit],
        )
        .split('\0')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let out = std::process::Command::new("git")
                .current_dir(self.path())
                .args(["cat-file", "blob", &format!("{commit}:{p}")])
                .output()
                .unwrap();
            assert!(out.status.success());
            (p.to_owned(), out.stdout)
        })
        .collect()
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `host:port` of the real registry, from `TB_TEST_REGISTRY`.
pub fn test_registry() -> String {
    match std::env::var("TB_TEST_REGISTRY") {
        Ok(r) if !r.trim().is_empty() => r.trim().trim_start_matches("http://").to_owned(),
        _ => panic!(
            "TB_TEST_REGISTRY is not set: these tests deploy images through a real OCI registry. \
             From the repository root run `infra/registry.sh start` and \
             `eval \"$(infra/registry.sh env)\"`, then run the tests again."
        ),
    }
}

/// Pushes the synthetic Node base image to `registry`/`repository`:`20-slim`.
pub async fn push_synthetic_base(registry: &str, repository: &str) -> ImageRef {
    let base = tb_testkit::oci::synthetic_node_base();
    let client = RegistryClient::new(registry, None).unwrap();
    let blobs = std::iter::once(&base.layer).chain(&base.configs);
    for blob in blobs {
        client
            .push_blob(repository, &blob.digest, Bytes::from(blob.bytes.clone()))
            .await
            .unwrap_or_else(|e| panic!("pushing to the registry at {registry}: {e}"));
    }
    for (_, manifest) in &base.manifests {
        client
            .put_manifest(
                repository,
                &manifest.digest,
                tb_testkit::oci::OCI_MANIFEST,
                manifest.bytes.clone(),
            )
            .await
            .unwrap();
    }
    client
        .put_manifest(
            repository,
            "20-slim",
            tb_testkit::oci::OCI_INDEX,
            base.index.bytes.clone(),
        )
        .await
        .unwrap();
    ImageRef::new(registry, repository, "20-slim").unwrap()
}

pub use tb_postgres::testing::{admin_url, admin_url_for, cluster};

/// The cluster reached through `127.0.0.1:port` (a proxy in front of it).
pub fn cluster_via(port: u16) -> ClusterSettings {
    let mut settings = cluster();
    settings.host = "127.0.0.1".into();
    settings.port = port;
    settings
}

/// `host:port` of the cluster.
pub fn cluster_address() -> String {
    let c = cluster();
    format!("{}:{}", c.host, c.port)
}

async fn connect(url: &str) -> PgConnection {
    PgConnectOptions::from_str(url)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to Postgres: {e}"))
}

/// A new empty database owned by the admin, dropped with `cleanup`; returns its URL.
pub async fn fresh_database(cleanup: &Cleanup) -> String {
    let name = format!("t{}_records", ids::random_hex(5));
    cleanup.database(&name);
    let mut c = connect(&admin_url()).await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        quote_ident(&name)
    )))
    .execute(&mut c)
    .await
    .expect("create database");
    let _ = c.close().await;
    admin_url_for(&name)
}
