//! [`PgPlatformRecords`]: API keys, projects and the usage ledger in Postgres.
//!
//! - **Keys** are `tb_` and 40 hex characters (160 bits from the OS-seeded CSPRNG). Only
//!   their SHA-256 is stored. A fast hash is the right tool here: the keys are random, not
//!   chosen by people, so there is nothing for a slow password hash to protect against (160
//!   bits cannot be brute-forced at any hash speed). `authenticate` looks a key up by its
//!   hash with an index; no constant-time comparison is needed, since the lookup reveals
//!   nothing about the key beyond what its hash does. Revoked keys never authenticate. The
//!   visible `prefix` is the first 12 characters (`tb_` and 9 hex). Format, hash and the
//!   shape check are [`tb_core::api_key`]'s, shared with the other stores.
//! - **Projects** are upserted by id; the owner never changes (saving an existing id with a
//!   different owner is refused), nor does `created_at`. A deployed version not seen
//!   before gets a `deployments` row in the same transaction (the project's rollback
//!   targets).
//! - **Ledger** rows are keyed by (request, iteration): writing the same call twice is a
//!   no-op. Each write adds the rows it inserted to the user's `user_spending` total in the
//!   same statement, and `spent` reads that one row.
//!
//! Times are stored as `timestamptz` and exchanged as milliseconds since the Unix epoch.
//! The connection URL is never logged and not shown by `Debug`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use tb_core::api_key;
use tb_core::domain::{ProjectId, RequestId, UserId};
use tb_core::model::StopReason;
use tb_core::money::MicroUsd;
use tb_core::ports::{ApiKey, Lifecycle, PlatformRecords, PortError, ProjectRecord};
use tb_core::usage::ModelCall;

use crate::error::PgError;
use crate::schema;

pub use tb_core::api_key::MAX_LABEL_CHARS;

/// Platform records over a connection pool.
#[derive(Clone)]
pub struct PgPlatformRecords {
    pool: PgPool,
}

impl fmt::Debug for PgPlatformRecords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPlatformRecords").finish_non_exhaustive()
    }
}

