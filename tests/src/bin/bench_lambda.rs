//! Benchmarks of the three Lambda functions as Lambda runs them: the release bootstraps
//! started as processes against a local Runtime API server ([`tb_tests::runtime_api`]), with
//! the state store, queues and bucket on moto, the platform records in the local Postgres,
//! the scripted model and a fake Daytona on loopback.
//!
//! 1. Cold start: process start → first `GET /2018-06-01/runtime/invocation/next`, then the
//!    first invocation and a second (warm) one, for each function and for a hello-world
//!    `lambda_runtime` function built the same way (the reference). Stripped binary sizes.
//! 2. The worker's peak memory over a 1,000-message conversation, driven through real SQS
//!    receives as Lambda's event source mapping would.
//!
//! Run: `scripts/bench` (it builds the release bootstraps and starts moto), or
//! `bench-lambda <dir of the release binaries>` with `AWS_ENDPOINT_URL` set to a moto server.
//! `TB_BENCH_COLD_RUNS` sets the cold starts per function (10); `TB_BENCH_FUNCTIONS` a
//! comma-separated subset of `hello-lambda,api,worker,finalizer` for section 5 alone (without
//! it, every function and then section 6).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use tb_aws::testing::{Received, TestAws};
use tb_core::domain::{Description, Phase, RequestId, UserId};
use tb_core::ports::PlatformRecords;
use tb_models::server::ScriptedServer;
use tb_pipeline::{NewRequest, Requests, Worker};
use tb_postgres::PgPlatformRecords;
use tb_postgres::testing::Cleanup;
use tb_testkit::fake_daytona::FakeDaytona;
use tb_tests::peak_rss_kib;
use tb_tests::runtime_api::{Answer, RuntimeApi};
use tokio::process::{Child, Command};

/// The functions of section 5, the reference first.
const FUNCTIONS: [&str; 4] = ["hello-lambda", "api", "worker", "finalizer"];
const DAYTONA_KEY: &str = "bench-daytona-key";
const HOST: &str = "api.bench.example";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: bench-lambda <directory of the release binaries>")?,
    );
    let runs: usize = std::env::var("TB_BENCH_COLD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    ensure!(
        std::env::var("AWS_ENDPOINT_URL").is_ok(),
        "AWS_ENDPOINT_URL is not set: start moto first (`infra/moto.sh start && eval \"$(infra/moto.sh env)\"`)"
    );
    let subset = std::env::var("TB_BENCH_FUNCTIONS").ok();
    let functions: Vec<String> = match &subset {
        Some(list) => list.split(',').map(|f| f.trim().to_string()).collect(),
        None => FUNCTIONS.iter().map(|f| f.to_string()).collect(),
    };
    for f in &functions {
        ensure!(
            FUNCTIONS.contains(&f.as_str()),
            "TB_BENCH_FUNCTIONS names `{f}`, not one of {FUNCTIONS:?}"
        );
    }
    let rig = Rig::new().await?;

    println!("\n## 5. Lambda functions: cold start and first invocations");
    println!("Each release bootstrap (x86_64, this machine) is started {runs} times as a process");
    println!(
        "against a local server speaking the Lambda Runtime API. init = process start → first"
    );
    println!("GET /runtime/invocation/next (what Lambda reports as Init Duration); then the first");
    println!("invocation and a second, warm one. Events: api, an API Gateway HTTP event carrying");
    println!(
        "MCP tools/call get_request_status (key check in Postgres, record read from DynamoDB);"
    );
    println!("worker, an SQS batch with the work message of a new request (Daytona sandbox, 4");
    println!("scripted model calls, 4 commits to DynamoDB, hand-over to the finalize queue);");
    println!("finalizer, an SQS batch with the finalize message of a request cancelled before it");
    println!("ran (record claim, steps, ledger in Postgres, final commit, slot). AWS is moto on");
    println!(
        "loopback (plain HTTP: no TLS handshake, which on Lambda dominates a first SDK call)."
    );
    println!("hello-world = lambda_runtime + serde_json echoing its event, the reference function");
    println!("of public cold-start comparisons.\n");
    println!(
        "| function | binary (stripped) | init ms: median (min-max) | first invocation ms: median | init + first invocation ms: median | warm invocation ms: median |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for function in functions.iter().map(String::as_str) {
        let bin = dir.join(function);
        let size = std::fs::metadata(&bin)
            .with_context(|| format!("{} is missing: build it first", bin.display()))?
            .len();
        let mut init = Vec::new();
        let mut first = Vec::new();
        let mut warm = Vec::new();
        let mut until_first = Vec::new();
        for _ in 0..runs {
            let (i, f, w) = rig
                .cold_start(function, &bin)
                .await
                .with_context(|| format!("cold start of {function}"))?;
            init.push(i);
            first.push(f);
            warm.push(w);
            until_first.push(i + f);
        }
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        init.sort();
        println!(
            "| {function} | {:.2} MB | {:.1} ({:.1}-{:.1}) | {:.1} | {:.1} | {:.1} |",
            size as f64 / 1e6,
            ms(&median(&init)),
            ms(&init[0]),
            ms(init.last().expect("runs > 0")),
            ms(&median(&first)),
            ms(&median(&until_first)),
            ms(&median(&warm)),
        );
    }

    drop(rig);
    if subset.is_some() {
        return Ok(());
    }
    // A fresh table: moto copies a table for every item of every transaction, so a table
    // that holds the runs above would slow this one down (DynamoDB does not).
    Rig::new().await?.worker_memory(&dir.join("worker")).await?;
    Ok(())
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// Everything the functions talk to, on loopback.
struct Rig {
    aws: TestAws,
    front: Requests,
    /// Runs cancelled requests to the finalizer in-process, to give the finalizer its events.
    worker: Worker,
    records_url: String,
    key: String,
    status_request: RequestId,
    model: ScriptedServer,
    daytona: FakeDaytona,
    logs: tempfile::TempDir,
    _sandboxes: tempfile::TempDir,
    _cleanup: Cleanup,
}

