//! The text editor tool end to end: scripted models edit files through the real Anthropic
//! and OpenAI-compatible clients, against a real local sandbox.

use serde_json::json;
use tb_core::agent::Outcome;
use tb_models::scripted::Script;
use tb_models::server::ScriptedServer;
use tb_tests::*;

const EDIT: &str = "str_replace_based_edit_tool";

const HANDLER: &str =
    "export default defineEventHandler(() => {\n  return { status: \"ok\" };\n});\n";

fn edit_script() -> Script {
    let call = |input: serde_json::Value| json!({"name": EDIT, "input": input});
    script(json!({"turns": [
        {"tool_calls": [call(json!({"command": "create", "path": "server/api/health.get.ts", "file_text": HANDLER}))]},
        // Three edits in one reply: a unique match, no match, and two matches.
        {"tool_calls": [
            call(json!({"command": "str_replace", "path": "server/api/health.get.ts", "old_str": "status: \"ok\"", "new_str": "status: \"ok\", time: Date.now()"})),
            call(json!({"command": "str_replace", "path": "server/api/health.get.ts", "old_str": "status: 'ok'", "new_str": "x"})),
            call(json!({"command": "str_replace", "path": "server/api/health.get.ts", "old_str": ";\n", "new_str": "\n"}))
        ]},
        {"tool_calls": [
            call(json!({"command": "insert", "path": "server/api/health.get.ts", "insert_line": 0, "insert_text": "// The deployment's health check."})),
            call(json!({"command": "insert", "path": "server/api/health.get.ts", "insert_line": 99, "insert_text": "x"}))
        ]},
        {"tool_calls": [
            call(json!({"command": "view", "path": "server/api/health.get.ts", "view_range": [2, -1]})),
            call(json!({"command": "view", "path": "server"}))
        ]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "edited"}}]}
    ]}))
}

async fn assert_edited(state: &tb_core::agent::AgentState, sandbox: &TestSandbox) {
    assert_eq!(
        outcome(state),
        &Outcome::Finished {
            summary: "edited".into(),
            checks: None,
        }
    );
    assert_eq!(
        sandbox.read("server/api/health.get.ts"),
        "// The deployment's health check.\nexport default defineEventHandler(() => {\n  return { status: \"ok\", time: Date.now() };\n});\n"
    );
    let r = tool_results(state);
    assert!(!r[0].1, "{}", r[0].0);
    // The unique match was replaced; the reply shows the lines around it, numbered.
    assert!(!r[1].1, "{}", r[1].0);
    assert!(
        r[1].0
            .contains("     2\t  return { status: \"ok\", time: Date.now() };"),
        "{}",
        r[1].0
    );
    // No match and several matches are errors that change nothing and say why.
    assert!(r[2].1 && r[2].0.starts_with("No match found"), "{}", r[2].0);
    assert!(
        r[3].1 && r[3].0.starts_with("Found 2 matches") && r[3].0.contains("lines 2, 3"),
        "{}",
        r[3].0
    );
    assert!(!r[4].1, "{}", r[4].0);
    assert!(r[5].1 && r[5].0.contains("within [0, 4]"), "{}", r[5].0);
    // `view` numbers the lines of the range asked for.
    assert_eq!(
        r[6].0,
        "     2\texport default defineEventHandler(() => {\n     3\t  return { status: \"ok\", time: Date.now() };\n     4\t});\n"
    );
    assert!(r[7].0.contains("server/api/health.get.ts ("), "{}", r[7].0);
}

#[tokio::test]
async fn a_script_edits_with_the_anthropic_text_editor_tool() {
    let server = ScriptedServer::start(edit_script()).await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    assert_edited(&state, &sandbox).await;
    // The tool went out as Anthropic's own type, which the server validated as the API does.
    let tools = server.last_request().unwrap()["tools"].clone();
    let editor = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == EDIT)
        .expect("the editor tool is declared");
    assert_eq!(
        editor,
        &json!({"type": "text_editor_20250728", "name": EDIT})
    );
}

#[tokio::test]
async fn a_script_edits_with_the_same_tool_over_the_openai_format() {
    let server = ScriptedServer::start(edit_script()).await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&openai_client(&server), &sandbox.sandbox, &test_config()).await;
    assert_edited(&state, &sandbox).await;
    let tools = server.last_request().unwrap()["tools"].clone();
    let editor = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == EDIT)
        .expect("the editor tool is declared");
    assert_eq!(editor["type"], "function");
    assert_eq!(
        editor["function"]["parameters"]["properties"]["command"]["enum"],
        json!(["view", "create", "str_replace", "insert"])
    );
}

#[tokio::test]
async fn edits_stay_inside_the_project() {
    let server = ScriptedServer::start(script(json!({"turns": [
        {"tool_calls": [
            {"name": EDIT, "input": {"command": "str_replace", "path": "../outside.txt", "old_str": "a", "new_str": "b"}},
            {"name": EDIT, "input": {"command": "view", "path": "/etc/passwd"}}
        ]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]})))
    .await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    let r = tool_results(&state);
    assert!(r[0].1 && r[1].1, "{r:?}");
    assert!(!r[1].0.contains("root:"), "{}", r[1].0);
}

#[tokio::test]
async fn a_long_file_is_viewed_in_ranges_well_past_the_old_8_kb_cap() {
    let long: String = (1..=3000)
        .map(|i| format!("const line{i} = {i};\n"))
        .collect();
    assert!(long.len() > 60_000);
    let server = ScriptedServer::start(script(json!({"turns": [
        {"tool_calls": [{"name": EDIT, "input": {"command": "create", "path": "big.ts", "file_text": long}}]},
        {"tool_calls": [{"name": EDIT, "input": {"command": "view", "path": "big.ts"}}]},
        {"tool_calls": [{"name": EDIT, "input": {"command": "view", "path": "big.ts", "view_range": [2990, -1]}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]})))
    .await;
    let sandbox = TestSandbox::new().await;
    let state = run_agent(&anthropic_client(&server), &sandbox.sandbox, &test_config()).await;
    let r = tool_results(&state);
    let whole = &r[1].0;
    assert!(
        whole.len() > 30_000 && whole.len() < 41_000,
        "{}",
        whole.len()
    );
    assert!(whole.starts_with("     1\tconst line1 = 1;\n"));
    assert!(
        whole.contains("[big.ts has 3000 lines; lines 1-"),
        "{}",
        &whole[whole.len() - 200..]
    );
    assert!(
        r[2].0.starts_with("  2990\tconst line2990 = 2990;\n")
            && r[2].0.ends_with("  3000\tconst line3000 = 3000;\n"),
        "{}",
        r[2].0
    );
}
