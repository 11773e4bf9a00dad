//! Benchmarks of the agent engine. Prints each figure with how it was measured.
//!
//! 1. The loop's own overhead per iteration, with a zero-latency model and sandbox, for
//!    conversations of 10, 100 and 1,000 messages.
//! 2. Tokens and cost of the scripted tasks the project ships, and of a long generated one,
//!    with prompt caching, output truncation and context compaction on and off (the scripted
//!    model, a real local sandbox).
//! 3. The state store per iteration (commit latency, bytes written, the once-per-slice
//!    conversation read): the local SQLite store always, DynamoDB when moto is running.
//! 4. The local sandbox's isolation cost per command: spawn to exit of `true` inside the
//!    bubblewrap boundary (namespaces, cgroups, egress bridge, disk check) against the same
//!    without it.
//!
//! 5. `bench load [N] [compare|clean]` (never part of a run of all sections; it takes
//!    minutes): the load run of [`tb_tests::load`] on moto, N requests (default 100) with 5%
//!    of handler runs killed and duplicate deliveries: throughput, and the slowest request's
//!    delay beyond one uninterrupted request made alone; with `compare`, the same load
//!    without faults too; with `clean`, only that.
//!    Needs moto (`AWS_ENDPOINT_URL`) and Postgres on 127.0.0.1:5432.
//!
//! Run: `cargo run --release -p tb-tests --bin bench` (arguments pick sections: `-- 2 3`)

use std::time::{Duration, Instant};

use tb_core::agent::{Agent, AgentConfig, AgentState, CancelFlag, Slice, SliceEnd};
use tb_core::domain::{Description, ProjectId, RequestId, UserId};
use tb_core::pricing::PriceTable;
use tb_core::{Block, Message, MicroUsd, ModelCall, Role, TokenUsage};
use tb_models::USERS_API_SCRIPT;
use tb_models::scripted::{Script, ScriptTurn, ScriptedModel};
use tb_pipeline::{AgentHeader, Appended, RequestRecord, StateStore};
use tb_sandbox::{LocalSandboxConfig, LocalSandboxProvider};
use tb_tests::instant::{InstantModel, InstantSandbox};

/// Section 4: `true` through the local sandbox, with and without the boundary.
async fn isolation_cost() -> anyhow::Result<()> {
    use tb_core::sandbox::Sandbox;
    println!("\n## 4. Isolation cost per command (local sandbox)");
    println!("`exec(\"true\")` spawn to exit, 100 runs each after 5 warm-up runs; median and p95.");
    let isolation = tb_sandbox::Isolation::new();
    if let Err(e) = isolation.probe() {
        println!("skipped: {e}");
        return Ok(());
    }
    for (label, isolation) in [
        ("without the boundary", None),
        ("inside the boundary", Some(isolation)),
    ] {
        let dir = tempfile::tempdir()?;
        let provider = LocalSandboxProvider::new(LocalSandboxConfig {
            isolation,
            ..LocalSandboxConfig::new(dir.path())
        });
        let controllers = provider.cgroup_controllers();
        let sandbox = provider.create_local(&Default::default()).await?;
        let mut ms = Vec::new();
        for i in 0..105 {
            let t = Instant::now();
            let out = sandbox.exec("true", Duration::from_secs(30)).await?;
            anyhow::ensure!(out.exit_code == Some(0), "true failed: {out:?}");
            if i >= 5 {
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "{label:<22} median {:6.2} ms   p95 {:6.2} ms{}",
            ms[ms.len() / 2],
            ms[ms.len() * 95 / 100],
            if controllers.is_empty() {
                String::new()
            } else {
                format!("   (cgroups: {})", controllers.join(", "))
            }
        );
    }
    Ok(())
}

const BENCH_SCRIPT: &str = include_str!("../../../shared/models/scripts/bench-explore.json");
const TASK: &str = "Create a simple API with a users endpoint";

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
    // Arguments pick sections (`bench 2 3`); none runs all.
    let picked: Vec<String> = std::env::args().skip(1).collect();
    if picked.first().map(String::as_str) == Some("load") {
        return load_run(&picked[1..]);
    }
    if let Some(a) = picked
        .iter()
        .find(|a| !["1", "2", "3", "4"].contains(&a.as_str()))
    {
        anyhow::bail!("unknown section {a:?}: pass 1, 2, 3 or 4, or nothing for all");
    }
    let wanted = |n: &str| picked.is_empty() || picked.iter().any(|a| a == n);
    let started = Instant::now();
    let mut times = Vec::new();
    for section in ["1", "2", "3", "4"] {
        if !wanted(section) {
            continue;
        }
        let t = Instant::now();
        match section {
            "1" => loop_overhead().await?,
            "2" => task_cost().await?,
            "3" => state_store().await?,
            _ => isolation_cost().await?,
        }
        times.push(format!(
            "section {section}: {:.0} s",
            t.elapsed().as_secs_f64()
        ));
    }
    println!(
        "\nbench time: {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        times.join(", ")
    );
    Ok(())
}

