//! A load run of the whole pipeline on moto: requests created concurrently through the api's
//! front door, run by concurrent worker and finalizer invocations fed from the real SQS
//! queues, with duplicate deliveries and invocations killed at random points.
//!
//! What is real: DynamoDB, SQS and S3 on the moto server; the platform records (keys, ledger,
//! `user_spending`, projects) and each project's database on the local Postgres; a bare git
//! repository per project written with `git`; local sandboxes where the agent's commands,
//! `npm ci` and `npm run build` really run; each app started as a `node` process and asked
//! for `/api/health`; signed callbacks to a receiver on loopback. The handlers are the ones the
//! Lambda functions run: [`tb_frontdoor::router`] (the api), [`worker::handle_batch`] and
//! [`worker::handle`] (the worker and its scheduled sweep), [`finalizer::handle_batch`].
//!
//! Stand-ins, each the cheapest honest adapter that exists: the scripted model (no network)
//! writes a small project with no dependencies (so `npm ci` and the build are real but take
//! a fraction of a second, as in the finalizer tests); the local sandbox stands for Daytona,
//! the bare repository for GitHub, the local deployer for Fly. The api's router is called in
//! process (the Lambda runtime's conversion of the API Gateway event is left out); several
//! front doors stand for several api instances. Callbacks go to loopback, which only the
//! local binary allows, so the front doors allow private callback targets.
//!
//! Lambda, scaled down. Each invocation is bounded by its function timeout and dropped there.
//! An invocation picked to be killed (`kill_rate`) is dropped at a random instant between
//! its start and the longest invocation of its kind seen so far: mid-way, or after its
//! handler returned but before Lambda got the answer; either way nothing it received is
//! deleted, so SQS delivers it again after the visibility timeout. Leases outlast the
//! function timeouts and the visibility timeouts outlast the leases, as in `template.yaml`
//! (where the sweeper, re-driving after `stall_after`, usually comes first; here the
//! redelivery does). Duplicates (`dup_rate`): a received message is also handed to a second
//! invocation at the same time, or sent again to arrive later; and a create is sent twice at
//! once with the same idempotency key, to two api instances.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use lambda_http::tower::ServiceExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Row;
use tb_aws::testing::{Received, TestAws};
use tb_codehost::LocalGitCodeHost;
use tb_core::MicroUsd;
use tb_core::agent::AgentState;
use tb_core::clock::now_ms;
use tb_core::domain::{Phase, ProjectId, RequestId, UserId};
use tb_core::ports::{Deployer, Notifier, PlatformRecords};
use tb_core::pricing::PriceTable;
use tb_deploy::LocalDeployer;
use tb_frontdoor::{FrontDoor, Limits, ReceivedAt, router};
use tb_notify::{DELIVERY_HEADER, HttpNotifier, SIGNATURE_HEADER, sign};
use tb_pipeline::{Finalizer, FinalizerSettings, Requests, SliceSettings, StateStore, Worker};
use tb_postgres::testing::Cleanup;
use tb_postgres::{PgPlatformRecords, PgProvisioner};
use tb_sandbox::{LocalSandboxConfig, LocalSandboxProvider};
use tempfile::TempDir;

use crate::finalize::{cluster, fresh_database, project_files};
use crate::{calls_without_latency, run_agent_from, scenario, script};

/// The domain the api instances are reached at (as API Gateway reports it).
const DOMAIN: &str = "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com";
const DESCRIPTION: &str = "Create a simple API with a users endpoint";
const CALLBACK_SECRET: &str = "load-callback-secret";

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadSettings {
    pub requests: usize,
    /// Requests are spread over this many users (each with its own key).
    pub users: usize,
    /// The share of handler runs killed (worker, finalizer and sweep invocations).
    pub kill_rate: f64,
    /// The share of received messages (and of creates) delivered twice.
    pub dup_rate: f64,
    pub seed: u64,
    /// Api instances (front doors) the creates are spread over.
    pub api_instances: usize,
    /// Worker invocations at once (the event source mapping's maximum concurrency).
    pub workers: usize,
    /// Messages per worker invocation (the mapping's batch size).
    pub worker_batch: i32,
    /// Finalizer invocations at once (batch size 1).
    pub finalizers: usize,
    /// The function timeouts (an invocation is dropped there); leases and visibility
    /// timeouts follow from them.
    pub worker_timeout: Duration,
    pub finalizer_timeout: Duration,
    /// Stop waiting for the requests after this long.
    pub give_up_after: Duration,
}

impl LoadSettings {
    /// `requests` requests with 5% of handler runs killed and 10% of messages delivered twice.
    pub fn faulty(requests: usize, seed: u64) -> Self {
        LoadSettings {
            requests,
            users: requests.clamp(1, 10),
            kill_rate: 0.05,
            dup_rate: 0.10,
            seed,
            api_instances: 3,
            workers: 10,
            worker_batch: 5,
            // The template's default is 5 (`FinalizerMaxConcurrency`); a hundred requests
            // made at once want more.
            finalizers: 10,
            worker_timeout: Duration::from_secs(10),
            finalizer_timeout: Duration::from_secs(15),
            give_up_after: Duration::from_secs(600),
        }
    }

