//! Proof that a deployment works, through the real binary: a todo API with tags, played by
//! its own script (two migrations, the dev database tool, declared checks that chain),
//! passes `run` on the local Postgres cluster with every declared check verified against
//! the live app, and `--keep-running` then serves it.

use std::time::Duration;

use serde_json::Value;
use tb_models::TODO_TAGS_SCRIPT;
use tb_models::scripted::Script;
use tb_models::server::ScriptedServer;

mod common;
use common::{DropDatabases, events, turbobackend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_todo_api_with_tags_passes_run_with_its_declared_checks_and_then_serves() {
    let data = tempfile::tempdir().unwrap();
    let model = ScriptedServer::start(Script::from_json(TODO_TAGS_SCRIPT).unwrap()).await;
    let mut databases = DropDatabases(None);
    let mut run = turbobackend(
        data.path(),
        &[
            "run",
            "An API for a todo list with tags",
            "--output",
            "json",
            "--keep-running",
        ],
    )
    .env("DB_CLUSTER_HOST", "127.0.0.1")
    .env("DB_CLUSTER_PORT", "5432")
    .env("DB_CLUSTER_USER", "postgres")
    .env("ANTHROPIC_API_KEY", "test-key")
    .env("ANTHROPIC_BASE_URL", model.url())
    .spawn()
    .unwrap();
    let seen = tokio::task::block_in_place(|| {
        events(&mut run, |e| {
            e["event"] == "serving" || e["event"] == "done" && e["status"]["phase"] != "succeeded"
        })
    });
    if let Some(project) = seen[0]["project_id"].as_str() {
        databases.0 = Some(tb_core::domain::ProjectId::parse(project).unwrap());
    }
    let serving = seen.iter().find(|e| e["event"] == "serving");
    let Some(url) = serving.and_then(|e| e["url"].as_str()).map(String::from) else {
        let _ = run.kill();
        panic!("the request did not end serving: {seen:#?}");
    };
    let status = &seen.iter().find(|e| e["event"] == "done").unwrap()["status"];
    assert_eq!(status["phase"], "succeeded");
    assert_eq!(
        status["result"]["database"]["applied"],
        serde_json::json!(["001_todos.sql", "002_tags.sql"])
    );

    // The calls shown are the verify step's: health and the seven declared checks, passed.
    let calls: Vec<&Value> = seen.iter().filter(|e| e["event"] == "call").collect();
    let shown: Vec<String> = calls
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c["method"].as_str().unwrap(),
                c["path"].as_str().unwrap(),
                c["status"]
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            "GET /api/health 200",
            "POST /api/todos 201",
            "POST /api/todos 201",
            "GET /api/todos/1 200",
            "GET /api/todos?tag=shop 200",
            "GET /api/todos?tag=home 200",
            "POST /api/todos 400",
            "GET /api/todos/999999 404"
        ],
        "{calls:#?}"
    );
    assert!(calls.iter().all(|c| c["passed"] == true), "{calls:#?}");
    let verify = &status["result"]["verify"];
    assert_eq!(
        (verify["declared"].as_u64(), verify["passed"].as_bool()),
        (Some(7), Some(true))
    );

    let activity = status["activity"].to_string();
    assert!(activity.contains("verify: done"), "{activity}");

    // Still serving: the tags written by the checks are in the real database.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let home: Value = http
        .get(format!("{url}/api/todos?tag=home"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(home.as_array().map(Vec::len), Some(2), "{home}");
    let _ = run.kill();
    let _ = run.wait();

    // The signed receipt verifies with the documented command; a tampered copy does not.
    let document = &status["result"]["receipt"]["document"];
    let receipt = &document["receipt"];
    assert_eq!(receipt["verified"], true);
    assert_eq!(receipt["checks"].as_array().map(Vec::len), Some(8));
    let names: Vec<&str> = receipt["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["001_todos.sql", "002_tags.sql"]);
    let file = data.path().join("receipt.json");
    std::fs::write(&file, serde_json::to_string_pretty(document).unwrap()).unwrap();
    let verify = |path: &std::path::Path| {
        turbobackend(data.path(), &["receipt", "verify", path.to_str().unwrap()])
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap()
    };
    let ok = verify(&file);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("receipt verified"));
    // It is committed to the local bare repository, on top of the source commit it names,
    // as `.turbobackend/receipt.json` at main's head; that file verifies too.
    let repo_url = status["result"]["repository"]["repo_url"].as_str().unwrap();
    let source = status["result"]["repository"]["commit_sha"]
        .as_str()
        .unwrap();
    assert_eq!(receipt["commit_sha"], source);
    let receipt_commit = status["result"]["receipt"]["receipt_commit_sha"]
        .as_str()
        .unwrap();
    let git = |dir: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let clone = data.path().join("clone");
    git(
        data.path(),
        &["clone", "-q", repo_url, clone.to_str().unwrap()],
    );
    assert_eq!(
        git(&clone, &["log", "-1", "--format=%H %P|%s"]),
        format!(
            "{receipt_commit} {source}|Verification receipt for request {}",
            receipt["request_id"].as_str().unwrap()
        )
    );
    let committed = clone.join(".turbobackend/receipt.json");
    assert_eq!(
        serde_json::from_slice::<Value>(&std::fs::read(&committed).unwrap()).unwrap(),
        *document
    );
    let ok = verify(&committed);
    assert!(ok.status.success(), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains(&format!("commit {source}")),
        "{ok:?}"
    );
    let tampered = data.path().join("tampered.json");
    let mut changed = document.clone();
    changed["receipt"]["checks"][3]["status"] = serde_json::json!(500);
    std::fs::write(&tampered, changed.to_string()).unwrap();
    let refused = verify(&tampered);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("signature does not match"),
        "{refused:?}"
    );
}

