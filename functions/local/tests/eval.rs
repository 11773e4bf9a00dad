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
    for field in ["finished", "deployed", "health_verified"] {
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
