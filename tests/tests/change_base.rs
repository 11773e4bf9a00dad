//! A change request's starting point: the sandbox seeded from the project's current source
//! (a directory archive here, S3 in the cloud), and applied migrations kept as they are even
//! when a command changes them.

use serde_json::json;
use tb_core::agent::{Agent, AgentState, CancelFlag, Outcome, Slice};
use tb_core::domain::{ProjectId, RequestId};
use tb_core::encoding::sha256_hex;
use tb_core::ports::{Snapshot, SnapshotFile};
use tb_core::pricing::PriceTable;
use tb_core::sandbox::WorkspacePath;
use tb_local::DirArchive;
use tb_models::ScriptedModel;
use tb_pipeline::base::{Current, seed, set_current};
use tb_pipeline::snapshot;
use tb_tests::{TestSandbox, script, test_config, tool_results};

fn file(path: &str, contents: &str, executable: bool) -> SnapshotFile {
    SnapshotFile {
        path: WorkspacePath::parse(path).unwrap(),
        contents: contents.as_bytes().to_vec(),
        executable,
    }
}

const USERS_SQL: &str = "CREATE TABLE IF NOT EXISTS users (id SERIAL PRIMARY KEY);\n";

#[tokio::test]
async fn a_seeded_sandbox_holds_the_current_source_and_finish_refuses_changed_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let archive = DirArchive::new(dir.path());
    let project = ProjectId::generate();
    let sandbox = TestSandbox::new().await;

    // A new project has no current source: it starts from the template.
    let fresh = TestSandbox::new().await;
    let base = seed(Some(&archive), &project, &fresh.sandbox)
        .await
        .unwrap();
    assert_eq!(base.template.as_deref(), Some(tb_pipeline::template::NAME));
    assert!(base.from_request.is_empty() && base.applied_migrations.is_empty());
    assert!(base.files.contains(&"server/utils/db.ts".to_string()));
    for (path, contents) in tb_pipeline::template::FILES {
        let p = WorkspacePath::parse(path).unwrap();
        assert_eq!(
            tb_core::sandbox::Sandbox::read_file(&fresh.sandbox, &p)
                .await
                .unwrap(),
            *contents,
            "{path}"
        );
    }
    assert!(
        base.prompt()
            .contains("starts from the platform's template")
    );

    let snap = Snapshot {
        files: vec![
            file("migrations/001_users.sql", USERS_SQL, false),
            file("package.json", "{}\n", false),
            file("scripts/start.sh", "#!/bin/sh\necho hi\n", true),
        ],
    };
    let (bytes, sha) = snapshot::pack(&snap).unwrap();
    let key = format!("projects/{project}/requests/req_1/source.tar.gz");
    tb_core::ports::Archive::put(&archive, &key, &bytes, &sha)
        .await
        .unwrap();
    set_current(
        &archive,
        &project,
        &Current {
            request_id: RequestId::parse("req_1").unwrap(),
            source_key: key,
            sha256: sha,
        },
    )
    .await
    .unwrap();

    let base = seed(Some(&archive), &project, &sandbox.sandbox)
        .await
        .unwrap();
    assert_eq!(base.template, None);
    assert_eq!(
        base.files,
        [
            "migrations/001_users.sql",
            "package.json",
            "scripts/start.sh"
        ]
    );
    assert_eq!(base.applied_migrations.len(), 1);
    assert_eq!(
        base.applied_migrations[0].sha256,
        sha256_hex(USERS_SQL.as_bytes())
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.file("migrations/001_users.sql")).unwrap(),
        USERS_SQL
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sandbox.file("scripts/start.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, "the executable bit is kept");

    // A command edits the applied migration, then a new one takes its number: `finish` is
    // refused each time, until both are put right.
    let model = ScriptedModel::new(script(json!({"turns": [
        {"tool_calls": [{"name": "run_command", "input": {"command": "echo 'ALTER TABLE users ADD COLUMN x int;' >> migrations/001_users.sql"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]},
        {"tool_calls": [{"name": "run_command", "input": {"command": "cp .turbobackend/applied/001_users.sql migrations/ && echo 'ALTER TABLE users ADD COLUMN x int;' > migrations/001_x.sql"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]},
        {"tool_calls": [{"name": "delete_file", "input": {"path": "migrations"}}]},
        {"tool_calls": [{"name": "run_command", "input": {"command": "mv migrations/001_x.sql migrations/002_x.sql"}}]},
        {"tool_calls": [{"name": "finish", "input": {"summary": "done"}}]}
    ]})));
    let prices = PriceTable::with_defaults();
    let config = test_config();
    let agent = Agent {
        model: &model,
        sandbox: &sandbox.sandbox,
        db: None,
        prices: &prices,
        config: &config,
        cancel: CancelFlag::default(),
        base: Some(&base),
    };
    let mut state = AgentState::new("Add a column");
    agent.run(&mut state, Slice::unbounded()).await.unwrap();
    assert_eq!(
        state.outcome,
        Some(Outcome::Finished {
            summary: "done".into(),
            checks: None,
        })
    );
    let results = tool_results(&state);
    assert!(
        results[1].1
            && results[1]
                .0
                .contains("migrations/001_users.sql was edited; restore it"),
        "{:?}",
        results[1]
    );
    assert!(
        results[3].1
            && results[3].0.contains(
                "migrations/001_x.sql is new but is not numbered after the applied ones; rename it to migrations/002_"
            )
            && !results[3].0.contains("was edited"),
        "{:?}",
        results[3]
    );
    assert!(
        results[4].1 && results[4].0.contains("cannot be deleted"),
        "{:?}",
        results[4]
    );
    assert_eq!(
        std::fs::read_to_string(sandbox.file("migrations/001_users.sql")).unwrap(),
        USERS_SQL
    );
}
