//! Deleting and rolling back deployed projects, on the real backing services: the Fly and
//! GitHub stand-ins, the local Postgres cluster, S3 and DynamoDB on moto. The api's side
//! (`tb_pipeline::lifecycle`) records the operation and sends its finalize message; the
//! finalizer carries it out, as the queue would deliver it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{ConnectOptions, Connection};
use tb_core::MicroUsd;
use tb_core::agent::AgentConfig;
use tb_core::domain::{Phase, ProjectId, RequestId, UserId};
use tb_core::ports::{ApiKey, Lifecycle, PlatformRecords, PortError, ProjectRecord};
use tb_core::pricing::PriceTable;
use tb_core::usage::ModelCall;
use tb_pipeline::lifecycle::{OperationAccepted, request_delete, request_rollback};
use tb_pipeline::memory::MemoryQueue;
use tb_pipeline::{FinalizeDone, Finalizer, Pipeline, RequestError};
use tb_tests::faults::Strike;
use tb_tests::finalize::{Files, GITHUB_LOGIN, Services, admin_url, finalize, get, project_files};

/// `project_files` whose `/api/health` also answers the version, so a test can tell which
/// build serves.
fn version(v: &str) -> Files {
    let mut files = project_files(v, &["Ada"]);
    let index = files.get_mut("server/index.mjs").unwrap();
    let text = String::from_utf8(index.clone()).unwrap();
    let marked = text.replace("{ status: 'ok' }", "{ status: 'ok', marker: VERSION }");
    assert_ne!(marked, text, "the health route changed; update this test");
    *index = marked.into_bytes();
    files
}

struct Setup {
    s: Services,
    queue: Arc<MemoryQueue>,
    front: Pipeline,
}

impl Setup {
    async fn start() -> Setup {
        let s = Services::start().await;
        let queue = Arc::new(MemoryQueue::default());
        let front = Pipeline::front_only(
            s.store.clone(),
            queue.clone(),
            PriceTable::with_defaults(),
            AgentConfig::standard(),
        );
        Setup { s, queue, front }
    }

    fn finalizer_with(&self, records: Arc<dyn PlatformRecords>) -> Finalizer {
        let mut f = self.s.finalizer(self.s.parts());
        f.records = records;
        f
    }

    fn finalizer(&self) -> Finalizer {
        self.s.finalizer(self.s.parts())
    }

    /// A project deployed from `files` (one request finalized).
    async fn deployed(&self, project: &ProjectId, files: &Files) {
        let rec = self
            .s
            .finished_request(self.s.store.as_ref(), project, files)
            .await;
        let done = finalize(&self.finalizer(), &rec.id, "finalizer-1")
            .await
            .unwrap();
        assert!(
            matches!(
                done,
                FinalizeDone::Finished {
                    phase: Phase::Succeeded,
                    ..
                }
            ),
            "{done:?}\nfake Fly: {}",
            self.s.fly.log(&self.s.app(project))
        );
    }

    /// The finalize messages the api sent since the last call, as queue bodies.
    fn sent(&self) -> Vec<String> {
        self.queue
            .take_finalize()
            .iter()
            .map(|m| serde_json::to_string(m).unwrap())
            .collect()
    }

    async fn delete(&self, project: &ProjectId) -> Result<OperationAccepted, RequestError> {
        request_delete(
            &self.front,
            &self.s.records,
            &self.s.owner,
            project.as_str(),
            project.as_str(),
        )
        .await
    }

    async fn record(&self, project: &ProjectId) -> ProjectRecord {
        self.s.records.project(project).await.unwrap().unwrap()
    }

    async fn health_marker(&self, project: &ProjectId) -> Value {
        let url = format!("{}/api/health", self.s.fly.app_url(&self.s.app(project)));
        let (status, body) = get(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
        body["marker"].clone()
    }

    /// The project's objects left in the bucket.
    async fn objects(&self, project: &ProjectId) -> Vec<String> {
        let out = self
            .s
            .aws
            .clients
            .s3
            .list_objects_v2()
            .bucket(&self.s.aws.settings.bucket)
            .prefix(format!("projects/{project}/"))
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(String::from))
            .collect()
    }

