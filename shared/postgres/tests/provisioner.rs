//! The provisioner against the local cluster: idempotence, isolation between projects,
//! concurrency, refusal of privileged roles, and quoting as the server reads it.

mod common;

use common::{Cleanup, admin, connect, provisioner, sqlstate};
use sqlx::{AssertSqlSafe, Connection, Row};
use tb_core::domain::ProjectId;
use tb_core::ports::{DatabaseProvisioner, PortError, ProjectDatabase};
use tb_postgres::{quote_ident, quote_literal, scram};

fn project(id: &str) -> ProjectId {
    ProjectId::parse(id).unwrap()
}

/// The password inside `postgres://role:password@…`.
fn url_password(url: &str) -> String {
    let userinfo = url
        .strip_prefix("postgres://")
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    userinfo.split_once(':').unwrap().1.to_string()
}

async fn stored_verifier(role: &str) -> String {
    let mut a = admin().await;
    let v: Option<String> =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(role)
            .fetch_one(&mut a)
            .await
            .unwrap();
    v.expect("the role has a password")
}

async fn whoami(db: &ProjectDatabase) -> (String, String) {
    let mut c = connect(&db.url).await.expect("the project URL connects");
    let row = sqlx::query("SELECT current_user::text AS u, current_database()::text AS d")
        .fetch_one(&mut c)
        .await
        .unwrap();
    (row.get("u"), row.get("d"))
}

#[tokio::test]
async fn provisioning_twice_is_idempotent_and_each_url_connects_with_its_fresh_password() {
    let (p, cleanup) = provisioner();
    let id = project("proj_twice");
    cleanup.names(&p.names(&id, false));

    let first = p.provision(&id, false).await.unwrap();
    assert_eq!(first.database, format!("{}_proj_twice", p.prefix()));
    assert_eq!(first.role, first.database);
    assert!(
        first
            .url
            .starts_with(&format!("postgres://{}:", first.role)),
        "url shape"
    );
    assert!(
        first
            .url
            .ends_with(&format!("@127.0.0.1:5432/{}", first.database))
    );
    assert_eq!(
        whoami(&first).await,
        (first.role.clone(), first.database.clone())
    );
    let pw1 = url_password(&first.url);
    assert_eq!(pw1.len(), 64);
    assert!(scram::verifier_matches(
        &stored_verifier(&first.role).await,
        &pw1
    ));

    let second = p.provision(&id, false).await.unwrap();
    assert_eq!(
        (&second.database, &second.role),
        (&first.database, &first.role)
    );
    assert_eq!(
        whoami(&second).await,
        (second.role.clone(), second.database.clone())
    );
    let pw2 = url_password(&second.url);
    assert_ne!(pw1, pw2, "each call sets a fresh password");
    let stored = stored_verifier(&second.role).await;
    assert!(scram::verifier_matches(&stored, &pw2));
    assert!(
        !scram::verifier_matches(&stored, &pw1),
        "the old password was replaced"
    );
    assert!(!format!("{second:?}").contains(&pw2), "Debug hides the URL");
}

