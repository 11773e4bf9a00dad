//! [`SqliteRecords`]: platform records (API keys, projects, the usage ledger) in the local
//! database, the embedded stand-in for the Postgres adapter.
//!
//! - Keys are stored as SHA-256 plus a 12-character visible prefix, never in the clear (see
//!   [`tb_core::api_key`] for their format and why a fast hash is right for them); revoked keys stay listed with
//!   their revocation time and never authenticate.
//! - A project's owner is fixed by its first save; saving it under another owner is refused
//!   ([`PortError::Permanent`]), and its creation time never changes. A user's projects are
//!   listed oldest first, as in the Postgres adapter.
//! - The ledger has one row per (request, iteration); writing a row again is a no-op, so a
//!   finalizer that retries never bills twice. `spent` is the sum of a user's rows.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{SqliteExecutor, SqliteRow};
use tb_core::api_key;
use tb_core::clock::now_ms;
use tb_core::domain::{ProjectId, RequestId, UserId};
use tb_core::ports::{ApiKey, Lifecycle, PlatformRecords, PortError, ProjectRecord};
use tb_core::{MicroUsd, ModelCall};

use crate::db::{LocalDb, json_body};
use crate::error::{json_error, port_error, to_i64, to_u64};

/// Platform records on SQLite. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteRecords {
    db: LocalDb,
}

impl SqliteRecords {
    pub fn new(db: LocalDb) -> Self {
        SqliteRecords { db }
    }

    /// Opens (or creates) the database at `path`; see [`LocalDb::open`].
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<Self, PortError> {
        Ok(SqliteRecords::new(LocalDb::open(path).await?))
    }

    pub fn db(&self) -> &LocalDb {
        &self.db
    }
}

const KEY_COLUMNS: &str = "id, user_id, prefix, label, created_at_ms, revoked_at_ms";

fn key_of(row: &SqliteRow) -> Result<ApiKey, PortError> {
    let err = |e| port_error("reading an API key row", e);
    let user: String = row.try_get("user_id").map_err(err)?;
    let revoked: Option<i64> = row.try_get("revoked_at_ms").map_err(err)?;
    Ok(ApiKey {
        id: row.try_get("id").map_err(err)?,
        user: UserId::parse(&user)
            .map_err(|e| PortError::Permanent(format!("stored key owner: {e}")))?,
        prefix: row.try_get("prefix").map_err(err)?,
        label: row.try_get("label").map_err(err)?,
        created_at_ms: to_u64("created_at_ms", row.try_get("created_at_ms").map_err(err)?)?,
        revoked_at_ms: revoked.map(|r| to_u64("revoked_at_ms", r)).transpose()?,
    })
}

fn project_of(row: &SqliteRow) -> Result<ProjectRecord, PortError> {
    json_body(row, "reading a stored project")
}

/// The row of project `id`: its owner, creation time and body.
async fn project_row<'e>(
    db: impl SqliteExecutor<'e>,
    id: &ProjectId,
) -> Result<Option<SqliteRow>, sqlx::Error> {
    sqlx::query("SELECT owner, created_at_ms, body FROM projects WHERE id = ?")
        .bind(id.as_str())
        .fetch_optional(db)
        .await
}

/// How a stop reason is stored: its name, or its JSON for values without one.
fn stop_reason_text(call: &ModelCall) -> String {
    match serde_json::to_value(&call.stop_reason) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => format!("{:?}", call.stop_reason),
    }
}

#[async_trait]
impl PlatformRecords for SqliteRecords {
    async fn create_key(&self, user: &UserId, label: &str) -> Result<(ApiKey, String), PortError> {
        api_key::check_label(label).map_err(|e| PortError::Permanent(e.to_string()))?;
        let new = api_key::generate().map_err(|e| PortError::Transient(e.to_string()))?;
        let key = ApiKey {
            id: new.id.clone(),
            user: user.clone(),
            prefix: new.prefix.clone(),
            label: label.to_string(),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, prefix, key_sha256, label, created_at_ms)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(user.as_str())
        .bind(&key.prefix)
        .bind(api_key::hash_hex(&new.secret))
        .bind(&key.label)
        .bind(to_i64("created_at_ms", key.created_at_ms)?)
        .execute(self.db.pool())
        .await
        .map_err(|e| port_error(&format!("creating a key for {user}"), e))?;
        Ok((key, new.secret))
    }

    async fn authenticate(&self, presented: &str) -> Result<Option<ApiKey>, PortError> {
        if !api_key::well_formed(presented) {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_sha256 = ? AND revoked_at_ms IS NULL"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(api_key::hash_hex(presented))
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| port_error("authenticating a key", e))?;
        row.as_ref().map(key_of).transpose()
    }