/// A conversation of `n` messages: alternating tool calls and tool results of ~300 bytes.
fn conversation(n: usize) -> AgentState {
    let mut state = AgentState::new(TASK);
    state.messages.extend((1..n).map(message_at));
    state
}

/// Message `i` (from 1) of [`conversation`]: a tool call at odd, its result at even indexes.
fn message_at(i: usize) -> Message {
    if i % 2 == 1 {
        Message::assistant(vec![Block::ToolUse {
            id: format!("toolu_{i}"),
            name: "run_command".into(),
            input: serde_json::json!({"command": format!("echo step {i}")}),
        }])
    } else {
        Message {
            role: Role::User,
            content: vec![Block::ToolResult {
                tool_use_id: format!("toolu_{}", i - 1),
                content: "x".repeat(300),
                is_error: false,
            }],
        }
    }
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
                base: None,
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

/// The context window of the section-2 runs (the scripted model reports what its script
/// says; a deployment sets it with `TB_MODEL_CONTEXT_WINDOW`). 16,384 tokens is a common
/// window of models served by an OpenAI-compatible server (e.g. llama.cpp or Ollama with
/// `num_ctx` 16384). With outputs truncated the scripted tasks stay under 9,000 prompt
/// tokens, so at 32,768 or the default 200,000 compaction never triggers.
const TASK_WINDOW: u64 = 16_384;
const DEFAULT_WINDOW: u64 = 200_000;

/// The long task of section 2: this many `run_command` turns, then `finish`.
const LONG_TURNS: usize = 180;
/// Bytes each of its commands prints (plus " step N"): under the 8,000 (`output_head` +
/// `output_tail`) that truncation keeps whole, so every row sends the same outputs.
const LONG_OUTPUT: usize = 7_900;

/// A long exploration: `turns` commands printing `bytes` bytes each (numbered, so the stuck
/// detector sees different steps), then `finish`.
fn long_task(turns: usize, bytes: usize) -> Script {
    let mut steps: Vec<ScriptTurn> = (1..=turns)
        .map(|n| {
            ScriptTurn::tool_call(
                "run_command",
                serde_json::json!({
                    "command": format!("head -c {bytes} /dev/zero | tr '\\0' x; echo \" step {n}\"")
                }),
            )
            .with_text(format!("Looking at part {n}."))
        })
        .collect();
    steps.push(
        ScriptTurn::tool_call(
            "finish",
            serde_json::json!({ "summary": format!("explored {turns} parts") }),
        )
        .with_text("Done."),
    );
    Script::new(steps)
}

/// Which of the three token savers are on.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Savers {
    caching: bool,
    truncation: bool,
    compaction: bool,
}

impl Savers {
    const ALL_OFF: Savers = Savers {
        caching: false,
        truncation: false,
        compaction: false,
    };
    const ALL_ON: Savers = Savers {
        caching: true,
        truncation: true,
        compaction: true,
    };

