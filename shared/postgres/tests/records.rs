//! Platform records against a fresh database per test: keys, projects, the usage ledger.

mod common;

use common::{Cleanup, connect, fresh_database};
use sqlx::Row;
use tb_core::domain::{ProjectId, RequestId, UserId};
use tb_core::model::StopReason;
use tb_core::money::MicroUsd;
use tb_core::ports::{PlatformRecords, PortError, ProjectRecord};
use tb_core::usage::{ModelCall, TokenUsage};
use tb_postgres::PgPlatformRecords;

async fn records() -> (PgPlatformRecords, String, Cleanup) {
    let cleanup = Cleanup::default();
    let url = fresh_database(&cleanup).await;
    let r = PgPlatformRecords::connect(&url)
        .await
        .expect("connect and migrate");
    (r, url, cleanup)
}

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

#[tokio::test]
async fn keys_authenticate_by_the_full_key_only() {
    let (r, _url, _c) = records().await;
    let alice = user("user_alice");
    let (key, secret) = r.create_key(&alice, "laptop").await.unwrap();
    assert!(secret.starts_with("tb_") && secret.len() == 43, "{secret}");
    assert_eq!(key.user, alice);
    assert_eq!(key.label, "laptop");
    assert_eq!(key.prefix, &secret[..12]);
    assert!(key.revoked_at_ms.is_none());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        key.created_at_ms.abs_diff(now_ms) < 60_000,
        "{}",
        key.created_at_ms
    );

    assert_eq!(r.authenticate(&secret).await.unwrap(), Some(key.clone()));
    let mut altered = secret.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == '0' { '1' } else { '0' });
    for wrong in [
        key.prefix.as_str(),
        altered.as_str(),
        &secret.to_uppercase(),
        "",
        &format!("{secret} "),
    ] {
        assert_eq!(r.authenticate(wrong).await.unwrap(), None, "{wrong:?}");
    }
    let (_, other) = r.create_key(&alice, "ci").await.unwrap();
    assert_ne!(other, secret);
}

#[tokio::test]
async fn a_revoked_key_no_longer_authenticates() {
    let (r, _url, _c) = records().await;
    let (alice, mallory) = (user("user_alice"), user("user_mallory"));
    let (key, secret) = r.create_key(&alice, "old").await.unwrap();
    assert!(
        !r.revoke_key(&mallory, &key.id).await.unwrap(),
        "only the owner revokes"
    );
    assert!(r.authenticate(&secret).await.unwrap().is_some());
    assert!(r.revoke_key(&alice, &key.id).await.unwrap());
    assert!(
        !r.revoke_key(&alice, &key.id).await.unwrap(),
        "revoking twice is a no-op"
    );
    assert_eq!(r.authenticate(&secret).await.unwrap(), None);
    let listed = r.list_keys(&alice).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked_at_ms.is_some());
}

#[tokio::test]
async fn listings_show_the_prefix_and_the_table_never_holds_the_key() {
    let (r, url, _c) = records().await;
    let (alice, bob) = (user("user_alice"), user("user_bob"));
    let (k1, s1) = r.create_key(&alice, "one").await.unwrap();
    let (k2, s2) = r.create_key(&alice, "two").await.unwrap();
    r.create_key(&bob, "bob's").await.unwrap();

    let listed = r.list_keys(&alice).await.unwrap();
    assert_eq!(listed, vec![k1.clone(), k2.clone()]);
    for (k, s) in [(&k1, &s1), (&k2, &s2)] {
        assert_eq!(k.prefix.len(), 12);
        assert!(s.starts_with(&k.prefix));
        assert!(!format!("{k:?}").contains(s.as_str()));
    }

    let mut c = connect(&url).await.unwrap();
    let rows =
        sqlx::query("SELECT t::text AS whole, encode(key_hash, 'hex') AS h FROM api_keys AS t")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let whole: String = row.get("whole");
        for s in [&s1, &s2] {
            assert!(
                !whole.contains(s.as_str()) && !whole.contains(&s[12..]),
                "{whole}"
            );
        }
    }
    let hashes: Vec<String> = rows.iter().map(|r| r.get("h")).collect();
    assert!(hashes.contains(&tb_core::encoding::sha256_hex(s1.as_bytes())));
}