    /// The same with no kills and no duplicates.
    pub fn clean(requests: usize, seed: u64) -> Self {
        LoadSettings {
            kill_rate: 0.0,
            dup_rate: 0.0,
            ..Self::faulty(requests, seed)
        }
    }

    fn worker_lease(&self) -> Duration {
        self.worker_timeout + Duration::from_secs(2)
    }

    fn finalizer_lease(&self) -> Duration {
        self.finalizer_timeout + Duration::from_secs(2)
    }
}

/// Handler runs of one kind.
#[derive(Clone, Debug, Default)]
pub struct Runs {
    pub total: usize,
    /// Dropped before their handler returned.
    pub killed_mid_way: usize,
    /// Their handler returned, but the answer never reached Lambda (nothing deleted).
    pub killed_after_return: usize,
    /// Dropped at the function timeout.
    pub timed_out: usize,
    /// Extra deliveries of a received message (at once, or sent again).
    pub duplicates: usize,
    pub longest: Duration,
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub requests: usize,
    /// From the first create to the last request's callback.
    pub wall: Duration,
    /// Per request: from its create's answer to its callback's arrival.
    pub latencies: Vec<Duration>,
    /// One request's cost, uninterrupted (the scripted task run in one go).
    pub reference_cost: MicroUsd,
    pub api: Runs,
    pub worker: Runs,
    pub finalizer: Runs,
    pub sweeper: Runs,
    /// Callback deliveries beyond the first, per request (allowed after a kill between the
    /// send and its record: receivers drop repeats by the delivery id).
    pub repeated_callbacks: usize,
    /// Everything that did not end exactly right; empty on success.
    pub problems: Vec<String>,
}

impl LoadReport {
    /// Requests finished per minute over the run.
    pub fn per_minute(&self) -> f64 {
        self.requests as f64 * 60.0 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn slowest(&self) -> Duration {
        self.latencies.iter().max().copied().unwrap_or_default()
    }

    pub fn median(&self) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l.get(l.len() / 2).copied().unwrap_or_default()
    }

    pub fn summary(&self) -> String {
        let runs = |name: &str, r: &Runs| {
            format!(
                "{name}: {} runs, {} killed mid-way, {} killed after returning, {} timed out, {} duplicate deliveries, longest {:.2} s",
                r.total,
                r.killed_mid_way,
                r.killed_after_return,
                r.timed_out,
                r.duplicates,
                r.longest.as_secs_f64()
            )
        };
        let handlers = [&self.worker, &self.finalizer, &self.sweeper];
        let killed: usize = handlers
            .iter()
            .map(|r| r.killed_mid_way + r.killed_after_return)
            .sum();
        let total: usize = handlers.iter().map(|r| r.total).sum();
        format!(
            "{} requests in {:.1} s: {:.1} requests/minute; latency median {:.2} s, slowest {:.2} s; cost per request {}\n{}\n{}\n{}\n{}\nkilled in all: {killed} of {total} handler runs; repeated callbacks: {}",
            self.requests,
            self.wall.as_secs_f64(),
            self.per_minute(),
            self.median().as_secs_f64(),
            self.slowest().as_secs_f64(),
            self.reference_cost,
            runs("api creates", &self.api),
            runs("worker", &self.worker),
            runs("finalizer", &self.finalizer),
            runs("sweeper", &self.sweeper),
            self.repeated_callbacks,
        )
    }
}

/// The task every request runs: a small project with no dependencies written in two turns
/// (with a command run in the sandbox), then `finish`.
pub fn task_script() -> tb_models::Script {
    let files = project_files("1", &["ada", "grace"]);
    let write = |path: &String| json!({"name": "write_file", "input": {"path": path, "content": String::from_utf8(files[path].clone()).unwrap()}});
    let paths: Vec<&String> = files.keys().collect();
    let (first, second) = paths.split_at(paths.len() / 2);
    let mut second: Vec<Value> = second.iter().map(|p| write(p)).collect();
    second.push(json!({"name": "run_command", "input": {"command": "ls -R server migrations"}}));
    script(json!({"turns": [
        {"tool_calls": first.iter().map(|p| write(p)).collect::<Vec<_>>()},
        {"tool_calls": second},
        {"tool_calls": [{"name": "finish", "input": {"summary": "A users API with a health check."}}]}
    ]}))
}

/// The task run uninterrupted in one go, outside the pipeline, from the same start as the
/// worker gives a new project: the template, seeded before the first iteration.
pub async fn reference() -> AgentState {
    let sandbox = crate::TestSandbox::new().await;
    let base = tb_pipeline::base::seed(None, &ProjectId::generate(), &sandbox.sandbox)
        .await
        .expect("seeding the template");
    run_agent_from(
        &tb_models::ScriptedModel::new(task_script()),
        &sandbox.sandbox,
        &scenario::config(),
        Some(&base),
    )
    .await
}

/// Counts handler runs and decides which are killed and when.
struct Fate {
    rng: Mutex<StdRng>,
    kill_rate: f64,
    dup_rate: f64,
    runs: Mutex<HashMap<&'static str, Runs>>,
}