    async fn list_keys(&self, user: &UserId) -> Result<Vec<ApiKey>, PortError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = ? ORDER BY created_at_ms, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user.as_str())
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| port_error(&format!("listing the keys of {user}"), e))?;
        rows.iter().map(key_of).collect()
    }

    async fn revoke_key(&self, user: &UserId, key_id: &str) -> Result<bool, PortError> {
        let revoked = sqlx::query(
            "UPDATE api_keys SET revoked_at_ms = ?
             WHERE id = ? AND user_id = ? AND revoked_at_ms IS NULL",
        )
        .bind(to_i64("revoked_at_ms", now_ms())?)
        .bind(key_id)
        .bind(user.as_str())
        .execute(self.db.pool())
        .await
        .map_err(|e| port_error(&format!("revoking key {key_id}"), e))?
        .rows_affected();
        Ok(revoked == 1)
    }

    async fn save_project(&self, project: &ProjectRecord) -> Result<(), PortError> {
        let id = &project.id;
        let what = format!("saving project {id}");
        let err = |e| port_error(&what, e);
        let mut tx = self.db.write(&what).await?;
        let stored = project_row(&mut *tx, id).await.map_err(err)?;
        let mut project = project.clone();
        if let Some(row) = stored {
            let owner: String = row.try_get("owner").map_err(err)?;
            if owner != project.owner.as_str() {
                return Err(PortError::Permanent(format!(
                    "project {id} belongs to another user; its owner cannot change"
                )));
            }
            project.created_at_ms =
                to_u64("created_at_ms", row.try_get("created_at_ms").map_err(err)?)?;
            // The lifecycle is written by `save_lifecycle` only.
            project.lifecycle = project_of(&row)?.lifecycle;
        }
        let body = serde_json::to_string(&project).map_err(|e| json_error(&what, e))?;
        sqlx::query(
            "INSERT INTO projects (id, owner, created_at_ms, updated_at_ms, body)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms,
                                            body = excluded.body",
        )
        .bind(id.as_str())
        .bind(project.owner.as_str())
        .bind(to_i64("created_at_ms", project.created_at_ms)?)
        .bind(to_i64("updated_at_ms", project.updated_at_ms)?)
        .bind(&body)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    async fn project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, PortError> {
        let row = project_row(self.db.pool(), id)
            .await
            .map_err(|e| port_error(&format!("loading project {id}"), e))?;
        row.as_ref().map(project_of).transpose()
    }

    async fn save_lifecycle(&self, id: &ProjectId, lifecycle: &Lifecycle) -> Result<(), PortError> {
        let what = format!("saving the lifecycle of project {id}");
        let err = |e| port_error(&what, e);
        let mut tx = self.db.write(&what).await?;
        let row = project_row(&mut *tx, id)
            .await
            .map_err(err)?
            .ok_or_else(|| PortError::NotFound(format!("project {id}")))?;
        let mut project = project_of(&row)?;
        if project.lifecycle.version != lifecycle.version.saturating_sub(1) {
            return Err(PortError::Conflict(format!(
                "the lifecycle of project {id} changed since it was read"
            )));
        }
        project.lifecycle = lifecycle.clone();
        let body = serde_json::to_string(&project).map_err(|e| json_error(&what, e))?;
        sqlx::query("UPDATE projects SET body = ? WHERE id = ?")
            .bind(&body)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    async fn projects(&self, owner: &UserId) -> Result<Vec<ProjectRecord>, PortError> {
        let rows =
            sqlx::query("SELECT body FROM projects WHERE owner = ? ORDER BY created_at_ms, id")
                .bind(owner.as_str())
                .fetch_all(self.db.pool())
                .await
                .map_err(|e| port_error(&format!("listing the projects of {owner}"), e))?;
        rows.iter().map(project_of).collect()
    }

    async fn record_usage(
        &self,
        request: &RequestId,
        owner: &UserId,
        project: &ProjectId,
        calls: &[ModelCall],
    ) -> Result<(), PortError> {
        let what = format!("recording the usage of {request}");
        let err = |e| port_error(&what, e);
        let now = to_i64("recorded_at_ms", now_ms())?;
        let mut tx = self.db.write(&what).await?;
        for call in calls {
            sqlx::query(
                "INSERT OR IGNORE INTO usage (request_id, iteration, owner, project, model,
                     input_tokens, output_tokens, cache_write_tokens, cache_read_tokens,
                     cost_micros, latency_ms, stop_reason, recorded_at_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(request.as_str())
            .bind(i64::from(call.iteration))
            .bind(owner.as_str())
            .bind(project.as_str())
            .bind(&call.model)
            .bind(to_i64("input tokens", call.usage.input)?)
            .bind(to_i64("output tokens", call.usage.output)?)
            .bind(to_i64("cache-write tokens", call.usage.cache_write)?)
            .bind(to_i64("cache-read tokens", call.usage.cache_read)?)
            .bind(call.cost.micros())
            .bind(to_i64("latency", call.latency_ms)?)
            .bind(stop_reason_text(call))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn spent(&self, owner: &UserId) -> Result<MicroUsd, PortError> {
        let total: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(cost_micros), 0) FROM usage WHERE owner = ?")
                .bind(owner.as_str())
                .fetch_one(self.db.pool())
                .await
                .map_err(|e| port_error(&format!("summing the spending of {owner}"), e))?;
        Ok(MicroUsd::from_micros(total))
    }
}