fn call(iteration: u32, cost: i64) -> ModelCall {
    ModelCall {
        iteration,
        model: "test-model".into(),
        usage: TokenUsage {
            input: 100,
            output: 20,
            cache_write: 5,
            cache_read: 1000,
        },
        cost: MicroUsd::from_micros(cost),
        latency_ms: 1234,
        stop_reason: StopReason::ToolUse,
    }
}

#[tokio::test]
async fn ledger_writes_are_idempotent_and_spent_sums_them() {
    let (r, url, _c) = records().await;
    let (alice, bob) = (user("user_alice"), user("user_bob"));
    let project = ProjectId::parse("proj_ledger").unwrap();
    let (req1, req2) = (
        RequestId::parse("req_1").unwrap(),
        RequestId::parse("req_2").unwrap(),
    );
    assert_eq!(r.spent(&alice).await.unwrap(), MicroUsd::ZERO);

    let calls = [call(1, 1_500), call(2, 2_500)];
    r.record_usage(&req1, &alice, &project, &calls)
        .await
        .unwrap();
    r.record_usage(&req1, &alice, &project, &calls)
        .await
        .unwrap();
    r.record_usage(&req1, &alice, &project, &calls[1..])
        .await
        .unwrap();
    assert_eq!(r.spent(&alice).await.unwrap(), MicroUsd::from_micros(4_000));

    r.record_usage(&req2, &alice, &project, &[call(1, 10_000)])
        .await
        .unwrap();
    r.record_usage(
        &RequestId::parse("req_3").unwrap(),
        &bob,
        &project,
        &[call(1, 7)],
    )
    .await
    .unwrap();
    r.record_usage(&req2, &alice, &project, &[]).await.unwrap();
    assert_eq!(
        r.spent(&alice).await.unwrap(),
        MicroUsd::from_micros(14_000)
    );
    assert_eq!(r.spent(&bob).await.unwrap(), MicroUsd::from_micros(7));

    let mut c = connect(&url).await.unwrap();
    let row = sqlx::query(
        "SELECT count(*) AS n, sum(input_tokens)::bigint AS input, sum(cache_read_tokens)::bigint AS cached, \
             min(stop_reason) AS stop FROM usage_ledger WHERE user_id = 'user_alice'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(row.get::<i64, _>("n"), 3);
    assert_eq!(row.get::<i64, _>("input"), 300);
    assert_eq!(row.get::<i64, _>("cached"), 3000);
    assert_eq!(row.get::<String, _>("stop"), "tool_use");
}

/// Finalizer deliveries race: the same calls recorded at once by several writers, with new
/// ones among them. Each call is added to the total exactly once, and the total read at
/// admission is the ledger's sum without summing it.
#[tokio::test]
async fn concurrent_duplicate_ledger_writes_keep_the_spending_total_exact() {
    let (r, url, _c) = records().await;
    let r = std::sync::Arc::new(r);
    let alice = user("user_alice");
    let project = ProjectId::parse("proj_race").unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..12u32 {
        let (r, alice, project) = (r.clone(), alice.clone(), project.clone());
        writers.spawn(async move {
            // Every writer records calls 1..=5 of req_a; writer w also calls 1..=w of req_b.
            let a: Vec<ModelCall> = (1..=5).map(|i| call(i, 1_000 * i64::from(i))).collect();
            let b: Vec<ModelCall> = (1..=w).map(|i| call(i, 7)).collect();
            r.record_usage(&RequestId::parse("req_a").unwrap(), &alice, &project, &a)
                .await
                .unwrap();
            r.record_usage(&RequestId::parse("req_b").unwrap(), &alice, &project, &b)
                .await
                .unwrap();
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    // req_a: 1+2+3+4+5 thousand; req_b: calls 1..=11 once each.
    let want = MicroUsd::from_micros(15_000 + 11 * 7);
    assert_eq!(r.spent(&alice).await.unwrap(), want);
    let mut c = connect(&url).await.unwrap();
    let summed: i64 = sqlx::query_scalar(
        "SELECT sum(cost_micro_usd)::bigint FROM usage_ledger WHERE user_id = 'user_alice'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(MicroUsd::from_micros(summed), want);
    // `spent` is the kept total, not a sum of the ledger: a row removed behind the store's
    // back (never done in operation) does not change it.
    sqlx::query("DELETE FROM usage_ledger WHERE request_id = 'req_b'")
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(r.spent(&alice).await.unwrap(), want);
}

/// A database whose ledger was written before the totals existed: the migration that adds
/// them starts each user's total at the sum of their ledger, and writes carry on from there.
#[tokio::test]
async fn the_totals_migration_starts_from_the_existing_ledger() {
    let cleanup = Cleanup::default();
    let url = fresh_database(&cleanup).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let all = tb_postgres::schema::migrator().unwrap();
    let before_totals: Vec<_> = all.iter().filter(|m| m.version < 3).cloned().collect();
    sqlx::migrate::Migrator::with_migrations(before_totals)
        .run(&pool)
        .await
        .unwrap();
    for (request, user, iteration, cost) in [
        ("req_old1", "user_alice", 1, 1_000),
        ("req_old1", "user_alice", 2, 2_000),
        ("req_old2", "user_bob", 1, 500),
    ] {
        sqlx::query(
            "INSERT INTO usage_ledger (request_id, iteration, user_id, project_id, model, \
                 input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, \
                 cost_micro_usd, latency_ms, stop_reason) \
             VALUES ($1, $2, $3, 'proj_old', 'm', 0, 0, 0, 0, $4, 0, 'end_turn')",
        )
        .bind(request)
        .bind(iteration)
        .bind(user)
        .bind(cost as i64)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let r = PgPlatformRecords::connect(&url)
        .await
        .expect("connect and migrate");
    let (alice, bob) = (user("user_alice"), user("user_bob"));
    assert_eq!(r.spent(&alice).await.unwrap(), MicroUsd::from_micros(3_000));
    assert_eq!(r.spent(&bob).await.unwrap(), MicroUsd::from_micros(500));
    r.record_usage(
        &RequestId::parse("req_new").unwrap(),
        &alice,
        &ProjectId::parse("proj_old").unwrap(),
        &[call(1, 250)],
    )
    .await
    .unwrap();
    assert_eq!(r.spent(&alice).await.unwrap(), MicroUsd::from_micros(3_250));
}

fn project_record(id: &str, owner: &str) -> ProjectRecord {
    ProjectRecord {
        name: "users api".into(),
        ..ProjectRecord::new(
            ProjectId::parse(id).unwrap(),
            user(owner),
            1_700_000_000_123,
        )
    }
}

#[tokio::test]
async fn a_project_owner_cannot_be_changed_by_upsert() {
    let (r, _url, _c) = records().await;
    let mut p = project_record("proj_owned", "user_alice");
    r.save_project(&p).await.unwrap();
    assert_eq!(r.project(&p.id).await.unwrap(), Some(p.clone()));

    p.name = "users api v2".into();
    p.repo_url = Some("https://github.com/acme/proj_owned".into());
    p.deploy_url = Some("https://proj-owned.fly.dev".into());
    p.database = Some("tb_proj_owned".into());
    p.deployed_version = Some("sha256:bbb".into());
    p.previous_version = Some("sha256:aaa".into());
    p.last_request = Some(RequestId::parse("req_9").unwrap());
    p.last_verified_version = Some("sha256:aaa".into());
    p.deployed_verified = Some(false);
    p.updated_at_ms = 1_700_000_999_999;
    r.save_project(&p).await.unwrap();
    assert_eq!(r.project(&p.id).await.unwrap(), Some(p.clone()));

    let mut stolen = p.clone();
    stolen.owner = user("user_mallory");
    stolen.name = "mine now".into();
    let err = r.save_project(&stolen).await.unwrap_err();
    assert!(
        matches!(err, PortError::Permanent(ref m) if m.contains("another user")),
        "{err:?}"
    );
    assert_eq!(
        r.project(&p.id).await.unwrap(),
        Some(p.clone()),
        "unchanged"
    );
    assert!(r.projects(&user("user_mallory")).await.unwrap().is_empty());

    let other = project_record("proj_second", "user_alice");
    r.save_project(&ProjectRecord {
        created_at_ms: p.created_at_ms + 1,
        ..other.clone()
    })
    .await
    .unwrap();
    let mine: Vec<ProjectId> = r
        .projects(&user("user_alice"))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(mine, [p.id.clone(), other.id.clone()]);
    assert_eq!(
        r.project(&ProjectId::parse("proj_none").unwrap())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn connecting_again_finds_the_schema_up_to_date() {
    let (r, url, _c) = records().await;
    r.create_key(&user("user_alice"), "k").await.unwrap();
    let again = PgPlatformRecords::connect(&url).await.unwrap();
    assert_eq!(again.list_keys(&user("user_alice")).await.unwrap().len(), 1);
    assert!(!format!("{again:?}").contains("postgres://"));
}

/// Connecting skips the migrator only when every migration is recorded with its checksum:
/// an edited one is refused, a missing one goes to the migrator.
#[tokio::test]
async fn the_quick_schema_check_falls_back_to_the_migrator_when_anything_differs() {
    let (_r, url, _c) = records().await;
    let mut c = connect(&url).await.unwrap();
    let first: i64 = sqlx::query_scalar("SELECT min(version) FROM _sqlx_migrations")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let original: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = $1")
            .bind(first)
            .fetch_one(&mut c)
            .await
            .unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = $1")
        .bind(first)
        .execute(&mut c)
        .await
        .unwrap();
    assert!(
        PgPlatformRecords::connect(&url).await.is_err(),
        "an edited migration was accepted"
    );
    sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2")
        .bind(&original)
        .bind(first)
        .execute(&mut c)
        .await
        .unwrap();
    PgPlatformRecords::connect(&url).await.unwrap();

    // Forget the last migration: the migrator must run, and either apply it again (the row
    // comes back) or fail trying (its tables exist). Skipping it would succeed without it.
    let last: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(last)
        .execute(&mut c)
        .await
        .unwrap();
    let again = PgPlatformRecords::connect(&url).await;
    let back: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE version = $1")
        .bind(last)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(
        again.is_err() || back == 1,
        "a missing migration was skipped"
    );
}

#[tokio::test]
async fn each_new_deployed_version_is_recorded_once_in_the_project_history() {
    let (r, url, _c) = records().await;
    let mut p = project_record("proj_deploys", "user_alice");
    r.save_project(&p).await.unwrap();

    let deploy = |p: &mut ProjectRecord, version: &str, at: u64| {
        p.previous_version = p.deployed_version.take();
        p.deployed_version = Some(version.into());
        p.deploy_url = Some("https://proj-deploys.fly.dev".into());
        p.updated_at_ms = at;
    };
    deploy(&mut p, "sha256:aaa", 1_700_000_001_000);
    r.save_project(&p).await.unwrap();
    // Saved again with the same version (a retried finalizer, a later request that only
    // changed the repository): no second row, the first keeps its time.
    p.updated_at_ms = 1_700_000_002_000;
    p.last_request = Some(RequestId::parse("req_again").unwrap());
    r.save_project(&p).await.unwrap();
    deploy(&mut p, "sha256:bbb", 1_700_000_003_000);
    r.save_project(&p).await.unwrap();

    // A refused save (another owner) records nothing either.
    let mut stolen = p.clone();
    stolen.owner = user("user_mallory");
    deploy(&mut stolen, "sha256:evil", 1_700_000_004_000);
    assert!(r.save_project(&stolen).await.is_err());

    let mut c = connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT version, url, floor(extract(epoch FROM created_at) * 1000)::bigint AS ms \
         FROM deployments WHERE project_id = 'proj_deploys' ORDER BY created_at, version",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let history: Vec<(String, String, i64)> = rows
        .iter()
        .map(|row| (row.get("version"), row.get("url"), row.get("ms")))
        .collect();
    assert_eq!(
        history,
        [
            (
                "sha256:aaa".to_owned(),
                "https://proj-deploys.fly.dev".to_owned(),
                1_700_000_001_000
            ),
            (
                "sha256:bbb".to_owned(),
                "https://proj-deploys.fly.dev".to_owned(),
                1_700_000_003_000
            ),
        ]
    );
    let saved = r.project(&p.id).await.unwrap().unwrap();
    assert_eq!(
        (saved.deployed_version, saved.previous_version),
        (Some("sha256:bbb".into()), Some("sha256:aaa".into()))
    );
}

#[tokio::test]
async fn the_schema_has_users_request_summaries_and_project_databases() {
    let (_r, url, _c) = records().await;
    let mut c = connect(&url).await.unwrap();
    let columns = |table: &'static str| {
        sqlx::query_scalar::<_, String>(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
    };
    assert_eq!(
        columns("users").fetch_all(&mut c).await.unwrap(),
        ["id", "created_at", "spending_cap_micro_usd"]
    );
    assert_eq!(
        columns("requests").fetch_all(&mut c).await.unwrap(),
        [
            "id",
            "user_id",
            "project_id",
            "key_id",
            "description",
            "phase",
            "cost_micro_usd",
            "created_at",
            "finished_at"
        ]
    );
    assert_eq!(
        columns("deployments").fetch_all(&mut c).await.unwrap(),
        ["project_id", "version", "url", "created_at"]
    );
    assert_eq!(
        columns("project_databases")
            .fetch_all(&mut c)
            .await
            .unwrap(),
        ["project_id", "database_name", "role_name", "created_at"]
    );

    // Rows go in as the reporting queries will write them; bad values are refused.
    sqlx::raw_sql(
        "INSERT INTO users (id) VALUES ('user_alice'); \
         INSERT INTO users (id, spending_cap_micro_usd) VALUES ('user_bob', 5000000); \
         INSERT INTO requests (id, user_id, project_id, key_id, description, phase, cost_micro_usd, created_at) \
             VALUES ('req_1', 'user_alice', 'proj_1', 'key_1', 'Create a simple API', 'succeeded', 1234, now()); \
         INSERT INTO project_databases (project_id, database_name, role_name) \
             VALUES ('proj_1', 'tb_proj_1', 'tb_proj_1_owner');",
    )
    .execute(&mut c)
    .await
    .unwrap();
    for bad in [
        "INSERT INTO users (id, spending_cap_micro_usd) VALUES ('user_neg', -1)",
        "INSERT INTO requests (id, user_id, project_id, description, phase, cost_micro_usd, created_at) \
             VALUES ('req_neg', 'u', 'p', 'd', 'failed', -5, now())",
        "INSERT INTO project_databases (project_id, database_name, role_name) \
             VALUES ('proj_2', 'tb_proj_1', 'r')",
        "INSERT INTO deployments (project_id, version, url) VALUES ('proj_missing', 'v1', 'u')",
    ] {
        assert!(
            sqlx::raw_sql(bad).execute(&mut c).await.is_err(),
            "accepted: {bad}"
        );
    }
    let indexed: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public' \
         AND tablename IN ('requests', 'deployments') ORDER BY indexname",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    for index in [
        "requests_user_id_idx",
        "requests_project_id_idx",
        "requests_key_id_idx",
        "deployments_project_id_created_at_idx",
    ] {
        assert!(indexed.iter().any(|i| i == index), "{index}: {indexed:?}");
    }
}

#[tokio::test]
async fn a_projects_lifecycle_is_written_only_by_save_lifecycle_and_kept_by_save_project() {
    let (r, _url, _c) = records().await;
    let mut p = project_record("proj_life", "user_alice");
    r.save_project(&p).await.unwrap();
    assert_eq!(
        r.project(&p.id).await.unwrap().unwrap().lifecycle,
        Default::default()
    );
    let mut lifecycle = tb_core::ports::Lifecycle {
        version: 1,
        deletion: Some(tb_core::ports::Operation::new(user("user_alice"), 5)),
        ..Default::default()
    };
    lifecycle.record("delete requested", &user("user_alice"), 5, String::new());
    r.save_lifecycle(&p.id, &lifecycle).await.unwrap();
    assert_eq!(
        r.project(&p.id).await.unwrap().unwrap().lifecycle,
        lifecycle
    );

    // A save of the record read before (as a finalizer finishing a request does) keeps it.
    p.deploy_url = Some("https://x.example".into());
    r.save_project(&p).await.unwrap();
    let stored = r.project(&p.id).await.unwrap().unwrap();
    assert_eq!(stored.lifecycle, lifecycle);
    assert_eq!(stored.deploy_url.as_deref(), Some("https://x.example"));
    assert_eq!(
        r.projects(&user("user_alice")).await.unwrap()[0].lifecycle,
        lifecycle
    );

    // A writer that read the lifecycle before this one was saved is refused.
    let stale = r.save_lifecycle(&p.id, &lifecycle).await;
    assert!(matches!(stale, Err(PortError::Conflict(_))), "{stale:?}");
    lifecycle.version += 1;
    r.save_lifecycle(&p.id, &lifecycle).await.unwrap();

    let missing = r
        .save_lifecycle(&ProjectId::parse("proj_none").unwrap(), &lifecycle)
        .await;
    assert!(
        matches!(missing, Err(PortError::NotFound(_))),
        "{missing:?}"
    );
}