    /// "all off", "all on", or the names of those on.
    fn label(self) -> String {
        let on: Vec<&str> = [
            (self.caching, "caching"),
            (self.truncation, "truncation"),
            (self.compaction, "compaction"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        match on.len() {
            0 => "all off".into(),
            3 => "all on".into(),
            _ => on.join(" + "),
        }
    }
}

/// One run of a scripted task.
struct TaskRun {
    state: AgentState,
    elapsed: Duration,
    /// The largest prompt (input + cache write + cache read) of one call.
    peak_prompt: u64,
    /// (iteration, boundary) of every call whose sent view was compacted.
    compacted_calls: Vec<(u32, usize)>,
}

/// Runs `script` to the end with `savers`, one iteration per slice so that the compaction
/// boundary each call was sent with can be recorded (a resumed run sends exactly what an
/// uninterrupted one would).
async fn run_task(
    script: &Script,
    from_template: bool,
    window: u64,
    savers: Savers,
) -> anyhow::Result<TaskRun> {
    let model = ScriptedModel::new(Script {
        context_window: Some(window),
        ..script.clone()
    });
    // A local sandbox in a temporary directory, with npm's cache shared between runs as
    // the local binary shares it (`TB_NPM_CACHE`), and preferred to the registry: with a
    // warm cache `npm install` takes ~14 s instead of ~37 s (only its timings change).
    let dir = tempfile::tempdir()?;
    let provider = LocalSandboxProvider::new(LocalSandboxConfig {
        extra_env: [
            ("npm_config_cache".to_string(), npm_cache()),
            ("npm_config_prefer_offline".to_string(), "true".to_string()),
        ]
        .into(),
        ..LocalSandboxConfig::new(dir.path())
    });
    let sandbox = provider.create_local(&Default::default()).await?;
    // The demo's script builds on the template a new project starts from, seeded as the
    // worker seeds it (the prompt then describes it).
    let base = if from_template {
        Some(tb_pipeline::base::seed(None, &ProjectId::generate(), &sandbox).await?)
    } else {
        None
    };
    let config = AgentConfig {
        prompt_caching: savers.caching,
        truncate_outputs: savers.truncation,
        compaction: savers.compaction,
        // Without truncation the prompts cost more than the production budget allows.
        budget: MicroUsd::from_micros(1_000_000_000),
        // The long task has more turns than the production limit of iterations.
        max_iterations: (script.turns.len() as u32 + 1).max(AgentConfig::standard().max_iterations),
        ..tb_tests::test_config()
    };
    let prices = PriceTable::with_defaults();
    let agent = Agent {
        model: &model,
        sandbox: &sandbox,
        db: None,
        prices: &prices,
        config: &config,
        cancel: CancelFlag::default(),
        base: base.as_ref(),
    };
    let mut state = AgentState::new(TASK);
    let mut compacted_calls = Vec::new();
    let started = Instant::now();
    loop {
        // A boundary of 0 or 1 sends the conversation unchanged (the task, message 0, is
        // never compacted).
        let boundary = state.compacted_upto;
        let end = agent
            .run(
                &mut state,
                Slice {
                    max_iterations: 1,
                    deadline: None,
                },
            )
            .await?;
        if savers.compaction && boundary > 1 {
            compacted_calls.push((state.iteration, boundary));
        }
        if let SliceEnd::Done(_) = end {
            break;
        }
    }
    let peak_prompt = state
        .calls
        .iter()
        .map(|c| c.usage.prompt_total())
        .max()
        .unwrap_or(0);
    Ok(TaskRun {
        state,
        elapsed: started.elapsed(),
        peak_prompt,
        compacted_calls,
    })
}

/// npm's cache for the sandboxes: `TB_NPM_CACHE`, else the one the embedded tests share.
fn npm_cache() -> String {
    std::env::var("TB_NPM_CACHE").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
        format!("{home}/.cache/turbobackend/npm-cache")
    })
}

