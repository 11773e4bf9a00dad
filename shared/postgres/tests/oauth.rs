//! Postgres as the OAuth authorization server's store, against a fresh database.

mod common;

use common::{Cleanup, fresh_database};
use tb_postgres::PgPlatformRecords;

#[tokio::test]
async fn postgres_keeps_oauth_state_like_every_adapter() {
    let cleanup = Cleanup::default();
    let url = fresh_database(&cleanup).await;
    let records = PgPlatformRecords::connect(&url)
        .await
        .expect("connect and migrate");
    tb_testkit::oauth_store::check(&records).await;
    tb_testkit::oauth_store::check_purge(&records).await;
}
