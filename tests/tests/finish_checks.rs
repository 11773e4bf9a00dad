//! `finish` with endpoint checks: a malformed list is an error the model fixes, a
//! corrected one is accepted and kept in the outcome.

use serde_json::json;
use tb_core::agent::Outcome;
use tb_core::checks::EndpointCheck;
use tb_models::server::ScriptedServer;
use tb_tests::*;

#[tokio::test]
async fn a_malformed_check_list_is_a_tool_error_and_the_corrected_finish_is_accepted() {
    let good = json!([
        {"method": "POST", "path": "/api/todos", "body": {"title": "milk"}, "status": 201, "expect": {"title": "milk"}},
        {"method": "GET", "path": "/api/todos/{{1.id}}", "status": 200}
    ]);
    let server = ScriptedServer::start(script(json!({"turns": [
        {"tool_calls": [{"name": "finish", "input": {"summary": "todos", "checks": [
            {"method": "GET", "path": "/api/todos/{{2.id}}", "status": 200},
            {"method": "FETCH", "path": "/api/todos", "status": 200}
        ]}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "todos", "checks": good}}]}
    ]})))
    .await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    let results = tool_results(&state);
    assert!(
        results[0].1,
        "the malformed finish is an error: {}",
        results[0].0
    );
    assert!(
        results[0].0.contains("check 1") && results[0].0.contains("method `FETCH`"),
        "{}",
        results[0].0
    );
    let checks: Vec<EndpointCheck> = serde_json::from_value(good).unwrap();
    assert_eq!(
        outcome(&state),
        &Outcome::Finished {
            summary: "todos".into(),
            checks: Some(checks),
        }
    );
    assert!(
        results[1].0.contains("2 declared check(s)"),
        "{}",
        results[1].0
    );
}

#[tokio::test]
async fn a_finish_without_checks_is_accepted_and_says_only_health_is_checked() {
    let server = ScriptedServer::start(script(json!({"turns": [
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]})))
    .await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    assert!(matches!(
        outcome(&state),
        Outcome::Finished { checks: None, .. }
    ));
    let results = tool_results(&state);
    assert!(
        results[0].0.contains("only /api/health"),
        "{}",
        results[0].0
    );
}

fn checking() -> tb_core::agent::AgentConfig {
    tb_core::agent::AgentConfig {
        check_on_finish: true,
        ..test_config()
    }
}

#[tokio::test]
async fn finish_builds_starts_and_checks_the_server_and_refuses_while_a_check_fails() {
    let fixed = todo_project_calls(false);
    let server = ScriptedServer::start(script(json!({"turns": [
        {"tool_calls": todo_project_calls(true)},
        {"tool_calls": [{"name": "finish", "input": {"summary": "todos", "checks": todo_checks()}}]},
        {"tool_calls": [fixed[1].clone()]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "todos", "checks": todo_checks()}}]}
    ]})))
    .await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &checking()).await;
    let results = tool_results(&state);
    let refused = &results[2];
    assert!(refused.1, "{}", refused.0);
    assert!(
        refused.0.starts_with("[finish refused at checks]")
            && refused.0.contains("GET /api/todos/1 -> 500")
            && refused.0.contains("answered 500 instead of 200"),
        "{}",
        refused.0
    );
    assert!(matches!(outcome(&state), Outcome::Finished { checks: Some(c), .. } if c.len() == 2));
    let accepted = &results[4].0;
    assert!(
        accepted.contains("the build passed")
            && accepted.contains("answered GET /api/health")
            && accepted.contains("the 2 declared check(s) passed"),
        "{accepted}"
    );
}

#[tokio::test]
async fn finish_is_refused_at_the_build_and_the_run_fails_after_the_attempts() {
    let broken_build = json!({"name": "write_file", "input": {"path": "package.json", "content": "{\"scripts\": {\"build\": \"echo cannot compile server/api/x.ts >&2; exit 2\"}}"}});
    let finish = json!({"name": "finish", "input": {"summary": "x"}});
    let server = ScriptedServer::start(script(json!({"turns": [
        {"tool_calls": [broken_build]},
        {"tool_calls": [finish]}
    ], "repeat_last": true})))
    .await;
    let sandbox = TestSandbox::new().await;
    let config = tb_core::agent::AgentConfig {
        finish_attempts: 2,
        // The same refusal twice is not "stuck" before the cap.
        stuck_repeats: 5,
        ..checking()
    };
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &config).await;
    let results = tool_results(&state);
    assert!(
        results[1].0.starts_with("[finish refused at build]")
            && results[1].0.contains("cannot compile server/api/x.ts"),
        "{}",
        results[1].0
    );
    match outcome(&state) {
        Outcome::Failed { reason } => assert!(
            reason.contains("refused 2 times") && reason.contains("build stage"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(state.iteration, 3);
}