#[tokio::test]
async fn a_project_role_reaches_its_own_database_only() {
    let (p, cleanup) = provisioner();
    let (a, b) = (project("proj_a"), project("proj_b"));
    for (id, dev) in [(&a, false), (&b, false), (&a, true)] {
        cleanup.names(&p.names(id, dev));
    }
    let db_a = p.provision(&a, false).await.unwrap();
    let db_b = p.provision(&b, false).await.unwrap();
    let dev_a = p.provision(&a, true).await.unwrap();
    assert_eq!(dev_a.database, format!("{}_proj_a_dev", p.prefix()));
    assert_eq!(dev_a.role, dev_a.database);

    connect(&db_a.url).await.expect("own database");
    let with_db = |url: &str, db: &str| format!("{}/{db}", url.rsplit_once('/').unwrap().0);
    for (url, target) in [
        (&db_a.url, db_b.database.as_str()),
        (&db_a.url, "postgres"),
        (&db_a.url, "template1"),
        (&db_a.url, dev_a.database.as_str()),
        (&dev_a.url, db_a.database.as_str()),
    ] {
        let err = connect(&with_db(url, target))
            .await
            .err()
            .unwrap_or_else(|| panic!("connected to {target}"));
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{target}: {err}");
        assert!(err.to_string().contains("permission denied"), "{err}");
    }

    // The role has no special attributes, and PUBLIC has no grant on the database.
    let mut adm = admin().await;
    let row = sqlx::query(
        "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls AS special, \
             rolcanlogin FROM pg_roles WHERE rolname = $1",
    )
    .bind(&db_a.role)
    .fetch_one(&mut adm)
    .await
    .unwrap();
    assert!(!row.get::<bool, _>("special") && row.get::<bool, _>("rolcanlogin"));
    let public_can_connect: bool =
        sqlx::query_scalar("SELECT has_database_privilege('public', $1, 'CONNECT')")
            .bind(&db_a.database)
            .fetch_one(&mut adm)
            .await
            .unwrap();
    assert!(!public_can_connect);

    // Inside its database the role owns the public schema's use; PUBLIC has nothing.
    let mut own = connect(&db_a.url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .execute(&mut own)
        .await
        .expect("the role can create tables in its database");
    let public_usage: bool =
        sqlx::query_scalar("SELECT has_schema_privilege('public', 'public', 'USAGE')")
            .fetch_one(&mut own)
            .await
            .unwrap();
    assert!(!public_usage);
}

#[tokio::test]
async fn concurrent_provisioning_of_one_project_does_not_fail() {
    let (p, cleanup) = provisioner();
    let id = project("proj_race");
    cleanup.names(&p.names(&id, false));
    let results = futures::future::join_all((0..4).map(|_| p.provision(&id, false))).await;
    let dbs: Vec<ProjectDatabase> = results
        .into_iter()
        .map(|r| r.expect("no call fails"))
        .collect();
    assert!(
        dbs.iter()
            .all(|d| d.database == dbs[0].database && d.role == dbs[0].role)
    );
    // The last password set is one of those handed out, and it works.
    let stored = stored_verifier(&dbs[0].role).await;
    let working: Vec<&ProjectDatabase> = dbs
        .iter()
        .filter(|d| scram::verifier_matches(&stored, &url_password(&d.url)))
        .collect();
    assert_eq!(working.len(), 1);
    whoami(working[0]).await;
}

#[tokio::test]
async fn an_existing_privileged_role_with_the_project_name_is_not_taken_over() {
    let (p, cleanup) = provisioner();
    let id = project("proj_priv");
    let names = p.names(&id, false);
    cleanup.names(&names);
    let mut adm = admin().await;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE ROLE {} CREATEDB",
        quote_ident(&names.role)
    )))
    .execute(&mut adm)
    .await
    .unwrap();

    let err = p.provision(&id, false).await.unwrap_err();
    assert!(
        matches!(err, PortError::Permanent(ref m) if m.contains("refusing")),
        "{err:?}"
    );
    let row = sqlx::query(
        "SELECT rolpassword IS NULL AS no_password, rolcanlogin FROM pg_authid WHERE rolname = $1",
    )
    .bind(&names.role)
    .fetch_one(&mut adm)
    .await
    .unwrap();
    assert!(row.get::<bool, _>("no_password") && !row.get::<bool, _>("rolcanlogin"));
    let db_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&names.database)
            .fetch_one(&mut adm)
            .await
            .unwrap();
    assert!(!db_exists);
}

#[tokio::test]
async fn quoted_names_and_literals_reach_the_server_as_exactly_one_token() {
    let hostile = [
        "a\"b",
        "a'b",
        "x\"; DROP ROLE postgres; --",
        "x'; DROP ROLE postgres; --",
        "back\\slash'",
        "\"\"",
    ];
    let mut c = admin().await;
    for s in hostile {
        let sql = format!("SELECT {} AS {}", quote_literal(s), quote_ident(s));
        let row = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(sqlx::Column::name(&row.columns()[0]), s, "{sql}");
        assert_eq!(row.columns().len(), 1);
        let value: String = row.try_get_unchecked(0).unwrap();
        assert_eq!(value, s, "{sql}");
    }

    // A role whose name tries to break out is created under exactly that name.
    let cleanup = Cleanup::default();
    let name = format!("{}\"; DROP ROLE postgres; --", common::unique_prefix());
    cleanup.role(&name);
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE ROLE {}", quote_ident(&name))))
        .execute(&mut c)
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&name)
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert!(exists);
    let _ = c.close().await;
}

#[tokio::test]
async fn dropping_a_project_removes_its_databases_and_roles_once_and_is_idempotent() {
    let (p, cleanup) = provisioner();
    let id = project("proj_dropped");
    cleanup.names(&p.names(&id, false));
    cleanup.names(&p.names(&id, true));
    let prod = p.provision(&id, false).await.unwrap();
    let dev = p.provision(&id, true).await.unwrap();
    // A session still connected does not stop the drop.
    let open = connect(&prod.url).await.unwrap();

    let dropped = p.drop_project(&id).await.unwrap();
    assert_eq!(
        dropped["dropped"],
        serde_json::json!([
            format!("database {}", prod.database),
            format!("role {}", prod.role),
            format!("database {}", dev.database),
            format!("role {}", dev.role),
        ])
    );
    let mut a = admin().await;
    for (db, role) in [(&prod.database, &prod.role), (&dev.database, &dev.role)] {
        let left: (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1), \
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2)",
        )
        .bind(db)
        .bind(role)
        .fetch_one(&mut a)
        .await
        .unwrap();
        assert_eq!(left, (false, false), "{db}");
    }
    drop(open);
    let again = p.drop_project(&id).await.unwrap();
    assert_eq!(again["dropped"], serde_json::json!([]));
    assert_eq!(again["already_gone"].as_array().unwrap().len(), 4);
}
