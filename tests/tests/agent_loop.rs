//! The agent loop end to end: real model clients against the scripted server on loopback,
//! a real local sandbox.

use serde_json::{Value, json};
use tb_core::MicroUsd;
use tb_core::agent::{Agent, AgentConfig, AgentState, CancelFlag, Outcome, Slice, SliceEnd};
use tb_core::pricing::PriceTable;
use tb_models::scripted::{Script, ScriptedModel};
use tb_models::server::ScriptedServer;
use tb_tests::*;

fn hello_script() -> Script {
    script(json!({"turns": [
        {"text": "Writing a file.", "tool_calls": [{"name": "write_file", "input": {"path": "notes/hello.txt", "content": "hello from the model\n"}}]},
        {"tool_calls": [{"name": "run_command", "input": {"command": "cat notes/hello.txt; echo made-by-command > out.txt; echo done"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "wrote and read a file"}}]}
    ]}))
}

async fn assert_hello_run(state: &AgentState, sandbox: &TestSandbox) {
    assert_eq!(
        outcome(state),
        &Outcome::Finished {
            summary: "wrote and read a file".into(),
            checks: None,
        }
    );
    assert_eq!(sandbox.read("notes/hello.txt"), "hello from the model\n");
    assert_eq!(sandbox.read("out.txt"), "made-by-command\n");
    let results = tool_results(state);
    // The model read back what the command printed.
    assert!(
        results[1].0.starts_with("exit code 0\n"),
        "{}",
        results[1].0
    );
    assert!(
        results[1].0.contains("hello from the model\ndone"),
        "{}",
        results[1].0
    );
    assert_eq!(state.calls.len(), 3);
    assert_eq!(state.iteration, 3);
}

#[tokio::test]
async fn the_loop_builds_files_through_the_anthropic_client() {
    let server = ScriptedServer::start(hello_script()).await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    assert_hello_run(&state, &sandbox).await;
    assert_eq!(server.requests(), 3);
    // Prompt caching: the later calls read the cached prefix.
    assert!(state.calls[2].usage.cache_read > 0, "{:?}", state.calls);
}

#[tokio::test]
async fn the_loop_builds_files_through_the_openai_compatible_client() {
    let server = ScriptedServer::start(hello_script()).await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&openai_client(&server), &sandbox.sandbox, &test_config()).await;
    assert_hello_run(&state, &sandbox).await;
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn cost_is_the_sum_of_calls_each_priced_by_token_kind() {
    let server = ScriptedServer::start(hello_script()).await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    let price = PriceTable::with_defaults().price_for("scripted").unwrap();
    for call in &state.calls {
        assert_eq!(call.cost, price.cost(&call.usage));
        // Recompute by hand: each kind at its own price, never the cached tokens as input too.
        let u = call.usage;
        let nanos = u.input as i128 * 3_000_000
            + u.output as i128 * 15_000_000
            + u.cache_write as i128 * 3_750_000
            + u.cache_read as i128 * 300_000;
        assert_eq!(call.cost.micros() as i128, (nanos + 999_999) / 1_000_000);
    }
    assert_eq!(
        state.cost,
        state.calls.iter().map(|c| c.cost).sum::<MicroUsd>()
    );
    assert!(
        state
            .calls
            .iter()
            .any(|c| c.usage.cache_read > 0 && c.usage.cache_write > 0)
    );
    let total = state
        .calls
        .iter()
        .fold(tb_core::TokenUsage::default(), |mut t, c| {
            t += c.usage;
            t
        });
    assert_eq!(state.usage, total);

    // The same run without caching bills every prompt token as input and costs more.
    let server = ScriptedServer::start(hello_script()).await;
    let sandbox = TestSandbox::new().await;
    let uncached = run_agent(
        &anthropic_client(&server),
        &sandbox.sandbox,
        &AgentConfig {
            prompt_caching: false,
            ..test_config()
        },
    )
    .await;
    assert_eq!(uncached.usage.cache_read + uncached.usage.cache_write, 0);
    // Same prompts either way: caching changes how tokens are billed, not how many there are.
    let prompt = |s: &AgentState| {
        s.calls
            .iter()
            .map(|c| c.usage.prompt_total())
            .collect::<Vec<_>>()
    };
    let (a, b) = (prompt(&state), prompt(&uncached));
    for (x, y) in a.iter().zip(&b) {
        assert!(
            x.abs_diff(*y) * 20 < *y,
            "prompt sizes differ too much: {a:?} vs {b:?}"
        );
    }
}