impl Fate {
    fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap().random_bool(p.min(1.0))
    }

    fn duplicate(&self, kind: &'static str) -> bool {
        let dup = self.chance(self.dup_rate);
        if dup {
            self.runs
                .lock()
                .unwrap()
                .entry(kind)
                .or_default()
                .duplicates += 1;
        }
        dup
    }

    /// Runs one invocation of `kind` within `timeout`: `Some` with its answer, or `None` when
    /// it was killed or timed out (then nothing it received may be deleted).
    async fn invoke<T>(
        &self,
        kind: &'static str,
        timeout: Duration,
        handler: impl Future<Output = T>,
    ) -> Option<T> {
        let longest = {
            let mut runs = self.runs.lock().unwrap();
            let r = runs.entry(kind).or_default();
            r.total += 1;
            r.longest
        };
        let kill_at = self.chance(self.kill_rate).then(|| {
            // Somewhere within the longest run of this kind seen so far (at first, 2 s).
            let span = if longest.is_zero() {
                Duration::from_secs(2)
            } else {
                longest
            };
            span.mul_f64(self.rng.lock().unwrap().random_range(0.0..1.0))
        });
        let started = Instant::now();
        let bound = kill_at.unwrap_or(timeout).min(timeout);
        let result = tokio::time::timeout(bound, handler).await;
        let took = started.elapsed();
        let mut runs = self.runs.lock().unwrap();
        let r = runs.entry(kind).or_default();
        match (result, kill_at) {
            (Ok(answer), None) => {
                r.longest = r.longest.max(took);
                Some(answer)
            }
            (Ok(_), Some(_)) => {
                r.longest = r.longest.max(took);
                r.killed_after_return += 1;
                None
            }
            (Err(_), Some(at)) if at < timeout => {
                r.killed_mid_way += 1;
                None
            }
            (Err(_), _) => {
                r.timed_out += 1;
                None
            }
        }
    }

    fn runs(&self, kind: &str) -> Runs {
        self.runs
            .lock()
            .unwrap()
            .get(kind)
            .cloned()
            .unwrap_or_default()
    }
}

/// A callback as it arrived (after its signature was checked).
#[derive(Clone, Debug)]
struct Delivery {
    delivery_id: String,
    payload: Value,
    at: Instant,
}

#[derive(Clone, Default)]
struct Callbacks {
    got: Arc<Mutex<Vec<Delivery>>>,
    bad_signatures: Arc<AtomicUsize>,
}

impl Callbacks {
    async fn start() -> (String, Callbacks) {
        let r = Callbacks::default();
        let state = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let body = String::from_utf8_lossy(&body).to_string();
                    let header = |h: &str| {
                        headers
                            .get(h)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let sig = header(SIGNATURE_HEADER);
                    let valid = sig.split_once(',').is_some_and(|(t, v1)| {
                        t.trim_start_matches("t=").parse().is_ok_and(|t: u64| {
                            v1.trim_start_matches("v1=")
                                == sign(CALLBACK_SECRET.as_bytes(), t, &body)
                        })
                    });
                    if !valid {
                        state.bad_signatures.fetch_add(1, Ordering::SeqCst);
                        return "bad signature";
                    }
                    state.got.lock().unwrap().push(Delivery {
                        delivery_id: header(DELIVERY_HEADER),
                        payload: serde_json::from_str(&body).unwrap_or(Value::Null),
                        at: Instant::now(),
                    });
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, r)
    }

    /// The first arrival per request id.
    fn first_arrivals(&self) -> HashMap<String, Instant> {
        let mut first = HashMap::new();
        for d in self.got.lock().unwrap().iter() {
            if let Some(id) = d.payload["request_id"].as_str() {
                first.entry(id.to_string()).or_insert(d.at);
            }
        }
        first
    }
}

/// A created request, as the api answered.
#[derive(Clone, Debug)]
struct Created {
    id: RequestId,
    project: ProjectId,
    owner: usize,
    answered_at: Instant,
}

/// Everything one run needs; the services are dropped (and cleaned up) with it.
struct Platform {
    aws: TestAws,
    settings: LoadSettings,
    front_doors: Vec<axum::Router>,
    users: Vec<(UserId, String)>,
    records: PgPlatformRecords,
    worker: Arc<Worker>,
    finalizer: Arc<Finalizer>,
    deployer: Arc<LocalDeployer>,
    code_host: Arc<LocalGitCodeHost>,
    db_prefix: String,
    callback_url: String,
    callbacks: Callbacks,
    fate: Fate,
    created: Mutex<Vec<Created>>,
    problems: Mutex<Vec<String>>,
    /// `/api/health` status of each request's app, asked when its callback arrived.
    health: Mutex<HashMap<String, Result<u16, String>>>,
    /// Invocations running now.
    in_flight: AtomicUsize,
    cleanup: Cleanup,
    _dir: TempDir,
}

/// Runs the load described by `settings` and checks how every request ended.
pub async fn run(settings: LoadSettings) -> LoadReport {
    let platform = Platform::start(settings).await;
    let reference = reference().await;
    let mut report = platform.drive().await;
    report.reference_cost = reference.cost;
    platform.verify(&reference, &mut report).await;
    platform.drop_project_databases().await;
    report
}

