//! What every [`OAuthStore`] adapter must do, as one check the adapters' tests call.

use tb_core::domain::UserId;
use tb_core::ports::{GrantKind, GrantUse, OAuthClient, OAuthGrant, OAuthStore};

fn grant(hash: &str, kind: GrantKind, family: &str) -> OAuthGrant {
    OAuthGrant {
        hash: hash.into(),
        kind,
        family: family.into(),
        client_id: "tbcl_1".into(),
        user: UserId::parse("user_a").unwrap(),
        key_id: "key_1".into(),
        resource: "http://127.0.0.1:1/mcp".into(),
        scope: "mcp".into(),
        redirect_uri: Some("https://claude.ai/api/mcp/auth_callback".into()),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        expires_at_ms: 1_900_000_000_000,
        used_at_ms: None,
        revoked_at_ms: None,
    }
}

/// Clients round-trip; grants round-trip; a grant is used once (the second use sees it
/// used, with the record as stored); revoking a family revokes all of it and nothing else.
pub async fn check(store: &dyn OAuthStore) {
    let client = OAuthClient {
        client_id: "tbcl_1".into(),
        client_name: Some("Claude".into()),
        redirect_uris: vec!["https://claude.ai/api/mcp/auth_callback".into()],
        created_at_ms: 1,
    };
    assert_eq!(store.client("tbcl_1").await.unwrap(), None);
    store.save_client(&client).await.unwrap();
    assert_eq!(store.client("tbcl_1").await.unwrap(), Some(client));

    let code = grant("h_code", GrantKind::Code, "fam_1");
    let access = grant("h_access", GrantKind::Access, "fam_1");
    let other = grant("h_other", GrantKind::Refresh, "fam_2");
    for g in [&code, &access, &other] {
        store.save_grant(g).await.unwrap();
    }
    assert_eq!(store.grant("h_access").await.unwrap(), Some(access.clone()));
    assert_eq!(store.grant("nope").await.unwrap(), None);
    assert_eq!(store.use_grant("nope").await.unwrap(), GrantUse::Unknown);

    assert_eq!(
        store.use_grant("h_code").await.unwrap(),
        GrantUse::First(code.clone())
    );
    match store.use_grant("h_code").await.unwrap() {
        GrantUse::Again(g) => {
            assert!(g.used_at_ms.is_some());
            assert_eq!(g.family, "fam_1");
        }
        other => panic!("a second use is a replay, got {other:?}"),
    }

    store.revoke_family("fam_1").await.unwrap();
    store.revoke_family("fam_unknown").await.unwrap();
    assert!(
        store
            .grant("h_access")
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms
            .is_some()
    );
    assert!(
        store
            .grant("h_code")
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms
            .is_some()
    );
    assert_eq!(store.grant("h_other").await.unwrap(), Some(other.clone()));
}

/// Saving a new code purges grants that expired more than [`PURGE_AFTER_MS`] ago, and
/// nothing else. (The in-memory double keeps everything; only the databases purge.)
///
/// [`PURGE_AFTER_MS`]: tb_core::ports::PURGE_AFTER_MS
pub async fn check_purge(store: &dyn OAuthStore) {
    let now = tb_core::clock::now_ms();
    let mut old = grant("h_old", GrantKind::Refresh, "fam_3");
    old.expires_at_ms = now - tb_core::ports::PURGE_AFTER_MS - 1000;
    let mut recent = grant("h_recent", GrantKind::Refresh, "fam_3");
    recent.expires_at_ms = now - 1000;
    store.save_grant(&old).await.unwrap();
    store.save_grant(&recent).await.unwrap();
    assert!(store.grant("h_old").await.unwrap().is_some());
    store
        .save_grant(&grant("h_code_2", GrantKind::Code, "fam_4"))
        .await
        .unwrap();
    assert_eq!(store.grant("h_old").await.unwrap(), None);
    assert!(store.grant("h_recent").await.unwrap().is_some());
    assert!(store.grant("h_code_2").await.unwrap().is_some());
}