fn user() -> UserId {
    UserId::parse("user_bench").expect("valid")
}

fn new_request() -> NewRequest {
    NewRequest {
        owner: user(),
        key_id: None,
        description: Description::parse("Create a simple API with a users endpoint")
            .expect("valid"),
        project: None,
        idempotency_key: None,
        callback_url: None,
    }
}

impl Rig {
    async fn new() -> anyhow::Result<Rig> {
        let aws = TestAws::new().await;
        let cleanup = Cleanup::default();
        let records_url = tb_tests::finalize::fresh_database(&cleanup).await;
        let records = PgPlatformRecords::connect(&records_url).await?;
        let (_, key) = records.create_key(&user(), "bench").await?;
        let front = tb_tests::scenario::requests(Arc::new(aws.store()), Arc::new(aws.queue()));
        let sandboxes = tempfile::tempdir()?;
        let worker =
            tb_tests::scenario::pipeline(Arc::new(aws.store()), Arc::new(aws.queue()), &sandboxes);
        let status_request = front.create(new_request()).await?.request_id;
        // Its work message is not needed: status reads only the record.
        drain(&aws, &aws.settings.work_queue_url).await;
        Ok(Rig {
            model: ScriptedServer::start(tb_tests::scenario::task_script()).await,
            daytona: FakeDaytona::start(DAYTONA_KEY).await,
            front,
            worker,
            records_url,
            key,
            status_request,
            logs: tempfile::tempdir()?,
            _sandboxes: sandboxes,
            aws,
            _cleanup: cleanup,
        })
    }

