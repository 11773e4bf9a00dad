//! The local database as the OAuth authorization server's store.

use tb_local::SqliteRecords;

#[tokio::test]
async fn sqlite_keeps_oauth_state_like_every_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let records = SqliteRecords::open(dir.path().join("t.sqlite"))
        .await
        .unwrap();
    tb_testkit::oauth_store::check(&records).await;
    tb_testkit::oauth_store::check_purge(&records).await;
    // It survives reopening.
    drop(records);
    let records = SqliteRecords::open(dir.path().join("t.sqlite"))
        .await
        .unwrap();
    use tb_core::ports::OAuthStore;
    assert!(records.client("tbcl_1").await.unwrap().is_some());
}
