//! The local database: one SQLite file holding request state, conversations and platform
//! records, opened once per process and shared by [`SqliteStore`] and [`SqliteRecords`].
//!
//! Durability: WAL journal with `synchronous=FULL`. WAL alone (at any `synchronous` level)
//! keeps the file consistent when the process is killed at any point: a transaction is in the
//! database entirely or not at all. `NORMAL` would additionally let a power cut or OS crash
//! roll back the last few committed transactions; `FULL` makes every commit survive those too,
//! at the price of one `fsync` of the WAL per commit. Commits here are paced by model calls
//! (a few per iteration, seconds apart), so that price is invisible, while a lost commit is
//! not: a finalizer step recorded as done, or a conversation that a redone iteration would
//! bill again.
//!
//! Concurrency: readers never block (WAL). Writes begin with `BEGIN IMMEDIATE`, taking the
//! write lock up front, so two writers queue on SQLite's busy timeout instead of failing
//! when a read transaction tries to upgrade. Other processes may open the same file.
//!
//! [`SqliteStore`]: crate::SqliteStore
//! [`SqliteRecords`]: crate::SqliteRecords

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tb_core::ports::PortError;

use crate::error::{json_error, port_error};
use crate::schema::MIGRATIONS;

/// How long a writer waits for another writer's transaction before giving up (`Transient`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in the pool (each is a thread in sqlx's SQLite driver).
const MAX_CONNECTIONS: u32 = 4;

/// An open local database file. Cheap to clone (a connection pool).
#[derive(Clone, Debug)]
pub struct LocalDb {
    pool: SqlitePool,
    path: PathBuf,
}

impl LocalDb {
    /// Opens (creating it and its parent directory if missing) the database at `path` and
    /// brings its schema up to date.
    pub async fn open(path: impl AsRef<Path>) -> Result<LocalDb, PortError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| PortError::Permanent(format!("creating {}: {e}", parent.display())))?;
        }
        // 0600 before SQLite first writes to it; its -wal and -shm take the database
        // file's mode when SQLite creates them. Files of an older data directory are
        // tightened here too.
        let private = |e: std::io::Error| {
            PortError::Permanent(format!("restricting {} to its owner: {e}", path.display()))
        };
        match crate::private::write_new_secret(&path, b"") {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(private(e)),
            _ => {}
        }
        for file in crate::private::sqlite_files(&path) {
            crate::private::secure_file(&file).map_err(private)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(BUSY_TIMEOUT * 3)
            .connect_with(options)
            .await
            .map_err(|e| port_error(&format!("opening {}", path.display()), e))?;
        let db = LocalDb { pool, path };
        db.migrate().await?;
        Ok(db)
    }

    /// The file this database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection pool, for queries this crate does not wrap.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection (waiting for those in use). Later use fails.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A write transaction holding the database's write lock from its first statement.
    pub(crate) async fn write(
        &self,
        what: &str,
    ) -> Result<Transaction<'static, Sqlite>, PortError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| port_error(what, e))
    }

    /// A read transaction: its statements see one snapshot of the database.
    pub(crate) async fn read(&self, what: &str) -> Result<Transaction<'static, Sqlite>, PortError> {
        self.pool.begin().await.map_err(|e| port_error(what, e))
    }

    async fn migrate(&self) -> Result<(), PortError> {
        let what = "migrating the local database";
        let err = |e| port_error(what, e);
        let mut tx = self.write(what).await?;
        let current: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await
            .map_err(err)?;
        let current = usize::try_from(current).unwrap_or(usize::MAX);
        if current > MIGRATIONS.len() {
            return Err(PortError::Permanent(format!(
                "{} has schema version {current}; this build knows up to {}: it was written by a newer version",
                self.path.display(),
                MIGRATIONS.len()
            )));
        }
        for migration in &MIGRATIONS[current..] {
            sqlx::raw_sql(*migration)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        if current < MIGRATIONS.len() {
            let bump = format!("PRAGMA user_version = {}", MIGRATIONS.len());
            sqlx::raw_sql(sqlx::AssertSqlSafe(bump))
                .execute(&mut *tx)
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }
}

/// The value stored as JSON in the `body` column of `row`; `what` says what is being read.
pub(crate) fn json_body<T: DeserializeOwned>(row: &SqliteRow, what: &str) -> Result<T, PortError> {
    let body: String = row.try_get("body").map_err(|e| port_error(what, e))?;
    serde_json::from_str(&body).map_err(|e| json_error(what, e))
}