impl Platform {
    async fn start(settings: LoadSettings) -> Platform {
        let aws = TestAws::new().await;
        // Visibility timeouts beyond the leases, the template's redrive count.
        for (url, lease) in [
            (&aws.settings.work_queue_url, settings.worker_lease()),
            (&aws.settings.finalize_queue_url, settings.finalizer_lease()),
        ] {
            let dlq = if url == &aws.settings.work_queue_url {
                &aws.settings.work_dlq_url
            } else {
                &aws.finalize_dlq_url
            };
            let arn = queue_arn(&aws, dlq).await;
            aws.clients
                .sqs
                .set_queue_attributes()
                .queue_url(url)
                .attributes(
                    QueueAttributeName::VisibilityTimeout,
                    (lease.as_secs() + 2).to_string(),
                )
                .attributes(
                    QueueAttributeName::RedrivePolicy,
                    json!({"deadLetterTargetArn": arn, "maxReceiveCount": "5"}).to_string(),
                )
                .send()
                .await
                .expect("setting the queue attributes");
        }
        let cleanup = Cleanup::default();
        let records_url = fresh_database(&cleanup).await;
        let records = PgPlatformRecords::connect(&records_url)
            .await
            .expect("connecting the platform records");
        let mut users = Vec::new();
        for u in 0..settings.users {
            let user = UserId::parse(&format!("user_load{u}")).unwrap();
            let (_, key) = records.create_key(&user, "load").await.unwrap();
            // A slot held throughout, as by a request that runs on: a slot given back twice
            // then shows as a counter below it, where a counter at zero would hide it.
            assert!(aws.store().acquire_slot(&user, 1).await.unwrap());
            users.push((user, key));
        }
        let dir = tempfile::tempdir().unwrap();
        let sandboxes = Arc::new(LocalSandboxProvider::new(LocalSandboxConfig::new(
            dir.path().join("sandboxes"),
        )));
        let (callback_url, callbacks) = Callbacks::start().await;

        // The api instances: each with its own clients and pool, as separate Lambda
        // instances have. Every user's requests fit its limits.
        let per_user = settings.requests.div_ceil(settings.users);
        let budget = scenario::config().budget;
        let limits = Limits {
            // Room for the slot each user holds throughout (see `verify`) and for duplicate
            // creates, which hold a slot until they find their request already there.
            max_concurrent_per_user: 2 * per_user + 1,
            spending_cap_per_user: MicroUsd::from_micros(
                budget.micros() * (per_user as i64 + 2) * 2,
            ),
            ..Limits::default()
        };
        let mut front_doors = Vec::new();
        for _ in 0..settings.api_instances {
            let records = PgPlatformRecords::connect(&records_url).await.unwrap();
            let requests = Requests::new(
                Arc::new(aws.store()),
                Arc::new(aws.queue()),
                Arc::new(records),
                scenario::config(),
            )
            .with_limits(limits.clone())
            .allowing_private_callbacks();
            let door = FrontDoor::new(Arc::new(requests));
            front_doors.push(router(Arc::new(door)));
        }

        // Jobs in the original shape are not sent here: the worker's own records are
        // never read.
        let worker_requests = Requests::new(
            Arc::new(aws.store()),
            Arc::new(aws.queue()),
            Arc::new(PgPlatformRecords::connect(&records_url).await.unwrap()),
            scenario::config(),
        )
        .with_limits(limits.clone())
        .allowing_private_callbacks();
        let worker = Arc::new(Worker {
            requests: Arc::new(worker_requests),
            sandboxes: sandboxes.clone(),
            model: Arc::new(tb_models::ScriptedModel::new(task_script())),
            dev_databases: None,
            archive: Some(Arc::new(aws.archive())),
            prices: PriceTable::with_defaults(),
            slices: SliceSettings {
                iterations_per_slice: 1,
                lease: settings.worker_lease(),
                safety_margin: Duration::from_secs(2),
                // The sweeper re-drives what no message will bring back (a lost send).
                stall_after: settings.worker_lease() * 2,
                sandbox_max_age: Duration::from_secs(3600),
                outage_retry: Duration::from_secs(600),
            },
        });
        let db_prefix = format!("t{}", tb_core::ids::random_hex(5));
        let deployer = Arc::new(LocalDeployer::at(dir.path().join("apps")));
        let code_host = Arc::new(LocalGitCodeHost::new(dir.path().join("git")).unwrap());
        let finalizer = Arc::new(Finalizer {
            store: Arc::new(aws.store()),
            sandboxes,
            archive: Arc::new(aws.archive()),
            code_host: code_host.clone(),
            databases: Some(Arc::new(
                PgProvisioner::new(cluster())
                    .with_prefix(&db_prefix)
                    .expect("a valid prefix"),
            )),
            deployer: deployer.clone() as Arc<dyn Deployer>,
            records: Arc::new(records.clone()),
            notifier: Some(Arc::new(HttpNotifier::new(CALLBACK_SECRET, true)) as Arc<dyn Notifier>),
            prober: Arc::new(tb_notify::HttpProber::new(true)),
            receipt_key: Some(tb_pipeline::receipt::SigningKey::new(CALLBACK_SECRET)),
            queue: Arc::new(tb_pipeline::memory::MemoryQueue::default()),
            settings: FinalizerSettings {
                attempts: 4,
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(1),
                build_timeout: Duration::from_secs(120),
                lease: settings.finalizer_lease(),
                // Room for the final commits on a busy machine (the template keeps 60 s of
                // a 900 s timeout).
                safety_margin: Duration::from_secs(3),
                outage_retry: Duration::from_secs(60),
                // No worker reads this finalizer's queue: a failed verification fails.
                repair_rounds: 0,
                ..FinalizerSettings::standard()
            },
        });
        let fate = Fate {
            rng: Mutex::new(StdRng::seed_from_u64(settings.seed)),
            kill_rate: settings.kill_rate,
            dup_rate: settings.dup_rate,
            runs: Mutex::new(HashMap::new()),
        };
        Platform {
            aws,
            settings,
            front_doors,
            users,
            records,
            worker,
            finalizer,
            deployer,
            code_host,
            db_prefix,
            callback_url,
            callbacks,
            fate,
            created: Mutex::new(Vec::new()),
            problems: Mutex::new(Vec::new()),
            health: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            cleanup,
            _dir: dir,
        }
    }

