//! The pipeline scenario shared by the in-memory and the AWS (moto) tests: a short scripted
//! task, small slices, and the uninterrupted run it must end like.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tb_core::MicroUsd;
use tb_core::agent::{AgentConfig, AgentState, Outcome};
use tb_core::domain::{Description, Phase, RequestId, UserId};
use tb_core::pricing::PriceTable;
use tb_pipeline::{
    Invocation, Limits, NewRequest, Queue, Requests, SliceSettings, StateStore, Worker,
};
use tb_sandbox::{LocalSandboxConfig, LocalSandboxProvider};
use tempfile::TempDir;

use crate::{TestSandbox, calls_without_latency, run_agent_from, script, test_config};

/// Idempotent steps: a worker that dies mid-iteration has its iteration redone, and the
/// redone commands run again in the sandbox (effects there are at-least-once).
pub fn task_script() -> tb_models::Script {
    script(json!({"turns": [
        {"tool_calls": [{"name": "write_file", "input": {"path": "a.txt", "content": "one\n"}}]},
        {"tool_calls": [{"name": "run_command", "input": {"command": "cat a.txt; echo two > b.txt"}}]},
        {"tool_calls": [{"name": "read_file", "input": {"path": "b.txt"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]}))
}

pub fn config() -> AgentConfig {
    // Caching off: a replayed call then costs exactly what the lost one did.
    AgentConfig {
        prompt_caching: false,
        ..test_config()
    }
}

/// One iteration per slice; claims that expire at once and a sweeper that re-drives at once,
/// so a "dead" worker's request is picked up without waiting.
pub fn slices() -> SliceSettings {
    SliceSettings {
        iterations_per_slice: 1,
        lease: Duration::from_millis(1),
        safety_margin: Duration::from_secs(1),
        stall_after: Duration::ZERO,
        sandbox_max_age: Duration::from_secs(3600),
        outage_retry: Duration::from_secs(600),
    }
}

/// Limits no scenario reaches: the scenarios run many requests of one user.
pub fn roomy_limits() -> Limits {
    Limits {
        max_concurrent_per_user: 1000,
        spending_cap_per_user: MicroUsd::from_micros(1_000_000_000_000),
        ..Limits::default()
    }
}

/// The requests over `store` and `queue`, with in-memory platform records and
/// [`roomy_limits`].
pub fn requests(store: Arc<dyn StateStore>, queue: Arc<dyn Queue>) -> Requests {
    Requests::new(
        store,
        queue,
        Arc::new(tb_frontdoor::memory::MemoryRecords::new()),
        config(),
    )
    .with_limits(roomy_limits())
    .allowing_private_callbacks()
}

/// A worker over `store` and `queue` with the scripted model and local sandboxes in `dir`.
pub fn pipeline(store: Arc<dyn StateStore>, queue: Arc<dyn Queue>, dir: &TempDir) -> Worker {
    Worker {
        requests: Arc::new(requests(store, queue)),
        sandboxes: Arc::new(LocalSandboxProvider::new(LocalSandboxConfig::new(
            dir.path(),
        ))),
        model: Arc::new(tb_models::ScriptedModel::new(task_script())),
        dev_databases: None,
        archive: None,
        prices: PriceTable::with_defaults(),
        slices: slices(),
    }
}

pub fn invocation() -> Invocation {
    Invocation {
        worker_id: tb_core::ids::random_hex(8),
        deadline: Instant::now() + Duration::from_secs(600),
    }
}

pub fn new_request(key: Option<&str>) -> NewRequest {
    NewRequest {
        owner: UserId::parse("user_1").unwrap(),
        key_id: None,
        description: Description::parse("Create a simple API with a users endpoint").unwrap(),
        project: None,
        idempotency_key: key.map(String::from),
        callback_url: None,
    }
}

/// The same task run uninterrupted in one go, from the template a new project starts from.
pub async fn reference() -> AgentState {
    let sandbox = TestSandbox::new().await;
    let base = tb_pipeline::base::seed(
        None,
        &tb_core::domain::ProjectId::generate(),
        &sandbox.sandbox,
    )
    .await
    .expect("seeding the template");
    run_agent_from(
        &tb_models::ScriptedModel::new(task_script()),
        &sandbox.sandbox,
        &config(),
        Some(&base),
    )
    .await
}

/// The request reached the finalizer with exactly the reference's conversation and cost.
pub async fn assert_finished_like_reference(store: &dyn StateStore, id: &RequestId) {
    let expected = reference().await;
    let record = store.load(id).await.unwrap().unwrap();
    assert_eq!(record.phase, Phase::Finalizing);
    let (messages, calls) = store.conversation(&record).await.unwrap();
    let state = record.agent.join(messages, calls);
    assert_eq!(
        state.outcome,
        Some(Outcome::Finished {
            summary: "done".into(),
            checks: None,
        })
    );
    assert_eq!(state.messages, expected.messages);
    assert_eq!(
        calls_without_latency(&state),
        calls_without_latency(&expected)
    );
    assert_eq!((state.cost, state.usage), (expected.cost, expected.usage));
    assert!(record.lease.is_none());
}