    /// Whether the cluster has the database and the role of `project` (production).
    async fn database_and_role(&self, project: &ProjectId) -> (bool, bool) {
        let names = self.s.database_names(project);
        let mut c = admin_url()
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let db: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&names.database)
                .fetch_one(&mut c)
                .await
                .unwrap();
        let role: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(&names.role)
                .fetch_one(&mut c)
                .await
                .unwrap();
        let _ = c.close().await;
        (db, role)
    }

    /// Requests the stand-ins answered with the removal of `project`'s things (app
    /// deletions, machine destructions, repository archivings that succeeded).
    fn removals(&self, project: &ProjectId) -> (usize, usize, usize) {
        let app = self.s.app(project);
        let fly = self.s.fly.requests();
        let apps = fly
            .iter()
            .filter(|r| r.method == "DELETE" && r.path == format!("/v1/apps/{app}?force=true"))
            .filter(|r| r.status == 202)
            .count();
        let machines = fly
            .iter()
            .filter(|r| {
                r.method == "DELETE" && r.path.starts_with(&format!("/v1/apps/{app}/machines/"))
            })
            .filter(|r| r.status == 200)
            .count();
        let repo = format!("/repos/{GITHUB_LOGIN}/{}", self.s.repo(project));
        let archived = self
            .s
            .github
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == repo && r.status == 200)
            .count();
        (apps, machines, archived)
    }

    /// Everything of the project is gone but its archived repository.
    async fn assert_gone(&self, project: &ProjectId) {
        let app = self.s.app(project);
        assert!(!self.s.fly.app_exists(&app), "the app {app} is left");
        assert!(self.s.fly.machines(&app).is_empty(), "a machine is left");
        assert!(self.s.fly.ips(&app).is_empty(), "an IP is left");
        assert_eq!(self.database_and_role(project).await, (false, false));
        assert_eq!(self.objects(project).await, Vec::<String>::new());
        assert_eq!(
            self.s
                .github
                .repo_is_archived(GITHUB_LOGIN, &self.s.repo(project)),
            Some(true),
            "the repository is archived, not deleted"
        );
        let record = self.record(project).await;
        assert!(record.lifecycle.deleted_at_ms.is_some(), "{record:?}");
        let deletion = record.lifecycle.deletion.as_ref().unwrap();
        assert!(deletion.failure.is_none(), "{deletion:?}");
        assert_eq!(deletion.requested_by, self.s.owner);
        for step in tb_pipeline::project_ops::DELETE_STEPS {
            assert!(deletion.steps.contains_key(step), "{step}: {deletion:?}");
        }
    }
}

fn done() -> FinalizeDone {
    FinalizeDone::Finished {
        phase: Phase::Succeeded,
        failure: None,
    }
}

