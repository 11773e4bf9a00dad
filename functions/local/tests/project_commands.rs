//! `turbobackend projects delete|list|show` on the local adapters, through the real binary:
//! the demo builds and deploys the users API with a database on the local cluster; deleting
//! it removes the app, drops its database and role and its archives, and keeps its git
//! repository.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{events, turbobackend};

fn with_cluster(mut cmd: Command) -> Command {
    cmd.env("DB_CLUSTER_HOST", "127.0.0.1")
        .env("DB_CLUSTER_PORT", "5432")
        .env("DB_CLUSTER_USER", "postgres");
    cmd
}

fn run(data: &Path, args: &[&str]) -> Output {
    with_cluster(turbobackend(data, args)).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether the local cluster has a database and a role with these names.
fn exists(database: &str, role: &str) -> (bool, bool) {
    let q = |sql: String| {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atc",
            ])
            .arg(sql)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim() == "t"
    };
    (
        q(format!(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{database}')"
        )),
        q(format!(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}')"
        )),
    )
}

#[test]
fn deleting_the_demo_project_removes_its_app_database_and_archives_and_keeps_its_repository() {
    let data = tempfile::tempdir().unwrap();
    let mut demo = with_cluster(turbobackend(data.path(), &["demo", "--output", "json"]))
        .spawn()
        .unwrap();
    let demo_events = events(&mut demo, |_| false);
    assert!(demo.wait().unwrap().success(), "{demo_events:#?}");
    let project = demo_events[0]["project_id"].as_str().unwrap().to_string();
    let names = tb_postgres::naming::database_names(
        tb_postgres::PgProvisioner::DEFAULT_PREFIX,
        &tb_core::domain::ProjectId::parse(&project).unwrap(),
        false,
    );
    assert_eq!(exists(&names.database, &names.role), (true, true));
    let deployed = data.path().join("deploy").join(&project);
    let archived = data.path().join("archive/projects").join(&project);
    assert!(deployed.exists() && archived.exists());
    let repositories = || std::fs::read_dir(data.path().join("git")).unwrap().count();
    assert_eq!(repositories(), 1);

    // Without the confirmation: refused, nothing removed.
    let refused = run(
        data.path(),
        &["projects", "delete", &project, "--confirm", "yes"],
    );
    assert!(!refused.status.success());
    assert!(deployed.exists());

    let deleted = run(
        data.path(),
        &["projects", "delete", &project, "--confirm", &project],
    );
    assert!(deleted.status.success(), "{deleted:?}");
    let said = stdout(&deleted);
    for step in ["requests", "app", "database", "repository", "archive"] {
        assert!(said.contains(&format!("  {step}: ")), "{step}: {said}");
    }
    assert!(!deployed.exists(), "the app's directory is left");
    assert!(!archived.exists(), "the archives are left");
    assert_eq!(exists(&names.database, &names.role), (false, false));
    assert_eq!(repositories(), 1, "the repository is kept");

    let shown = run(data.path(), &["projects", "show", &project]);
    let record: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(record["lifecycle"]["deleted_at_ms"].is_u64(), "{record}");
    assert_eq!(record["lifecycle"]["history"][0]["by"], "user_local");

    let again = run(
        data.path(),
        &["projects", "delete", &project, "--confirm", &project],
    );
    assert!(again.status.success(), "{again:?}");
    assert!(stdout(&again).contains("deleted already"), "{again:?}");

    assert!(!stdout(&run(data.path(), &["projects", "list"])).contains(&project));
    let all = stdout(&run(
        data.path(),
        &["projects", "list", "--include-deleted"],
    ));
    assert!(all.contains(&format!("{project}  deleted")), "{all}");
}
