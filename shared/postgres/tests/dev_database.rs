//! The dev database as the agent's tool sees it: typed rows, truncation, errors as text,
//! one statement per call, the statement timeout, and the dev role.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cleanup, admin, provisioner};
use serde_json::json;
use tb_core::domain::ProjectId;
use tb_core::ports::DevDatabase;
use tb_postgres::PgDevDatabase;

fn dev_database(id: &str) -> (PgDevDatabase, Cleanup, String) {
    let (p, cleanup) = provisioner();
    let id = ProjectId::parse(id).unwrap();
    let names = p.names(&id, true);
    cleanup.names(&names);
    (PgDevDatabase::new(Arc::new(p), id), cleanup, names.database)
}

#[tokio::test]
async fn the_dev_database_returns_typed_rows() {
    let (db, _cleanup, _) = dev_database("proj_types");
    db.query(
        "CREATE TABLE things (i int, b bigint, s smallint, f double precision, n numeric, ok boolean, \
             t text, v varchar(10), j jsonb, js json, at timestamptz, u uuid, gap int, span interval, \
             arr int[])",
        10,
    )
    .await
    .unwrap();
    let inserted = db
        .query(
            "INSERT INTO things VALUES (1, 9000000000, -2, 1.5, 12345678901234567890.123, true, 'hi', 'v', \
                 '{\"a\": [1, null]}', '[1]', '2024-05-06 07:08:09.5+02', \
                 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL, '1 day 2 hours', '{1,2}')",
            10,
        )
        .await
        .unwrap();
    assert_eq!(inserted.rows_affected, 1);
    assert!(inserted.columns.is_empty() && inserted.rows.is_empty());

    let r = db.query("SELECT * FROM things", 10).await.unwrap();
    assert_eq!(
        r.columns,
        [
            "i", "b", "s", "f", "n", "ok", "t", "v", "j", "js", "at", "u", "gap", "span", "arr"
        ]
    );
    assert_eq!(
        r.rows,
        vec![vec![
            json!(1),
            json!(9_000_000_000i64),
            json!(-2),
            json!(1.5),
            json!("12345678901234567890.123"),
            json!(true),
            json!("hi"),
            json!("v"),
            json!({"a": [1, null]}),
            json!([1]),
            json!("2024-05-06T05:08:09.5Z"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!(null),
            json!("1 day 02:00:00"),
            json!("{1,2}"),
        ]]
    );
    assert!(!r.truncated);

    let empty = db
        .query("SELECT i, t FROM things WHERE false", 10)
        .await
        .unwrap();
    assert_eq!(
        empty.columns,
        ["i", "t"],
        "columns are named even without rows"
    );
    assert!(empty.rows.is_empty());
}

#[tokio::test]
async fn rows_beyond_max_rows_are_dropped_and_flagged() {
    let (db, _cleanup, _) = dev_database("proj_trunc");
    let r = db
        .query("SELECT g FROM generate_series(1, 10) AS g", 3)
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![json!(1)], vec![json!(2)], vec![json!(3)]]);
    assert!(r.truncated);
    assert_eq!(r.rows_affected, 10);
    let exact = db
        .query("SELECT g FROM generate_series(1, 3) AS g", 3)
        .await
        .unwrap();
    assert!(!exact.truncated);

    // A truncated RETURNING still completes: all rows are in.
    db.query("CREATE TABLE t (x int)", 1).await.unwrap();
    let r = db
        .query("INSERT INTO t SELECT generate_series(1, 5) RETURNING x", 2)
        .await
        .unwrap();
    assert_eq!((r.rows.len(), r.truncated, r.rows_affected), (2, true, 5));
    let count = db.query("SELECT count(*) AS n FROM t", 1).await.unwrap();
    assert_eq!(count.rows, vec![vec![json!(5)]]);
}

#[tokio::test]
async fn errors_come_back_as_the_servers_text() {
    let (db, _cleanup, _) = dev_database("proj_errors");
    let e = db.query("SELEC 1", 10).await.unwrap_err();
    assert!(e.contains("syntax error at or near \"SELEC\""), "{e}");
    assert!(
        e.contains("42601") && e.contains("POSITION: character 1"),
        "{e}"
    );
    let e = db
        .query("SELECT * FROM missing_table", 10)
        .await
        .unwrap_err();
    assert!(
        e.contains("relation \"missing_table\" does not exist"),
        "{e}"
    );
    assert!(!e.contains("postgres://"), "no URL in errors: {e}");
}

