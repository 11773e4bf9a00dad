//! Project migrations: order, idempotence, edited migrations, rollback of a failing one,
//! and that they run as the project role with a statement timeout.

mod common;

use std::time::Duration;

use common::{connect, provisioner};
use sqlx::Row;
use tb_core::domain::ProjectId;
use tb_core::ports::{DatabaseProvisioner, Migration, PortError, ProjectDatabase};

fn m(name: &str, sql: &str) -> Migration {
    Migration {
        name: name.into(),
        sql: sql.into(),
    }
}

async fn tables(db: &ProjectDatabase) -> Vec<String> {
    let mut c = connect(&db.url).await.unwrap();
    sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
}

async fn recorded(db: &ProjectDatabase) -> Vec<String> {
    let mut c = connect(&db.url).await.unwrap();
    sqlx::query_scalar("SELECT name FROM _turbobackend_migrations ORDER BY name")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrations_apply_in_name_order_as_the_project_role_and_rerunning_applies_nothing() {
    let (p, cleanup) = provisioner();
    let id = ProjectId::parse("proj_mig").unwrap();
    cleanup.names(&p.names(&id, false));
    let db = p.provision(&id, false).await.unwrap();

    // Given out of order; 002 needs 001's table, 010 sorts after 002.
    let migrations = [
        m(
            "010_index.sql",
            "CREATE INDEX posts_user_idx ON posts (user_id);",
        ),
        m(
            "002_posts.sql",
            "CREATE TABLE posts (id serial PRIMARY KEY, user_id int REFERENCES users (id));",
        ),
        m(
            "001_users.sql",
            "CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL);\nINSERT INTO users (email) VALUES ('a@example.com');",
        ),
    ];
    let applied = p.migrate(&db, &migrations).await.unwrap();
    assert_eq!(applied, ["001_users.sql", "002_posts.sql", "010_index.sql"]);
    assert_eq!(recorded(&db).await, applied);
    assert_eq!(
        tables(&db).await,
        ["_turbobackend_migrations", "posts", "users"]
    );

    let mut c = connect(&db.url).await.unwrap();
    let owner: String =
        sqlx::query_scalar("SELECT tableowner::text FROM pg_tables WHERE tablename = 'users'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(owner, db.role, "migrations run as the project role");
    let row = sqlx::query("SELECT sha256, applied_at IS NOT NULL AS stamped FROM _turbobackend_migrations WHERE name = '001_users.sql'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(
        row.get::<String, _>("sha256"),
        tb_core::encoding::sha256_hex(migrations[2].sql.as_bytes())
    );
    assert!(row.get::<bool, _>("stamped"));

    assert!(p.migrate(&db, &migrations).await.unwrap().is_empty());
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(users, 1, "001 ran once");

    let more = [
        &migrations[..],
        &[m("011_more.sql", "ALTER TABLE users ADD COLUMN name text;")],
    ]
    .concat();
    assert_eq!(p.migrate(&db, &more).await.unwrap(), ["011_more.sql"]);
}

#[tokio::test]
async fn an_edited_migration_is_refused_before_anything_runs() {
    let (p, cleanup) = provisioner();
    let id = ProjectId::parse("proj_edit").unwrap();
    cleanup.names(&p.names(&id, false));
    let db = p.provision(&id, false).await.unwrap();
    p.migrate(&db, &[m("001_a.sql", "CREATE TABLE a (x int);")])
        .await
        .unwrap();

    let err = p
        .migrate(
            &db,
            &[
                m("001_a.sql", "CREATE TABLE a (x bigint);"),
                m("002_b.sql", "CREATE TABLE b (x int);"),
            ],
        )
        .await
        .unwrap_err();
    match err {
        PortError::Permanent(msg) => {
            assert!(msg.contains("001_a.sql") && msg.contains("edited"), "{msg}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    assert_eq!(
        tables(&db).await,
        ["_turbobackend_migrations", "a"],
        "002 did not run"
    );
}

#[tokio::test]
async fn a_failing_migration_rolls_back_alone() {
    let (p, cleanup) = provisioner();
    let id = ProjectId::parse("proj_fail").unwrap();
    cleanup.names(&p.names(&id, false));
    let db = p.provision(&id, false).await.unwrap();

    let migrations = [
        m("001_a.sql", "CREATE TABLE a (x int);"),
        m(
            "002_b.sql",
            "CREATE TABLE b (x int);\nINSERT INTO b VALUES (1);\nSELECT 1 / 0;",
        ),
        m("003_c.sql", "CREATE TABLE c (x int);"),
    ];
    let err = p.migrate(&db, &migrations).await.unwrap_err();
    match &err {
        PortError::Permanent(msg) => {
            assert!(
                msg.contains("002_b.sql") && msg.contains("division by zero"),
                "{msg}"
            )
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    assert_eq!(tables(&db).await, ["_turbobackend_migrations", "a"]);
    assert_eq!(recorded(&db).await, ["001_a.sql"]);

    let fixed = [
        migrations[0].clone(),
        m(
            "002_b.sql",
            "CREATE TABLE b (x int);\nINSERT INTO b VALUES (1);",
        ),
        migrations[2].clone(),
    ];
    assert_eq!(
        p.migrate(&db, &fixed).await.unwrap(),
        ["002_b.sql", "003_c.sql"]
    );
}

#[tokio::test]
async fn a_migration_past_the_statement_timeout_is_cancelled() {
    let (p, cleanup) = provisioner();
    let p = p.with_migration_timeout(Duration::from_millis(500));
    let id = ProjectId::parse("proj_slow").unwrap();
    cleanup.names(&p.names(&id, false));
    let db = p.provision(&id, false).await.unwrap();

    let started = std::time::Instant::now();
    let err = p
        .migrate(
            &db,
            &[m(
                "001_slow.sql",
                "CREATE TABLE s (x int); SELECT pg_sleep(10);",
            )],
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        matches!(err, PortError::Transient(ref msg) if msg.contains("statement timeout")),
        "{err:?}"
    );
    assert_eq!(tables(&db).await, ["_turbobackend_migrations"]);
}

#[tokio::test]
async fn duplicate_migration_names_are_refused() {
    let (p, cleanup) = provisioner();
    let id = ProjectId::parse("proj_dup").unwrap();
    cleanup.names(&p.names(&id, false));
    let db = p.provision(&id, false).await.unwrap();
    let err = p
        .migrate(
            &db,
            &[m("001_a.sql", "SELECT 1"), m("001_a.sql", "SELECT 2")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PortError::Permanent(ref msg) if msg.contains("twice")),
        "{err:?}"
    );
}