/// A script whose project passes `finish` in the sandbox (its checks need the database, so
/// they run live) but whose `GET /api/todos/<id>` answers 500 once deployed; `fixes`: after
/// the failed verification it writes the fixed server and finishes again.
fn broken_then(fixes: bool) -> Script {
    let mut first = tb_tests::todo_project_calls(true);
    first.as_array_mut().unwrap().push(serde_json::json!(
        {"name": "write_file", "input": {"path": "migrations/001_todos.sql", "content": "CREATE TABLE IF NOT EXISTS todos (id serial PRIMARY KEY, title text NOT NULL);\n"}}
    ));
    let finish = serde_json::json!({"name": "finish", "input": {"summary": "todos", "checks": tb_tests::todo_checks()}});
    let mut turns = vec![
        serde_json::json!({"tool_calls": first}),
        serde_json::json!({"tool_calls": [finish.clone()]}),
    ];
    if fixes {
        let fixed = tb_tests::todo_project_calls(false)[1].clone();
        turns.push(serde_json::json!({"text": "The read handler fails; fixing it.", "tool_calls": [fixed]}));
        turns.push(serde_json::json!({"tool_calls": [finish]}));
    }
    serde_json::from_value(serde_json::json!({"turns": turns, "repeat_last": !fixes})).unwrap()
}

/// Runs `script` with `run` to its end; the `done` event's status, the calls shown and the
/// last request the model got.
async fn run_script(data: &std::path::Path, script: Script) -> (Value, Vec<Value>, Value) {
    let model = ScriptedServer::start(script).await;
    let mut run = turbobackend(data, &["run", "A todo API", "--output", "json"])
        .env("ANTHROPIC_API_KEY", "test-key")
        .env("ANTHROPIC_BASE_URL", model.url())
        .spawn()
        .unwrap();
    let seen = tokio::task::block_in_place(|| events(&mut run, |_| false));
    let _ = run.wait();
    let status = seen
        .iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("no done event: {seen:#?}"))["status"]
        .clone();
    let calls = seen.into_iter().filter(|e| e["event"] == "call").collect();
    (status, calls, model.last_request().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_answering_500_live_is_repaired_in_the_next_round_and_both_costs_are_receipted() {
    let data = tempfile::tempdir().unwrap();
    let (status, calls, last) = run_script(data.path(), broken_then(true)).await;
    assert_eq!(status["phase"], "succeeded", "{status:#}");
    // The repair observation had the failed call and, under its heading, what the app
    // printed when it failed (read from the local deployer's log of the app).
    let conversation = last.to_string();
    let observed = conversation
        .split_once("[Verification failed]")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no repair observation in {conversation}"));
    let heading = observed
        .find("Recent log lines of the deployed app (the last ")
        .expect("the log heading");
    let printed = observed
        .find("reading todo 1 failed: boom")
        .expect("the app's log line");
    assert!(heading < printed, "{observed}");
    let repairs = status["result"]["repairs"].as_array().unwrap();
    assert_eq!(repairs.len(), 1);
    let failed = repairs[0]["verify"]["calls"][2].clone();
    assert_eq!(
        (failed["path"].as_str(), failed["status"].as_u64()),
        (Some("/api/todos/1"), Some(500))
    );
    // The calls shown are the final round's, all passed.
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c["passed"] == true), "{calls:#?}");
    // The agent went on after the failed verification: the script's two more turns.
    assert_eq!(status["iteration"], 4);
    let receipt = &status["result"]["receipt"]["document"]["receipt"];
    assert_eq!(receipt["repair_rounds"], 1);
    let cost = &receipt["cost_micro_usd"];
    let (agent, round, total) = (
        cost["agent"].as_i64().unwrap(),
        cost["repair_round_1"].as_i64().unwrap(),
        cost["total"].as_i64().unwrap(),
    );
    assert!(agent > 0 && round > 0, "{cost}");
    assert_eq!(agent + round, total);
    assert_eq!(total, status["cost_micro_usd"].as_i64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_never_fixed_fails_the_request_after_the_repair_rounds_naming_it() {
    let data = tempfile::tempdir().unwrap();
    let (status, calls, _) = run_script(data.path(), broken_then(false)).await;
    assert_eq!(status["phase"], "failed", "{status:#}");
    assert_eq!(status["error"]["step"], "verify");
    let reason = status["error"]["reason"].as_str().unwrap();
    assert!(reason.contains("GET /api/todos/1 -> 500"), "{reason}");
    // A first deploy: nothing earlier passed, so the app stays up, marked unverified.
    assert!(reason.contains("stays up for you to look at"), "{reason}");
    let deployed = status["result"]["deploy"]["version"].as_str().unwrap();
    assert_eq!(status["result"]["restore"]["unverified"], deployed);
    let project = status["project_id"].as_str().unwrap();
    let shown = turbobackend(data.path(), &["projects", "show", project])
        .output()
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let record: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        (
            record["deployed_version"].as_str(),
            record["deployed_verified"].as_bool()
        ),
        (Some(deployed), Some(false)),
        "{record:#}"
    );
    assert!(record.get("last_verified_version").is_none(), "{record:#}");
    assert_eq!(
        status["result"]["repairs"].as_array().map(Vec::len),
        Some(2)
    );
    // The failed calls of the last round are shown.
    assert!(calls.iter().any(|c| c["passed"] == false), "{calls:#?}");
}
