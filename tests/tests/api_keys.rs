//! API keys read the same way by every store: the same inputs against Postgres, SQLite and
//! the in-memory records give the same answers, and a key stored as earlier versions stored
//! it (SHA-256, bytes in Postgres, lowercase hex in SQLite) still authenticates.

use tb_core::domain::UserId;
use tb_core::ports::PlatformRecords;
use tb_frontdoor::memory::MemoryRecords;
use tb_local::SqliteRecords;
use tb_postgres::PgPlatformRecords;
use tb_postgres::testing::Cleanup;
use tb_tests::finalize::fresh_database;

/// A key in the documented format, and its SHA-256 (from `sha256sum`, not from the code
/// under test).
const OLD_KEY: &str = "tb_0123456789abcdef0123456789abcdef01234567";
const OLD_KEY_SHA256: &str = "11f1dfff0d90a3ed2ec7e4734cb3edad9768e218487978bbb19ea306afdbabe2";

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// What a store says about the same inputs: the shape of a new key and its listing, and
/// which presented strings authenticate.
async fn answers(records: &dyn PlatformRecords) -> Vec<String> {
    let alice = user("user_alice");
    let (key, secret) = records.create_key(&alice, "laptop").await.unwrap();
    let mut out = vec![
        format!("length {}", secret.len()),
        format!("starts tb_ {}", secret.starts_with("tb_")),
        format!("prefix {}", key.prefix.len()),
        format!("prefix is the start {}", secret.starts_with(&key.prefix)),
    ];
    let upper = format!("tb_{}", secret[3..].to_ascii_uppercase());
    let presented = [
        ("the key", secret.clone()),
        ("its prefix", key.prefix.clone()),
        ("uppercase hex", upper),
        ("one more character", format!("{secret}0")),
        ("one less character", secret[..secret.len() - 1].to_string()),
        ("another prefix", format!("xx_{}", &secret[3..])),
        ("surrounding space", format!(" {secret} ")),
        ("empty", String::new()),
    ];
    for (what, text) in presented {
        let found = records.authenticate(&text).await.unwrap();
        out.push(format!(
            "{what}: {}",
            found.map_or("refused".to_string(), |k| format!("owner {}", k.user))
        ));
    }
    records.revoke_key(&alice, &key.id).await.unwrap();
    out.push(format!(
        "revoked: {:?}",
        records.authenticate(&secret).await.unwrap().map(|k| k.id)
    ));
    out
}

#[tokio::test]
async fn postgres_sqlite_and_memory_give_the_same_answers_to_the_same_keys() {
    let cleanup = Cleanup::default();
    let pg = PgPlatformRecords::connect(&fresh_database(&cleanup).await)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteRecords::open(dir.path().join("db.sqlite"))
        .await
        .unwrap();
    let memory = MemoryRecords::new();

    let expected = answers(&pg).await;
    assert_eq!(
        expected,
        [
            "length 43",
            "starts tb_ true",
            "prefix 12",
            "prefix is the start true",
            "the key: owner user_alice",
            "its prefix: refused",
            "uppercase hex: refused",
            "one more character: refused",
            "one less character: refused",
            "another prefix: refused",
            "surrounding space: refused",
            "empty: refused",
            "revoked: None",
        ]
    );
    assert_eq!(
        answers(&sqlite).await,
        expected,
        "SQLite differs from Postgres"
    );
    assert_eq!(
        answers(&memory).await,
        expected,
        "memory differs from Postgres"
    );
}

#[tokio::test]
async fn keys_stored_by_earlier_versions_keep_working_in_both_stores() {
    let cleanup = Cleanup::default();
    let pg = PgPlatformRecords::connect(&fresh_database(&cleanup).await)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, prefix, label, key_hash) \
         VALUES ('key_old', 'user_old', $1, 'old', decode($2, 'hex'))",
    )
    .bind(&OLD_KEY[..12])
    .bind(OLD_KEY_SHA256)
    .execute(pg.pool())
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteRecords::open(dir.path().join("db.sqlite"))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, prefix, key_sha256, label, created_at_ms) \
         VALUES ('key_old', 'user_old', ?, ?, 'old', 1)",
    )
    .bind(&OLD_KEY[..12])
    .bind(OLD_KEY_SHA256)
    .execute(sqlite.db().pool())
    .await
    .unwrap();

    for (name, records) in [
        ("postgres", &pg as &dyn PlatformRecords),
        ("sqlite", &sqlite as &dyn PlatformRecords),
    ] {
        let found = records.authenticate(OLD_KEY).await.unwrap();
        assert_eq!(
            found.map(|k| (k.id, k.user)),
            Some(("key_old".to_string(), user("user_old"))),
            "{name}"
        );
        let listed = records.list_keys(&user("user_old")).await.unwrap();
        assert_eq!(listed.len(), 1, "{name}");
        assert_eq!(listed[0].prefix, "tb_012345678", "{name}");
    }
}
