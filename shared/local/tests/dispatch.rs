//! The local queue and its dispatcher, end to end with a real `Worker` and `Finalizer`:
//! SQLite state and records, the scripted model, a local sandbox, a directory archive.
//!
//! The finalizer here has no code host or deployer (those adapters live elsewhere): its
//! `repository` step refuses, so a request that reaches the finalizer ends `failed` at
//! `repository`, after its archive, its usage ledger and its project record were written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tb_core::agent::AgentConfig;
use tb_core::clock::now_ms;
use tb_core::domain::{Description, Phase, ProjectId, RequestId, UserId};
use tb_core::model::{Model, ModelError, ModelRequest, ModelResponse};
use tb_core::ports::{
    Artifact, CodeHost, Deployer, Deployment, PlatformRecords, PortError, Pushed, Snapshot,
};
use tb_core::pricing::PriceTable;
use tb_core::{Message, ModelCall};
use tb_local::DirArchive;
use tb_local::dispatch::{
    DispatchSettings, local_finalizer_settings, local_slice_settings, run_workers_with,
};
use tb_local::{LocalQueue, Receivers, SqliteRecords, SqliteStore};
use tb_pipeline::{
    Appended, Created, Finalizer, Lease, Limits, NewRequest, Queue, RequestRecord, Requests,
    SliceSettings, StateStore, WorkMessage, Worker,
};
use tb_sandbox::{LocalSandboxConfig, LocalSandboxProvider};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Four iterations; each step is idempotent.
fn task_script() -> tb_models::Script {
    serde_json::from_value(json!({"turns": [
        {"tool_calls": [{"name": "write_file", "input": {"path": "a.txt", "content": "one\n"}}]},
        {"tool_calls": [{"name": "run_command", "input": {"command": "cat a.txt; echo two > b.txt"}}]},
        {"tool_calls": [{"name": "read_file", "input": {"path": "b.txt"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]}))
    .unwrap()
}

fn scripted() -> Arc<dyn Model> {
    Arc::new(tb_models::ScriptedModel::new(task_script()))
}

fn agent_config() -> AgentConfig {
    AgentConfig {
        command_timeout: Duration::from_secs(60),
        max_command_timeout: Duration::from_secs(120),
        check_on_finish: false,
        ..AgentConfig::standard()
    }
}

fn quick_dispatch() -> DispatchSettings {
    DispatchSettings {
        workers: 2,
        attempts: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        // Only the start-up sweep, unless a test says otherwise.
        sweep_every: Duration::from_secs(3600),
        ..DispatchSettings::default()
    }
}

/// The finalizer's code host in these tests: there is none.
struct NoCodeHost;

#[async_trait]
impl CodeHost for NoCodeHost {
    async fn push(&self, _: &ProjectId, _: &Snapshot, _: &str) -> Result<Pushed, PortError> {
        Err(PortError::Permanent("no code host in this test".into()))
    }
}

/// Never reached: the `repository` step before it fails.
struct NoDeployer;

#[async_trait]
impl Deployer for NoDeployer {
    async fn deploy(
        &self,
        _: &ProjectId,
        _: &Artifact,
        _: &std::collections::BTreeMap<String, String>,
    ) -> Result<Deployment, PortError> {
        Err(PortError::Permanent("no deployer in this test".into()))
    }
}

struct NoProber;

#[async_trait]
impl tb_core::checks::Prober for NoProber {
    async fn send(
        &self,
        _: &str,
        _: &tb_core::checks::ProbeRequest,
        _: std::time::Duration,
    ) -> Result<tb_core::checks::ProbeReply, PortError> {
        Err(PortError::Permanent("no app to call in this test".into()))
    }
}

struct Options {
    store: Option<Arc<dyn StateStore>>,
    model: Arc<dyn Model>,
    slices: SliceSettings,
    dispatch: DispatchSettings,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: None,
            model: scripted(),
            slices: SliceSettings {
                iterations_per_slice: 1,
                ..local_slice_settings()
            },
            dispatch: quick_dispatch(),
        }
    }
}

/// A host process: pipeline, finalizer and dispatcher over one data directory.
struct Host {
    pipeline: Arc<Worker>,
    store: Arc<dyn StateStore>,
    records: Arc<SqliteRecords>,
    queue: LocalQueue,
    data: PathBuf,
    /// Every finalize message, as it leaves the finalize channel for the finalizer.
    finalized: mpsc::UnboundedReceiver<String>,
    dispatcher: JoinHandle<()>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.dispatcher.abort();
    }
}

fn db_path(data: &Path) -> PathBuf {
    data.join("db").join("turbobackend.sqlite")
}

async fn start(data: &Path, options: Options) -> Host {
    let sqlite = SqliteStore::open(db_path(data)).await.unwrap();
    let records = Arc::new(SqliteRecords::new(sqlite.db().clone()));
    let store: Arc<dyn StateStore> = options.store.unwrap_or_else(|| Arc::new(sqlite));
    let (queue, receivers) = LocalQueue::new(data);
    let sandboxes = Arc::new(LocalSandboxProvider::new(LocalSandboxConfig::new(
        data.join("sandboxes"),
    )));
    let requests = Requests::new(
        store.clone(),
        Arc::new(queue.clone()),
        records.clone(),
        agent_config(),
    )
    // Limits no test here reaches.
    .with_limits(Limits {
        max_concurrent_per_user: 1000,
        spending_cap_per_user: tb_core::MicroUsd::from_micros(1_000_000_000_000),
        ..Limits::default()
    })
    .allowing_private_callbacks();
    let pipeline = Arc::new(Worker {
        requests: Arc::new(requests),
        sandboxes: sandboxes.clone(),
        model: options.model,
        dev_databases: None,
        archive: None,
        prices: PriceTable::with_defaults(),
        slices: options.slices,
    });
    let finalizer = Arc::new(Finalizer {
        store: store.clone(),
        sandboxes,
        archive: Arc::new(DirArchive::new(data.join("archive"))),
        code_host: Arc::new(NoCodeHost),
        databases: None,
        deployer: Arc::new(NoDeployer),
        records: records.clone(),
        notifier: None,
        prober: Arc::new(NoProber),
        receipt_key: None,
        queue: Arc::new(queue.clone()),
        settings: local_finalizer_settings(),
    });
    // Watch the finalize channel on its way to the dispatcher.
    let Receivers { work, mut finalize } = receivers;
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let (to_dispatcher, finalize_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(body) = finalize.recv().await {
            let _ = seen_tx.send(body.clone());
            let _ = to_dispatcher.send(body);
        }
    });
    let receivers = Receivers {
        work,
        finalize: finalize_rx,
    };
    let dispatcher = run_workers_with(pipeline.clone(), finalizer, receivers, options.dispatch);
    Host {
        pipeline,
        store,
        records,
        queue,
        data: data.to_path_buf(),
        finalized: seen_rx,
        dispatcher,
    }
}