async fn task_cost() -> anyhow::Result<()> {
    let standard = AgentConfig::standard();
    println!("\n## 2. Tokens and cost of the scripted tasks the project ships");
    println!("The scripted model replays each script's turns; tokens are its documented");
    println!("approximation (bytes/4) with simulated prompt-cache reads and writes; prices are");
    println!(
        "Sonnet 4.6's ($3 in, $15 out, $3.75 cache write, $0.30 cache read per million tokens)."
    );
    println!("Commands really run in a local sandbox. Compaction elides old tool outputs and file");
    println!(
        "bodies from what is sent once a prompt plus max_tokens ({}) reaches {}% of the window;",
        standard.max_tokens, standard.compact_at_percent
    );
    println!(
        "it keeps the last {} messages, so no call before iteration 8 can be sent compacted.",
        standard.keep_recent_messages
    );
    println!(
        "Window: {TASK_WINDOW} tokens (what TB_MODEL_CONTEXT_WINDOW={TASK_WINDOW} sets for a real model), as"
    );
    println!(
        "with outputs truncated these tasks stay under 9,000 prompt tokens and never reach the"
    );
    println!(
        "threshold of a 32,768 or the default {DEFAULT_WINDOW}-token window (see the reference row)."
    );
    println!(
        "The shipped tasks are too short for compaction to change a request (once set, the boundary"
    );
    println!(
        "moves only in steps of {} messages); the generated long task (last table) shows its effect.",
        standard.keep_recent_messages
    );
    println!(
        "`compacted` = the final compacted_upto; then each call (#iteration; #a-#b for a run of"
    );
    println!(
        "them) that was sent a compacted view, and its boundary. `peak prompt` = the largest prompt"
    );
    println!(
        "of one call (the scripted model accepts any size). npm uses the cache {}",
        npm_cache()
    );
    println!("and prefers it to the registry (npm_config_prefer_offline), to keep the runs short.");

    let explore = Script::from_json(BENCH_SCRIPT)?;
    let mut rows = vec![(Savers::ALL_OFF, TASK_WINDOW)];
    for savers in [
        Savers {
            caching: true,
            ..Savers::ALL_OFF
        },
        Savers {
            truncation: true,
            ..Savers::ALL_OFF
        },
        Savers {
            compaction: true,
            ..Savers::ALL_OFF
        },
        Savers {
            compaction: false,
            ..Savers::ALL_ON
        },
        Savers::ALL_ON,
    ] {
        rows.push((savers, TASK_WINDOW));
    }
    rows.push((Savers::ALL_ON, DEFAULT_WINDOW));
    task_table(
        "shared/models/scripts/bench-explore.json (9 turns: large outputs, a 1.2 MB file read)",
        &explore,
        false,
        &rows,
    )
    .await;

    let users = Script::from_json(USERS_API_SCRIPT)?;
    task_table(
        "shared/models/scripts/users-api.json (the demo: 3 turns from the template, real npm install, check and build)",
        &users,
        true,
        &[
            (Savers::ALL_OFF, TASK_WINDOW),
            (Savers::ALL_ON, TASK_WINDOW),
        ],
    )
    .await;

    let long = long_task(LONG_TURNS, LONG_OUTPUT);
    task_table(
        &format!(
            "generated long task ({LONG_TURNS} turns of run_command printing {LONG_OUTPUT} bytes, then finish; default window)"
        ),
        &long,
        false,
        &[
            (Savers::ALL_OFF, DEFAULT_WINDOW),
            (
                Savers {
                    compaction: false,
                    ..Savers::ALL_ON
                },
                DEFAULT_WINDOW,
            ),
            (Savers::ALL_ON, DEFAULT_WINDOW),
        ],
    )
    .await;
    Ok(())
}

