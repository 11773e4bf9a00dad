//! [`PgDevDatabase`]: the project's development database, as the agent's
//! `query_database` tool sees it.
//!
//! - The dev database and its role are provisioned on first use, through any
//!   [`DatabaseProvisioner`] (normally [`crate::PgProvisioner`]); a failed attempt is
//!   retried on the next call. Queries run as the dev role, never as the admin.
//! - One statement per call. The statement is first parsed with the extended protocol, whose
//!   Parse step refuses several commands (`cannot insert multiple commands into a prepared
//!   statement`), so `SELECT 1; DROP TABLE t` is rejected before anything runs, by Postgres's
//!   own parser rather than by guessing at semicolons. The single statement then runs with
//!   the simple protocol, which returns every value as text: any type, even one this crate
//!   has never heard of, comes back as its text form (see [`crate::rows`]).
//! - Each call opens its own session with `statement_timeout` (10 s by default),
//!   `lock_timeout` and `idle_in_transaction_session_timeout` set at connection start, and
//!   closes it afterwards: nothing a statement does to its session (`SET`, `BEGIN`, temp
//!   tables) outlives the call, and an open transaction is rolled back. A client-side deadline
//!   5 s past the statement timeout backs this up.
//! - At most `max_rows` rows are kept; the rest are read and dropped (`truncated` is set),
//!   so a statement with `RETURNING` still completes and commits. `rows_affected` is what
//!   Postgres reports (for a `SELECT`, the number of rows it produced).
//! - Errors are the server's text: message, detail, hint and position.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};
use sqlx::{
    AssertSqlSafe, Column, ConnectOptions, Connection, Either, Executor, Row, SqlSafeStr,
    Statement, ValueRef,
};
use tb_core::domain::ProjectId;
use tb_core::ports::{
    DatabaseProvisioner, DevDatabase, Migration, PortError, ProjectDatabase, QueryRows,
};
use tokio::sync::OnceCell;

use crate::error::describe;
use crate::rows::text_to_json;

/// Default bound on one statement in the dev database.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One project's dev database.
pub struct PgDevDatabase {
    provisioner: Arc<dyn DatabaseProvisioner>,
    project: ProjectId,
    database: OnceCell<ProjectDatabase>,
    statement_timeout: Duration,
}

impl fmt::Debug for PgDevDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDevDatabase")
            .field("project", &self.project)
            .field("database", &self.database.get())
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

impl PgDevDatabase {
    /// The dev database of `project`; nothing is provisioned until the first query.
    pub fn new(provisioner: Arc<dyn DatabaseProvisioner>, project: ProjectId) -> Self {
        PgDevDatabase {
            provisioner,
            project,
            database: OnceCell::new(),
            statement_timeout: STATEMENT_TIMEOUT,
        }
    }

    /// Bounds each statement by `timeout` instead of 10 s (at least 1 ms).
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The dev database, provisioned now if it was not yet.
    pub async fn database(&self) -> Result<&ProjectDatabase, PortError> {
        self.database
            .get_or_try_init(|| self.provisioner.provision(&self.project, true))
            .await
    }

    /// How to connect as the dev role, with the statement timeouts set.
    async fn options(&self) -> Result<PgConnectOptions, String> {
        let db = self
            .database()
            .await
            .map_err(|e| format!("the dev database is not available right now: {e}"))?;
        let ms = self.statement_timeout.as_millis().to_string();
        Ok(PgConnectOptions::from_str(&db.url)
            .map_err(|_| "the dev database's address is invalid".to_string())?
            .application_name("turbobackend-dev-query")
            .options([
                ("statement_timeout", ms.as_str()),
                ("lock_timeout", ms.as_str()),
                ("idle_in_transaction_session_timeout", ms.as_str()),
            ]))
    }

    /// Applies `migrations` in a fresh schema inside one transaction, then rolls it back:
    /// the throwaway database of [`DevDatabase::rehearse_migrations`]. The schema's random
    /// name is dropped afterwards too, should a migration have committed despite the rules.
    async fn rehearse(&self, migrations: &[Migration]) -> Result<(), String> {
        let options = self.options().await?;
        let mut conn = options
            .connect()
            .await
            .map_err(|e| format!("could not connect to the dev database: {}", describe(&e)))?;
        let schema = format!("tb_rehearsal_{}", tb_core::ids::random_hex(6));
        let setup = format!("BEGIN; CREATE SCHEMA {schema}; SET LOCAL search_path TO {schema}");
        let mut result = sqlx::raw_sql(AssertSqlSafe(setup))
            .execute(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| describe(&e));
        for m in migrations {
            if result.is_err() {
                break;
            }
            result = sqlx::raw_sql(AssertSqlSafe(m.sql.clone()))
                .execute(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| format!("migrations/{}: {}", m.name, describe(&e)));
        }
        let cleanup = format!("ROLLBACK; DROP SCHEMA IF EXISTS {schema} CASCADE");
        let _ = sqlx::raw_sql(AssertSqlSafe(cleanup))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        result
    }

