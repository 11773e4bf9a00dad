//! The MCP tools: their declarations, and what they report as a request moves through the
//! pipeline (the real worker runs the scripted model in a local sandbox).

mod support;

use serde_json::{Value, json};
use support::{is_error, text, user};
use tb_core::domain::{Phase, ProjectId, RequestId};
use tb_core::ports::{PlatformRecords, ProjectRecord};
use tb_pipeline::StateStore;
use tb_pipeline::{Failure, RequestRecord};

/// A tool result comfortably far below the 25k-token limit of MCP clients (~4 bytes a token).
const FAR_BELOW_25K_TOKENS: usize = 20_000;

async fn list_tools(s: &support::Server, key: &str) -> Vec<Value> {
    let (status, body) = s
        .mcp(
            key,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["result"]["tools"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_tool_declares_input_and_output_schemas_and_annotations() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let tools = list_tools(&s, &key).await;
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "execute_request",
            "get_request_status",
            "cancel_request",
            "list_projects",
            "get_project",
            "delete_project",
            "rollback_project"
        ]
    );
    // (read-only, destructive, idempotent, open world)
    let hints = [
        ("execute_request", [false, false, false, true]),
        ("get_request_status", [true, false, true, false]),
        ("cancel_request", [false, true, true, false]),
        ("list_projects", [true, false, true, false]),
        ("get_project", [true, false, true, false]),
        ("delete_project", [false, true, true, true]),
        ("rollback_project", [false, true, false, true]),
    ];
    for (tool, (name, h)) in tools.iter().zip(hints) {
        assert_eq!(tool["name"], name);
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert_eq!(tool["inputSchema"]["additionalProperties"], false, "{tool}");
        assert_eq!(tool["outputSchema"]["type"], "object", "{tool}");
        assert!(tool["description"].as_str().unwrap().len() > 40, "{tool}");
        let a = &tool["annotations"];
        assert_eq!(
            [
                &a["readOnlyHint"],
                &a["destructiveHint"],
                &a["idempotentHint"],
                &a["openWorldHint"]
            ],
            h.map(Value::Bool).each_ref(),
            "{name}"
        );
    }
    let execute = &tools[0]["inputSchema"];
    assert_eq!(execute["required"], json!(["description"]));
    for p in [
        "description",
        "project_id",
        "idempotency_key",
        "callback_url",
    ] {
        assert!(execute["properties"].get(p).is_some(), "{p}");
    }
    let status_out = &tools[1]["outputSchema"]["properties"];
    for p in [
        "phase",
        "iteration",
        "max_iterations",
        "cost_usd",
        "recent_activity",
        "outcome",
        "repository_url",
        "deployment_url",
        "database",
        "error",
    ] {
        assert!(status_out.get(p).is_some(), "status output lacks {p}");
    }
    let all = serde_json::to_string(&tools).unwrap();
    assert!(all.len() < FAR_BELOW_25K_TOKENS, "{}", all.len());
}