#[tokio::test]
async fn deleting_a_deployed_project_leaves_no_app_machine_database_role_or_objects_and_archives_the_repository()
 {
    let t = Setup::start().await;
    let project = t.s.project();
    t.deployed(&project, &version("v1")).await;
    let app = t.s.app(&project);
    assert!(t.s.fly.app_exists(&app));
    assert_eq!(t.database_and_role(&project).await, (true, true));
    let objects = t.objects(&project).await;
    assert!(objects.len() >= 3, "{objects:?}");

    let accepted = t.delete(&project).await.unwrap();
    assert_eq!(
        (accepted.state.as_str(), accepted.started),
        ("deleting", true)
    );
    let sent = t.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(t.finalizer().handle(&sent[0], "f-1").await.unwrap(), done());
    t.assert_gone(&project).await;
    assert_eq!(t.removals(&project), (1, 1, 1));

    let deletion = t.record(&project).await.lifecycle.deletion.unwrap();
    let took: Vec<String> = deletion
        .steps
        .iter()
        .map(|(step, r)| format!("{step} {} ms", r["duration_ms"]))
        .collect();
    eprintln!("deletion steps: {}", took.join(", "));
    // The archived repository refuses pushes: no code is lost, none added.
    let push = tb_core::ports::CodeHost::push(
        &tb_codehost::GitHubCodeHost::new(t.s.github_config()).unwrap(),
        &project,
        &tb_core::ports::Snapshot {
            files: vec![tb_core::ports::SnapshotFile {
                path: tb_core::sandbox::WorkspacePath::parse("late.txt").unwrap(),
                contents: b"late".to_vec(),
                executable: false,
            }],
        },
        "after deletion",
    )
    .await;
    assert!(
        matches!(&push, Err(e) if e.to_string().contains("archived")),
        "{push:?}"
    );
    assert_eq!(
        deletion.steps["archive"]["objects_removed"],
        objects.len() as u64
    );
    let dropped: Vec<String> =
        serde_json::from_value(deletion.steps["database"]["dropped"].clone()).unwrap();
    let names = t.s.database_names(&project);
    assert_eq!(
        dropped,
        vec![
            format!("database {}", names.database),
            format!("role {}", names.role)
        ]
    );
    let history = t.record(&project).await.lifecycle.history;
    let actions: Vec<(&str, &UserId)> =
        history.iter().map(|h| (h.action.as_str(), &h.by)).collect();
    assert_eq!(
        actions,
        vec![("delete requested", &t.s.owner), ("deleted", &t.s.owner)]
    );

    // Deleting again changes nothing and says so; no message is sent.
    let again = t.delete(&project).await.unwrap();
    assert_eq!((again.state.as_str(), again.started), ("deleted", false));
    assert!(
        again.message.contains("deleted already"),
        "{}",
        again.message
    );
    assert!(again.removed.contains_key("app"));
    assert!(t.sent().is_empty());
    // A stray redelivery of the old message is stale.
    let stale = t.finalizer().handle(&sent[0], "f-2").await.unwrap();
    assert!(matches!(stale, FinalizeDone::Stale(_)), "{stale:?}");
    assert_eq!(t.removals(&project), (1, 1, 1));
}

/// Platform records that "die" at the `at`-th lifecycle write of the finalizer (the write
/// happens or not, per `strike`; every later call fails) until revived.
struct DyingRecords {
    inner: Arc<dyn PlatformRecords>,
    at: usize,
    strike: Strike,
    writes: AtomicUsize,
    dead: AtomicBool,
}