    async fn run(&self, sql: &str, max_rows: usize) -> Result<QueryRows, String> {
        let options = self.options().await?;
        let deadline = self.statement_timeout + Duration::from_secs(5);
        match tokio::time::timeout(deadline, run_session(&options, sql, max_rows)).await {
            Ok(result) => result.map_err(|e| {
                if e.contains("57014") && e.contains("statement timeout") {
                    format!(
                        "{e}\n(the dev database allows {} ms per statement)",
                        self.statement_timeout.as_millis()
                    )
                } else {
                    e
                }
            }),
            Err(_) => Err(format!(
                "the statement did not finish within {} s and was abandoned",
                deadline.as_secs()
            )),
        }
    }
}

/// Opens a session, runs `sql`, closes the session.
async fn run_session(
    options: &PgConnectOptions,
    sql: &str,
    max_rows: usize,
) -> Result<QueryRows, String> {
    let mut conn = options
        .connect()
        .await
        .map_err(|e| format!("could not connect to the dev database: {}", describe(&e)))?;
    let result = run_statement(&mut conn, sql, max_rows).await;
    let _ = conn.close().await;
    result
}

async fn run_statement(
    conn: &mut PgConnection,
    sql: &str,
    max_rows: usize,
) -> Result<QueryRows, String> {
    // Parse only (nothing runs): refuses several statements, and names the columns even
    // when no row comes back.
    let statement = (&mut *conn)
        .prepare(AssertSqlSafe(sql.to_string()).into_sql_str())
        .await
        .map_err(|e| {
            let text = describe(&e);
            if text.contains("cannot insert multiple commands") {
                format!(
                    "{text}\nonly one SQL statement per call is allowed: send them one at a time"
                )
            } else {
                text
            }
        })?;
    let mut columns: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();

    let mut rows = Vec::new();
    let mut truncated = false;
    let mut rows_affected = 0;
    let mut stream = sqlx::raw_sql(AssertSqlSafe(sql.to_string())).fetch_many(&mut *conn);
    while let Some(item) = stream.try_next().await.map_err(|e| describe(&e))? {
        match item {
            Either::Left(done) => rows_affected += done.rows_affected(),
            Either::Right(row) => {
                if columns.is_empty() {
                    columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                if rows.len() < max_rows {
                    rows.push(row_values(&row));
                } else {
                    truncated = true;
                }
            }
        }
    }
    Ok(QueryRows {
        columns,
        rows,
        rows_affected,
        truncated,
    })
}

/// One row of text-format values as JSON.
fn row_values(row: &PgRow) -> Vec<Value> {
    (0..row.len())
        .map(|i| match row.try_get_raw(i) {
            Ok(v) if v.is_null() => Value::Null,
            Ok(v) => {
                let oid = v.type_info().oid().map(|o| o.0);
                match v.as_str() {
                    Ok(text) => text_to_json(oid, text),
                    Err(_) => Value::String("<value not readable as text>".into()),
                }
            }
            Err(_) => Value::Null,
        })
        .collect()
}

#[async_trait]
impl DevDatabase for PgDevDatabase {
    async fn query(&self, sql: &str, max_rows: usize) -> Result<QueryRows, String> {
        self.run(sql, max_rows).await
    }

    async fn rehearse_migrations(&self, migrations: &[Migration]) -> Result<bool, String> {
        let deadline =
            self.statement_timeout * (migrations.len() as u32 + 2) + Duration::from_secs(5);
        match tokio::time::timeout(deadline, self.rehearse(migrations)).await {
            Ok(result) => result.map(|()| true),
            Err(_) => Err(format!(
                "applying the migrations did not finish within {} s",
                deadline.as_secs()
            )),
        }
    }
}

/// Each project's dev database, from one provisioner.
pub struct PgDevDatabases {
    provisioner: std::sync::Arc<dyn tb_core::ports::DatabaseProvisioner>,
}

impl PgDevDatabases {
    pub fn new(provisioner: std::sync::Arc<dyn tb_core::ports::DatabaseProvisioner>) -> Self {
        PgDevDatabases { provisioner }
    }
}

impl tb_core::ports::DevDatabases for PgDevDatabases {
    fn for_project(
        &self,
        project: &tb_core::domain::ProjectId,
    ) -> std::sync::Arc<dyn tb_core::ports::DevDatabase> {
        std::sync::Arc::new(PgDevDatabase::new(
            self.provisioner.clone(),
            project.clone(),
        ))
    }
}
