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