/// Runs `script` once per row and prints the table; a failed run is a row saying why.
async fn task_table(title: &str, script: &Script, from_template: bool, rows: &[(Savers, u64)]) {
    println!("\n### {title}\n");
    println!(
        "| caching | truncation | compaction | window | input | cache write | cache read | output | peak prompt | cost | vs. all off | compacted | run s |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    let on = |b: bool| if b { "on" } else { "off" };
    let mut baseline: Option<MicroUsd> = None;
    let mut notes = Vec::new();
    let mut overflows = Vec::new();
    let max_tokens = u64::from(AgentConfig::standard().max_tokens);
    for &(savers, window) in rows {
        let switches = format!(
            "| {} | {} | {} | {window} |",
            on(savers.caching),
            on(savers.truncation),
            on(savers.compaction)
        );
        let run = match run_task(script, from_template, window, savers).await {
            Ok(run) => run,
            Err(e) => {
                println!("{switches} failed: {e:#} | | | | | | | | |");
                continue;
            }
        };
        let TokenUsage {
            input,
            output,
            cache_write,
            cache_read,
        } = run.state.usage;
        let cost = run.state.cost;
        if savers == Savers::ALL_OFF {
            baseline = Some(cost);
        }
        let ratio = baseline
            .filter(|b| b.micros() > 0)
            .map_or("n/a".to_string(), |b| {
                format!("{:.3}", cost.micros() as f64 / b.micros() as f64)
            });
        let compacted = if savers.compaction {
            // Consecutive calls sent with the same boundary as one run: (first, last, boundary).
            let mut runs: Vec<(u32, u32, usize)> = Vec::new();
            for &(i, b) in &run.compacted_calls {
                match runs.last_mut() {
                    Some((_, last, lb)) if *lb == b && *last + 1 == i => *last = i,
                    _ => runs.push((i, i, b)),
                }
            }
            let calls: Vec<String> = runs
                .iter()
                .map(|&(first, last, b)| {
                    if first == last {
                        format!("#{first} at {b}")
                    } else {
                        format!("#{first}-#{last} at {b}")
                    }
                })
                .collect();
            format!(
                "{}; {}",
                run.state.compacted_upto,
                if calls.is_empty() {
                    "no call compacted".to_string()
                } else {
                    calls.join(", ")
                }
            )
        } else {
            "-".to_string()
        };
        println!(
            "{switches} {input} | {cache_write} | {cache_read} | {output} | {} | {cost} | {ratio} | {compacted} | {:.1} |",
            run.peak_prompt,
            run.elapsed.as_secs_f64()
        );
        // Say why a run did not go as scripted rather than hiding it.
        let row = format!("{} (window {window})", savers.label());
        match &run.state.outcome {
            Some(o) if o.is_success() => {}
            Some(o) => notes.push(format!("{row}: the agent did not finish: {}", o.describe())),
            None => notes.push(format!("{row}: the agent has no outcome")),
        }
        for (content, _) in tb_tests::tool_results(&run.state)
            .into_iter()
            .filter(|(_, is_error)| *is_error)
        {
            notes.push(format!(
                "{row}: a tool call failed: {}",
                tb_core::agent::head_tail(&content, 300, 300, None).replace('\n', " ⏎ ")
            ));
        }
        if run.peak_prompt + max_tokens > window {
            overflows.push(format!("{row}: {}", run.peak_prompt));
        }
        if savers.compaction && window == TASK_WINDOW && run.compacted_calls.is_empty() {
            notes.push(format!(
                "{row}: compaction never changed a request (final compacted_upto {})",
                run.state.compacted_upto
            ));
        }
    }
    if !overflows.is_empty() {
        notes.push(format!(
            "largest prompt + max_tokens ({max_tokens}) exceeds the window, so a provider that checks it would reject that call: {}",
            overflows.join("; ")
        ));
    }
    for note in notes {
        println!("- {note}");
    }
}

/// What a state store under measurement can say about the bytes it writes.
trait MeasuredStore: StateStore {
    /// How [`MeasuredStore::written_bytes`] counts, for the printout.
    const BYTES: &'static str;
    /// Bytes written so far (a running count; differences are what is printed).
    async fn written_bytes(&self) -> anyhow::Result<u64>;
}

impl MeasuredStore for tb_aws::DynamoStore {
    const BYTES: &'static str = "bytes written = the DynamoDB item size (names + values) of the items put (the store's counter)";

    async fn written_bytes(&self) -> anyhow::Result<u64> {
        Ok(self.bytes_written())
    }
}

impl MeasuredStore for tb_local::SqliteStore {
    const BYTES: &'static str = "bytes written = what this process passed to write(2) during the commits (`wchar` of \
         /proc/self/io): SQLite's WAL frames (whole 4 KiB pages) and any checkpoint";

    async fn written_bytes(&self) -> anyhow::Result<u64> {
        let io = std::fs::read_to_string("/proc/self/io")?;
        io.lines()
            .find_map(|l| l.strip_prefix("wchar:"))
            .ok_or_else(|| anyhow::anyhow!("/proc/self/io has no wchar line"))?
            .trim()
            .parse()
            .map_err(Into::into)
    }
}

