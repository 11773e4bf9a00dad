//! How the loop is calibrated: the output limit, replies cut at `max_tokens`, stuck
//! detection, the command environment and timeout, reminders before the limits, what is
//! given back after compaction, and a system prompt that stays byte-identical (cached).

use std::time::Duration;

use serde_json::{Value, json};
use tb_core::Block;
use tb_core::agent::{
    Agent, AgentConfig, AgentState, CancelFlag, Outcome, SYSTEM_PROMPT, Slice, SliceEnd, tool_specs,
};
use tb_core::conversation::Role;
use tb_core::model::Model;
use tb_core::pricing::PriceTable;
use tb_models::scripted::{Script, ScriptedModel};
use tb_models::server::ScriptedServer;
use tb_tests::*;

/// The text blocks of the user turns (the notes the loop adds beside tool results).
fn notes(state: &AgentState) -> Vec<String> {
    state
        .messages
        .iter()
        .skip(1)
        .filter(|m| m.role == Role::User)
        .flat_map(|m| &m.content)
        .filter_map(|b| match b {
            Block::Text { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn cut_script(stop_reason: &str) -> Script {
    script(json!({"turns": [
        {"text": "Writing three files.", "stop_reason": stop_reason, "tool_calls": [
            {"name": "write_file", "input": {"path": "a.txt", "content": "a\n"}},
            {"name": "run_command", "input": {"command": "echo b > b.txt"}},
            {"name": "write_file", "input": {"path": "c.txt"}}
        ]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]}))
}

#[tokio::test]
async fn a_reply_cut_at_max_tokens_runs_its_complete_calls_and_refuses_the_cut_one() {
    for (openai, stop) in [(false, "max_tokens"), (true, "length")] {
        let server = ScriptedServer::start(cut_script(stop)).await;
        let sandbox = TestSandbox::new().await;
        let state = if openai {
            run_agent(&openai_client(&server), &sandbox.sandbox, &test_config()).await
        } else {
            run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await
        };
        assert!(outcome(&state).is_success(), "{:?}", state.outcome);
        assert_eq!(sandbox.read("a.txt"), "a\n", "openai: {openai}");
        assert_eq!(sandbox.read("b.txt"), "b\n", "openai: {openai}");
        assert!(!sandbox.file("c.txt").exists());
        let r = tool_results(&state);
        assert!(!r[0].1 && !r[1].1, "{r:?}");
        assert!(
            r[2].1 && r[2].0.contains("cut off inside this call"),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn the_output_limit_leaves_room_for_long_files() {
    let config = AgentConfig::standard();
    assert!(
        (24_000..=32_000).contains(&config.max_tokens),
        "{}",
        config.max_tokens
    );
    let server = ScriptedServer::start(script(json!({"turns": [
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]})))
    .await;
    let sandbox = TestSandbox::new().await;
    run_agent(&anthropic_client(&server), &sandbox.sandbox, &config).await;
    assert_eq!(
        server.last_request().unwrap()["max_tokens"],
        json!(config.max_tokens)
    );
}

/// Each turn tries a different fix and runs the same check; the check fails with the same
/// error four times, then with another error, then passes.
fn fixing_script() -> Script {
    let attempt = |n: usize, body: &str| {
        json!({"text": format!("Fix attempt {n}."), "tool_calls": [
            {"name": "write_file", "input": {"path": "check.js", "content": body}},
            {"name": "run_command", "input": {"command": "node check.js"}}
        ]})
    };
    let missing = |n: usize| {
        attempt(
            n,
            &format!("// attempt {n}\nthrow new Error('DATABASE_URL is missing');\n"),
        )
    };
    script(json!({"turns": [
        missing(1), missing(2), missing(3), missing(4),
        attempt(5, "throw new Error('relation \"users\" does not exist');\n"),
        attempt(6, "console.log('ok');\n"),
        {"tool_calls": [{"name": "finish", "input": {"summary": "fixed"}}]}
    ]}))
}

#[tokio::test]
async fn a_run_that_recovers_from_repeated_errors_by_different_fixes_is_not_stuck() {
    let server = ScriptedServer::start(fixing_script()).await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    assert_eq!(
        outcome(&state),
        &Outcome::Finished {
            summary: "fixed".into(),
            checks: None,
        }
    );
    let r = tool_results(&state);
    assert!(
        r[1].1 && r[1].0.contains("DATABASE_URL is missing"),
        "{r:?}"
    );
    assert!(r[9].1 && r[9].0.contains("does not exist"), "{r:?}");
    assert!(!r[11].1, "{r:?}");
    assert!(
        notes(&state).iter().all(|n| !n.contains("stuck")),
        "{:?}",
        notes(&state)
    );
}

#[tokio::test]
async fn the_same_failing_command_with_changing_output_is_still_stuck() {
    let model = ScriptedModel::new(script(json!({"turns": [
        {"tool_calls": [{"name": "run_command", "input": {"command": "date +%s%N; exit 1"}}]}], "repeat_last": true})));
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&model, &sandbox.sandbox, &test_config()).await;
    assert!(
        matches!(outcome(&state), Outcome::Stuck { reason } if reason.contains("failed 3 times")),
        "{:?}",
        state.outcome
    );
    assert_eq!(state.calls.len(), 4, "three repeats, a nudge, one more");
}

#[tokio::test]
async fn commands_run_without_colours_in_ci_mode_with_a_120_s_default_timeout() {
    let config = AgentConfig::standard();
    assert_eq!(config.command_timeout, Duration::from_secs(120));
    let run = tool_specs(&config)
        .into_iter()
        .find(|t| t.name == "run_command")
        .unwrap();
    assert!(
        run.input_schema["properties"]["timeout_seconds"]["description"]
            .as_str()
            .unwrap()
            .contains("default 120"),
        "{}",
        run.input_schema
    );
    let model = ScriptedModel::new(script(json!({"turns": [
        {"tool_calls": [{"name": "run_command", "input": {"command": "echo \"CI=$CI NO_COLOR=$NO_COLOR progress=$npm_config_progress\""}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]})));
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&model, &sandbox.sandbox, &test_config()).await;
    let r = tool_results(&state);
    assert_eq!(r[0].0, "exit code 0\nCI=1 NO_COLOR=1 progress=false\n");
}

fn endless() -> Script {
    script(
        json!({"turns": [{"tool_calls": [{"name": "run_command", "input": {"command": "date +%s%N"}}]}], "repeat_last": true}),
    )
}

/// The iteration after which each note first appears.
fn first_note(state: &AgentState, prefix: &str) -> Option<u32> {
    let mut iteration = 0;
    for m in &state.messages {
        match m.role {
            Role::Assistant => iteration += 1,
            Role::User => {
                if m.content
                    .iter()
                    .any(|b| matches!(b, Block::Text { text } if text.starts_with(prefix)))
                {
                    return Some(iteration);
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn the_model_is_reminded_at_80_percent_and_given_a_last_turn_before_the_iteration_cap() {
    let sandbox = TestSandbox::new().await;
    let config = AgentConfig {
        max_iterations: 10,
        ..test_config()
    };
    let state = run_agent(&ScriptedModel::new(endless()), &sandbox.sandbox, &config).await;
    assert_eq!(outcome(&state), &Outcome::IterationCap { iterations: 10 });
    assert_eq!(first_note(&state, "[Reminder] iteration"), Some(8));
    assert_eq!(first_note(&state, "[Last turn] iteration"), Some(9));
    let said = notes(&state);
    assert_eq!(
        said.iter().filter(|n| n.starts_with("[Reminder]")).count(),
        1,
        "{said:?}"
    );
    assert_eq!(
        said.iter().filter(|n| n.starts_with("[Last turn]")).count(),
        1,
        "{said:?}"
    );
}

#[tokio::test]
async fn the_model_is_reminded_and_given_a_last_turn_before_the_budget_runs_out() {
    let sandbox = TestSandbox::new().await;
    let config = AgentConfig {
        budget: tb_core::MicroUsd::from_micros(60_000),
        max_iterations: 1000,
        ..test_config()
    };
    let state = run_agent(&ScriptedModel::new(endless()), &sandbox.sandbox, &config).await;
    assert!(
        matches!(outcome(&state), Outcome::BudgetExhausted { .. }),
        "{:?}",
        state.outcome
    );
    let reminded = first_note(&state, "[Reminder] budget").expect("a budget reminder");
    let last = first_note(&state, "[Last turn] budget").expect("a last turn");
    assert!(
        reminded < last && last < state.iteration,
        "{reminded} {last} {}",
        state.iteration
    );
    // The reminder came once 80% was spent, not before.
    let spent: i64 = state.calls[..reminded as usize]
        .iter()
        .map(|c| c.cost.micros())
        .sum();
    let before: i64 = spent - state.calls[reminded as usize - 1].cost.micros();
    assert!(
        spent * 5 >= 60_000 * 4 && before * 5 < 60_000 * 4,
        "{before} {spent}"
    );
}

async fn run_from(
    model: &dyn Model,
    sandbox: &TestSandbox,
    config: &AgentConfig,
    mut state: AgentState,
    iterations: u32,
) -> AgentState {
    let prices = PriceTable::with_defaults();
    let agent = Agent {
        model,
        sandbox: &sandbox.sandbox,
        db: None,
        prices: &prices,
        config,
        cancel: CancelFlag::default(),
        base: None,
    };
    let end = agent
        .run(
            &mut state,
            Slice {
                max_iterations: iterations,
                deadline: None,
            },
        )
        .await
        .expect("agent run");
    assert!(matches!(end, SliceEnd::Paused | SliceEnd::Done(_)));
    state
}

#[tokio::test]
async fn the_model_is_reminded_when_80_percent_of_the_time_is_used() {
    let sandbox = TestSandbox::new().await;
    let config = AgentConfig {
        wall_clock: Duration::from_secs(1000),
        ..test_config()
    };
    let mut state = AgentState::new("task");
    // 810 s of the 1000 are gone.
    state.started_at_ms -= 810_000;
    let state = run_from(&ScriptedModel::new(endless()), &sandbox, &config, state, 2).await;
    assert_eq!(
        first_note(&state, "[Reminder] time"),
        Some(1),
        "{:?}",
        notes(&state)
    );
    assert_eq!(notes(&state).len(), 1, "{:?}", notes(&state));
}

#[tokio::test]
async fn after_compaction_the_file_tree_and_small_sources_are_given_back() {
    let mut turns = vec![
        json!({"tool_calls": [{"name": "write_file", "input": {"path": "server/api/users.get.ts", "content": "export default 1;\n"}}]}),
    ];
    turns.extend(std::iter::repeat_n(json!({"tool_calls": [{"name": "run_command", "input": {"command": "seq 1 1500; date +%N"}}]}), 8));
    turns.push(json!({"tool_calls": [{"name": "finish", "input": {"summary": "ok"}}]}));
    let model = ScriptedModel::new(script(json!({"context_window": 30000, "turns": turns})));
    let sandbox = TestSandbox::new().await;
    let config = AgentConfig {
        keep_recent_messages: 4,
        max_tokens: 8_000,
        ..test_config()
    };
    let state = run_agent(&model, &sandbox.sandbox, &config).await;
    assert!(state.compacted_upto > 0, "the boundary never moved");
    let given = notes(&state)
        .into_iter()
        .find(|n| n.starts_with("[Context shortened]"))
        .expect("a note after compaction");
    assert!(
        given.contains("server/api/users.get.ts (18 bytes)"),
        "{given}"
    );
    // The small sources come back too, as they are now.
    assert!(
        given.contains("--- server/api/users.get.ts ---\nexport default 1;\n"),
        "{given}"
    );
}

#[tokio::test]
async fn the_system_prompt_and_tools_are_byte_identical_across_requests_and_iterations() {
    // A run with every kind of note: reminders, a last turn, compaction.
    let server = ScriptedServer::start(script(json!({"context_window": 20000, "turns": [
        {"tool_calls": [{"name": "run_command", "input": {"command": "seq 1 1500; date +%N"}}]}], "repeat_last": true}))).await;
    let sandbox = TestSandbox::new().await;
    let config = AgentConfig {
        max_iterations: 10,
        keep_recent_messages: 4,
        max_tokens: 4_000,
        ..test_config()
    };
    let mut state = AgentState::new("task");
    let mut sent: Vec<(Value, Value)> = Vec::new();
    while state.outcome.is_none() {
        // A fresh client per slice, as separate worker invocations would have.
        let mut client = tb_models::anthropic::AnthropicConfig::new("test-key", "scripted");
        client.base_url = server.url();
        client.context_window = 20_000;
        client.retry = quick_retries();
        let client = tb_models::anthropic::AnthropicClient::new(client).unwrap();
        state = run_from(&client, &sandbox, &config, state, 1).await;
        let body = server.last_request().unwrap();
        sent.push((body["system"].clone(), body["tools"].clone()));
    }
    assert!(
        state.compacted_upto > 0 && notes(&state).len() >= 3,
        "{:?}",
        notes(&state)
    );
    assert_eq!(sent[0].0[0]["text"], json!(SYSTEM_PROMPT));
    for s in &sent {
        assert_eq!(
            serde_json::to_vec(s).unwrap(),
            serde_json::to_vec(&sent[0]).unwrap()
        );
    }
}
