//! The eval harness on the scripted model: the tasks with a script run through the whole
//! local pipeline (real sandbox, npm, build, git, local deploy), the others are reported as
//! skipped, and the totals add up the tasks that ran.

mod common;

use common::turbobackend;
use serde_json::Value;

#[test]
fn the_scripted_tasks_run_end_to_end_and_the_rest_are_reported_skipped() {
    let data = tempfile::tempdir().unwrap();
    let out = turbobackend(data.path(), &["eval", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let (rows, last) = lines.split_at(lines.len() - 1);
    let summary = &last[0];
    assert!(rows.len() >= 20, "{rows:?}");
    let ran: Vec<&Value> = rows.iter().filter(|r| r["skipped"].is_null()).collect();
    let skipped: Vec<&Value> = rows.iter().filter(|r| !r["skipped"].is_null()).collect();
    assert_eq!(ran.len(), 1, "{rows:?}");
    let users = ran[0];
    assert_eq!(users["task"], "users");
    for field in ["finished", "deployed", "health_verified", "verified"] {
        assert_eq!(users[field], true, "{field}: {users}");
    }
    // The built-in script starts from the template: three turns.
    assert_eq!(users["iterations"], 3, "{users}");
    assert!(users["tokens"]["output"].as_u64().unwrap() > 0, "{users}");
    assert!(users["cost_micro_usd"].as_i64().unwrap() > 0, "{users}");
    assert_eq!(summary["scripted"], true);
    assert_eq!(summary["ran"], 1);
    assert_eq!(
        summary["skipped"].as_array().unwrap().len(),
        skipped.len(),
        "{summary}"
    );
    assert_eq!(summary["total"]["iterations"], users["iterations"]);
    assert_eq!(summary["total"]["cost_micro_usd"], users["cost_micro_usd"]);
    assert!(
        summary["machine"].as_str().unwrap().contains("cores"),
        "{summary}"
    );

    // A task that is not in the list is refused, naming the ones that are.
    let out = turbobackend(data.path(), &["eval", "--task", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// With a model configured (here the scripted server behind the Anthropic client), every
/// task picked runs, script or not, and the model is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_model_configured_a_task_without_a_script_runs_too() {
    // A model that finishes at once: the project is the template as seeded.
    let script = tb_models::scripted::Script::from_json(
        r#"{"turns": [{"tool_calls": [{"name": "finish", "input": {"summary": "The template as it is."}}]}]}"#,
    )
    .unwrap();
    let model = tb_models::server::ScriptedServer::start(script).await;
    let data = tempfile::tempdir().unwrap();
    let out = tokio::task::block_in_place(|| {
        turbobackend(
            data.path(),
            &["eval", "--task", "todos", "--output", "json"],
        )
        .env("ANTHROPIC_API_KEY", "test-key")
        .env("ANTHROPIC_BASE_URL", model.url())
        .output()
        .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let (todos, summary) = (&lines[0], &lines[1]);
    assert_eq!(todos["task"], "todos");
    assert!(todos["skipped"].is_null(), "{todos}");
    assert_eq!(todos["iterations"], 1, "{todos}");
    // The template alone builds, deploys and answers its health check.
    for field in ["finished", "deployed", "health_verified", "verified"] {
        assert_eq!(todos[field], true, "{field}: {todos}");
    }
    assert_eq!(summary["scripted"], false);
    assert_eq!(summary["ran"], 1);
    assert!(
        summary["model"]
            .as_str()
            .unwrap()
            .contains("Anthropic Messages API"),
        "{summary}"
    );
}