fn endless_script() -> Script {
    // A different command output every time, so the stuck detector stays quiet.
    script(
        json!({"turns": [{"tool_calls": [{"name": "run_command", "input": {"command": "date +%s%N; echo $RANDOM"}}]}], "repeat_last": true}),
    )
}

#[tokio::test]
async fn the_iteration_cap_stops_the_loop() {
    let model = ScriptedModel::new(endless_script());
    let sandbox = TestSandbox::new().await;
    let config = AgentConfig {
        max_iterations: 4,
        ..test_config()
    };
    let state = run_agent(&model, &sandbox.sandbox, &config).await;
    assert_eq!(outcome(&state), &Outcome::IterationCap { iterations: 4 });
    assert_eq!(state.calls.len(), 4);
}

#[tokio::test]
async fn the_budget_stops_the_loop_and_is_overshot_by_at_most_one_call() {
    let model = ScriptedModel::new(endless_script());
    let sandbox = TestSandbox::new().await;
    let budget = MicroUsd::from_micros(30_000);
    let config = AgentConfig {
        budget,
        max_iterations: 1000,
        ..test_config()
    };
    let state = run_agent(&model, &sandbox.sandbox, &config).await;
    assert!(
        matches!(outcome(&state), Outcome::BudgetExhausted { .. }),
        "{:?}",
        state.outcome
    );
    assert!(
        state.calls.len() > 2,
        "the budget should allow a few calls: {}",
        state.calls.len()
    );
    let last = state.calls.last().unwrap().cost;
    assert!(state.cost >= budget);
    assert!(
        state.cost - last < budget,
        "a call was made although the budget was already spent"
    );
    // The overshoot is bounded by what one call can cost with max_tokens.
    let price = PriceTable::with_defaults().price_for("scripted").unwrap();
    let prompt = state.calls.last().unwrap().usage.prompt_total();
    assert!(last <= price.worst_case(prompt, config.max_tokens));
}

#[tokio::test]
async fn a_resumed_run_ends_exactly_like_an_uninterrupted_one() {
    let config = test_config();
    let prices = PriceTable::with_defaults();

    let server = ScriptedServer::start(hello_script()).await;
    let sandbox = TestSandbox::new().await;
    let whole = run_agent(&anthropic_client(&server), &sandbox.sandbox, &config).await;

    // One iteration per slice, the state serialised between slices, a fresh client each time
    // (as separate worker invocations would have).
    let server = ScriptedServer::start(hello_script()).await;
    let sliced_sandbox = TestSandbox::new().await;
    let mut stored = serde_json::to_string(&AgentState {
        started_at_ms: whole.started_at_ms,
        ..AgentState::new("Create a simple API with a users endpoint")
    })
    .unwrap();
    let mut slices = 0;
    loop {
        let mut state: AgentState = serde_json::from_str(&stored).unwrap();
        let client = anthropic_client(&server);
        let agent = Agent {
            model: &client,
            sandbox: &sliced_sandbox.sandbox,
            db: None,
            prices: &prices,
            config: &config,
            cancel: CancelFlag::default(),
            base: None,
        };
        let end = agent
            .run(
                &mut state,
                Slice {
                    max_iterations: 1,
                    deadline: None,
                },
            )
            .await
            .unwrap();
        stored = serde_json::to_string(&state).unwrap();
        slices += 1;
        if let SliceEnd::Done(_) = end {
            break;
        }
    }
    let resumed: AgentState = serde_json::from_str(&stored).unwrap();
    assert!(slices >= 3);
    assert_eq!(resumed.messages, whole.messages);
    assert_eq!(
        calls_without_latency(&resumed),
        calls_without_latency(&whole)
    );
    assert_eq!(
        (resumed.cost, resumed.usage, &resumed.outcome),
        (whole.cost, whole.usage, &whole.outcome)
    );
    assert_eq!(sliced_sandbox.read("out.txt"), sandbox.read("out.txt"));
}

#[tokio::test]
async fn stuck_detection_nudges_once_then_stops() {
    let model = ScriptedModel::new(script(json!({"turns": [
        {"tool_calls": [{"name": "run_command", "input": {"command": "ls does-not-exist"}}]}], "repeat_last": true})));
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&model, &sandbox.sandbox, &test_config()).await;
    assert!(
        matches!(outcome(&state), Outcome::Stuck { reason } if reason.contains("3 times")),
        "{:?}",
        state.outcome
    );
    assert_eq!(
        state.calls.len(),
        4,
        "three repeats, a nudge, one more repeat"
    );
    let nudges = state
        .messages
        .iter()
        .filter(|m| m.text().contains("You seem to be stuck"))
        .count();
    assert_eq!(nudges, 1);
}

