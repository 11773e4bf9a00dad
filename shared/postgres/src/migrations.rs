//! A project's own SQL migrations, applied as the project role to the project database.
//!
//! Tracked in `_turbobackend_migrations(name, sha256, applied_at)` inside that database.
//! Migrations run in name order (byte-wise, so `001_…` before `010_…`), each in its own
//! transaction together with its tracking row: one that fails is rolled back alone and
//! the ones before it stay applied. A migration already applied with different content is
//! refused before anything runs: applied migrations must not be edited.
//!
//! A migration's SQL runs with the simple query protocol, so a file may hold several
//! statements. It must not contain `BEGIN`/`COMMIT` or statements that cannot run inside a
//! transaction (`CREATE INDEX CONCURRENTLY`, `VACUUM`): those fail, or would break the
//! one-transaction-per-migration rule. Each statement is bounded by a statement timeout
//! (60 s by default) and so is each lock wait.
//!
//! Concurrent runs on the same database are serialised by an advisory lock.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};
use tb_core::encoding::sha256_hex;
use tb_core::ports::{Migration, ProjectDatabase};

use crate::connect::{connect, lock_key};
use crate::error::PgError;

/// Default bound on each statement of a migration.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The tracking table, in the project database's `public` schema.
pub const TABLE: &str = "_turbobackend_migrations";

/// Applies the migrations of `migrations` not yet applied to `db`; returns their names.
pub(crate) async fn apply(
    db: &ProjectDatabase,
    migrations: &[Migration],
    statement_timeout: Duration,
) -> Result<Vec<String>, PgError> {
    let mut sorted: Vec<&Migration> = migrations.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut seen = BTreeSet::new();
    for m in &sorted {
        if m.name.trim().is_empty() {
            return Err(PgError::Invalid("a migration has an empty name".into()));
        }
        if !seen.insert(m.name.as_str()) {
            return Err(PgError::Invalid(format!(
                "migration `{}` is given twice",
                m.name
            )));
        }
    }

    let ms = statement_timeout.as_millis().to_string();
    let options = PgConnectOptions::from_str(&db.url)
        .map_err(|_| {
            PgError::Invalid(format!(
                "the URL of database {} does not parse",
                db.database
            ))
        })?
        .application_name("turbobackend-migrate")
        .options([
            ("statement_timeout", ms.as_str()),
            ("lock_timeout", ms.as_str()),
        ])
        .disable_statement_logging();
    let mut conn = connect(
        &options,
        "connecting to the project database as the project role",
    )
    .await?;
    let result = apply_on(&mut conn, &sorted).await;
    let _ = conn.close().await;
    result
}

async fn apply_on(conn: &mut PgConnection, sorted: &[&Migration]) -> Result<Vec<String>, PgError> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key("turbobackend project migrations"))
        .execute(&mut *conn)
        .await
        .map_err(PgError::sql("waiting for the migration lock"))?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS _turbobackend_migrations (
            name text PRIMARY KEY,
            sha256 text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut *conn)
    .await
    .map_err(PgError::sql("creating the migrations table"))?;

    let applied: HashMap<String, String> =
        sqlx::query("SELECT name, sha256 FROM _turbobackend_migrations")
            .fetch_all(&mut *conn)
            .await
            .map_err(PgError::sql("reading applied migrations"))?
            .into_iter()
            .map(|r| (r.get::<String, _>("name"), r.get::<String, _>("sha256")))
            .collect();

    let mut pending = Vec::new();
    for m in sorted {
        let sha = sha256_hex(m.sql.as_bytes());
        match applied.get(&m.name) {
            Some(was) if *was != sha => {
                return Err(PgError::EditedMigration {
                    name: m.name.clone(),
                    applied: was.clone(),
                    now: sha,
                });
            }
            Some(_) => {}
            None => pending.push((*m, sha)),
        }
    }

    let mut applied_now = Vec::new();
    for (m, sha) in pending {
        let failed = |source| PgError::MigrationFailed {
            name: m.name.clone(),
            applied_before: applied_now.clone(),
            source,
        };
        let mut tx = conn
            .begin()
            .await
            .map_err(PgError::sql("starting a migration"))?;
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(m.sql.clone()))
            .execute(&mut *tx)
            .await
        {
            let _ = tx.rollback().await;
            return Err(failed(e));
        }
        let recorded = sqlx::query(
            "INSERT INTO _turbobackend_migrations (name, sha256, applied_at) VALUES ($1, $2, now())",
        )
        .bind(&m.name)
        .bind(&sha)
        .execute(&mut *tx)
        .await;
        if let Err(e) = recorded {
            let _ = tx.rollback().await;
            return Err(failed(e));
        }
        tx.commit().await.map_err(failed)?;
        tracing::info!(migration = %m.name, "migration applied");
        applied_now.push(m.name.clone());
    }
    Ok(applied_now)
}