/// Commits per measured conversation size.
const COMMITS: usize = 20;

/// One row of section 3.
struct StoreRow {
    /// Messages in the conversation before the measured commits.
    messages: usize,
    commit: Duration,
    bytes: u64,
    json_bytes: u64,
    read: Duration,
    read_messages: usize,
}

/// Appends `n` messages (n even: tool call + tool result pairs, one model call each) to
/// `state` and updates the record's header; returns where they start and the calls.
fn append(state: &mut AgentState, rec: &mut RequestRecord, n: usize) -> (usize, Vec<ModelCall>) {
    let from = state.messages.len();
    state.messages.extend((from..from + n).map(message_at));
    let calls: Vec<ModelCall> = (0..n / 2)
        .map(|k| ModelCall {
            iteration: state.iteration + 1 + k as u32,
            model: "scripted".into(),
            usage: TokenUsage::default(),
            cost: MicroUsd::ZERO,
            latency_ms: 0,
            stop_reason: tb_core::model::StopReason::ToolUse,
        })
        .collect();
    state.calls.extend(calls.iter().cloned());
    state.iteration += calls.len() as u32;
    rec.agent = AgentHeader::of(state);
    rec.version += 1;
    (from, calls)
}

/// The worker's per-iteration write (one conditional transaction: the record, two messages,
/// one call) and its per-slice read (the whole conversation), on any store. Grows one
/// request to ~10, ~100 and ~1,000 messages in large (unmeasured) commits; at each size
/// times `COMMITS` single-iteration commits (only the `commit` call) and one read.
async fn measure_store<S: MeasuredStore>(store: &S) -> anyhow::Result<Vec<StoreRow>> {
    let (mut rec, first) = RequestRecord::new(
        RequestId::generate(),
        UserId::parse("user_bench")?,
        ProjectId::generate(),
        Description::parse(TASK).map_err(anyhow::Error::msg)?,
        tb_core::agent::now_ms(),
    );
    store.create(&rec, &first).await?;
    let mut state = AgentState::new(TASK);
    let mut rows = Vec::new();
    for target in [10usize, 100, 1000] {
        while state.messages.len() + 2 < target {
            let n = ((target - state.messages.len()).min(60) & !1).max(2);
            let expected = rec.version;
            let (from, calls) = append(&mut state, &mut rec, n);
            let appended = Appended {
                first_index: from,
                messages: &state.messages[from..],
                calls: &calls,
            };
            store.commit(&rec, expected, appended).await?;
        }
        let messages = state.messages.len();
        let mut commit = Duration::ZERO;
        let mut bytes = 0;
        let mut json_bytes = 0;
        for _ in 0..COMMITS {
            let expected = rec.version;
            let (from, calls) = append(&mut state, &mut rec, 2);
            let appended = Appended {
                first_index: from,
                messages: &state.messages[from..],
                calls: &calls,
            };
            json_bytes += serde_json::to_vec(&rec)?.len()
                + serde_json::to_vec(appended.messages)?.len()
                + serde_json::to_vec(appended.calls)?.len();
            let before = store.written_bytes().await?;
            let started = Instant::now();
            store.commit(&rec, expected, appended).await?;
            commit += started.elapsed();
            bytes += store.written_bytes().await? - before;
        }
        let started = Instant::now();
        let (read, _) = store.conversation(&rec).await?;
        let read_time = started.elapsed();
        anyhow::ensure!(
            read.len() == state.messages.len(),
            "read {} messages of {}",
            read.len(),
            state.messages.len()
        );
        rows.push(StoreRow {
            messages,
            commit: commit / COMMITS as u32,
            bytes: bytes / COMMITS as u64,
            json_bytes: json_bytes as u64 / COMMITS as u64,
            read: read_time,
            read_messages: read.len(),
        });
    }
    Ok(rows)
}

