//! The worker bootstrap as Lambda runs it, against invocation deadlines: the real `worker`
//! binary (built with the workspace) started as a process on the local Runtime API
//! ([`tb_tests::runtime_api`], which kills it at an invocation's deadline, as Lambda does),
//! the state store and queues on moto, the fake Daytona, and the scripted model behind a
//! forwarder that makes every answer slow. Scaled down: a model answering in 2 s, a 6 s
//! function timeout, a 1 s margin (with the old check, which started an iteration whenever
//! the margin was left, the third iteration of the first invocation is killed). Needs `AWS_ENDPOINT_URL` (scripts/test starts moto).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tb_aws::testing::{Received, TestAws};
use tb_core::agent::Outcome;
use tb_core::domain::{Phase, RequestId};
use tb_models::server::ScriptedServer;
use tb_pipeline::Requests;
use tb_testkit::fake_daytona::FakeDaytona;
use tb_tests::runtime_api::{Answer, RuntimeApi};
use tb_tests::scenario;
use tb_tests::slow_http::{SlowHttp, reserve_port};
use tokio::process::{Child, Command};

const DAYTONA_KEY: &str = "deadline-daytona-key";

/// A bootstrap of this workspace, from the target directory the tests were built in.
fn bootstrap(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p {name}` (scripts/test builds every target)",
        bin.display()
    );
    bin
}

/// Six iterations: five tool calls, then `finish`.
fn six_turns() -> tb_models::Script {
    tb_tests::script(json!({"turns": [
        {"tool_calls": [{"name": "write_file", "input": {"path": "a.txt", "content": "one\n"}}]},
        {"tool_calls": [{"name": "run_command", "input": {"command": "cat a.txt; echo two > b.txt"}}]},
        {"tool_calls": [{"name": "read_file", "input": {"path": "b.txt"}}]},
        {"tool_calls": [{"name": "run_command", "input": {"command": "ls"}}]},
        {"tool_calls": [{"name": "list_files", "input": {}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]}))
}

struct Worker {
    runtime: RuntimeApi,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Worker {
    /// Starts the worker bootstrap with a `timeout` per invocation and waits for its first
    /// `next`.
    async fn start(
        aws: &TestAws,
        model_url: &str,
        daytona: &FakeDaytona,
        timeout: Duration,
        extra: &[(&str, &str)],
    ) -> Worker {
        let runtime = RuntimeApi::start(timeout).await.unwrap();
        let s = &aws.settings;
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(bootstrap("worker"));
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("AWS_LAMBDA_RUNTIME_API", runtime.host())
            .env("AWS_LAMBDA_FUNCTION_NAME", "worker")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/worker")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_ENDPOINT_URL", &aws.endpoint)
            .env("TB_TABLE", &s.table)
            .env("TB_WORK_QUEUE_URL", &s.work_queue_url)
            .env("TB_FINALIZE_QUEUE_URL", &s.finalize_queue_url)
            .env("TB_WORK_DLQ_URL", &s.work_dlq_url)
            .env("S3_PROJECTS_BUCKET", &s.bucket)
            .env("ANTHROPIC_API_KEY", "test-model-key")
            .env("ANTHROPIC_BASE_URL", model_url)
            .env("DAYTONA_API_KEY", DAYTONA_KEY)
            .env("DAYTONA_API_URL", daytona.api_url())
            .env("TB_PROMPT_CACHING", "false")
            // Only jobs in the original shape read the records (none here): never connected.
            .env(
                "TB_RECORDS_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            )
            // The scripts write a few files, not an app: nothing for `finish` to build.
            .env("TB_FINISH_ATTEMPTS", "0")
            .envs(extra.iter().copied())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .kill_on_drop(true);
        let child = cmd.spawn().unwrap();
        runtime.kill_at_deadline(child.id().expect("a pid"));
        let worker = Worker {
            runtime,
            child,
            log,
        };
        if let Err(e) = worker.runtime.first_next(Duration::from_secs(30)).await {
            panic!("{e}\n{}", worker.log_tail());
        }
        worker
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

fn sqs_event(m: &Received) -> Value {
    json!({"Records": [{
        "messageId": "m0",
        "receiptHandle": m.receipt_handle,
        "body": m.body,
        "attributes": {"ApproximateReceiveCount": m.receive_count.to_string()},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work",
        "awsRegion": "us-east-1"
    }]})
}

/// Feeds the work messages of `id` to the worker, as Lambda's event source mapping does
/// (a message is deleted when its batch is acknowledged), until the request leaves the
/// agent phase; every message must be acknowledged at its first receive and no invocation
/// may be killed. Returns the number of invocations.
async fn drive(aws: &TestAws, front: &Requests, worker: &Worker, id: &RequestId) -> usize {
    let queue = aws.settings.work_queue_url.clone();
    let mut invocations = 0;
    loop {
        let rec = front.store.load(id).await.unwrap().unwrap();
        if !matches!(rec.phase, Phase::Queued | Phase::Running) {
            return invocations;
        }
        assert!(
            invocations < 30,
            "not done in 30 invocations: {:?}",
            rec.activity
        );
        // A continuation may be delayed (an outage being waited out).
        let mut got = Vec::new();
        for _ in 0..30 {
            got = aws.receive(&queue, Duration::from_secs(1)).await;
            if !got.is_empty() {
                break;
            }
        }
        let message = got.pop().expect("a work message");
        assert_eq!(message.receive_count, 1, "a message was received again");
        let (took, answer) = worker.runtime.invoke(sqs_event(&message)).await.unwrap();
        invocations += 1;
        match answer {
            Answer::Response(body) => {
                let failures = body["batchItemFailures"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    failures.is_empty(),
                    "batch failures: {failures:?}\n{}",
                    worker.log_tail()
                );
                aws.delete(&queue, &message).await;
            }
            Answer::TimedOut => panic!(
                "invocation {invocations} outran its deadline and was killed after {took:?}\n{}",
                worker.log_tail()
            ),
            Answer::Error(e) => panic!(
                "invocation {invocations} failed: {e}\n{}",
                worker.log_tail()
            ),
        }
    }
}

fn front(aws: &TestAws) -> Requests {
    scenario::requests(Arc::new(aws.store()), Arc::new(aws.queue()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_model_never_outruns_the_invocation_and_each_call_is_billed_once() {
    let aws = TestAws::new().await;
    let front = front(&aws);
    let model = ScriptedServer::start(six_turns()).await;
    let slow = SlowHttp::start(&model.url(), Duration::from_secs(2)).await;
    let daytona = FakeDaytona::start(DAYTONA_KEY).await;
    let mut worker = Worker::start(
        &aws,
        &slow.url(),
        &daytona,
        Duration::from_secs(6),
        &[("TB_INVOCATION_MARGIN_SECS", "1")],
    )
    .await;

    let id = front
        .create(scenario::new_request(None))
        .await
        .unwrap()
        .request_id;
    let invocations = drive(&aws, &front, &worker, &id).await;
    let rec = front.store.load(&id).await.unwrap().unwrap();
    let (_, calls) = front.store.conversation(&rec).await.unwrap();
    println!(
        "{invocations} invocations, {} calls recorded, {} model requests served",
        calls.len(),
        model.requests()
    );
    assert_eq!(rec.phase, Phase::Finalizing, "{:?}", rec.failure);
    assert_eq!(
        rec.agent.outcome,
        Some(Outcome::Finished {
            summary: "done".into(),
            checks: None,
        })
    );
    assert_eq!(worker.runtime.timeouts(), 0, "no invocation was killed");
    assert_eq!(calls.len(), 6, "each of the 6 calls billed once");
    assert_eq!(rec.agent.iteration, 6);
    assert!(
        invocations >= 3,
        "2 s calls in 6 s invocations: at most 2 per invocation"
    );
    let _ = worker.child.kill().await;
}

// Outages: the model's endpoint refuses connections (nothing listens on its port).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_down_for_the_whole_request_fails_it_naming_the_model_within_the_bound() {
    let aws = TestAws::new().await;
    let front = front(&aws);
    let held = reserve_port();
    let down = format!("http://{held}");
    let daytona = FakeDaytona::start(DAYTONA_KEY).await;
    let bound = Duration::from_secs(10);
    let mut worker = Worker::start(
        &aws,
        &down,
        &daytona,
        Duration::from_secs(30),
        &[
            ("TB_OUTAGE_RETRY_SECS", "10"),
            ("TB_INVOCATION_MARGIN_SECS", "2"),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let id = front
        .create(scenario::new_request(None))
        .await
        .unwrap()
        .request_id;

    let invocations = drive(&aws, &front, &worker, &id).await;

    let took = started.elapsed();
    let rec = front.store.load(&id).await.unwrap().unwrap();
    println!(
        "{invocations} invocations in {took:?}; activity: {:#?}",
        rec.activity
    );
    assert_eq!(rec.phase, Phase::Finalizing);
    let Some(Outcome::Failed { reason }) = &rec.agent.outcome else {
        panic!("a failed agent expected: {:?}", rec.agent.outcome);
    };
    assert!(
        reason.starts_with("the model was unreachable for")
            && reason.contains("Connection refused"),
        "{reason}"
    );
    assert!(
        rec.activity
            .iter()
            .any(|l| l.starts_with("waiting for the model: connection refused; attempt 1, next in")),
        "{:?}",
        rec.activity
    );
    assert_eq!(rec.agent.iteration, 0);
    // No attempt outlasts the bound; then the hand-over.
    assert!(took < bound + Duration::from_secs(3), "{took:?}");
    assert!(invocations >= 2, "the outage was retried");
    assert!(aws.work_dlq_bodies().await.is_empty(), "nothing parked");
    let _ = worker.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_down_for_a_while_is_waited_out_and_the_wait_shows_in_the_activity() {
    let aws = TestAws::new().await;
    let front = front(&aws);
    let model = ScriptedServer::start(scenario::task_script()).await;
    let port = reserve_port();
    let daytona = FakeDaytona::start(DAYTONA_KEY).await;
    let mut worker = Worker::start(
        &aws,
        &format!("http://{port}"),
        &daytona,
        Duration::from_secs(30),
        &[
            ("TB_OUTAGE_RETRY_SECS", "60"),
            ("TB_INVOCATION_MARGIN_SECS", "2"),
        ],
    )
    .await;
    let id = front
        .create(scenario::new_request(None))
        .await
        .unwrap()
        .request_id;
    // Back after 10 s: longer than the model client's own retries can span (5 attempts,
    // waits of at most 0.5 + 1 + 2 + 4 s), so the worker always sees the outage.
    let target = model.url();
    let back = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        SlowHttp::start_on(port, &target, Duration::ZERO).await
    });

    let invocations = drive(&aws, &front, &worker, &id).await;

    let rec = front.store.load(&id).await.unwrap().unwrap();
    println!("{invocations} invocations; activity: {:#?}", rec.activity);
    assert_eq!(rec.phase, Phase::Finalizing, "{:?}", rec.agent.outcome);
    assert_eq!(
        rec.agent.outcome,
        Some(Outcome::Finished {
            summary: "done".into(),
            checks: None,
        })
    );
    assert!(
        rec.activity
            .iter()
            .any(|l| l.starts_with("waiting for the model: connection refused; attempt 1")),
        "{:?}",
        rec.activity
    );
    assert!(
        rec.activity
            .iter()
            .any(|l| l.starts_with("the model is back after")),
        "{:?}",
        rec.activity
    );
    assert!(rec.outage.is_none());
    let (_, calls) = front.store.conversation(&rec).await.unwrap();
    assert_eq!(calls.len(), 4, "each call billed once");
    drop(back);
    let _ = worker.child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_provider_down_for_the_whole_request_fails_it_naming_the_provider() {
    let aws = TestAws::new().await;
    let front = front(&aws);
    let model = ScriptedServer::start(scenario::task_script()).await;
    let daytona = FakeDaytona::start(DAYTONA_KEY).await;
    let held = reserve_port();
    let down = format!("http://{held}/api");
    let mut worker = Worker::start(
        &aws,
        &model.url(),
        &daytona,
        Duration::from_secs(30),
        &[
            ("TB_OUTAGE_RETRY_SECS", "10"),
            ("TB_INVOCATION_MARGIN_SECS", "2"),
            ("DAYTONA_API_URL", &down),
        ],
    )
    .await;
    let started = std::time::Instant::now();
    let id = front
        .create(scenario::new_request(None))
        .await
        .unwrap()
        .request_id;

    let invocations = drive(&aws, &front, &worker, &id).await;

    let took = started.elapsed();
    let rec = front.store.load(&id).await.unwrap().unwrap();
    println!(
        "{invocations} invocations in {took:?}; activity: {:#?}",
        rec.activity
    );
    let Some(Outcome::Failed { reason }) = &rec.agent.outcome else {
        panic!("a failed agent expected: {:?}", rec.agent.outcome);
    };
    assert!(
        reason.starts_with("the sandbox provider was unreachable for"),
        "{reason}"
    );
    assert!(
        rec.activity
            .iter()
            .any(|l| l.starts_with("waiting for the sandbox provider: ")),
        "{:?}",
        rec.activity
    );
    assert!(took < Duration::from_secs(13), "{took:?}");
    assert_eq!(model.requests(), 0);
    let _ = worker.child.kill().await;
}
