//! Benchmarks of the agent engine. Prints each figure with how it was measured.
//!
//! 1. The loop's own overhead per iteration, with a zero-latency model and sandbox, for
//!    conversations of 10, 100 and 1,000 messages.
//! 2. Tokens and cost of a scripted task with prompt caching and output truncation on and
//!    off (the scripted model, a real local sandbox).
//!
//! Run: `cargo run --release -p tb-tests --bin bench`

use std::time::Instant;

use tb_core::agent::{Agent, AgentConfig, AgentState, CancelFlag, Slice};
use tb_core::pricing::PriceTable;
use tb_core::{Block, Message, MicroUsd, Role, TokenUsage};
use tb_models::scripted::ScriptedModel;
use tb_tests::TestSandbox;
use tb_tests::instant::{InstantModel, InstantSandbox};

const BENCH_SCRIPT: &str = include_str!("../../../shared/models/scripts/bench-explore.json");

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    println!("turbobackend engine benchmarks");
    println!(
        "machine: {} cores; build: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    loop_overhead().await?;
    task_cost().await?;
    state_store().await?;
    Ok(())
}

/// A conversation of `n` messages: alternating tool calls and tool results of ~300 bytes.
fn conversation(n: usize) -> AgentState {
    let mut state = AgentState::new("Create a simple API with a users endpoint");
    while state.messages.len() < n {
        let i = state.messages.len();
        if i % 2 == 1 {
            state.messages.push(Message::assistant(vec![Block::ToolUse {
                id: format!("toolu_{i}"),
                name: "run_command".into(),
                input: serde_json::json!({"command": format!("echo step {i}")}),
            }]));
        } else {
            state.messages.push(Message {
                role: Role::User,
                content: vec![Block::ToolResult {
                    tool_use_id: format!("toolu_{}", i - 1),
                    content: "x".repeat(300),
                    is_error: false,
                }],
            });
        }
    }
    state
}

async fn loop_overhead() -> anyhow::Result<()> {
    println!("\n## 1. Loop overhead per iteration (zero-latency model and sandbox)");
    println!(
        "Each iteration: limits check, one model call that answers at once with a write_file call,"
    );
    println!("the tool run against an in-memory sandbox, stuck check, state update. Mean of 300");
    println!(
        "single iterations, each on a fresh copy of an n-message state (messages of ~300 bytes)."
    );
    println!(
        "`+ request JSON` also builds the Anthropic request body, as the real client must per call."
    );
    println!(
        "`+ compacted view` sets the compaction boundary, so the sent view is rebuilt per call.\n"
    );
    println!("| messages | plain µs/iter | + request JSON µs/iter | + compacted view µs/iter |");
    println!("|---:|---:|---:|---:|");
    let prices = PriceTable::with_defaults();
    let config = AgentConfig {
        max_iterations: u32::MAX,
        budget: MicroUsd::from_micros(i64::MAX),
        ..AgentConfig::standard()
    };
    for n in [10usize, 100, 1000] {
        let samples = 300;
        let mut row = Vec::new();
        for (serialize, compacted) in [(false, false), (true, false), (true, true)] {
            let model = InstantModel { serialize };
            let sandbox = InstantSandbox::default();
            let agent = Agent {
                model: &model,
                sandbox: &sandbox,
                db: None,
                prices: &prices,
                config: &config,
                cancel: CancelFlag::default(),
            };
            let mut base = conversation(n);
            if compacted {
                base.compacted_upto = n / 2;
            }
            // One iteration per sample on a fresh copy of the n-message state (the copy is
            // not timed), so every sample sees exactly n messages.
            let mut total = std::time::Duration::ZERO;
            for i in 0..samples + 10 {
                let mut state = base.clone();
                let started = Instant::now();
                agent
                    .run(
                        &mut state,
                        Slice {
                            max_iterations: 1,
                            deadline: None,
                        },
                    )
                    .await?;
                if i >= 10 {
                    total += started.elapsed();
                }
            }
            row.push(total.as_secs_f64() * 1e6 / samples as f64);
        }
        println!("| {n} | {:.1} | {:.1} | {:.1} |", row[0], row[1], row[2]);
    }
    Ok(())
}

