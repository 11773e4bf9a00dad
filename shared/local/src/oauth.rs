//! [`SqliteRecords`] as the OAuth authorization server's store ([`OAuthStore`]): clients by
//! id, grants by the SHA-256 of the code or token. `use_grant` marks a grant used with one
//! conditional update, so of two concurrent uses exactly one sees it unused.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use tb_core::clock::now_ms;
use tb_core::ports::{
    GrantKind, GrantUse, OAuthClient, OAuthGrant, OAuthStore, PURGE_AFTER_MS, PortError,
};

use crate::SqliteRecords;
use crate::error::{json_error, port_error, to_i64, to_u64};

fn grant_of(row: &SqliteRow) -> Result<OAuthGrant, PortError> {
    let err = |e| port_error("reading an OAuth grant", e);
    let body: String = row.try_get("body").map_err(err)?;
    let mut g: OAuthGrant =
        serde_json::from_str(&body).map_err(|e| json_error("reading a stored OAuth grant", e))?;
    let used: Option<i64> = row.try_get("used_at_ms").map_err(err)?;
    let revoked: Option<i64> = row.try_get("revoked_at_ms").map_err(err)?;
    g.used_at_ms = used.map(|v| to_u64("used_at_ms", v)).transpose()?;
    g.revoked_at_ms = revoked.map(|v| to_u64("revoked_at_ms", v)).transpose()?;
    Ok(g)
}

const SELECT_GRANT: &str =
    "SELECT body, used_at_ms, revoked_at_ms FROM oauth_grants WHERE hash = ?";

#[async_trait]
impl OAuthStore for SqliteRecords {
    async fn save_client(&self, client: &OAuthClient) -> Result<(), PortError> {
        let body = serde_json::to_string(client).map_err(|e| json_error("an OAuth client", e))?;
        sqlx::query(
            "INSERT INTO oauth_clients (client_id, body) VALUES (?, ?)
             ON CONFLICT (client_id) DO UPDATE SET body = excluded.body",
        )
        .bind(&client.client_id)
        .bind(body)
        .execute(self.db().pool())
        .await
        .map_err(|e| port_error("saving an OAuth client", e))?;
        Ok(())
    }

    async fn client(&self, client_id: &str) -> Result<Option<OAuthClient>, PortError> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM oauth_clients WHERE client_id = ?")
                .bind(client_id)
                .fetch_optional(self.db().pool())
                .await
                .map_err(|e| port_error("reading an OAuth client", e))?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| json_error("reading a stored OAuth client", e))
        })
        .transpose()
    }

    async fn save_grant(&self, grant: &OAuthGrant) -> Result<(), PortError> {
        let body = serde_json::to_string(grant).map_err(|e| json_error("an OAuth grant", e))?;
        sqlx::query(
            "INSERT INTO oauth_grants (hash, family, expires_at_ms, used_at_ms, revoked_at_ms, body)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (hash) DO UPDATE SET expires_at_ms = excluded.expires_at_ms,
                 used_at_ms = excluded.used_at_ms, revoked_at_ms = excluded.revoked_at_ms,
                 body = excluded.body",
        )
        .bind(&grant.hash)
        .bind(&grant.family)
        .bind(to_i64("expires_at_ms", grant.expires_at_ms)?)
        .bind(grant.used_at_ms.map(|v| to_i64("used_at_ms", v)).transpose()?)
        .bind(grant.revoked_at_ms.map(|v| to_i64("revoked_at_ms", v)).transpose()?)
        .bind(body)
        .execute(self.db().pool())
        .await
        .map_err(|e| port_error("saving an OAuth grant", e))?;
        // Each new authorization clears grants that expired more than a day ago.
        if grant.kind == GrantKind::Code {
            sqlx::query("DELETE FROM oauth_grants WHERE expires_at_ms < ?")
                .bind(to_i64(
                    "expires_at_ms",
                    now_ms().saturating_sub(PURGE_AFTER_MS),
                )?)
                .execute(self.db().pool())
                .await
                .map_err(|e| port_error("purging expired OAuth grants", e))?;
        }
        Ok(())
    }

    async fn grant(&self, hash: &str) -> Result<Option<OAuthGrant>, PortError> {
        sqlx::query(SELECT_GRANT)
            .bind(hash)
            .fetch_optional(self.db().pool())
            .await
            .map_err(|e| port_error("reading an OAuth grant", e))?
            .as_ref()
            .map(grant_of)
            .transpose()
    }

    async fn use_grant(&self, hash: &str) -> Result<GrantUse, PortError> {
        let what = "using an OAuth grant";
        let err = |e| port_error(what, e);
        let mut tx = self.db().write(what).await?;
        let row = sqlx::query(SELECT_GRANT)
            .bind(hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        let Some(row) = row else {
            return Ok(GrantUse::Unknown);
        };
        let grant = grant_of(&row)?;
        if grant.used_at_ms.is_some() {
            return Ok(GrantUse::Again(grant));
        }
        sqlx::query("UPDATE oauth_grants SET used_at_ms = ? WHERE hash = ?")
            .bind(to_i64("used_at_ms", now_ms())?)
            .bind(hash)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(GrantUse::First(grant))
    }

    async fn revoke_family(&self, family: &str) -> Result<(), PortError> {
        sqlx::query(
            "UPDATE oauth_grants SET revoked_at_ms = ? WHERE family = ? AND revoked_at_ms IS NULL",
        )
        .bind(to_i64("revoked_at_ms", now_ms())?)
        .bind(family)
        .execute(self.db().pool())
        .await
        .map_err(|e| port_error("revoking an OAuth grant family", e))?;
        Ok(())
    }
}