/// The formats JSON Schema 2020-12 defines (Validation vocabulary, section 7.3:
/// <https://json-schema.org/draft/2020-12/json-schema-validation#section-7.3>). A strict
/// validator refuses any other (Ajv's `strict` mode, which Claude Code runs in, warns
/// `unknown format "uint64" ignored` for each).
const FORMATS_2020_12: [&str; 19] = [
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Every schema keyword in `schema` a strict validator would refuse, as `path: problem`; and
/// the integer properties found, by name, with their `minimum`.
fn strict_check(
    schema: &Value,
    path: &str,
    problems: &mut Vec<String>,
    integers: &mut Vec<(String, Value)>,
) {
    match schema {
        Value::Object(map) => {
            if let Some(format) = map.get("format").and_then(Value::as_str)
                && !FORMATS_2020_12.contains(&format)
            {
                problems.push(format!("{path}: unknown format {format:?}"));
            }
            let is_integer = match &map.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            if is_integer {
                let name = path.rsplit('/').next().unwrap_or_default().to_string();
                integers.push((name, map.get("minimum").cloned().unwrap_or(Value::Null)));
            }
            for (k, v) in map {
                strict_check(v, &format!("{path}/{k}"), problems, integers);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                strict_check(v, &format!("{path}/{i}"), problems, integers);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_schema_is_standard_json_schema_with_no_unknown_format() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let tools = list_tools(&s, &key).await;
    let mut problems = Vec::new();
    let mut integers = Vec::new();
    for tool in &tools {
        for which in ["inputSchema", "outputSchema"] {
            let path = format!("{}.{which}#", tool["name"].as_str().unwrap());
            assert!(tool[which].is_object(), "{path}");
            strict_check(&tool[which], &path, &mut problems, &mut integers);
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // The unsigned counters and times keep their bound as standard `minimum: 0`.
    for name in [
        "iteration",
        "max_iterations",
        "updated_at_ms",
        "created_at_ms",
        "total",
    ] {
        let found: Vec<&Value> = integers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, min)| min)
            .collect();
        assert!(
            !found.is_empty(),
            "no integer property {name}: {integers:?}"
        );
        assert!(found.iter().all(|m| **m == json!(0)), "{name}: {found:?}");
    }
}

#[tokio::test]
async fn results_carry_structured_content_and_the_same_json_as_text() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let r = s
        .call(&key, "execute_request", json!({"description": "users API"}))
        .await;
    assert_eq!(r["isError"], false, "{r}");
    let structured = &r["structuredContent"];
    assert_eq!(r["content"][0]["type"], "text");
    assert_eq!(
        serde_json::from_str::<Value>(&text(&r)).unwrap(),
        *structured
    );
    assert_eq!(structured["phase"], "queued");
    assert_eq!(structured["created"], true);
    assert!(
        structured["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
    assert!(
        structured["project_id"]
            .as_str()
            .unwrap()
            .starts_with("proj_")
    );
    assert_eq!(
        structured["next"],
        "poll get_request_status with request_id every 10-30 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_request_status_follows_the_request_through_the_worker() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let r = s
        .call(&key, "execute_request", json!({"description": "users API"}))
        .await;
    let id = r["structuredContent"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = s
        .call(&key, "get_request_status", json!({"request_id": id}))
        .await;
    assert_eq!(status["structuredContent"]["phase"], "queued", "{status}");
    assert_eq!(status["structuredContent"]["iteration"], 0);
    assert_eq!(status["structuredContent"]["done"], false);

    s.drain_work().await;
    let status = s
        .call(&key, "get_request_status", json!({"request_id": id}))
        .await;
    let st = &status["structuredContent"];
    assert_eq!(st["phase"], "finalizing", "{status}");
    assert_eq!(st["iteration"], 2, "{status}");
    assert_eq!(st["max_iterations"], 60);
    assert_eq!(st["outcome"], "finished", "{status}");
    assert!(st["cost_micro_usd"].as_i64().unwrap() > 0, "{status}");
    let activity = st["recent_activity"].as_array().unwrap();
    assert!(!activity.is_empty() && activity.len() <= 5, "{status}");
    assert!(
        activity
            .iter()
            .any(|l| l.as_str().unwrap().contains("write_file")),
        "{status}"
    );
    assert_eq!(
        st["next"],
        "poll get_request_status with request_id every 10-30 s"
    );
}

async fn update(s: &support::Server, id: &str, change: impl FnOnce(&mut RequestRecord)) {
    let mut rec = s
        .store
        .load(&RequestId::parse(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    change(&mut rec);
    tb_pipeline::ports::save_next(s.store.as_ref(), &mut rec, Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_finished_request_reports_its_urls_and_a_failed_one_its_step_and_reason() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let ok = s
        .call(&key, "execute_request", json!({"description": "one"}))
        .await["structuredContent"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    update(&s, &ok, |r| {
        r.phase = Phase::Succeeded;
        r.steps = serde_json::from_value(json!({
            "repository": {"repo_url": "https://github.com/acme/users", "commit_sha": "abc", "committed": true},
            "database": {"database": "proj_users", "role": "r", "applied": []},
            "deploy": {"url": "https://users.fly.dev", "version": "sha256:1", "details": {}},
        }))
        .unwrap();
        for i in 0..12 {
            r.push_activity(format!("line {i} {}", "x".repeat(1000)));
        }
    })
    .await;
    let st = s
        .call(&key, "get_request_status", json!({"request_id": ok}))
        .await["structuredContent"]
        .clone();
    assert_eq!(st["phase"], "succeeded");
    assert_eq!(st["done"], true);
    assert_eq!(st["repository_url"], "https://github.com/acme/users");
    assert_eq!(st["deployment_url"], "https://users.fly.dev");
    assert_eq!(st["database"], "proj_users");
    assert!(
        st["next"]
            .as_str()
            .unwrap()
            .contains("https://users.fly.dev")
    );
    let activity = st["recent_activity"].as_array().unwrap();
    assert_eq!(activity.len(), 5, "{st}");
    assert!(activity[4].as_str().unwrap().starts_with("line 11"));
    assert!(
        activity
            .iter()
            .all(|l| l.as_str().unwrap().chars().count() <= 240)
    );
    assert!(st.get("error").is_none());

    let bad = s
        .call(&key, "execute_request", json!({"description": "two"}))
        .await["structuredContent"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    update(&s, &bad, |r| {
        r.phase = Phase::Failed;
        r.failure = Some(Failure {
            step: "build".into(),
            reason: format!("npm run build failed (exit 1):\n{}", "e".repeat(50_000)),
        });
    })
    .await;
    let result = s
        .call(&key, "get_request_status", json!({"request_id": bad}))
        .await;
    let st = &result["structuredContent"];
    assert_eq!(st["phase"], "failed");
    assert_eq!(st["done"], true);
    assert_eq!(st["error"]["step"], "build");
    let reason = st["error"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("npm run build failed"));
    assert!(reason.chars().count() <= 2000);
    assert!(st.get("deployment_url").is_none());
    let size = serde_json::to_string(&result).unwrap().len();
    assert!(size < FAR_BELOW_25K_TOKENS, "{size}");
}

#[tokio::test]
async fn bad_ids_and_bad_arguments_are_tool_errors_the_model_can_act_on() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    let cases = [
        (
            "get_request_status",
            json!({"request_id": "req_unknown"}),
            "no request req_unknown",
        ),
        (
            "get_request_status",
            json!({"request_id": "../../etc"}),
            "no request ../../etc",
        ),
        (
            "cancel_request",
            json!({"request_id": "req_unknown"}),
            "no request req_unknown",
        ),
        (
            "get_project",
            json!({"project_id": "proj_unknown"}),
            "no project proj_unknown",
        ),
        (
            "get_request_status",
            json!({}),
            "invalid arguments for get_request_status: missing field `request_id`",
        ),
        (
            "get_request_status",
            json!({"request_id": 42}),
            "invalid arguments for get_request_status: invalid type: integer `42`, expected a string",
        ),
        (
            "get_request_status",
            json!({"request_id": "r", "extra": 1}),
            "unknown field `extra`",
        ),
        ("execute_request", json!({}), "missing field `description`"),
        (
            "execute_request",
            json!({"description": ["x"]}),
            "invalid type: sequence, expected a string",
        ),
        (
            "execute_request",
            json!({"description": "   "}),
            "description is empty",
        ),
        (
            "execute_request",
            json!({"description": "x".repeat(9000)}),
            "the limit is 8000",
        ),
        (
            "execute_request",
            json!({"description": "x", "project_id": "proj_nope"}),
            "no project proj_nope",
        ),
        (
            "execute_request",
            json!({"description": "x", "project_id": "a b"}),
            "no project a b",
        ),
        (
            "execute_request",
            json!({"description": "x", "callback_url": "ftp://x"}),
            "callback_url must be an https URL",
        ),
        (
            "execute_request",
            json!({"description": "x", "idempotency_key": ""}),
            "idempotency_key must be 1-200 characters",
        ),
        (
            "list_projects",
            json!({"unexpected": true}),
            "unknown field `unexpected`",
        ),
    ];
    for (tool, args, expected) in cases {
        let r = s.call(&key, tool, args.clone()).await;
        assert!(is_error(&r), "{tool} {args}: {r}");
        assert!(r.get("structuredContent").is_none(), "{r}");
        assert!(
            text(&r).contains(expected),
            "{tool} {args}: {} does not contain {expected}",
            text(&r)
        );
    }
    assert!(
        s.store
            .list_for_owner(&user("user_a"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn list_projects_is_bounded_and_newest_first() {
    let s = support::start().await;
    let key = s.key("user_a").await;
    for i in 0..60u64 {
        s.records
            .save_project(&ProjectRecord {
                name: format!("turbobackend-{i}-{}", "n".repeat(100)),
                repo_url: Some(format!("https://github.com/acme/p{i}")),
                deploy_url: Some(format!("https://p{i}.fly.dev")),
                database: Some(format!("db_{i}")),
                deployed_version: Some("sha256:1".into()),
                updated_at_ms: 1000 + i,
                ..ProjectRecord::new(
                    ProjectId::parse(&format!("proj_{i:03}")).unwrap(),
                    user("user_a"),
                    i,
                )
            })
            .await
            .unwrap();
    }
    let r = s.call(&key, "list_projects", json!({})).await;
    let list = &r["structuredContent"];
    assert_eq!(list["total"], 60);
    assert_eq!(list["truncated"], true);
    let projects = list["projects"].as_array().unwrap();
    assert_eq!(projects.len(), 50);
    assert_eq!(projects[0]["project_id"], "proj_059");
    assert_eq!(projects[0]["state"], "live");
    assert_eq!(projects[0]["deployment_url"], "https://p59.fly.dev");
    let size = serde_json::to_string(&r).unwrap().len();
    assert!(size < FAR_BELOW_25K_TOKENS * 2, "{size}");

    let r = s
        .call(&key, "get_project", json!({"project_id": "proj_007"}))
        .await;
    assert_eq!(r["structuredContent"]["database"], "db_7", "{r}");
    assert_eq!(r["structuredContent"]["recent_requests"], json!([]));
}