fn store_table<S: MeasuredStore>(rows: &[StoreRow]) {
    println!("{}.", S::BYTES);
    println!(
        "JSON bytes = serde_json size of the record + the 2 messages + the call, i.e. the payload.\n"
    );
    println!(
        "| messages before the {COMMITS} commits | commit ms | bytes written / iteration | JSON bytes / iteration | conversation read ms (once per slice) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} (read {}) | {:.2} | {} | {} | {:.2} |",
            r.messages,
            r.read_messages,
            r.commit.as_secs_f64() * 1000.0,
            r.bytes,
            r.json_bytes,
            r.read.as_secs_f64() * 1000.0
        );
    }
}

async fn state_store() -> anyhow::Result<()> {
    println!("\n## 3. State store per iteration");
    println!("Per iteration the worker commits the record plus what the iteration appended (an");
    println!("assistant message, a tool-result message, one call) in one conditional transaction;");
    println!("per slice it reads the whole conversation once. One request grows to each size in");
    println!(
        "large commits; then {COMMITS} single-iteration commits are timed (mean) and the conversation read once."
    );

    println!("\n### Local store (SQLite, the embedded default)");
    println!("A fresh database file in a temporary directory, opened as the local binary opens it");
    println!("(WAL, synchronous=FULL: one fsync of the WAL per commit).");
    let dir = tempfile::tempdir()?;
    let db = tb_local::LocalDb::open(dir.path().join("turbobackend.sqlite")).await?;
    let store = tb_local::SqliteStore::new(db);
    let rows = measure_store(&store).await?;
    store_table::<tb_local::SqliteStore>(&rows);
    store.db().close().await;

    println!("\n### DynamoDB (moto on loopback)");
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        println!(
            "skipped: no moto server (run `infra/moto.sh start && eval \"$(infra/moto.sh env)\"` first)"
        );
        return Ok(());
    }
    println!(
        "moto deep-copies the whole table for every item of a transaction, so its commit time"
    );
    println!(
        "grows with the table; DynamoDB's does not. Bytes per iteration are the figure that carries over."
    );
    let aws = tb_aws::testing::TestAws::new().await;
    let store = aws.store();
    let rows = measure_store(&store).await?;
    store_table::<tb_aws::DynamoStore>(&rows);
    Ok(())
}

/// Section 5: the load run (see the module documentation), on a runtime with worker threads
/// of its own, as the test runs it.
fn load_run(args: &[String]) -> anyhow::Result<()> {
    use tb_tests::load::{self, LoadReport, LoadSettings};
    let requests: usize = match args.first().filter(|a| *a != "compare" && *a != "clean") {
        Some(n) => n
            .parse()
            .map_err(|_| anyhow::anyhow!("`{n}` is not a number of requests"))?,
        None => 100,
    };
    let compare = args.iter().any(|a| a == "compare");
    let clean_only = args.iter().any(|a| a == "clean");
    let seed: u64 = std::env::var("TB_LOAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let run = |settings: LoadSettings| -> anyhow::Result<LoadReport> {
        let report = std::thread::spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(load::run(settings))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the load run panicked"))?;
        anyhow::ensure!(
            report.problems.is_empty(),
            "seed {seed}: {} problems:\n{}",
            report.problems.len(),
            report.problems.join("\n")
        );
        Ok(report)
    };
    println!("\n## 5. Load on moto ({requests} requests, seed {seed})");
    let solo = run(LoadSettings::clean(1, seed))?;
    let alone = solo.slowest();
    println!(
        "one request alone, uninterrupted: {:.2} s from the create's answer to its callback",
        alone.as_secs_f64()
    );
    let mut runs = vec![(
        "with 5% of handler runs killed and 10% duplicate deliveries",
        LoadSettings::faulty(requests, seed),
    )];
    if clean_only {
        runs.clear();
    }
    if compare || clean_only {
        runs.push(("without faults", LoadSettings::clean(requests, seed)));
    }
    for (label, settings) in runs {
        let r = run(settings)?;
        println!("\n{label}:\n{}", r.summary());
        println!(
            "throughput {:.1} requests/minute; slowest request {:.2} s, {:.2} s more than one alone",
            r.per_minute(),
            r.slowest().as_secs_f64(),
            r.slowest().saturating_sub(alone).as_secs_f64()
        );
    }
    Ok(())
}