    /// Starts the functions, creates the requests, waits until every request has called back
    /// and the queues are empty, then stops the functions.
    async fn drive(&self) -> LoadReport {
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let functions = async {
            let workers = (0..self.settings.workers).map(|_| self.worker_loop(&stop));
            let finalizers = (0..self.settings.finalizers).map(|_| self.finalizer_loop(&stop));
            tokio::join!(
                futures::future::join_all(workers),
                futures::future::join_all(finalizers),
                self.sweeper_loop(&stop),
            );
        };
        let clients = async {
            let creates = (0..self.settings.requests).map(|i| self.create(i));
            futures::future::join_all(creates).await;
            self.wait_until_done(started).await;
            stop.store(true, Ordering::SeqCst);
        };
        tokio::join!(functions, clients);

        let arrivals = self.callbacks.first_arrivals();
        let created = self.created.lock().unwrap().clone();
        let mut report = LoadReport {
            requests: created.len(),
            api: self.fate.runs("api"),
            worker: self.fate.runs("worker"),
            finalizer: self.fate.runs("finalizer"),
            sweeper: self.fate.runs("sweeper"),
            ..LoadReport::default()
        };
        let mut last = started;
        for c in &created {
            if let Some(at) = arrivals.get(c.id.as_str()) {
                report
                    .latencies
                    .push(at.saturating_duration_since(c.answered_at));
                last = last.max(*at);
            }
        }
        report.wall = last.saturating_duration_since(started);
        report
    }

    /// Creates request `i` through an api instance with MCP's `execute_request`, as a client
    /// does; a duplicate is the same call (same idempotency key) sent at once to another
    /// instance, and both must name the same request.
    async fn create(&self, i: usize) {
        let owner = i % self.users.len();
        let key = format!("load-{i}");
        let instance = i % self.front_doors.len();
        let mut calls = vec![self.execute(instance, owner, &key)];
        if self.fate.duplicate("api") {
            calls.push(self.execute((instance + 1) % self.front_doors.len(), owner, &key));
        }
        let answers = futures::future::join_all(calls).await;
        let answered_at = Instant::now();
        let mut ids = Vec::new();
        for answer in answers {
            self.fate
                .runs
                .lock()
                .unwrap()
                .entry("api")
                .or_default()
                .total += 1;
            match answer {
                Ok(created) => ids.push(created),
                Err(e) => self.problem(format!("create {i}: {e}")),
            }
        }
        ids.dedup();
        match ids.as_slice() {
            [] => {}
            [(id, project)] => self.created.lock().unwrap().push(Created {
                id: id.clone(),
                project: project.clone(),
                owner,
                answered_at,
            }),
            more => self.problem(format!(
                "create {i}: one idempotency key gave several requests: {more:?}"
            )),
        }
    }