#[tokio::test]
async fn a_100_mb_output_neither_floods_the_context_nor_the_memory() {
    let model = ScriptedModel::new(script(json!({"turns": [
        {"tool_calls": [{"name": "run_command", "input": {"command": "head -c 100000000 /dev/zero | tr '\\0' a; echo; echo THE-END"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "ok"}}]}]})));
    let sandbox = TestSandbox::new().await;
    let before = peak_rss_kb();
    let state = run_agent(&model, &sandbox.sandbox, &test_config()).await;
    let grown_mb = (peak_rss_kb() - before) / 1024;
    let (content, _) = &tool_results(&state)[0];
    assert!(
        content.len() < 10_000,
        "{} bytes reached the context",
        content.len()
    );
    assert!(
        content.contains("the output was 100000009 bytes"),
        "{}",
        &content[..300]
    );
    assert!(content.contains(".turbobackend/outputs/1-0.log"));
    assert!(content.trim_end().ends_with("THE-END"));
    let log = sandbox.file(".turbobackend/outputs/1-0.log");
    assert_eq!(
        std::fs::metadata(log).unwrap().len(),
        100_000_009,
        "the full output is kept in the sandbox"
    );
    assert!(grown_mb < 50, "peak memory grew by {grown_mb} MB");
}

#[tokio::test]
async fn output_written_past_the_log_to_the_commands_own_pipe_is_capped_too() {
    // The command writes to its parent's stdout (the sandbox's output pipe, not the log),
    // before and after the wrapper's markers: every path ends in the same cap.
    let commands = [
        "head -c 262144 /dev/zero | tr '\\0' b > /proc/$PPID/fd/1; echo done",
        "(sleep 0.3; head -c 262144 /dev/zero | tr '\\0' c > /proc/$PPID/fd/1) & echo bg",
        "head -c 262144 /dev/zero | tr '\\0' d > /proc/$PPID/fd/2; exit 3",
    ];
    let mut turns: Vec<Value> = commands
        .iter()
        .map(|c| json!({"tool_calls": [{"name": "run_command", "input": {"command": c}}]}))
        .collect();
    turns.push(json!({"tool_calls": [{"name": "finish", "input": {"summary": "ok"}}]}));
    let model = ScriptedModel::new(script(json!({ "turns": turns })));
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&model, &sandbox.sandbox, &test_config()).await;
    let results = tool_results(&state);
    for (i, (content, _)) in results.iter().take(commands.len()).enumerate() {
        assert!(
            content.len() < 10_000,
            "command {i}: {} bytes reached the context",
            content.len()
        );
    }
}

fn peak_rss_kb() -> u64 {
    tb_tests::peak_rss_kib(std::process::id()).unwrap_or(0)
}

#[tokio::test]
async fn hostile_paths_from_the_model_are_refused() {
    let model = ScriptedModel::new(script(json!({"turns": [
        {"tool_calls": [
            {"name": "write_file", "input": {"path": "../../etc/passwd", "content": "x"}},
            {"name": "read_file", "input": {"path": "/etc/passwd"}},
            {"name": "delete_file", "input": {"path": "a/../../b"}},
            {"name": "run_command", "input": {"command": "ln -s /etc escape"}}]},
        {"tool_calls": [
            {"name": "read_file", "input": {"path": "escape/passwd"}},
            {"name": "write_file", "input": {"path": "escape/evil", "content": "x"}},
            {"name": "list_files", "input": {"path": "../"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "tried"}}]}]})));
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&model, &sandbox.sandbox, &test_config()).await;
    let results = tool_results(&state);
    for i in [0, 1, 2, 4, 5, 6] {
        assert!(
            results[i].1,
            "call {i} should have failed: {}",
            results[i].0
        );
        assert!(!results[i].0.contains("root:"), "leaked: {}", results[i].0);
    }
    assert!(results[0].0.contains("refused"));
    assert!(results[4].0.contains("outside"), "{}", results[4].0);
    assert!(!std::path::Path::new("/etc/evil").exists());
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_children() {
    let model = ScriptedModel::new(script(json!({"turns": [
        {"tool_calls": [{"name": "run_command", "input": {"command": "sleep 300 & echo $! > child.pid; echo started; sleep 300", "timeout_seconds": 1}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "ok"}}]}]})));
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&model, &sandbox.sandbox, &test_config()).await;
    let (content, is_error) = &tool_results(&state)[0];
    assert!(*is_error);
    assert!(content.starts_with("timed out after 1s"), "{content}");
    assert!(
        content.contains("started"),
        "the output before the kill is kept: {content}"
    );
    let pid: i32 = sandbox.read("child.pid").trim().parse().unwrap();
    let mut alive = true;
    for _ in 0..50 {
        alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ");
        if !alive {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!alive, "the background child {pid} survived the timeout");
}

