//! A change to an existing project, through the real binary: the demo builds the users API,
//! then `run --project` asks for a posts endpoint with its own script (served by the
//! scripted model's HTTP server). The change starts from the project's current source, keeps
//! the applied migration as it is, adds one commit and updates the same app.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tb_models::scripted::Script;
use tb_models::server::ScriptedServer;

mod common;
use common::{DropDatabases, events, turbobackend};

fn git_dir(data: &Path) -> PathBuf {
    std::fs::read_dir(data.join("git"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

fn git(data: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir(data))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const POSTS_ROUTE: &str = r#"export default defineEventHandler(async () => {
  if (!hasDatabase()) return [{ id: 1, title: "Hello, posts" }];
  const { rows } = await db().query("SELECT id, title FROM posts ORDER BY id");
  return rows;
});
"#;

const POSTS_MIGRATION: &str =
    "CREATE TABLE IF NOT EXISTS posts (\n  id SERIAL PRIMARY KEY,\n  title TEXT NOT NULL\n);\n";

/// List and read the existing files, try to edit the applied migration (refused), add the
/// posts route and `002_posts.sql`, finish.
fn posts_script() -> Script {
    let turns = json!({"turns": [
        {"tool_calls": [{"name": "list_files", "input": {"path": "."}}]},
        {"tool_calls": [
            {"name": "read_file", "input": {"path": "server/api/users/index.get.ts"}},
            {"name": "read_file", "input": {"path": "migrations/001_create_users.sql"}}
        ]},
        {"tool_calls": [{"name": "write_file", "input": {"path": "migrations/001_create_users.sql",
            "content": "CREATE TABLE IF NOT EXISTS users (id SERIAL PRIMARY KEY);\nCREATE TABLE IF NOT EXISTS posts (id SERIAL PRIMARY KEY, title TEXT NOT NULL);\n"}}]},
        {"tool_calls": [
            {"name": "write_file", "input": {"path": "server/api/posts/index.get.ts", "content": POSTS_ROUTE}},
            {"name": "write_file", "input": {"path": "migrations/002_posts.sql", "content": POSTS_MIGRATION}}
        ]},
        {"tool_calls": [{"name": "run_command", "input": {"command": "npm install --no-audit --no-fund && npm run build", "timeout_seconds": 600}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "Added GET /api/posts and migrations/002_posts.sql."}}]}
    ]});
    Script::from_json(&turns.to_string()).unwrap()
}

/// The tool results the model was sent, in order: (content, is_error).
fn tool_results(request: &Value) -> Vec<(String, bool)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| {
            let content = match &b["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""),
                other => other.to_string(),
            };
            (content, b["is_error"] == true)
        })
        .collect()
}

/// Runs SQL on the local test cluster (trust auth) with `psql`; its output, one row a line.
fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-Atc",
            sql,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "psql {sql}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_request_starts_from_the_current_source_and_adds_one_commit() {
    change_after_demo(false).await;
}

/// The same with the local Postgres cluster: the users migration stays applied once, the
/// posts migration is applied by the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_database_the_change_applies_only_its_new_migration() {
    change_after_demo(true).await;
}