#[tokio::test]
async fn several_statements_in_one_call_are_refused_and_none_runs() {
    let (db, _cleanup, _) = dev_database("proj_multi");
    let e = db
        .query("CREATE TABLE sneaky (x int); SELECT 1", 10)
        .await
        .unwrap_err();
    assert!(e.contains("one SQL statement per call"), "{e}");
    let r = db
        .query(
            "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'sneaky'",
            10,
        )
        .await
        .unwrap();
    assert_eq!(r.rows, vec![vec![json!(0)]]);
    // One statement with a trailing semicolon is fine.
    assert_eq!(
        db.query("SELECT 1 AS one;", 10).await.unwrap().rows,
        vec![vec![json!(1)]]
    );
}

#[tokio::test]
async fn a_long_statement_is_cancelled_by_the_statement_timeout() {
    let (db, _cleanup, _) = dev_database("proj_sleep");
    db.query("SELECT 1", 1).await.unwrap(); // provision first, so only the sleep is timed
    let started = Instant::now();
    let e = db.query("SELECT pg_sleep(30)", 10).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        e.contains("canceling statement due to statement timeout"),
        "{e}"
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

#[tokio::test]
async fn queries_run_as_the_dev_role_in_a_fresh_session_provisioned_on_first_use() {
    let (db, _cleanup, dev_name) = dev_database("proj_who");
    let exists = |name: String| async move {
        let mut c = admin().await;
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(name)
        .fetch_one(&mut c)
        .await
        .unwrap()
    };
    assert!(
        !exists(dev_name.clone()).await,
        "nothing before the first query"
    );

    let r = db
        .query(
            "SELECT current_user::text AS u, current_database()::text AS d",
            1,
        )
        .await
        .unwrap();
    assert_eq!(
        r.rows,
        vec![vec![json!(dev_name.clone()), json!(dev_name.clone())]]
    );

    // Session settings do not carry over to the next call.
    db.query("SET statement_timeout = 0", 1).await.unwrap();
    let r = db.query("SHOW statement_timeout", 1).await.unwrap();
    assert_eq!(r.rows, vec![vec![json!("10s")]]);

    // The dev role is not the admin.
    let e = db.query("CREATE ROLE intruder", 1).await.unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
}

#[tokio::test]
async fn migrations_are_rehearsed_in_a_throwaway_schema_that_leaves_nothing_behind() {
    use tb_core::ports::Migration;
    let (db, _cleanup, _) = dev_database("proj_rehearsal");
    // A table of the same name in the dev database does not hide a migration's own error.
    db.query("CREATE TABLE todos (id int)", 1).await.unwrap();
    let good = vec![
        Migration {
            name: "001_todos.sql".into(),
            sql: "CREATE TABLE todos (id serial PRIMARY KEY, title text NOT NULL);\nCREATE TABLE tags (todo_id int REFERENCES todos(id), tag text);".into(),
        },
        Migration {
            name: "002_done.sql".into(),
            sql: "ALTER TABLE todos ADD COLUMN done boolean NOT NULL DEFAULT false;".into(),
        },
    ];
    assert_eq!(db.rehearse_migrations(&good).await, Ok(true));
    let mut bad = good.clone();
    bad[1].sql = "ALTER TABLE todoz ADD COLUMN done boolean;".into();
    let err = db.rehearse_migrations(&bad).await.unwrap_err();
    assert!(
        err.starts_with("migrations/002_done.sql:") && err.contains("todoz"),
        "{err}"
    );
    // Nothing of the rehearsals stayed: no schema, no table `tags`, `todos` unchanged.
    let left = db
        .query("SELECT count(*)::int AS n FROM information_schema.schemata WHERE schema_name LIKE 'tb_rehearsal%'", 1)
        .await
        .unwrap();
    assert_eq!(left.rows[0][0], json!(0));
    assert!(db.query("SELECT * FROM tags", 1).await.is_err());
    let cols = db.query("SELECT * FROM todos", 1).await.unwrap();
    assert_eq!(cols.columns, vec!["id"]);
}