#[tokio::test]
async fn overloaded_and_rate_limited_models_are_retried_and_bad_requests_are_not() {
    let server = ScriptedServer::start(hello_script()).await;
    server.fail_next(2, 529, &[("retry-after", "0")]);
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    assert!(outcome(&state).is_success());
    assert_eq!(server.requests(), 5, "two failures, then three calls");

    let server = ScriptedServer::start(hello_script()).await;
    server.fail_next(1, 400, &[]);
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    assert!(
        matches!(outcome(&state), Outcome::Failed { reason } if reason.contains("400")),
        "{:?}",
        state.outcome
    );
    assert_eq!(server.requests(), 1);
    assert_eq!(state.cost, MicroUsd::ZERO);
}

/// A run through everything the Messages API is picky about sending back: a whitespace
/// text block and thinking blocks before a tool call, a paused turn, a reply cut off by
/// `max_tokens` in the middle of a tool call.
fn picky_script() -> Script {
    script(json!({"turns": [
        {"text": "\n", "thinking": "Write the notes first.", "redacted_thinking": true,
         "tool_calls": [{"name": "write_file", "input": {"path": "notes/a.txt", "content": "a\n"}}]},
        {"text": "Looking things up.", "stop_reason": "pause_turn"},
        {"text": "Writing the rest.", "stop_reason": "max_tokens",
         "tool_calls": [{"name": "write_file", "input": {"path": "notes/cut.txt"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "notes written"}}]}
    ]}))
}

#[tokio::test]
async fn conversations_the_messages_api_would_refuse_are_never_sent() {
    let server = ScriptedServer::start(picky_script()).await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    assert_eq!(
        outcome(&state),
        &Outcome::Finished {
            summary: "notes written".into(),
            checks: None,
        },
        "{:#?}",
        state.messages
    );
    assert_eq!(server.requests(), 4);
    assert_eq!(sandbox.read("notes/a.txt"), "a\n");
    assert!(
        !sandbox.file("notes/cut.txt").exists(),
        "a tool call cut off by max_tokens never runs"
    );
    let results = tool_results(&state);
    assert!(
        results[1].1 && results[1].0.contains("cut off"),
        "{results:?}"
    );
    // The thinking blocks are stored as received, signatures included.
    let first = &state.messages[1].content;
    assert!(
        matches!(first[0], tb_core::Block::Thinking { .. })
            && matches!(first[1], tb_core::Block::RedactedThinking { .. }),
        "{first:?}"
    );
}

#[tokio::test]
async fn a_refusal_ends_the_run_with_the_models_explanation() {
    for openai in [false, true] {
        let server = ScriptedServer::start(script(json!({"turns": [
            {"text": "Writing.", "tool_calls": [{"name": "write_file", "input": {"path": "a.txt", "content": "a"}}]},
            {"stop_reason": "refusal"}
        ]})))
        .await;
        let sandbox = TestSandbox::new().await;
        let state = if openai {
            run_agent(&openai_client(&server), &sandbox.sandbox, &test_config()).await
        } else {
            run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await
        };
        let end = outcome(&state);
        assert_eq!(
            end,
            &Outcome::Refused {
                message: tb_models::scripted::REFUSAL_EXPLANATION.into()
            },
            "openai: {openai}"
        );
        assert_eq!(
            end.describe(),
            "the model refused: The scripted model declined this request."
        );
        assert_eq!(state.calls.len(), 2);
    }
}