async fn change_after_demo(cluster: bool) {
    let data = tempfile::tempdir().unwrap();
    let with_cluster = |mut cmd: Command| {
        if cluster {
            cmd.env("DB_CLUSTER_HOST", "127.0.0.1")
                .env("DB_CLUSTER_PORT", "5432")
                .env("DB_CLUSTER_USER", "postgres");
        }
        cmd
    };
    let mut databases = DropDatabases(None);

    // The demo: the users API, deployed, one commit.
    let mut demo = with_cluster(turbobackend(data.path(), &["demo", "--output", "json"]))
        .spawn()
        .unwrap();
    let demo_events = events(&mut demo, |_| false);
    assert!(demo.wait().unwrap().success(), "{demo_events:#?}");
    let project = demo_events[0]["project_id"].as_str().unwrap().to_string();
    if cluster {
        databases.0 = Some(tb_core::domain::ProjectId::parse(&project).unwrap());
        // `run` creates the demo's user again when it checks the app: make room for it.
        let done = demo_events.iter().find(|e| e["event"] == "done").unwrap();
        let db = done["status"]["result"]["database"]["database"]
            .as_str()
            .unwrap();
        psql(db, "DELETE FROM users");
    }
    // Its source commit, and its signed receipt committed on top.
    let demo_done = &demo_events.iter().find(|e| e["event"] == "done").unwrap()["status"];
    assert_eq!(git(data.path(), &["rev-list", "--count", "main"]), "2");
    assert_eq!(
        git(data.path(), &["rev-parse", "main~1"]),
        demo_done["result"]["repository"]["commit_sha"]
            .as_str()
            .unwrap()
    );
    assert_eq!(
        git(data.path(), &["log", "-1", "--format=%s", "main"]),
        format!(
            "Verification receipt for request {}",
            demo_done["request_id"].as_str().unwrap()
        )
    );

    // The change, with its own script.
    let model = ScriptedServer::start(posts_script()).await;
    let mut change = with_cluster(turbobackend(
        data.path(),
        &[
            "run",
            "Add a posts endpoint",
            "--project",
            &project,
            "--output",
            "json",
            "--keep-running",
        ],
    ))
    .env("ANTHROPIC_API_KEY", "test-key")
    .env("ANTHROPIC_BASE_URL", model.url())
    .spawn()
    .unwrap();
    let seen = tokio::task::block_in_place(|| {
        events(&mut change, |e| {
            e["event"] == "serving" || e["event"] == "done" && e["status"]["phase"] != "succeeded"
        })
    });
    let serving = seen.iter().find(|e| e["event"] == "serving");
    let Some(url) = serving.and_then(|e| e["url"].as_str()).map(String::from) else {
        let _ = change.kill();
        panic!("the change request did not end serving: {seen:#?}");
    };
    let done = &seen.iter().find(|e| e["event"] == "done").unwrap()["status"];
    assert_eq!(done["project_id"], project.as_str());

    // The deployed app answers both the old and the new endpoint.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let users = http.get(format!("{url}/api/users")).send().await.unwrap();
    let users_status = users.status().as_u16();
    let posts = http.get(format!("{url}/api/posts")).send().await.unwrap();
    let posts_status = posts.status().as_u16();
    let posts_body: Value = posts.json().await.unwrap_or(Value::Null);
    let _ = change.kill();
    let _ = change.wait();
    assert_eq!(users_status, 200);
    if cluster {
        // Served from the posts table, which the new migration made.
        assert_eq!((posts_status, &posts_body), (200, &json!([])));
        let db = done["result"]["database"]["database"].as_str().unwrap();
        assert_eq!(
            done["result"]["database"]["applied"],
            json!(["002_posts.sql"]),
            "only the new migration is applied by the change"
        );
        assert_eq!(
            psql(
                db,
                "SELECT name FROM _turbobackend_migrations ORDER BY name"
            ),
            "001_create_users.sql\n002_posts.sql"
        );
        assert_eq!(
            psql(
                db,
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename IN ('users', 'posts') ORDER BY 1"
            ),
            "posts\nusers"
        );
    } else {
        assert_eq!(
            (posts_status, &posts_body[0]["title"]),
            (200, &json!("Hello, posts"))
        );
    }

    // The agent was told it changes an existing project, and saw the users API.
    let last = model.last_request().unwrap();
    let system = last["system"].to_string();
    assert!(
        system.contains("change to an existing project")
            && system.contains("server/api/users/index.get.ts")
            && system.contains("migrations/001_create_users.sql")
            && system.contains("002_<what>.sql"),
        "{system}"
    );
    let results = tool_results(&last);
    assert!(
        results[0].0.contains("server/api/users/index.get.ts") && !results[0].1,
        "list_files: {:?}",
        results[0]
    );
    assert!(
        results[1].0.contains("memoryUsers"),
        "read_file: {:?}",
        results[1]
    );
    assert!(
        results[2].0.contains("CREATE TABLE IF NOT EXISTS users"),
        "{:?}",
        results[2]
    );
    // Editing the applied migration was refused, clearly.
    assert!(
        results[3].1
            && results[3]
                .0
                .contains("migrations/001_create_users.sql is already applied")
            && results[3].0.contains("migrations/002_<what>.sql"),
        "{:?}",
        results[3]
    );

    // One new source commit on top of the demo's receipt commit, adding only the posts
    // files (the demo's receipt carried over); the change's receipt replaces it on top.
    assert_eq!(git(data.path(), &["rev-list", "--count", "main"]), "4");
    assert_eq!(
        git(data.path(), &["rev-parse", "main~1"]),
        done["result"]["repository"]["commit_sha"].as_str().unwrap()
    );
    assert_eq!(
        git(data.path(), &["diff", "--name-status", "main~2", "main~1"]),
        "A\tmigrations/002_posts.sql\nA\tserver/api/posts/index.get.ts"
    );
    assert_eq!(
        git(data.path(), &["diff", "--name-status", "main~1", "main"]),
        "M\t.turbobackend/receipt.json"
    );
    assert_eq!(
        git(
            data.path(),
            &["show", "main~1:migrations/001_create_users.sql"]
        ),
        git(
            data.path(),
            &["show", "main~2:migrations/001_create_users.sql"]
        )
    );
}