fn owner() -> UserId {
    UserId::parse("user_1").unwrap()
}

fn new_request() -> NewRequest {
    NewRequest {
        owner: owner(),
        key_id: None,
        description: Description::parse("Create a simple API with a users endpoint").unwrap(),
        project: None,
        idempotency_key: None,
        callback_url: None,
    }
}

/// Waits (up to a minute) until the request is in a terminal phase.
async fn finished(store: &dyn StateStore, id: &RequestId) -> RequestRecord {
    for _ in 0..1200 {
        if let Some(r) = store.load(id).await.unwrap()
            && r.phase.is_terminal()
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{id} did not finish: {:?}",
        store.load(id).await.unwrap().map(|r| (r.phase, r.activity))
    );
}

/// The dead-letter file's lines, parsed.
fn dead_letters(data: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data.join(tb_local::DEAD_LETTER_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each dead letter is a JSON line"))
        .collect()
}

async fn wait_for_dead_letters(data: &Path, n: usize) -> Vec<serde_json::Value> {
    for _ in 0..400 {
        let lines = dead_letters(data);
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("expected {n} dead letters, found {:?}", dead_letters(data));
}

/// The final record of a request that ran the whole script and reached the finalizer, which
/// archived it, billed it and failed at `repository` (no code host here).
async fn assert_finalized(host: &Host, id: &RequestId) -> RequestRecord {
    let rec = finished(host.store.as_ref(), id).await;
    let failure = rec.failure.clone().expect("failed at the code host");
    assert_eq!(
        (rec.phase, failure.step.as_str()),
        (Phase::Failed, "repository"),
        "{failure:?}"
    );
    assert!(failure.reason.contains("no code host"), "{failure:?}");
    let (messages, calls): (Vec<Message>, Vec<ModelCall>) =
        host.store.conversation(&rec).await.unwrap();
    assert_eq!(calls.len(), 4, "one call per scripted turn, none twice");
    assert_eq!(messages.len(), rec.agent.messages);
    // The archive step ran on the sandbox the agent worked in.
    let (key, _) = rec.steps.source().unwrap();
    let snapshot =
        tb_pipeline::snapshot::unpack(&std::fs::read(host.data.join("archive").join(key)).unwrap())
            .unwrap();
    // The agent's files on top of the template the new project started from.
    let files: Vec<&str> = snapshot.files.iter().map(|f| f.path.as_str()).collect();
    let mut expected: Vec<&str> = tb_pipeline::template::FILES
        .iter()
        .map(|(p, _)| *p)
        .collect();
    expected.extend(["a.txt", "b.txt"]);
    expected.sort();
    assert_eq!(files, expected);
    // The ledger in the same SQLite file holds the calls, and the project record exists.
    let total: i64 = calls.iter().map(|c| c.cost.micros()).sum();
    assert!(total > 0);
    assert_eq!(
        host.records.spent(&rec.owner).await.unwrap().micros(),
        total
    );
    let project = host.records.project(&rec.project).await.unwrap().unwrap();
    assert_eq!(project.last_request.as_ref(), Some(id));
    rec
}

#[tokio::test]
async fn the_local_queue_delivers_finalize_at_once_work_after_its_delay_and_dead_letters_to_a_file()
{
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("not-yet");
    let (queue, mut rx) = LocalQueue::new(&data);
    let id = RequestId::parse("req_1").unwrap();
    let work = WorkMessage::Continue {
        request_id: id.clone(),
        seq: 2,
    };
    queue
        .send_work(&work, Duration::from_millis(300))
        .await
        .unwrap();
    queue
        .send_finalize(&tb_pipeline::FinalizeMessage::Finalize {
            request_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        rx.finalize.try_recv().unwrap(),
        r#"{"kind":"finalize","request_id":"req_1"}"#
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.work.try_recv().is_err(), "the delay is respected");
    let body = tokio::time::timeout(Duration::from_secs(5), rx.work.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::from_str::<WorkMessage>(&body).unwrap(), work);

    queue
        .dead_letter("{\"x\":1}", "first reason")
        .await
        .unwrap();
    queue
        .dead_letter("not json", "second\nreason")
        .await
        .unwrap();
    assert_eq!(
        dead_letters(&data),
        vec![
            json!({"reason": "first reason", "body": "{\"x\":1}"}),
            json!({"reason": "second\nreason", "body": "not json"}),
        ]
    );
    assert_eq!(queue.dead_letter_path(), data.join("dead-letter.jsonl"));

    drop(rx);
    assert!(matches!(
        queue.send_work(&work, Duration::ZERO).await,
        Err(PortError::Transient(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_travels_through_the_dispatcher_to_the_finalizer() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = start(dir.path(), Options::default()).await;
    let accepted = host.pipeline.requests.create(new_request()).await.unwrap();
    let id = accepted.request_id;

    let body = tokio::time::timeout(Duration::from_secs(60), host.finalized.recv())
        .await
        .expect("a finalize message within a minute")
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"kind": "finalize", "request_id": id.as_str()})
    );
    let rec = assert_finalized(&host, &id).await;
    assert_eq!(
        rec.seq, 3,
        "one iteration per slice: three continuations went through the work channel"
    );
    assert!(rec.lease.is_none());
    assert!(dead_letters(&host.data).is_empty());
}

/// A store with injected faults: every `load` fails while `failing_loads` is set (counted),
/// and the first commit of a record matching `fail_commit_of` fails.
struct Faulty {
    inner: Arc<dyn StateStore>,
    failing_loads: AtomicBool,
    loads: AtomicUsize,
    fail_commit_of: fn(&RequestRecord) -> bool,
    commit_failed: AtomicBool,
}

impl Faulty {
    fn new(inner: Arc<dyn StateStore>) -> Self {
        Faulty {
            inner,
            failing_loads: AtomicBool::new(false),
            loads: AtomicUsize::new(0),
            fail_commit_of: |_| false,
            commit_failed: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl StateStore for Faulty {
    async fn create(&self, r: &RequestRecord, first: &Message) -> Result<Created, PortError> {
        self.inner.create(r, first).await
    }
    async fn load(&self, id: &RequestId) -> Result<Option<RequestRecord>, PortError> {
        if self.failing_loads.load(Ordering::SeqCst) {
            self.loads.fetch_add(1, Ordering::SeqCst);
            return Err(PortError::Transient("the disk is busy".into()));
        }
        self.inner.load(id).await
    }
    async fn conversation(
        &self,
        r: &RequestRecord,
    ) -> Result<(Vec<Message>, Vec<ModelCall>), PortError> {
        self.inner.conversation(r).await
    }
    async fn commit(
        &self,
        r: &RequestRecord,
        expected: u64,
        appended: Appended<'_>,
    ) -> Result<(), PortError> {
        if (self.fail_commit_of)(r) && !self.commit_failed.swap(true, Ordering::SeqCst) {
            return Err(PortError::Transient("the disk hiccupped".into()));
        }
        self.inner.commit(r, expected, appended).await
    }
    async fn active(&self) -> Result<Vec<RequestRecord>, PortError> {
        self.inner.active().await
    }
    async fn list_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        self.inner.list_for_owner(owner, limit).await
    }

    async fn acquire_slot(&self, owner: &UserId, limit: u32) -> Result<bool, PortError> {
        self.inner.acquire_slot(owner, limit).await
    }

    async fn release_slot(&self, owner: &UserId) -> Result<(), PortError> {
        self.inner.release_slot(owner).await
    }

    async fn commit_releasing_slot(
        &self,
        record: &RequestRecord,
        expected_version: u64,
    ) -> Result<(), PortError> {
        self.inner
            .commit_releasing_slot(record, expected_version)
            .await
    }
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_retried_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(SqliteStore::open(db_path(dir.path())).await.unwrap());
    let failing = Arc::new(Faulty::new(inner));
    failing.failing_loads.store(true, Ordering::SeqCst);
    let host = start(
        dir.path(),
        Options {
            store: Some(failing.clone()),
            ..Options::default()
        },
    )
    .await;
    let id = host
        .pipeline
        .requests
        .create(new_request())
        .await
        .unwrap()
        .request_id;

    let lines = wait_for_dead_letters(dir.path(), 1).await;
    let reason = lines[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("gave up after 3 attempts") && reason.contains("the disk is busy"),
        "{reason}"
    );
    assert_eq!(
        lines[0]["body"],
        json!({"kind": "continue", "request_id": id.as_str(), "seq": 0}).to_string()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        failing.loads.load(Ordering::SeqCst),
        3,
        "attempts are bounded"
    );
    assert_eq!(dead_letters(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_malformed_work_message_is_dead_lettered_once_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), Options::default()).await;
    host.queue.send_work_body("not json".into()).unwrap();
    let lines = wait_for_dead_letters(dir.path(), 1).await;
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("not JSON"),
        "{lines:?}"
    );
    assert_eq!(lines[0]["body"], "not json");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        dead_letters(dir.path()).len(),
        1,
        "a poison message is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_left_claimed_by_a_killed_process_is_picked_up_when_the_host_starts() {
    let dir = tempfile::tempdir().unwrap();
    // What a process killed mid-slice leaves: a running request, claimed by a worker that is
    // gone, last written two minutes ago, and no message anywhere (the queue died with it).
    let id = RequestId::generate();
    {
        let store = SqliteStore::open(db_path(dir.path())).await.unwrap();
        let (mut rec, first) = RequestRecord::new(
            id.clone(),
            owner(),
            ProjectId::generate(),
            Description::parse("Create a simple API with a users endpoint").unwrap(),
            now_ms() - 180_000,
        );
        store.create(&rec, &first).await.unwrap();
        rec.phase = Phase::Running;
        rec.version = 1;
        rec.lease = Some(Lease {
            owner: "local-killed".into(),
            until_ms: now_ms() - 1_000,
        });
        rec.updated_at_ms = now_ms() - 120_000;
        store.commit(&rec, 0, Appended::default()).await.unwrap();
        store.db().close().await;
    }
    // A new host with the local settings: its start-up sweep re-drives the request.
    let host = start(
        dir.path(),
        Options {
            slices: local_slice_settings(),
            ..Options::default()
        },
    )
    .await;
    let rec = assert_finalized(&host, &id).await;
    assert_eq!(rec.seq, 0, "the whole script fit in one slice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finalize_message_retried_after_a_failure_keeps_its_claim_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let inner = Arc::new(SqliteStore::open(db_path(dir.path())).await.unwrap());
    // The finalizer's write after its archive step fails once: it returns `Retry` while its
    // claim (a one-minute lease) is still on the record.
    let faulty = Arc::new(Faulty {
        fail_commit_of: |r| {
            r.phase == Phase::Finalizing && r.steps.done(tb_pipeline::Step::Archive)
        },
        ..Faulty::new(inner)
    });
    let host = start(
        dir.path(),
        Options {
            store: Some(faulty.clone()),
            ..Options::default()
        },
    )
    .await;
    let id = host
        .pipeline
        .requests
        .create(new_request())
        .await
        .unwrap()
        .request_id;
    assert_finalized(&host, &id).await;
    assert!(
        faulty.commit_failed.load(Ordering::SeqCst),
        "the fault struck"
    );
    assert!(dead_letters(dir.path()).is_empty());
}

/// Counts model calls in flight, holding each one for a while.
struct Probe {
    inner: Arc<dyn Model>,
    in_flight: AtomicUsize,
    most: AtomicUsize,
}

#[async_trait]
impl Model for Probe {
    fn id(&self) -> &str {
        self.inner.id()
    }
    async fn complete(&self, request: ModelRequest<'_>) -> Result<ModelResponse, ModelError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let response = self.inner.complete(request).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deliveries_of_one_request_never_run_side_by_side_even_after_its_lease_ran_out() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe {
        inner: scripted(),
        in_flight: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let host = start(
        dir.path(),
        Options {
            model: probe.clone(),
            slices: SliceSettings {
                iterations_per_slice: 1,
                // Expired as soon as it is taken: only the gate keeps the copies apart.
                lease: Duration::from_millis(1),
                ..local_slice_settings()
            },
            dispatch: DispatchSettings {
                workers: 4,
                ..quick_dispatch()
            },
            ..Options::default()
        },
    )
    .await;
    let id = host
        .pipeline
        .requests
        .create(new_request())
        .await
        .unwrap()
        .request_id;
    // Copies of the first message arrive while its first delivery is in its model call.
    let first = WorkMessage::Continue {
        request_id: id.clone(),
        seq: 0,
    };
    for ms in [100, 200] {
        host.queue
            .send_work(&first, Duration::from_millis(ms))
            .await
            .unwrap();
    }
    assert_finalized(&host, &id).await;
    assert_eq!(probe.most.load(Ordering::SeqCst), 1);
}