#[tokio::test]
async fn a_reply_cut_off_by_the_context_window_runs_no_tool_and_ends_the_run() {
    let server = ScriptedServer::start(script(json!({"turns": [
        {"stop_reason": "model_context_window_exceeded",
         "tool_calls": [{"name": "write_file", "input": {"path": "big.txt", "content": "x"}}]}
    ]})))
    .await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    assert!(
        !sandbox.file("big.txt").exists(),
        "a cut-off tool call never runs"
    );
    assert!(
        matches!(outcome(&state), Outcome::Failed { reason } if reason.contains("context window")),
        "{:?}",
        state.outcome
    );
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_cancelled_run_stops_before_the_next_call() {
    let model = ScriptedModel::new(endless_script());
    let sandbox = TestSandbox::new().await;
    let prices = PriceTable::with_defaults();
    let config = test_config();
    let cancel = CancelFlag::default();
    let agent = Agent {
        model: &model,
        sandbox: &sandbox.sandbox,
        db: None,
        prices: &prices,
        config: &config,
        cancel: cancel.clone(),
        base: None,
    };
    let mut state = AgentState::new("task");
    agent
        .run(
            &mut state,
            Slice {
                max_iterations: 2,
                deadline: None,
            },
        )
        .await
        .unwrap();
    cancel.cancel();
    let end = agent.run(&mut state, Slice::unbounded()).await.unwrap();
    assert_eq!(end, SliceEnd::Done(Outcome::Cancelled));
    assert_eq!(state.calls.len(), 2);
}

#[tokio::test]
async fn an_unpriced_model_is_refused_before_any_call() {
    let model = ScriptedModel::new(script(json!({"model": "mystery-model", "turns": []})));
    let sandbox = TestSandbox::new().await;
    let prices = PriceTable::with_defaults();
    let config = test_config();
    let agent = Agent {
        model: &model,
        sandbox: &sandbox.sandbox,
        db: None,
        prices: &prices,
        config: &config,
        cancel: CancelFlag::default(),
        base: None,
    };
    let mut state = AgentState::new("task");
    let err = agent.run(&mut state, Slice::unbounded()).await.unwrap_err();
    assert!(err.to_string().contains("no known price"), "{err}");
    assert!(state.calls.is_empty());
}

#[tokio::test]
async fn the_context_is_compacted_when_it_nears_the_window() {
    // Each turn prints ~6 KB; a 12k-token window fills within a few turns.
    let turn = json!({"tool_calls": [{"name": "run_command", "input": {"command": "seq 1 1500; date +%N"}}]});
    let make = |turns: usize| {
        let mut t = vec![turn.clone(); turns];
        t.push(json!({"tool_calls": [{"name": "finish", "input": {"summary": "ok"}}]}));
        script(json!({"context_window": 12000, "turns": t}))
    };
    let sandbox = TestSandbox::new().await;
    let compacting = run_agent(
        &ScriptedModel::new(make(10)),
        &sandbox.sandbox,
        &AgentConfig {
            keep_recent_messages: 4,
            ..test_config()
        },
    )
    .await;
    let sandbox = TestSandbox::new().await;
    let plain = run_agent(
        &ScriptedModel::new(make(10)),
        &sandbox.sandbox,
        &AgentConfig {
            compaction: false,
            ..test_config()
        },
    )
    .await;

    assert!(outcome(&compacting).is_success() && outcome(&plain).is_success());
    assert!(compacting.compacted_upto > 0, "the boundary never moved");
    // The stored conversation is never rewritten, only what is sent shrinks.
    assert_eq!(compacting.messages.len(), plain.messages.len());
    let last_prompt = |s: &AgentState| s.calls.last().unwrap().usage.prompt_total();
    assert!(
        last_prompt(&compacting) * 2 < last_prompt(&plain),
        "compacted {} vs plain {} tokens",
        last_prompt(&compacting),
        last_prompt(&plain)
    );
}

#[tokio::test]
async fn the_loop_runs_in_a_daytona_sandbox_through_its_rest_api() {
    use tb_core::sandbox::{SandboxProvider, SandboxSpec};
    let daytona = tb_testkit::FakeDaytona::start("daytona-test-key").await;
    let provider = daytona.provider();
    let sandbox = provider
        .create(&SandboxSpec {
            name: "agent-run".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let server = ScriptedServer::start(hello_script()).await;
    let state = run_agent(&anthropic_client(&server), sandbox.as_ref(), &test_config()).await;
    assert_eq!(
        outcome(&state),
        &Outcome::Finished {
            summary: "wrote and read a file".into(),
            checks: None,
        }
    );
    // The files really landed in the sandbox behind the API.
    let dir = daytona.workspace_dir(sandbox.id()).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("notes/hello.txt")).unwrap(),
        "hello from the model\n"
    );
    assert!(
        tool_results(&state)[1]
            .0
            .contains("hello from the model\ndone")
    );
}