async fn task_cost() -> anyhow::Result<()> {
    println!(
        "\n## 2. Tokens and cost of a scripted task (shared/models/scripts/bench-explore.json)"
    );
    println!(
        "The scripted model replays 9 turns; tokens are its documented approximation (bytes/4)"
    );
    println!(
        "with simulated prompt-cache reads and writes; prices are Sonnet 4.6's ($3 in, $15 out,"
    );
    println!(
        "$3.75 cache write, $0.30 cache read per million tokens). Commands really run in a local sandbox.\n"
    );
    println!(
        "| caching | truncation | input | cache write | cache read | output | cost | vs. both off |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut baseline = None;
    for (caching, truncation) in [(false, false), (true, false), (false, true), (true, true)] {
        let model = ScriptedModel::from_json(BENCH_SCRIPT)?;
        let sandbox = TestSandbox::new().await;
        let config = AgentConfig {
            prompt_caching: caching,
            truncate_outputs: truncation,
            budget: MicroUsd::from_micros(1_000_000_000),
            ..tb_tests::test_config()
        };
        let state = tb_tests::run_agent(&model, &sandbox.sandbox, &config).await;
        anyhow::ensure!(
            tb_tests::outcome(&state).is_success(),
            "the task did not finish: {:?}",
            state.outcome
        );
        let TokenUsage {
            input,
            output,
            cache_write,
            cache_read,
        } = state.usage;
        let base = *baseline.get_or_insert(state.cost.micros());
        let on = |b: bool| if b { "on" } else { "off" };
        println!(
            "| {} | {} | {input} | {cache_write} | {cache_read} | {output} | {} | {:.3} |",
            on(caching),
            on(truncation),
            state.cost,
            state.cost.micros() as f64 / base as f64
        );
    }
    Ok(())
}

/// The worker's per-iteration write (one conditional transaction: the record, two messages,
/// one call) and its per-slice read (the whole conversation), on DynamoDB via moto.
async fn state_store() -> anyhow::Result<()> {
    use tb_core::domain::{Description, ProjectId, RequestId, UserId};
    use tb_pipeline::{AgentHeader, Appended, RequestRecord, StateStore};
    println!("\n## 3. State store per iteration: DynamoDB (moto on loopback)");
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        println!(
            "skipped: no moto server (run `infra/moto.sh start && eval \"$(infra/moto.sh env)\"` first)"
        );
        return Ok(());
    }
    println!("Per iteration the worker commits the record plus what the iteration appended (an");
    println!("assistant message, a tool-result message, one call) in one conditional transaction;");
    println!("per slice it reads the whole conversation once. Mean of 20 commits at each size.");
    println!("Bytes = DynamoDB item size (names + values) of the items put.\n");
    println!(
        "| messages before the 20 commits | commit ms (moto) | bytes written / iteration | conversation read ms (moto, once per slice) |"
    );
    println!("|---:|---:|---:|---:|");
    let aws = tb_aws::testing::TestAws::new().await;
    let store = aws.store();
    let base = conversation(1);
    let (mut rec, first) = RequestRecord::new(
        RequestId::generate(),
        UserId::parse("user_bench")?,
        ProjectId::generate(),
        Description::parse("Create a simple API with a users endpoint")
            .map_err(anyhow::Error::msg)?,
        tb_core::agent::now_ms(),
    );
    store.create(&rec, &first).await?;
    let mut state = base;
    let mut call = 0u32;
    let mut append = |state: &mut AgentState, rec: &mut RequestRecord, n: usize| {
        let from = state.messages.len();
        let grown = conversation(from + n);
        state.messages = grown.messages;
        let calls: Vec<tb_core::ModelCall> = (0..n / 2)
            .map(|_| {
                call += 1;
                tb_core::ModelCall {
                    iteration: call,
                    model: "scripted".into(),
                    usage: TokenUsage::default(),
                    cost: MicroUsd::ZERO,
                    latency_ms: 0,
                    stop_reason: tb_core::model::StopReason::ToolUse,
                }
            })
            .collect();
        state.calls.extend(calls.clone());
        state.iteration = call;
        rec.agent = AgentHeader::of(state);
        (from, calls)
    };
    for target in [10usize, 100, 1000] {
        // Grow to `target` messages in large commits (not measured).
        while state.messages.len() + 2 < target {
            let n = (target - state.messages.len()).min(60) & !1;
            let v = rec.version;
            let (from, calls) = append(&mut state, &mut rec, n.max(2));
            rec.version += 1;
            store
                .commit(
                    &rec,
                    v,
                    Appended {
                        first_index: from,
                        messages: &state.messages[from..],
                        calls: &calls,
                    },
                )
                .await?;
        }
        let at_start = state.messages.len();
        let before = store.bytes_written();
        let started = Instant::now();
        for _ in 0..20 {
            let v = rec.version;
            let (from, calls) = append(&mut state, &mut rec, 2);
            rec.version += 1;
            store
                .commit(
                    &rec,
                    v,
                    Appended {
                        first_index: from,
                        messages: &state.messages[from..],
                        calls: &calls,
                    },
                )
                .await?;
        }
        let commit_ms = started.elapsed().as_secs_f64() * 1000.0 / 20.0;
        let bytes = (store.bytes_written() - before) / 20;
        let started = Instant::now();
        let (messages, _) = store.conversation(&rec).await?;
        let read_ms = started.elapsed().as_secs_f64() * 1000.0;
        println!(
            "| {at_start} (read {}) | {commit_ms:.1} | {bytes} | {read_ms:.1} |",
            messages.len()
        );
    }
    Ok(())
}
