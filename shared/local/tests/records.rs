//! Platform records on SQLite: API keys stored only as hashes, revocation, projects with an
//! immutable owner, and an idempotent usage ledger.

use tb_core::domain::{ProjectId, RequestId, UserId};
use tb_core::model::StopReason;
use tb_core::ports::{PlatformRecords, PortError, ProjectRecord};
use tb_core::{MicroUsd, ModelCall, TokenUsage};
use tb_local::SqliteRecords;

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

async fn open(dir: &tempfile::TempDir) -> SqliteRecords {
    SqliteRecords::open(dir.path().join("db.sqlite"))
        .await
        .unwrap()
}

fn call(iteration: u32, micros: i64) -> ModelCall {
    ModelCall {
        iteration,
        model: "claude-sonnet-4-5".into(),
        usage: TokenUsage {
            input: 1_000,
            output: 200,
            cache_write: 50,
            cache_read: 5_000,
        },
        cost: MicroUsd::from_micros(micros),
        latency_ms: 1_200,
        stop_reason: StopReason::Other("something new".into()),
    }
}

fn project(id: &str, owner: &str, at: u64) -> ProjectRecord {
    ProjectRecord::new(ProjectId::parse(id).unwrap(), user(owner), at)
}

#[tokio::test]
async fn a_key_is_stored_only_as_its_hash_and_a_visible_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(&dir).await;
    let (key, secret) = records.create_key(&user("user_1"), "laptop").await.unwrap();
    assert!(secret.starts_with("tb_") && secret.len() == 43, "{secret}");
    assert!(secret[3..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(key.prefix, secret[..12]);
    let hidden = &secret[12..];

    // Every column of every row, as text.
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT id || '|' || user_id || '|' || prefix || '|' || key_sha256 || '|' || label
             || '|' || created_at_ms || '|' || COALESCE(revoked_at_ms, '') FROM api_keys",
    )
    .fetch_all(records.db().pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(
        !rows[0].contains(&secret) && !rows[0].contains(hidden),
        "{}",
        rows[0]
    );
    assert!(rows[0].contains(&tb_core::encoding::sha256_hex(secret.as_bytes())));

    // Nor anywhere in the files (the database and its write-ahead log).
    records.db().close().await;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(hidden.len()).any(|w| w == hidden.as_bytes()),
            "the key's secret part is on disk"
        );
    }
}