    /// The environment Lambda and the template give `function`.
    fn env(&self, function: &str, runtime: &RuntimeApi) -> Vec<(String, String)> {
        let s = &self.aws.settings;
        let mut env: Vec<(&str, String)> = vec![
            ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
            ("AWS_LAMBDA_RUNTIME_API", runtime.host()),
            ("AWS_LAMBDA_FUNCTION_NAME", function.into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".into()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function}"),
            ),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_ENDPOINT_URL", self.aws.endpoint.clone()),
            ("TB_TABLE", s.table.clone()),
            ("TB_WORK_QUEUE_URL", s.work_queue_url.clone()),
            ("TB_FINALIZE_QUEUE_URL", s.finalize_queue_url.clone()),
            ("TB_WORK_DLQ_URL", s.work_dlq_url.clone()),
            ("S3_PROJECTS_BUCKET", s.bucket.clone()),
        ];
        match function {
            "api" => {
                env.push(("TB_RECORDS_DATABASE_URL", self.records_url.clone()));
                env.push(("TB_ALLOWED_HOSTS", HOST.into()));
            }
            "worker" => {
                env.push(("TB_RECORDS_DATABASE_URL", self.records_url.clone()));
                env.push(("ANTHROPIC_API_KEY", "bench-model-key".into()));
                env.push(("ANTHROPIC_BASE_URL", self.model.url()));
                env.push(("DAYTONA_API_KEY", DAYTONA_KEY.into()));
                env.push(("DAYTONA_API_URL", self.daytona.api_url()));
                env.push(("TB_MAX_ITERATIONS", "1000".into()));
                env.push(("TB_BUDGET_USD", "1000".into()));
                env.push(("TB_WALL_CLOCK_SECS", "3600".into()));
            }
            "finalizer" => {
                env.push(("TB_RECORDS_DATABASE_URL", self.records_url.clone()));
                env.push(("DAYTONA_API_KEY", DAYTONA_KEY.into()));
                env.push(("DAYTONA_API_URL", self.daytona.api_url()));
                env.push(("GITHUB_ACCESS_TOKEN", "bench-github-token".into()));
                env.push(("FLY_API_TOKEN", "bench-fly-token".into()));
                env.push(("FLY_ORG_SLUG", "bench".into()));
            }
            _ => {}
        }
        env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn spawn(&self, function: &str, bin: &Path, runtime: &RuntimeApi) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(function))?;
        Ok(Command::new(bin)
            .env_clear()
            .envs(self.env(function, runtime))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?)
    }

    fn log_path(&self, function: &str) -> PathBuf {
        self.logs.path().join(format!("{function}.log"))
    }

    fn log_tail(&self, function: &str) -> String {
        let text = std::fs::read_to_string(self.log_path(function)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// One cold start: (init, first invocation, warm invocation).
    async fn cold_start(
        &self,
        function: &str,
        bin: &Path,
    ) -> anyhow::Result<(Duration, Duration, Duration)> {
        // Events are made before the process starts, so their set-up is not timed.
        let events = [self.event(function).await?, self.event(function).await?];
        let runtime = RuntimeApi::start(Duration::from_secs(120)).await?;
        let started = Instant::now();
        let mut child = self.spawn(function, bin, &runtime)?;
        let asked = match runtime.first_next(Duration::from_secs(20)).await {
            Ok(at) => at,
            Err(e) => bail!("{e}\n{}", self.log_tail(function)),
        };
        let init = asked.duration_since(started);
        let mut took = Vec::new();
        for (payload, check) in events {
            let (d, answer) = runtime.invoke(payload).await?;
            if let Err(e) = check.verify(self, &answer).await {
                bail!("{e}\nanswer: {answer:?}\n{}", self.log_tail(function));
            }
            took.push(d);
        }
        let _ = child.kill().await;
        Ok((init, took[0], took[1]))
    }

    /// An event for `function` and how to check its answer.
    async fn event(&self, function: &str) -> anyhow::Result<(Value, Check)> {
        Ok(match function {
            "hello-lambda" => (json!({"hello": "world"}), Check::Echo),
            "api" => (
                http_event(
                    &self.key,
                    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                        "params": {"name": "get_request_status",
                                   "arguments": {"request_id": self.status_request.to_string()}}}),
                ),
                Check::McpOk,
            ),
            "worker" => {
                let id = self.front.create(new_request()).await?.request_id;
                let queue = self.aws.settings.work_queue_url.clone();
                let message = receive_one(&self.aws, &queue).await?;
                (
                    sqs_event(std::slice::from_ref(&message)),
                    Check::Phase(id, Phase::Finalizing, message, queue),
                )
            }
            "finalizer" => {
                // What earlier runs handed over is not this event's.
                drain(&self.aws, &self.aws.settings.finalize_queue_url).await;
                let id = self.front.create(new_request()).await?.request_id;
                self.front.cancel(&user(), &id).await?;
                // The worker sees the cancel and hands the request to the finalizer.
                let work = &self.aws.settings.work_queue_url;
                for _ in 0..10 {
                    for m in self.aws.receive(work, Duration::from_secs(1)).await {
                        self.worker
                            .handle_work(&m.body, &tb_tests::scenario::invocation())
                            .await
                            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                        self.aws.delete(work, &m).await;
                    }
                    let rec = self.front.store.load(&id).await?.context("no record")?;
                    if rec.phase == Phase::Finalizing {
                        break;
                    }
                }
                drain(&self.aws, work).await;
                let queue = self.aws.settings.finalize_queue_url.clone();
                let message = receive_one(&self.aws, &queue).await?;
                (
                    sqs_event(std::slice::from_ref(&message)),
                    Check::Phase(id, Phase::Cancelled, message, queue),
                )
            }
            other => bail!("no event for {other}"),
        })
    }

    /// Drives one request of ~1,000 messages through the worker bootstrap: every work
    /// message the worker sends is received from SQS and handed to it as the next event.
    async fn worker_memory(&self, bin: &Path) -> anyhow::Result<()> {
        let turns = 499;
        let mut script: Vec<Value> = (0..turns)
            .map(|i| {
                json!({"tool_calls": [{"name": "run_command",
                    "input": {"command": format!("printf 'step {i} %0280d\\n' 0")}}]})
            })
            .collect();
        script.push(json!({"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}));
        let model = ScriptedServer::start(tb_tests::script(json!({ "turns": script }))).await;

        println!("\n## 6. Worker memory over a 1,000-message conversation");
        println!(
            "The worker bootstrap runs one request of {} iterations (a run_command with ~300",
            turns + 1
        );
        println!("bytes of output each) in slices of 25 iterations; each continuation it sends is");
        println!(
            "received from SQS (moto) and handed back as its next event, as Lambda's event source"
        );
        println!("mapping does. Peak = the process's VmHWM (peak resident set).\n");
        let runtime = RuntimeApi::start(Duration::from_secs(900)).await?;
        let mut env = self.env("worker", &runtime);
        for (k, v) in env.iter_mut() {
            if k == "ANTHROPIC_BASE_URL" {
                *v = model.url();
            }
        }
        let log = std::fs::File::create(self.log_path("worker-memory"))?;
        let child = Command::new(bin)
            .env_clear()
            .envs(env)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("no pid")?;
        runtime.first_next(Duration::from_secs(20)).await?;
        let idle = peak_rss_kib(pid).unwrap_or(0);

        let id = self.front.create(new_request()).await?.request_id;
        let started = Instant::now();
        let mut invocations = 0;
        let mut after_first = 0;
        let mut rows = Vec::new();
        loop {
            let rec = self.front.store.load(&id).await?.context("no record")?;
            if rec.phase != Phase::Queued && rec.phase != Phase::Running {
                break;
            }
            ensure!(
                invocations < 200,
                "the request did not finish in 200 invocations"
            );
            let queue = self.aws.settings.work_queue_url.clone();
            let message = receive_one(&self.aws, &queue).await?;
            let (took, answer) = runtime
                .invoke(sqs_event(std::slice::from_ref(&message)))
                .await?;
            if let Err(e) = Check::Acknowledged(message, queue)
                .verify(self, &answer)
                .await
            {
                bail!("{e}\n{}", self.log_tail("worker-memory"));
            }
            invocations += 1;
            let rec = self.front.store.load(&id).await?.context("no record")?;
            let peak = peak_rss_kib(pid).unwrap_or(0);
            if invocations == 1 {
                after_first = peak;
            }
            rows.push((rec.agent.iteration, took, peak));
        }
        let rec = self.front.store.load(&id).await?.context("no record")?;
        let (messages, _) = self.front.store.conversation(&rec).await?;
        ensure!(
            rec.phase == Phase::Finalizing,
            "the request ended {:?} ({:?})",
            rec.phase,
            rec.failure
        );
        println!("| after invocation | iterations done | invocation s | peak RSS MiB |");
        println!("|---:|---:|---:|---:|");
        for (i, (iteration, took, peak)) in rows.iter().enumerate() {
            if i == 0 || (i + 1) % 5 == 0 || i + 1 == rows.len() {
                println!(
                    "| {} | {iteration} | {:.2} | {:.1} |",
                    i + 1,
                    took.as_secs_f64(),
                    *peak as f64 / 1024.0
                );
            }
        }
        let last = rows.last().map(|r| r.2).unwrap_or(0);
        println!(
            "\n{} messages in {invocations} invocations, {:.1} s in all. Peak RSS: {:.1} MiB idle \
             before the first event, {:.1} MiB after the first slice, {:.1} MiB at the end.",
            messages.len(),
            started.elapsed().as_secs_f64(),
            idle as f64 / 1024.0,
            after_first as f64 / 1024.0,
            last as f64 / 1024.0,
        );
        Ok(())
    }
}

/// How to check a function's answer to an event.
enum Check {
    Echo,
    McpOk,
    /// The batch was acknowledged and the request reached the phase.
    Phase(RequestId, Phase, Received, String),
    /// The batch was acknowledged: the message (from the queue) is deleted, as Lambda would.
    Acknowledged(Received, String),
}

impl Check {
    async fn verify(&self, rig: &Rig, answer: &Answer) -> anyhow::Result<()> {
        let Answer::Response(body) = answer else {
            bail!("the function reported an error");
        };
        match self {
            Check::Echo => ensure!(body["hello"] == "world", "not an echo"),
            Check::McpOk => {
                ensure!(body["statusCode"] == 200, "status is not 200");
                let inner: Value = serde_json::from_str(body["body"].as_str().unwrap_or_default())?;
                ensure!(
                    inner["result"]["isError"] != true
                        && inner["result"]["structuredContent"]["request_id"].is_string(),
                    "not a status"
                );
            }
            Check::Phase(id, phase, message, queue) => {
                acknowledged(rig, body, message, queue).await?;
                let rec = rig.front.store.load(id).await?.context("no record")?;
                ensure!(
                    &rec.phase == phase,
                    "the request is {:?}, not {phase:?}",
                    rec.phase
                );
            }
            Check::Acknowledged(message, queue) => acknowledged(rig, body, message, queue).await?,
        }
        Ok(())
    }
}

async fn acknowledged(
    rig: &Rig,
    body: &Value,
    message: &Received,
    queue: &str,
) -> anyhow::Result<()> {
    let failures = body["batchItemFailures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        failures.is_empty(),
        "the batch reported failures: {failures:?}"
    );
    rig.aws.delete(queue, message).await;
    Ok(())
}

/// The one message on `queue` (waits for it).
async fn receive_one(aws: &TestAws, queue: &str) -> anyhow::Result<Received> {
    for _ in 0..10 {
        let mut got = aws.receive(queue, Duration::from_secs(2)).await;
        if let Some(m) = got.pop() {
            ensure!(got.is_empty(), "more than one message on {queue}");
            return Ok(m);
        }
    }
    bail!("no message arrived on {queue}")
}

async fn drain(aws: &TestAws, queue: &str) {
    loop {
        let got = aws.receive(queue, Duration::ZERO).await;
        if got.is_empty() {
            return;
        }
        for m in &got {
            aws.delete(queue, m).await;
        }
    }
}

fn sqs_event(messages: &[Received]) -> Value {
    tb_aws::testing::sqs_event(messages, "arn:aws:sqs:us-east-1:123456789012:bench")
}

/// An API Gateway HTTP API (payload 2.0) event: `POST /mcp` with `rpc` as the body.
fn http_event(key: &str, rpc: Value) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/mcp",
        "rawQueryString": "",
        "headers": {
            "host": HOST,
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": format!("Bearer {key}"),
            "user-agent": "bench"
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "domainName": HOST,
            "domainPrefix": "api",
            "http": {"method": "POST", "path": "/mcp", "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "bench"},
            "requestId": "bench",
            "routeKey": "$default",
            "stage": "$default",
            "time": "27/Nov/2026:00:00:00 +0000",
            "timeEpoch": 0
        },
        "body": rpc.to_string(),
        "isBase64Encoded": false
    })
}