impl DyingRecords {
    fn check(&self) -> Result<(), PortError> {
        if self.dead.load(Ordering::SeqCst) {
            Err(PortError::Transient(
                "injected fault: the finalizer died".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl PlatformRecords for DyingRecords {
    async fn create_key(&self, user: &UserId, label: &str) -> Result<(ApiKey, String), PortError> {
        self.check()?;
        self.inner.create_key(user, label).await
    }
    async fn authenticate(&self, presented: &str) -> Result<Option<ApiKey>, PortError> {
        self.check()?;
        self.inner.authenticate(presented).await
    }
    async fn list_keys(&self, user: &UserId) -> Result<Vec<ApiKey>, PortError> {
        self.check()?;
        self.inner.list_keys(user).await
    }
    async fn revoke_key(&self, user: &UserId, key_id: &str) -> Result<bool, PortError> {
        self.check()?;
        self.inner.revoke_key(user, key_id).await
    }
    async fn save_project(&self, project: &ProjectRecord) -> Result<(), PortError> {
        self.check()?;
        self.inner.save_project(project).await
    }
    async fn project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, PortError> {
        self.check()?;
        self.inner.project(id).await
    }
    async fn projects(&self, owner: &UserId) -> Result<Vec<ProjectRecord>, PortError> {
        self.check()?;
        self.inner.projects(owner).await
    }
    async fn save_lifecycle(&self, id: &ProjectId, lifecycle: &Lifecycle) -> Result<(), PortError> {
        self.check()?;
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.at {
            return self.inner.save_lifecycle(id, lifecycle).await;
        }
        self.dead.store(true, Ordering::SeqCst);
        if self.strike == Strike::AfterWrite {
            self.inner.save_lifecycle(id, lifecycle).await?;
        }
        Err(PortError::Transient(
            "injected fault: the finalizer died".into(),
        ))
    }
    async fn record_usage(
        &self,
        request: &RequestId,
        owner: &UserId,
        project: &ProjectId,
        calls: &[ModelCall],
    ) -> Result<(), PortError> {
        self.check()?;
        self.inner
            .record_usage(request, owner, project, calls)
            .await
    }
    async fn spent(&self, owner: &UserId) -> Result<MicroUsd, PortError> {
        self.check()?;
        self.inner.spent(owner).await
    }
}

#[tokio::test]
async fn a_deletion_killed_after_or_during_any_step_completes_on_redelivery_removing_everything_once()
 {
    let t = Setup::start().await;
    let steps = tb_pipeline::project_ops::DELETE_STEPS;
    // The finalizer writes the lifecycle once per step; the last write also says deleted.
    // AfterWrite at write k: step k is recorded, then the finalizer dies. BeforeWrite at
    // write k: step k's removal is done but not recorded (died mid-step), so it is redone.
    let mut cases: Vec<(usize, Strike)> =
        (1..=steps.len()).map(|k| (k, Strike::AfterWrite)).collect();
    cases.extend((2..=steps.len()).map(|k| (k, Strike::BeforeWrite)));
    for (at, strike) in cases {
        let project = t.s.project();
        t.deployed(&project, &version("v1")).await;
        let objects = t.objects(&project).await.len() as u64;
        t.delete(&project).await.unwrap();
        let body = t.sent().pop().unwrap();

        let dying = Arc::new(DyingRecords {
            inner: Arc::new(t.s.records.clone()),
            at,
            strike,
            writes: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
        });
        let died = t.finalizer_with(dying.clone()).handle(&body, "f-1").await;
        assert!(died.is_err(), "{strike:?} at write {at}: {died:?}");
        let left = t.record(&project).await.lifecycle.deletion.unwrap();
        let recorded = if strike == Strike::AfterWrite {
            at
        } else {
            at - 1
        };
        assert_eq!(
            left.steps.len(),
            recorded,
            "{strike:?} at write {at}: {left:?}"
        );

        // Redelivered: it completes, skipping what was recorded.
        let redelivered = t.finalizer().handle(&body, "f-2").await.unwrap();
        assert_eq!(redelivered, done(), "{strike:?} at write {at}");
        t.assert_gone(&project).await;
        let after = t.record(&project).await.lifecycle.deletion.unwrap();
        for (step, result) in &left.steps {
            assert_eq!(&after.steps[step], result, "{step} was not done again");
        }
        // Each thing was removed exactly once, however the finalizer died.
        assert_eq!(t.removals(&project), (1, 1, 1), "{strike:?} at write {at}");
        let removed_objects = after.steps["archive"]["objects_removed"].as_u64().unwrap();
        let dropped = after.steps["database"]["dropped"].as_array().unwrap().len();
        if strike == Strike::BeforeWrite && steps[at - 1] == "archive" {
            // Removed by the dead finalizer; the redone step found none left.
            assert_eq!(removed_objects, 0);
        } else {
            assert_eq!(removed_objects, objects);
        }
        if strike == Strike::BeforeWrite && steps[at - 1] == "database" {
            assert_eq!(
                dropped, 0,
                "dropped by the dead finalizer, found gone after"
            );
        } else {
            assert_eq!(dropped, 2);
        }
    }
}

#[tokio::test]
async fn rollback_after_two_deployments_serves_the_first_version_again_and_swaps_the_versions() {
    let t = Setup::start().await;
    let project = t.s.project();
    t.deployed(&project, &version("v1")).await;
    let first = t.record(&project).await.deployed_version.unwrap();

    // One deployment: nothing to roll back to.
    let refused = request_rollback(&t.front, &t.s.records, &t.s.owner, project.as_str())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, RequestError::Invalid(m) if m.contains("no previous version")),
        "{refused:?}"
    );

    t.deployed(&project, &version("v2")).await;
    let second = t.record(&project).await.deployed_version.unwrap();
    assert_ne!(first, second);
    assert_eq!(t.health_marker(&project).await, "v2");

    let accepted = request_rollback(&t.front, &t.s.records, &t.s.owner, project.as_str())
        .await
        .unwrap();
    assert_eq!(accepted.target_version.as_deref(), Some(first.as_str()));
    assert_eq!(accepted.from_version.as_deref(), Some(second.as_str()));
    let sent = t.sent();
    assert_eq!(t.finalizer().handle(&sent[0], "f-1").await.unwrap(), done());

    assert_eq!(t.health_marker(&project).await, "v1");
    let record = t.record(&project).await;
    assert_eq!(
        (
            record.deployed_version.as_deref(),
            record.previous_version.as_deref()
        ),
        (Some(first.as_str()), Some(second.as_str()))
    );
    // The same machine, updated to the first image by digest.
    let machines = t.s.fly.machines(&t.s.app(&project));
    assert_eq!(machines.len(), 1);
    assert!(
        machines[0].image.ends_with(&format!("@{first}")),
        "{}",
        machines[0].image
    );
    let actions: Vec<&str> = record
        .lifecycle
        .history
        .iter()
        .map(|h| h.action.as_str())
        .collect();
    assert_eq!(actions, vec!["rollback requested", "rolled back"]);

    // Redelivered: nothing changes.
    let stale = t.finalizer().handle(&sent[0], "f-2").await.unwrap();
    assert!(matches!(stale, FinalizeDone::Stale(_)), "{stale:?}");
    // Rolling back again goes forward to the second version.
    request_rollback(&t.front, &t.s.records, &t.s.owner, project.as_str())
        .await
        .unwrap();
    let sent = t.sent();
    assert_eq!(t.finalizer().handle(&sent[0], "f-3").await.unwrap(), done());
    assert_eq!(t.health_marker(&project).await, "v2");
}

#[tokio::test]
async fn another_users_project_is_not_found_for_delete_and_rollback_and_stays_untouched() {
    let t = Setup::start().await;
    let project = t.s.project();
    t.deployed(&project, &version("v1")).await;
    let mallory = UserId::parse("user_mallory").unwrap();
    let deleted = request_delete(
        &t.front,
        &t.s.records,
        &mallory,
        project.as_str(),
        project.as_str(),
    )
    .await;
    assert!(
        matches!(deleted, Err(RequestError::NotFound(_))),
        "{deleted:?}"
    );
    let rolled = request_rollback(&t.front, &t.s.records, &mallory, project.as_str()).await;
    assert!(
        matches!(rolled, Err(RequestError::NotFound(_))),
        "{rolled:?}"
    );
    // The owner without the confirmation: refused, nothing recorded.
    let unconfirmed =
        request_delete(&t.front, &t.s.records, &t.s.owner, project.as_str(), "yes").await;
    assert!(
        matches!(&unconfirmed, Err(RequestError::Invalid(m)) if m.contains("confirm")),
        "{unconfirmed:?}"
    );
    assert!(t.sent().is_empty());
    assert_eq!(t.record(&project).await.lifecycle, Lifecycle::default());
    assert!(t.s.fly.app_exists(&t.s.app(&project)));
}

#[tokio::test]
async fn a_running_request_is_cancelled_first_and_its_finalization_then_publishes_nothing() {
    let t = Setup::start().await;
    let project = t.s.project();
    t.deployed(&project, &version("v1")).await;
    // A change request the worker has not finished: cancelled by the deletion.
    let accepted = t
        .front
        .create(tb_pipeline::NewRequest {
            owner: t.s.owner.clone(),
            key_id: None,
            description: tb_core::domain::Description::parse("Add posts").unwrap(),
            project: Some(project.clone()),
            idempotency_key: None,
            callback_url: None,
            holds_slot: false,
        })
        .await
        .unwrap();
    let deletion = t.delete(&project).await.unwrap();
    assert_eq!(
        deletion.cancelled_requests,
        vec![accepted.request_id.clone()]
    );
    assert!(
        deletion.message.contains("cancelled first"),
        "{}",
        deletion.message
    );
    let cancelled = t.s.store.load(&accepted.request_id).await.unwrap().unwrap();
    assert!(cancelled.cancel_requested);

    // The finalization of a request of the deleted project publishes nothing.
    let change =
        t.s.finished_request(t.s.store.as_ref(), &project, &version("v2"))
            .await;
    let done_change = finalize(&t.finalizer(), &change.id, "f-0").await.unwrap();
    assert!(
        matches!(&done_change, FinalizeDone::Finished { phase: Phase::Failed, failure: Some(f) } if f.step == "project"),
        "{done_change:?}"
    );
    let rec = t.s.store.load(&change.id).await.unwrap().unwrap();
    assert!(!rec.steps.contains_key("deploy"), "{:?}", rec.steps);
    assert!(!rec.steps.contains_key("archive"), "{:?}", rec.steps);

    // The first request is still queued (no worker here): the deletion waits for it, then
    // stops at the `requests` step naming it; it is marked so, and asking again retries.
    let mut finalizer = t.finalizer();
    finalizer.settings.outage_retry = std::time::Duration::from_secs(2);
    let body = t.sent().pop().unwrap();
    let stopped = finalizer.handle(&body, "f-1").await.unwrap();
    assert!(
        matches!(&stopped, FinalizeDone::Finished { phase: Phase::Failed, failure: Some(f) } if f.step == "requests" && f.reason.contains(accepted.request_id.as_str())),
        "{stopped:?}"
    );
    let record = t.record(&project).await;
    assert_eq!(
        record
            .lifecycle
            .deletion
            .as_ref()
            .unwrap()
            .failure
            .as_ref()
            .unwrap()
            .step,
        "requests"
    );
    assert!(t.s.fly.app_exists(&t.s.app(&project)));

    // The request ends (as the worker would end a cancelled one).
    let mut r = t.s.store.load(&accepted.request_id).await.unwrap().unwrap();
    r.phase = Phase::Cancelled;
    tb_pipeline::ports::save_next(t.s.store.as_ref(), &mut r, Default::default())
        .await
        .unwrap();
    let again = t.delete(&project).await.unwrap();
    assert_eq!(
        again.retrying.as_ref().map(|f| f.step.as_str()),
        Some("requests")
    );
    let body = t.sent().pop().unwrap();
    assert_eq!(t.finalizer().handle(&body, "f-2").await.unwrap(), done());
    t.assert_gone(&project).await;
}

#[tokio::test]
async fn a_step_the_service_refuses_stops_the_deletion_there_and_deleting_again_retries_it() {
    let t = Setup::start().await;
    let project = t.s.project();
    t.deployed(&project, &version("v1")).await;
    // GitHub refuses to archive the repository (422: GitHub's answer to an update it
    // will not make).
    let repo = format!("/repos/{GITHUB_LOGIN}/{}", t.s.repo(&project));
    t.s.github.fail_next_matching("PATCH", &repo, 1, 422, &[]);
    t.delete(&project).await.unwrap();
    let body = t.sent().pop().unwrap();
    let stopped = t.finalizer().handle(&body, "f-1").await.unwrap();
    assert!(
        matches!(&stopped, FinalizeDone::Finished { phase: Phase::Failed, failure: Some(f) } if f.step == "repository"),
        "{stopped:?}"
    );
    let record = t.record(&project).await;
    assert!(record.lifecycle.deleted_at_ms.is_none());
    let deletion = record.lifecycle.deletion.as_ref().unwrap();
    let failure = deletion.failure.as_ref().unwrap();
    assert_eq!(failure.step, "repository");
    assert!(failure.reason.contains("422"), "{failure:?}");
    // The steps before it are done and recorded; the ones after it were not run.
    assert!(deletion.steps.contains_key("app") && deletion.steps.contains_key("database"));
    assert!(!deletion.steps.contains_key("archive"));
    assert!(!t.objects(&project).await.is_empty());
    assert_eq!(
        record.lifecycle.history.last().map(|h| h.action.as_str()),
        Some("delete failed")
    );

    let again = t.delete(&project).await.unwrap();
    assert_eq!(
        again.retrying.as_ref().map(|f| f.step.as_str()),
        Some("repository")
    );
    let body = t.sent().pop().unwrap();
    assert_eq!(t.finalizer().handle(&body, "f-2").await.unwrap(), done());
    t.assert_gone(&project).await;
    assert_eq!(t.removals(&project), (1, 1, 1));
}