#[tokio::test]
async fn a_key_authenticates_until_its_owner_revokes_it() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(&dir).await;
    let alice = user("user_alice");
    let (key, secret) = records.create_key(&alice, "ci").await.unwrap();
    let (other, other_secret) = records.create_key(&alice, "laptop").await.unwrap();
    assert_ne!(secret, other_secret);

    assert_eq!(
        records.authenticate(&secret).await.unwrap(),
        Some(key.clone())
    );
    let mut wrong = secret.clone();
    wrong.replace_range(42.., if secret.ends_with('0') { "1" } else { "0" });
    assert_eq!(records.authenticate(&wrong).await.unwrap(), None);
    assert_eq!(records.authenticate("").await.unwrap(), None);
    assert_eq!(records.authenticate(&key.prefix).await.unwrap(), None);

    assert!(
        !records
            .revoke_key(&user("user_mallory"), &key.id)
            .await
            .unwrap(),
        "only the owner revokes"
    );
    assert!(records.authenticate(&secret).await.unwrap().is_some());
    assert!(records.revoke_key(&alice, &key.id).await.unwrap());
    assert_eq!(records.authenticate(&secret).await.unwrap(), None);
    assert!(
        !records.revoke_key(&alice, &key.id).await.unwrap(),
        "already revoked"
    );
    assert_eq!(
        records.authenticate(&other_secret).await.unwrap(),
        Some(other.clone()),
        "the other key still works"
    );

    let listed = records.list_keys(&alice).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, key.id);
    assert!(listed[0].revoked_at_ms.is_some());
    assert_eq!(listed[1], other);
    assert!(
        records
            .list_keys(&user("user_mallory"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_projects_owner_never_changes() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(&dir).await;
    let p = project("proj_1", "user_alice", 1_000);
    records.save_project(&p).await.unwrap();

    let stolen = ProjectRecord {
        owner: user("user_mallory"),
        deploy_url: Some("https://evil.example".into()),
        ..p.clone()
    };
    let err = records.save_project(&stolen).await.unwrap_err();
    assert!(matches!(err, PortError::Permanent(_)), "{err:?}");
    assert_eq!(records.project(&p.id).await.unwrap(), Some(p.clone()));
    assert!(
        records
            .projects(&user("user_mallory"))
            .await
            .unwrap()
            .is_empty()
    );

    // The owner updates it; its creation time stays.
    let updated = ProjectRecord {
        deploy_url: Some("http://127.0.0.1:4000".into()),
        last_request: Some(RequestId::parse("req_1").unwrap()),
        last_verified_version: Some("ab12".into()),
        deployed_verified: Some(true),
        created_at_ms: 9_999,
        updated_at_ms: 2_000,
        ..p.clone()
    };
    records.save_project(&updated).await.unwrap();
    let stored = records.project(&p.id).await.unwrap().unwrap();
    assert_eq!(stored.deploy_url.as_deref(), Some("http://127.0.0.1:4000"));
    assert_eq!(
        (
            stored.last_verified_version.as_deref(),
            stored.deployed_verified
        ),
        (Some("ab12"), Some(true))
    );
    assert_eq!(stored.created_at_ms, 1_000);

    records
        .save_project(&project("proj_0", "user_alice", 3_000))
        .await
        .unwrap();
    let ids: Vec<String> = records
        .projects(&user("user_alice"))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(ids, ["proj_1", "proj_0"], "oldest first");
    assert_eq!(
        records
            .project(&ProjectId::parse("proj_none").unwrap())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn writing_the_same_usage_twice_bills_it_once_and_spent_is_the_sum() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(&dir).await;
    let alice = user("user_alice");
    let bob = user("user_bob");
    let proj = ProjectId::parse("proj_1").unwrap();
    let req = RequestId::parse("req_1").unwrap();
    assert_eq!(records.spent(&alice).await.unwrap(), MicroUsd::ZERO);

    records
        .record_usage(&req, &alice, &proj, &[call(1, 1_500), call(2, 2_500)])
        .await
        .unwrap();
    // A retried finalizer writes them again, with one more; a replayed row changes nothing.
    records
        .record_usage(
            &req,
            &alice,
            &proj,
            &[call(1, 999_999), call(2, 2_500), call(3, 4_000)],
        )
        .await
        .unwrap();
    records
        .record_usage(
            &RequestId::parse("req_2").unwrap(),
            &alice,
            &proj,
            &[call(1, 10)],
        )
        .await
        .unwrap();
    records
        .record_usage(
            &RequestId::parse("req_3").unwrap(),
            &bob,
            &proj,
            &[call(1, 7)],
        )
        .await
        .unwrap();

    assert_eq!(
        records.spent(&alice).await.unwrap(),
        MicroUsd::from_micros(8_010)
    );
    assert_eq!(records.spent(&bob).await.unwrap(), MicroUsd::from_micros(7));
    let (rows, cache_read): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), SUM(cache_read_tokens) FROM usage WHERE request_id = 'req_1'",
    )
    .fetch_one(records.db().pool())
    .await
    .unwrap();
    assert_eq!((rows, cache_read), (3, 15_000));
}

#[tokio::test]
async fn a_projects_lifecycle_is_written_only_by_save_lifecycle_and_kept_by_save_project() {
    let dir = tempfile::tempdir().unwrap();
    let records = open(&dir).await;
    let mut p = project("proj_life", "user_a", 1);
    records.save_project(&p).await.unwrap();
    let mut lifecycle = tb_core::ports::Lifecycle {
        version: 1,
        deleted_at_ms: Some(9),
        ..Default::default()
    };
    lifecycle.record("deleted", &user("user_a"), 9, "app: gone".into());
    records.save_lifecycle(&p.id, &lifecycle).await.unwrap();
    p.updated_at_ms = 2;
    records.save_project(&p).await.unwrap();
    let stored = records.project(&p.id).await.unwrap().unwrap();
    assert_eq!(stored.lifecycle, lifecycle);
    assert_eq!(stored.updated_at_ms, 2);
    let stale = records.save_lifecycle(&p.id, &lifecycle).await;
    assert!(matches!(stale, Err(PortError::Conflict(_))), "{stale:?}");

    let missing = records
        .save_lifecycle(&ProjectId::parse("proj_none").unwrap(), &lifecycle)
        .await;
    assert!(
        matches!(missing, Err(PortError::NotFound(_))),
        "{missing:?}"
    );
}