    /// One `tools/call execute_request` through api instance `instance`, as the api function
    /// hands API Gateway's request to the router (with the domain it was received at).
    async fn execute(
        &self,
        instance: usize,
        owner: usize,
        key: &str,
    ) -> Result<(RequestId, ProjectId), String> {
        let rpc = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "execute_request",
            "arguments": {"description": DESCRIPTION, "idempotency_key": key,
                          "callback_url": self.callback_url}}});
        let mut req = http::Request::post("/mcp")
            .header("host", DOMAIN)
            .header("authorization", format!("Bearer {}", self.users[owner].1))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .body(Body::from(rpc.to_string()))
            .unwrap();
        req.extensions_mut().insert(ReceivedAt(DOMAIN.into()));
        let resp = self.front_doors[instance]
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let content = &body["result"]["structuredContent"];
        match (
            status.as_u16(),
            content["request_id"].as_str().map(RequestId::parse),
            content["project_id"].as_str().map(ProjectId::parse),
        ) {
            (200, Some(Ok(id)), Some(Ok(project))) => Ok((id, project)),
            _ => Err(format!("{status}: {body}")),
        }
    }

    fn problem(&self, p: String) {
        self.problems.lock().unwrap().push(p);
    }

    /// Runs `handler` as one invocation of `kind` (see [`Fate::invoke`]).
    async fn invoke<T>(
        &self,
        kind: &'static str,
        timeout: Duration,
        handler: impl Future<Output = T>,
    ) -> Option<T> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = self.fate.invoke(kind, timeout, handler).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        answer
    }

    /// A Lambda context whose deadline is `timeout` from now.
    fn context(timeout: Duration) -> lambda_runtime::Context {
        let mut ctx = lambda_runtime::Context::default();
        ctx.request_id = tb_core::ids::random_hex(8);
        ctx.deadline = now_ms() + timeout.as_millis() as u64;
        ctx
    }

    /// Up to `max` messages, long-polling up to a second, as the event source mapping does.
    async fn receive(&self, queue_url: &str, max: i32) -> Vec<Received> {
        let out = self
            .aws
            .clients
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await;
        let Ok(out) = out else {
            return Vec::new();
        };
        Received::all(&out)
    }

    /// The invocations a receive leads to: the batch itself, plus duplicates. A duplicate is
    /// either handed to a second invocation at once, or sent to the queue again to arrive
    /// later (both are at-least-once delivery).
    async fn with_duplicates(
        &self,
        kind: &'static str,
        queue_url: &str,
        got: Vec<Received>,
    ) -> Vec<Vec<Received>> {
        let mut invocations = vec![got.clone()];
        for m in got {
            if !self.fate.duplicate(kind) {
                continue;
            }
            if self.fate.chance(0.5) {
                invocations.push(vec![m]);
            } else {
                let delay = self.fate.rng.lock().unwrap().random_range(0..5);
                let _ = self
                    .aws
                    .clients
                    .sqs
                    .send_message()
                    .queue_url(queue_url)
                    .message_body(m.body)
                    .delay_seconds(delay)
                    .send()
                    .await;
            }
        }
        invocations
    }

    /// Deletes what an invocation acknowledged: every record but the failed ones.
    async fn acknowledge(
        &self,
        queue_url: &str,
        batch: &[Received],
        response: &aws_lambda_events::event::sqs::SqsBatchResponse,
    ) {
        for (i, m) in batch.iter().enumerate() {
            let id = format!("m{i}");
            if response
                .batch_item_failures
                .iter()
                .any(|f| f.item_identifier == id)
            {
                continue;
            }
            let _ = self
                .aws
                .clients
                .sqs
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(&m.receipt_handle)
                .send()
                .await;
        }
    }

    async fn worker_loop(&self, stop: &AtomicBool) {
        let url = &self.aws.settings.work_queue_url;
        while !stop.load(Ordering::SeqCst) {
            let got = self.receive(url, self.settings.worker_batch).await;
            if got.is_empty() {
                continue;
            }
            let invocations = self.with_duplicates("worker", url, got).await;
            let runs = invocations.iter().map(|batch| async move {
                let timeout = self.settings.worker_timeout;
                let ctx = Self::context(timeout);
                let handler = worker::handle_batch(&self.worker, sqs_event(batch), &ctx);
                if let Some(response) = self.invoke("worker", timeout, handler).await {
                    self.acknowledge(url, batch, &response).await;
                }
            });
            futures::future::join_all(runs).await;
        }
    }

    async fn finalizer_loop(&self, stop: &AtomicBool) {
        let url = &self.aws.settings.finalize_queue_url;
        while !stop.load(Ordering::SeqCst) {
            let got = self.receive(url, 1).await;
            if got.is_empty() {
                continue;
            }
            let invocations = self.with_duplicates("finalizer", url, got).await;
            let runs = invocations.iter().map(|batch| async move {
                let timeout = self.settings.finalizer_timeout;
                let ctx = Self::context(timeout);
                let handler = finalizer::handle_batch(
                    &self.finalizer,
                    self.worker.requests.queue.as_ref(),
                    sqs_event(batch),
                    &ctx,
                );
                if let Some(response) = self.invoke("finalizer", timeout, handler).await {
                    self.acknowledge(url, batch, &response).await;
                }
            });
            futures::future::join_all(runs).await;
        }
    }

    /// The worker's scheduled event, a quarter of `stall_after` apart (in the template, two
    /// minutes against seven).
    async fn sweeper_loop(&self, stop: &AtomicBool) {
        let every = self.worker.slices.stall_after / 4;
        while !stop.load(Ordering::SeqCst) {
            let timeout = self.settings.worker_timeout;
            let event =
                lambda_runtime::LambdaEvent::new(json!({"sweep": true}), Self::context(timeout));
            self.invoke("sweeper", timeout, worker::handle(&self.worker, event))
                .await;
            let next = Instant::now() + every;
            while !stop.load(Ordering::SeqCst) && Instant::now() < next {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Until every created request has called back and nothing is left to deliver (messages
    /// of killed invocations come back after the visibility timeout and must change nothing).
    async fn wait_until_done(&self, started: Instant) {
        let mut quiet = 0;
        let mut last_progress = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if started.elapsed() > self.settings.give_up_after {
                self.problem(format!(
                    "not done after {:?}: {} of {} requests called back",
                    self.settings.give_up_after,
                    self.callbacks.first_arrivals().len(),
                    self.created.lock().unwrap().len()
                ));
                return;
            }
            let arrivals = self.callbacks.first_arrivals();
            self.check_apps().await;
            if last_progress.elapsed() >= Duration::from_secs(10) {
                last_progress = Instant::now();
                eprintln!(
                    "load: {:.0} s: {} of {} requests called back, {} invocations running",
                    started.elapsed().as_secs_f64(),
                    arrivals.len(),
                    self.settings.requests,
                    self.in_flight.load(Ordering::SeqCst)
                );
            }
            let all_back = self
                .created
                .lock()
                .unwrap()
                .iter()
                .all(|c| arrivals.contains_key(c.id.as_str()));
            let idle = all_back
                && self.in_flight.load(Ordering::SeqCst) == 0
                && self.queue_empty(&self.aws.settings.work_queue_url).await
                && self
                    .queue_empty(&self.aws.settings.finalize_queue_url)
                    .await;
            quiet = if idle { quiet + 1 } else { 0 };
            if quiet >= 3 {
                return;
            }
        }
    }

    async fn queue_empty(&self, url: &str) -> bool {
        let Ok(out) = self
            .aws
            .clients
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
        else {
            return false;
        };
        let attrs = out.attributes().cloned().unwrap_or_default();
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ]
        .iter()
        .all(|a| attrs.get(a).is_none_or(|n| n == "0"))
    }
}

fn sqs_event(batch: &[Received]) -> SqsEvent {
    let event = tb_aws::testing::sqs_event(batch, "arn:aws:sqs:us-east-1:123456789012:load");
    serde_json::from_value(event).expect("an SQS event")
}

async fn queue_arn(aws: &TestAws, url: &str) -> String {
    aws.clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("reading a queue's ARN")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .expect("a queue ARN")
}

impl Platform {
    /// Asks each newly finished request's app for `/api/health`, then stops it (a hundred
    /// idle node processes are not what is being measured).
    async fn check_apps(&self) {
        let deliveries = self.callbacks.got.lock().unwrap().clone();
        for d in deliveries {
            let Some(id) = d.payload["request_id"].as_str() else {
                continue;
            };
            if self.health.lock().unwrap().contains_key(id) {
                continue;
            }
            // A few tries: on a busy machine one answer may take a while.
            let mut answer = Err("no deployment_url".to_string());
            if let Some(url) = d.payload["deployment_url"].as_str() {
                for _ in 0..3 {
                    answer = reqwest::Client::new()
                        .get(format!("{url}/api/health"))
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .map_err(|e| format!("{url}: {e}"));
                    if answer == Ok(200) {
                        break;
                    }
                }
            }
            self.health.lock().unwrap().insert(id.to_string(), answer);
            if let Some(project) = d.payload["project_id"]
                .as_str()
                .and_then(|p| ProjectId::parse(p).ok())
            {
                self.deployer.stop(&project).await;
            }
        }
    }

    /// Checks that every request ended exactly once, exactly like the uninterrupted run, and
    /// that the per-user counters and totals are exact.
    async fn verify(&self, reference: &AgentState, report: &mut LoadReport) {
        let mut problems = std::mem::take(&mut *self.problems.lock().unwrap());
        let created = self.created.lock().unwrap().clone();
        if created.len() != self.settings.requests {
            problems.push(format!(
                "{} of {} requests were created",
                created.len(),
                self.settings.requests
            ));
        }
        let bad = self.callbacks.bad_signatures.load(Ordering::SeqCst);
        if bad > 0 {
            problems.push(format!("{bad} callbacks with a bad signature"));
        }
        let deliveries = self.callbacks.got.lock().unwrap().clone();
        let expected_calls = calls_without_latency(reference);
        let expected_ledger: Vec<(i64, i64)> = reference
            .calls
            .iter()
            .map(|c| (i64::from(c.iteration), c.cost.micros()))
            .collect();
        let store = self.worker.requests.store.as_ref();
        let pool = self.records.pool();
        for c in &created {
            let mut p = |m: String| problems.push(format!("{}: {m}", c.id));
            let Ok(Some(rec)) = store.load(&c.id).await else {
                p("not in the state store".into());
                continue;
            };
            // Ended once, and as the uninterrupted run did.
            if rec.phase != Phase::Succeeded {
                p(format!("ended {:?}: {:?}", rec.phase, rec.failure));
            }
            if rec.holds_slot || rec.lease.is_some() {
                p(format!(
                    "still holds its slot ({}) or a lease ({:?})",
                    rec.holds_slot, rec.lease
                ));
            }
            let ends = rec
                .activity
                .iter()
                .filter(|a| a.starts_with("request "))
                .count();
            if ends != 1 {
                p(format!("finished {ends} times: {:?}", rec.activity));
            }
            match store.conversation(&rec).await {
                Ok((messages, calls)) => {
                    let state = rec.agent.join(messages, calls);
                    if state.messages != reference.messages {
                        p("its conversation differs from the uninterrupted run's".into());
                    }
                    if calls_without_latency(&state) != expected_calls {
                        p(format!(
                            "its model calls differ from the uninterrupted run's: {:?}",
                            calls_without_latency(&state)
                        ));
                    }
                    if (state.cost, state.usage) != (reference.cost, reference.usage) {
                        p(format!(
                            "cost {} ({:?}), uninterrupted {} ({:?})",
                            state.cost, state.usage, reference.cost, reference.usage
                        ));
                    }
                }
                Err(e) => p(format!("reading its conversation: {e}")),
            }
            // Billed once: the ledger holds exactly the uninterrupted run's calls.
            let ledger: Vec<(i64, i64)> = sqlx::query(
                "SELECT iteration, cost_micro_usd FROM usage_ledger WHERE request_id = $1 \
                 ORDER BY iteration",
            )
            .bind(c.id.as_str())
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
            if ledger != expected_ledger {
                p(format!("ledger {ledger:?}, expected {expected_ledger:?}"));
            }
            // Pushed once and receipted once: the source commit and the signed receipt's
            // commit on top of it in the project's repository.
            let commits = git_commits(&self.code_host.repo_path(&c.project));
            if commits != Some(2) || rec.steps.receipt_commit_sha().is_none() {
                p(format!(
                    "{commits:?} commits in its repository, receipt commit {:?}",
                    rec.steps.receipt_commit_sha()
                ));
            }
            // Deployed, and recorded once.
            let deployed: Vec<String> =
                sqlx::query_scalar("SELECT version FROM deployments WHERE project_id = $1")
                    .bind(c.project.as_str())
                    .fetch_all(pool)
                    .await
                    .unwrap();
            let version = rec.steps.deployment().map(|d| d.version.as_str());
            if deployed.len() != 1 || version != deployed.first().map(String::as_str) {
                p(format!(
                    "deployments {deployed:?}, its deploy step {version:?}"
                ));
            }
            match self.health.lock().unwrap().get(c.id.as_str()) {
                Some(Ok(200)) => {}
                other => p(format!("its app answered /api/health with {other:?}")),
            }
            // Called back, always with the same delivery id and the same summary.
            let mine: Vec<&Delivery> = deliveries
                .iter()
                .filter(|d| d.payload["request_id"] == c.id.as_str())
                .collect();
            if mine.is_empty() {
                p("no callback".into());
            }
            for d in &mine {
                if d.delivery_id != format!("{}-final", c.id)
                    || d.payload["phase"] != "succeeded"
                    || d.payload["cost_micro_usd"] != reference.cost.micros()
                    || d.payload["receipt_commit_sha"].as_str() != rec.steps.receipt_commit_sha()
                {
                    p(format!("callback {}: {}", d.delivery_id, d.payload));
                }
            }
            report.repeated_callbacks += mine.len().saturating_sub(1);
            // The project's database was made once and its migration applied.
            let names = tb_postgres::naming::database_names(&self.db_prefix, &c.project, false);
            self.cleanup.database(&names.database);
            self.cleanup.role(&names.role);
            let applied = rec.steps.get("database").map(|d| d["applied"].clone());
            if applied.is_none() {
                p("no database step".into());
            }
        }
        // Per user: the slot counter back to the one slot held throughout, the spending total
        // exactly the requests' uninterrupted cost.
        for (u, (user, _)) in self.users.iter().enumerate() {
            let n = created.iter().filter(|c| c.owner == u).count() as i64;
            let slots = self.slots(user).await;
            if slots != Some(1) {
                problems.push(format!(
                    "{user}: slot counter {slots:?}, expected 1 (the slot held throughout)"
                ));
            }
            let spent = self.records.spent(user).await.unwrap();
            let expected = MicroUsd::from_micros(reference.cost.micros() * n);
            if spent != expected {
                problems.push(format!(
                    "{user}: user_spending {spent}, expected {expected} ({n} requests)"
                ));
            }
        }
        for (name, bodies) in [
            ("work", self.aws.work_dlq_bodies().await),
            ("finalize", self.aws.finalize_dlq_bodies().await),
        ] {
            if !bodies.is_empty() {
                problems.push(format!("{name} dead-letter queue: {bodies:?}"));
            }
        }
        report.problems.extend(problems);
    }

    /// Drops the projects' databases and roles, several at once (the cleanup left for the
    /// end of the test drops one after the other, which takes minutes for a hundred).
    async fn drop_project_databases(&self) {
        use futures::StreamExt;
        use sqlx::{AssertSqlSafe, Connection};
        let created = self.created.lock().unwrap().clone();
        futures::stream::iter(created)
            .for_each_concurrent(8, |c| async move {
                let names = tb_postgres::naming::database_names(&self.db_prefix, &c.project, false);
                let Ok(mut conn) =
                    sqlx::PgConnection::connect(&tb_postgres::testing::admin_url()).await
                else {
                    return;
                };
                for sql in [
                    format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        tb_postgres::quote_ident(&names.database)
                    ),
                    format!(
                        "DROP ROLE IF EXISTS {}",
                        tb_postgres::quote_ident(&names.role)
                    ),
                ] {
                    let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await;
                }
                let _ = conn.close().await;
            })
            .await;
    }

    /// The `USER#<id>` / `SLOTS` counter, read consistently.
    async fn slots(&self, user: &UserId) -> Option<i64> {
        use tb_aws::layout;
        let item = self
            .aws
            .clients
            .dynamo
            .get_item()
            .table_name(&self.aws.settings.table)
            .consistent_read(true)
            .key(layout::PK, layout::s(layout::user_pk(user)))
            .key(layout::SK, layout::s(layout::SLOTS_SK))
            .send()
            .await
            .ok()?
            .item?;
        item.get(layout::ACTIVE_SLOTS)?.as_n().ok()?.parse().ok()
    }
}

/// The number of commits on the bare repository's `HEAD`.
fn git_commits(repo: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["rev-list", "--count", "HEAD"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}