impl PgPlatformRecords {
    /// Connects to `url` (a pool of up to 5 connections, statements bounded to 30 s) and
    /// brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, PgError> {
        let options = Self::options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(PgError::sql("connecting to the platform database"))?;
        Self::from_pool(pool).await
    }

    /// How to connect to `url`: named, statements bounded to 30 s.
    fn options(url: &str) -> Result<PgConnectOptions, PgError> {
        Ok(PgConnectOptions::from_str(url)
            .map_err(|_| PgError::Settings("the platform database URL does not parse".into()))?
            .application_name("turbobackend-records")
            .options([("statement_timeout", "30000")]))
    }

    /// A pool that connects to `url` at first use, without checking the schema (the
    /// functions that connect at start-up bring it up to date): for a host that reads the
    /// records rarely, so its start-up opens no connection.
    pub fn connect_lazy(url: &str) -> Result<Self, PgError> {
        let options = Self::options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        Ok(PgPlatformRecords { pool })
    }

    /// Uses an existing pool; brings the schema up to date.
    pub async fn from_pool(pool: PgPool) -> Result<Self, PgError> {
        schema::bring_up_to_date(&pool).await?;
        Ok(PgPlatformRecords { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

pub(crate) fn sql(context: &'static str) -> impl FnOnce(sqlx::Error) -> PortError {
    move |source| PgError::Sql { context, source }.into()
}

pub(crate) fn to_i64(what: &str, v: u64) -> Result<i64, PortError> {
    i64::try_from(v).map_err(|_| PortError::Permanent(format!("{what} {v} is out of range")))
}

fn ms(row: &PgRow, column: &str) -> Result<u64, PortError> {
    let v: i64 = row.try_get(column).map_err(sql("reading a time"))?;
    u64::try_from(v).map_err(|_| PgError::Corrupt(format!("{column} is before 1970")).into())
}

pub(crate) fn opt_ms(row: &PgRow, column: &str) -> Result<Option<u64>, PortError> {
    let v: Option<i64> = row.try_get(column).map_err(sql("reading a time"))?;
    v.map(|v| {
        u64::try_from(v).map_err(|_| PgError::Corrupt(format!("{column} is before 1970")).into())
    })
    .transpose()
}

fn parse_id<T>(
    row: &PgRow,
    column: &str,
    parse: fn(&str) -> Result<T, tb_core::domain::IdError>,
) -> Result<T, PortError> {
    let s: String = row.try_get(column).map_err(sql("reading an id"))?;
    parse(&s).map_err(|e| PgError::Corrupt(e.to_string()).into())
}

/// The columns of an [`ApiKey`], times as epoch milliseconds (a literal, for `concat!`).
macro_rules! key_columns {
    () => {
        "id, user_id, prefix, label, \
         floor(extract(epoch FROM created_at) * 1000)::bigint AS created_ms, \
         floor(extract(epoch FROM revoked_at) * 1000)::bigint AS revoked_ms"
    };
}

fn key_of(row: &PgRow) -> Result<ApiKey, PortError> {
    Ok(ApiKey {
        id: row.try_get("id").map_err(sql("reading a key"))?,
        user: parse_id(row, "user_id", UserId::parse)?,
        prefix: row.try_get("prefix").map_err(sql("reading a key"))?,
        label: row.try_get("label").map_err(sql("reading a key"))?,
        created_at_ms: ms(row, "created_ms")?,
        revoked_at_ms: opt_ms(row, "revoked_ms")?,
    })
}

fn project_record(row: &PgRow) -> Result<ProjectRecord, PortError> {
    let text = |c: &str| -> Result<Option<String>, PortError> {
        row.try_get(c).map_err(sql("reading a project"))
    };
    let last_request = text("last_request_id")?
        .map(|s| RequestId::parse(&s).map_err(|e| PortError::from(PgError::Corrupt(e.to_string()))))
        .transpose()?;
    Ok(ProjectRecord {
        id: parse_id(row, "id", ProjectId::parse)?,
        owner: parse_id(row, "owner_id", UserId::parse)?,
        name: row.try_get("name").map_err(sql("reading a project"))?,
        repo_url: text("repo_url")?,
        deploy_url: text("deploy_url")?,
        database: text("database_name")?,
        deployed_version: text("deployed_version")?,
        previous_version: text("previous_version")?,
        last_request,
        last_verified_version: text("last_verified_version")?,
        deployed_verified: row
            .try_get("deployed_verified")
            .map_err(sql("reading a project"))?,
        created_at_ms: ms(row, "created_ms")?,
        updated_at_ms: ms(row, "updated_ms")?,
        lifecycle: {
            let text: String = row
                .try_get("lifecycle_text")
                .map_err(sql("reading a project"))?;
            serde_json::from_str(&text).map_err(|e| {
                PortError::from(PgError::Corrupt(format!("a project's lifecycle: {e}")))
            })?
        },
    })
}

/// How a stop reason is written in the ledger: its wire name (`end_turn`), or the
/// provider's own word for unknown ones.
fn stop_reason_text(r: &StopReason) -> String {
    match r {
        StopReason::Other(s) => s.clone(),
        known => match serde_json::to_value(known) {
            Ok(serde_json::Value::String(s)) => s,
            _ => format!("{known:?}"),
        },
    }
}

#[async_trait]
impl PlatformRecords for PgPlatformRecords {
    async fn create_key(&self, user: &UserId, label: &str) -> Result<(ApiKey, String), PortError> {
        api_key::check_label(label).map_err(|e| PgError::Invalid(e.to_string()))?;
        let key = api_key::generate().map_err(|e| PortError::Transient(e.to_string()))?;
        let row = sqlx::query(concat!(
            "INSERT INTO api_keys (id, user_id, prefix, label, key_hash) \
             VALUES ($1, $2, $3, $4, $5) RETURNING ",
            key_columns!()
        ))
        .bind(&key.id)
        .bind(user.as_str())
        .bind(&key.prefix)
        .bind(label)
        .bind(&key.hash()[..])
        .fetch_one(&self.pool)
        .await
        .map_err(sql("creating an API key"))?;
        Ok((key_of(&row)?, key.secret))
    }

    async fn authenticate(&self, presented: &str) -> Result<Option<ApiKey>, PortError> {
        if !api_key::well_formed(presented) {
            return Ok(None);
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(&api_key::hash(presented)[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("looking up an API key"))?;
        row.as_ref().map(key_of).transpose()
    }

    async fn list_keys(&self, user: &UserId) -> Result<Vec<ApiKey>, PortError> {
        sqlx::query(concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(sql("listing API keys"))?
        .iter()
        .map(key_of)
        .collect()
    }

    async fn revoke_key(&self, user: &UserId, key_id: &str) -> Result<bool, PortError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = now() \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .bind(user.as_str())
        .execute(&self.pool)
        .await
        .map_err(sql("revoking an API key"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn save_project(&self, p: &ProjectRecord) -> Result<(), PortError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(sql("starting to save a project"))?;
        let done = sqlx::query(
            "INSERT INTO projects (id, owner_id, name, repo_url, deploy_url, database_name, \
                 deployed_version, previous_version, last_request_id, created_at, updated_at, \
                 lifecycle, last_verified_version, deployed_verified) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 'epoch'::timestamptz + $10::bigint * interval '1 millisecond', \
                 'epoch'::timestamptz + $11::bigint * interval '1 millisecond', $12::jsonb, \
                 $13, $14) \
             ON CONFLICT (id) DO UPDATE SET \
                 name = EXCLUDED.name, repo_url = EXCLUDED.repo_url, \
                 deploy_url = EXCLUDED.deploy_url, database_name = EXCLUDED.database_name, \
                 deployed_version = EXCLUDED.deployed_version, \
                 previous_version = EXCLUDED.previous_version, \
                 last_request_id = EXCLUDED.last_request_id, updated_at = EXCLUDED.updated_at, \
                 last_verified_version = EXCLUDED.last_verified_version, \
                 deployed_verified = EXCLUDED.deployed_verified \
             WHERE projects.owner_id = EXCLUDED.owner_id",
        )
        .bind(p.id.as_str())
        .bind(p.owner.as_str())
        .bind(&p.name)
        .bind(&p.repo_url)
        .bind(&p.deploy_url)
        .bind(&p.database)
        .bind(&p.deployed_version)
        .bind(&p.previous_version)
        .bind(p.last_request.as_ref().map(|r| r.as_str()))
        .bind(to_i64("created_at_ms", p.created_at_ms)?)
        .bind(to_i64("updated_at_ms", p.updated_at_ms)?)
        .bind(serde_json::to_string(&p.lifecycle).map_err(|e| PgError::Invalid(e.to_string()))?)
        .bind(&p.last_verified_version)
        .bind(p.deployed_verified)
        .execute(&mut *tx)
        .await
        .map_err(sql("saving a project"))?;
        if done.rows_affected() == 0 {
            // Dropping the transaction rolls it back.
            return Err(PgError::Refused(format!(
                "project {} belongs to another user; its owner cannot change",
                p.id
            ))
            .into());
        }
        // The deployed version joins the project's deployment history the first time it is
        // seen; saving the same version again keeps its first row.
        if let (Some(version), Some(url)) = (&p.deployed_version, &p.deploy_url) {
            sqlx::query(
                "INSERT INTO deployments (project_id, version, url, created_at) \
                 VALUES ($1, $2, $3, 'epoch'::timestamptz + $4::bigint * interval '1 millisecond') \
                 ON CONFLICT (project_id, version) DO NOTHING",
            )
            .bind(p.id.as_str())
            .bind(version)
            .bind(url)
            .bind(to_i64("updated_at_ms", p.updated_at_ms)?)
            .execute(&mut *tx)
            .await
            .map_err(sql("recording a deployment"))?;
        }
        tx.commit()
            .await
            .map_err(sql("committing a saved project"))?;
        Ok(())
    }

    async fn project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, PortError> {
        let row = sqlx::query(
            "SELECT *, floor(extract(epoch FROM created_at) * 1000)::bigint AS created_ms, \
                 floor(extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms, \
                 lifecycle::text AS lifecycle_text \
             FROM projects WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("reading a project"))?;
        row.as_ref().map(project_record).transpose()
    }

    async fn save_lifecycle(&self, id: &ProjectId, lifecycle: &Lifecycle) -> Result<(), PortError> {
        let done = sqlx::query(
            "UPDATE projects SET lifecycle = $2::jsonb \
             WHERE id = $1 AND COALESCE((lifecycle->>'version')::bigint, 0) = $3",
        )
        .bind(id.as_str())
        .bind(serde_json::to_string(lifecycle).map_err(|e| PgError::Invalid(e.to_string()))?)
        .bind(to_i64("version", lifecycle.version.saturating_sub(1))?)
        .execute(&self.pool)
        .await
        .map_err(sql("saving a project's lifecycle"))?;
        if done.rows_affected() == 1 {
            return Ok(());
        }
        match self.project(id).await? {
            None => Err(PortError::NotFound(format!("project {id}"))),
            Some(_) => Err(PortError::Conflict(format!(
                "the lifecycle of project {id} changed since it was read"
            ))),
        }
    }

    async fn projects(&self, owner: &UserId) -> Result<Vec<ProjectRecord>, PortError> {
        sqlx::query(
            "SELECT *, floor(extract(epoch FROM created_at) * 1000)::bigint AS created_ms, \
                 floor(extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms, \
                 lifecycle::text AS lifecycle_text \
             FROM projects WHERE owner_id = $1 ORDER BY created_at, id",
        )
        .bind(owner.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(sql("listing projects"))?
        .iter()
        .map(project_record)
        .collect()
    }

    async fn record_usage(
        &self,
        request: &RequestId,
        owner: &UserId,
        project: &ProjectId,
        calls: &[ModelCall],
    ) -> Result<(), PortError> {
        if calls.is_empty() {
            return Ok(());
        }
        let mut iteration = Vec::with_capacity(calls.len());
        let mut model = Vec::with_capacity(calls.len());
        let (mut input, mut output, mut cache_write, mut cache_read) =
            (vec![], vec![], vec![], vec![]);
        let (mut cost, mut latency, mut stop) = (vec![], vec![], vec![]);
        for c in calls {
            iteration.push(i64::from(c.iteration));
            model.push(c.model.clone());
            input.push(to_i64("input tokens", c.usage.input)?);
            output.push(to_i64("output tokens", c.usage.output)?);
            cache_write.push(to_i64("cache-write tokens", c.usage.cache_write)?);
            cache_read.push(to_i64("cache-read tokens", c.usage.cache_read)?);
            cost.push(c.cost.micros());
            latency.push(to_i64("latency", c.latency_ms)?);
            stop.push(stop_reason_text(&c.stop_reason));
        }
        // One statement, so one transaction: the rows inserted (a row written before is
        // not) are added to the owner's total, which `spent` reads.
        sqlx::query(
            "WITH inserted AS ( \
                 INSERT INTO usage_ledger (request_id, iteration, user_id, project_id, model, \
                     input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, \
                     cost_micro_usd, latency_ms, stop_reason) \
                 SELECT $1, u.iteration, $2, $3, u.model, u.input_tokens, u.output_tokens, \
                     u.cache_write_tokens, u.cache_read_tokens, u.cost_micro_usd, u.latency_ms, \
                     u.stop_reason \
                 FROM UNNEST($4::bigint[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], \
                     $9::bigint[], $10::bigint[], $11::bigint[], $12::text[]) \
                     AS u(iteration, model, input_tokens, output_tokens, cache_write_tokens, \
                          cache_read_tokens, cost_micro_usd, latency_ms, stop_reason) \
                 ON CONFLICT (request_id, iteration) DO NOTHING \
                 RETURNING cost_micro_usd) \
             INSERT INTO user_spending (user_id, spent_micro_usd) \
             SELECT $2, COALESCE(SUM(cost_micro_usd), 0)::bigint FROM inserted \
             ON CONFLICT (user_id) DO UPDATE \
                 SET spent_micro_usd = user_spending.spent_micro_usd + EXCLUDED.spent_micro_usd",
        )
        .bind(request.as_str())
        .bind(owner.as_str())
        .bind(project.as_str())
        .bind(&iteration)
        .bind(&model)
        .bind(&input)
        .bind(&output)
        .bind(&cache_write)
        .bind(&cache_read)
        .bind(&cost)
        .bind(&latency)
        .bind(&stop)
        .execute(&self.pool)
        .await
        .map_err(sql("writing the usage ledger"))?;
        Ok(())
    }

    async fn spent(&self, owner: &UserId) -> Result<MicroUsd, PortError> {
        // The total `record_usage` keeps: one row, not a sum over the user's ledger.
        let total: Option<i64> =
            sqlx::query_scalar("SELECT spent_micro_usd FROM user_spending WHERE user_id = $1")
                .bind(owner.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(sql("reading the spending total"))?;
        Ok(MicroUsd::from_micros(total.unwrap_or(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_reasons_are_written_by_their_wire_names() {
        assert_eq!(stop_reason_text(&StopReason::EndTurn), "end_turn");
        assert_eq!(stop_reason_text(&StopReason::ToolUse), "tool_use");
        assert_eq!(
            stop_reason_text(&StopReason::Other("weird".into())),
            "weird"
        );
    }
}
