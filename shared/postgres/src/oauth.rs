//! [`PgPlatformRecords`] as the OAuth authorization server's store ([`OAuthStore`]):
//! `oauth_clients` and `oauth_grants` (migration `0003_oauth.sql`). Grants are keyed by the
//! SHA-256 of the code or token; `use_grant` is one conditional `UPDATE`, so of two
//! concurrent uses exactly one sees the grant unused.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row};
use tb_core::clock::now_ms;
use tb_core::ports::{
    GrantKind, GrantUse, OAuthClient, OAuthGrant, OAuthStore, PURGE_AFTER_MS, PortError,
};

use crate::error::PgError;
use crate::records::{PgPlatformRecords, opt_ms, sql, to_i64};

fn grant_of(row: &PgRow) -> Result<OAuthGrant, PortError> {
    let body: String = row.try_get("body").map_err(sql("reading an OAuth grant"))?;
    let mut g: OAuthGrant = serde_json::from_str(&body)
        .map_err(|e| PgError::Corrupt(format!("a stored OAuth grant: {e}")))?;
    g.used_at_ms = opt_ms(row, "used_ms")?;
    g.revoked_at_ms = opt_ms(row, "revoked_ms")?;
    Ok(g)
}

const SELECT_GRANT: &str = "SELECT body::text AS body, \
     floor(extract(epoch FROM used_at) * 1000)::bigint AS used_ms, \
     floor(extract(epoch FROM revoked_at) * 1000)::bigint AS revoked_ms \
     FROM oauth_grants WHERE hash = $1";

#[async_trait]
impl OAuthStore for PgPlatformRecords {
    async fn save_client(&self, client: &OAuthClient) -> Result<(), PortError> {
        let body = serde_json::to_string(client)
            .map_err(|e| PortError::Permanent(format!("an OAuth client: {e}")))?;
        sqlx::query(
            "INSERT INTO oauth_clients (client_id, body) VALUES ($1, $2::jsonb) \
             ON CONFLICT (client_id) DO UPDATE SET body = EXCLUDED.body",
        )
        .bind(&client.client_id)
        .bind(body)
        .execute(self.pool())
        .await
        .map_err(sql("saving an OAuth client"))?;
        Ok(())
    }

    async fn client(&self, client_id: &str) -> Result<Option<OAuthClient>, PortError> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body::text FROM oauth_clients WHERE client_id = $1")
                .bind(client_id)
                .fetch_optional(self.pool())
                .await
                .map_err(sql("reading an OAuth client"))?;
        body.map(|b| {
            serde_json::from_str(&b)
                .map_err(|e| PgError::Corrupt(format!("a stored OAuth client: {e}")).into())
        })
        .transpose()
    }

    async fn save_grant(&self, grant: &OAuthGrant) -> Result<(), PortError> {
        let body = serde_json::to_string(grant)
            .map_err(|e| PortError::Permanent(format!("an OAuth grant: {e}")))?;
        sqlx::query(
            "INSERT INTO oauth_grants (hash, family, expires_at, used_at, revoked_at, body) \
             VALUES ($4, $5, \
                 'epoch'::timestamptz + $1::bigint * interval '1 millisecond', \
                 'epoch'::timestamptz + $2::bigint * interval '1 millisecond', \
                 'epoch'::timestamptz + $3::bigint * interval '1 millisecond', $6::jsonb) \
             ON CONFLICT (hash) DO UPDATE SET expires_at = EXCLUDED.expires_at, \
                 used_at = EXCLUDED.used_at, revoked_at = EXCLUDED.revoked_at, body = EXCLUDED.body",
        )
            .bind(to_i64("expires_at_ms", grant.expires_at_ms)?)
            .bind(grant.used_at_ms.map(|v| to_i64("used_at_ms", v)).transpose()?)
            .bind(grant.revoked_at_ms.map(|v| to_i64("revoked_at_ms", v)).transpose()?)
            .bind(&grant.hash)
            .bind(&grant.family)
            .bind(body)
            .execute(self.pool())
            .await
            .map_err(sql("saving an OAuth grant"))?;
        // Each new authorization clears grants that expired more than a day ago.
        if grant.kind == GrantKind::Code {
            sqlx::query(
                "DELETE FROM oauth_grants \
                 WHERE expires_at < 'epoch'::timestamptz + $1::bigint * interval '1 millisecond'",
            )
            .bind(to_i64(
                "expires_at_ms",
                now_ms().saturating_sub(PURGE_AFTER_MS),
            )?)
            .execute(self.pool())
            .await
            .map_err(sql("purging expired OAuth grants"))?;
        }
        Ok(())
    }

    async fn grant(&self, hash: &str) -> Result<Option<OAuthGrant>, PortError> {
        sqlx::query(SELECT_GRANT)
            .bind(hash)
            .fetch_optional(self.pool())
            .await
            .map_err(sql("reading an OAuth grant"))?
            .as_ref()
            .map(grant_of)
            .transpose()
    }

    async fn use_grant(&self, hash: &str) -> Result<GrantUse, PortError> {
        let used = stamp(self, Stamp::Used, hash).await?;
        let Some(mut grant) = self.grant(hash).await? else {
            return Ok(GrantUse::Unknown);
        };
        if used == 1 {
            // As it was before this use.
            grant.used_at_ms = None;
            Ok(GrantUse::First(grant))
        } else {
            Ok(GrantUse::Again(grant))
        }
    }

    async fn revoke_family(&self, family: &str) -> Result<(), PortError> {
        stamp(self, Stamp::Revoked, family).await.map(drop)
    }
}

/// A time a grant records once.
enum Stamp {
    /// `used_at` of the grant whose hash is given.
    Used,
    /// `revoked_at` of every grant of the family given.
    Revoked,
}

/// Sets the stamp to now on the grants `key` names that do not have it yet; how many
/// it set.
async fn stamp(records: &PgPlatformRecords, stamp: Stamp, key: &str) -> Result<u64, PortError> {
    let (column, key_column, what) = match stamp {
        Stamp::Used => ("used_at", "hash", "using an OAuth grant"),
        Stamp::Revoked => ("revoked_at", "family", "revoking an OAuth grant family"),
    };
    // Both names are the constants above, never input.
    let statement = format!(
        "UPDATE oauth_grants \
         SET {column} = 'epoch'::timestamptz + $1::bigint * interval '1 millisecond' \
         WHERE {key_column} = $2 AND {column} IS NULL"
    );
    Ok(sqlx::query(AssertSqlSafe(statement))
        .bind(to_i64(&format!("{column}_ms"), now_ms())?)
        .bind(key)
        .execute(records.pool())
        .await
        .map_err(sql(what))?
        .rows_affected())
}
