//! [`SqliteStore`]: request state and conversations in the local database, with the same
//! semantics as `tb_pipeline::memory::MemoryStore` and the DynamoDB adapter.
//!
//! A record is one `requests` row (the record as JSON, plus the columns conditions and
//! queries need); each conversation message is a `messages` row and each model call a
//! `calls` row, written once and never updated. A commit is one transaction: the conditional
//! `UPDATE … WHERE id = ? AND version = ?` and the `INSERT`s of what it appends, so its size
//! depends on what it appends, never on the conversation's length.

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use sqlx::sqlite::{SqliteExecutor, SqliteRow};
use sqlx::{Sqlite, Transaction};
use tb_core::domain::{RequestId, UserId};
use tb_core::ports::PortError;
use tb_core::{Message, ModelCall};
use tb_pipeline::{Appended, Created, RequestRecord, StateStore};

use crate::db::{LocalDb, json_body};
use crate::error::{is_unique_violation, json_error, port_error, to_i64};

/// Request state on SQLite. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    db: LocalDb,
}

impl SqliteStore {
    /// A commit, and with `release_slot` the owner's slot given back, in one transaction.
    async fn commit_in_transaction(
        &self,
        record: &RequestRecord,
        expected_version: u64,
        appended: Appended<'_>,
        release_slot: bool,
    ) -> Result<(), PortError> {
        let id = &record.id;
        let what = format!("committing {id}");
        let c = Columns::of(record)?;
        let mut tx = self.db.write(&what).await?;
        // The owner never changes, and phase and `active` (both indexed) rarely do: setting
        // them on every commit would rewrite their index entries each iteration. So the
        // versioned update sets the unindexed columns, and a second statement touches the
        // indexed ones only when they differ.
        let updated =
            sqlx::query("UPDATE requests SET version = ?, body = ? WHERE id = ? AND version = ?")
                .bind(c.version)
                .bind(&c.body)
                .bind(id.as_str())
                .bind(to_i64("expected version", expected_version)?)
                .execute(&mut *tx)
                .await
                .map_err(|e| port_error(&what, e))?
                .rows_affected();
        if updated == 0 {
            // Dropping the transaction rolls it back (it wrote nothing anyway).
            return Err(match load_in(&mut *tx, id).await? {
                None => PortError::NotFound(id.to_string()),
                Some(stored) => PortError::Conflict(format!(
                    "{id}: version {} is not {expected_version}",
                    stored.version
                )),
            });
        }
        sqlx::query(
            "UPDATE requests SET phase = ?, active = ?
             WHERE id = ? AND (phase IS NOT ? OR active IS NOT ?)",
        )
        .bind(&c.phase)
        .bind(c.active)
        .bind(id.as_str())
        .bind(&c.phase)
        .bind(c.active)
        .execute(&mut *tx)
        .await
        .map_err(|e| port_error(&what, e))?;
        insert_items(
            &mut tx,
            id,
            appended.first_index,
            appended.messages,
            appended.calls,
        )
        .await?;
        if release_slot {
            sqlx::query("UPDATE slots SET active = active - 1 WHERE owner = ? AND active > 0")
                .bind(record.owner.as_str())
                .execute(&mut *tx)
                .await
                .map_err(|e| port_error(&what, e))?;
        }
        tx.commit().await.map_err(|e| port_error(&what, e))
    }

    /// `owner`'s requests (with `running_only`, those not finished), newest first, at most
    /// `limit`.
    async fn owner_requests(
        &self,
        owner: &UserId,
        limit: usize,
        running_only: bool,
    ) -> Result<Vec<RequestRecord>, PortError> {
        let (sql, what) = if running_only {
            (
                "SELECT body FROM requests WHERE owner = ? AND active = 1
                 ORDER BY created_at_ms DESC, id ASC LIMIT ?",
                "the running requests",
            )
        } else {
            (
                "SELECT body FROM requests WHERE owner = ?
                 ORDER BY created_at_ms DESC, id ASC LIMIT ?",
                "the requests",
            )
        };
        let rows = sqlx::query(sql)
            .bind(owner.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| port_error(&format!("listing {what} of {owner}"), e))?;
        rows.iter().map(record_of).collect()
    }

    pub fn new(db: LocalDb) -> Self {
        SqliteStore { db }
    }

    /// Opens (or creates) the database at `path`; see [`LocalDb::open`].
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<Self, PortError> {
        Ok(SqliteStore::new(LocalDb::open(path).await?))
    }

    pub fn db(&self) -> &LocalDb {
        &self.db
    }
}

/// The column values a record is stored with.
struct Columns {
    owner: String,
    phase: String,
    version: i64,
    created_at_ms: i64,
    active: bool,
    body: String,
}

impl Columns {
    fn of(record: &RequestRecord) -> Result<Columns, PortError> {
        let phase = serde_json::to_value(record.phase)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .ok_or_else(|| PortError::Permanent(format!("phase {:?} has no name", record.phase)))?;
        Ok(Columns {
            owner: record.owner.to_string(),
            phase,
            version: to_i64("version", record.version)?,
            created_at_ms: to_i64("created_at_ms", record.created_at_ms)?,
            active: !record.phase.is_terminal(),
            body: serde_json::to_string(record)
                .map_err(|e| json_error("serialising a request record", e))?,
        })
    }
}

fn record_of(row: &SqliteRow) -> Result<RequestRecord, PortError> {
    json_body(row, "reading a stored request record")
}

async fn load_in<'e>(
    db: impl SqliteExecutor<'e>,
    id: &RequestId,
) -> Result<Option<RequestRecord>, PortError> {
    let row = sqlx::query("SELECT body FROM requests WHERE id = ?")
        .bind(id.as_str())
        .fetch_optional(db)
        .await
        .map_err(|e| port_error(&format!("loading {id}"), e))?;
    row.as_ref().map(record_of).transpose()
}

/// The first `count` items of request `id` in a conversation table, by `sql` (which binds
/// the request's id, then the count).
async fn first_items<T: DeserializeOwned>(
    tx: &mut Transaction<'static, Sqlite>,
    what: &str,
    sql: &'static str,
    id: &RequestId,
    count: usize,
) -> Result<Vec<T>, PortError> {
    let rows = sqlx::query(sql)
        .bind(id.as_str())
        .bind(i64::try_from(count).unwrap_or(i64::MAX))
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| port_error(what, e))?;
    rows.iter().map(|row| json_body(row, what)).collect()
}

/// Inserts appended items; a key that already exists is a [`PortError::Conflict`].
async fn insert_items(
    tx: &mut Transaction<'static, Sqlite>,
    id: &RequestId,
    first_index: usize,
    messages: &[Message],
    calls: &[ModelCall],
) -> Result<(), PortError> {
    let clash = |e: sqlx::Error, what: String| {
        if is_unique_violation(&e) {
            PortError::Conflict(format!("{what} of {id} already exists"))
        } else {
            port_error(&format!("appending {what} to {id}"), e)
        }
    };
    for (i, message) in messages.iter().enumerate() {
        let idx = to_i64("message index", (first_index + i) as u64)?;
        let body =
            serde_json::to_string(message).map_err(|e| json_error("serialising a message", e))?;
        sqlx::query("INSERT INTO messages (request_id, idx, body) VALUES (?, ?, ?)")
            .bind(id.as_str())
            .bind(idx)
            .bind(body)
            .execute(&mut **tx)
            .await
            .map_err(|e| clash(e, format!("message {idx}")))?;
    }
    for call in calls {
        let body =
            serde_json::to_string(call).map_err(|e| json_error("serialising a model call", e))?;
        sqlx::query("INSERT INTO calls (request_id, iteration, body) VALUES (?, ?, ?)")
            .bind(id.as_str())
            .bind(i64::from(call.iteration))
            .bind(body)
            .execute(&mut **tx)
            .await
            .map_err(|e| clash(e, format!("the call of iteration {}", call.iteration)))?;
    }
    Ok(())
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn create(&self, record: &RequestRecord, first: &Message) -> Result<Created, PortError> {
        let what = format!("creating {}", record.id);
        let c = Columns::of(record)?;
        let mut tx = self.db.write(&what).await?;
        let inserted = sqlx::query(
            "INSERT INTO requests (id, owner, phase, version, created_at_ms, active, body)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(record.id.as_str())
        .bind(&c.owner)
        .bind(&c.phase)
        .bind(c.version)
        .bind(c.created_at_ms)
        .bind(c.active)
        .bind(&c.body)
        .execute(&mut *tx)
        .await
        .map_err(|e| port_error(&what, e))?
        .rows_affected();
        if inserted == 0 {
            let existing = load_in(&mut *tx, &record.id)
                .await?
                .ok_or_else(|| PortError::Transient(format!("{what}: it exists, yet is gone")))?;
            return Ok(Created::Existing(Box::new(existing)));
        }
        insert_items(&mut tx, &record.id, 0, std::slice::from_ref(first), &[]).await?;
        tx.commit().await.map_err(|e| port_error(&what, e))?;
        Ok(Created::New)
    }

    async fn load(&self, id: &RequestId) -> Result<Option<RequestRecord>, PortError> {
        load_in(self.db.pool(), id).await
    }

    async fn conversation(
        &self,
        record: &RequestRecord,
    ) -> Result<(Vec<Message>, Vec<ModelCall>), PortError> {
        let id = &record.id;
        let what = format!("reading the conversation of {id}");
        let err = |e| port_error(&what, e);
        let mut tx = self.db.read(&what).await?;
        let exists = sqlx::query("SELECT 1 FROM requests WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?;
        if exists.is_none() {
            return Err(PortError::NotFound(id.to_string()));
        }
        // The header's counts say how much of the conversation belongs to this version.
        let messages = first_items(
            &mut tx,
            &what,
            "SELECT body FROM messages WHERE request_id = ? ORDER BY idx LIMIT ?",
            id,
            record.agent.messages,
        )
        .await?;
        let calls = first_items(
            &mut tx,
            &what,
            "SELECT body FROM calls WHERE request_id = ? ORDER BY iteration LIMIT ?",
            id,
            record.agent.calls,
        )
        .await?;
        tx.rollback().await.map_err(err)?;
        Ok((messages, calls))
    }

    async fn commit(
        &self,
        record: &RequestRecord,
        expected_version: u64,
        appended: Appended<'_>,
    ) -> Result<(), PortError> {
        self.commit_in_transaction(record, expected_version, appended, false)
            .await
    }

    async fn active(&self) -> Result<Vec<RequestRecord>, PortError> {
        let rows = sqlx::query("SELECT body FROM requests WHERE active = 1 ORDER BY id")
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| port_error("listing active requests", e))?;
        rows.iter().map(record_of).collect()
    }

    async fn list_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        self.owner_requests(owner, limit, false).await
    }

    /// Through the partial index of running requests by owner: finished requests are never
    /// read.
    async fn running_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        self.owner_requests(owner, limit, true).await
    }

    async fn acquire_slot(&self, owner: &UserId, limit: u32) -> Result<bool, PortError> {
        // One statement: the upsert increments only while below the limit.
        let done = sqlx::query(
            "INSERT INTO slots (owner, active) SELECT ?, 1 WHERE ? > 0
             ON CONFLICT (owner) DO UPDATE SET active = active + 1 WHERE active < ?",
        )
        .bind(owner.as_str())
        .bind(i64::from(limit))
        .bind(i64::from(limit))
        .execute(self.db.pool())
        .await
        .map_err(|e| port_error(&format!("taking a slot of {owner}"), e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_slot(&self, owner: &UserId) -> Result<(), PortError> {
        sqlx::query("UPDATE slots SET active = active - 1 WHERE owner = ? AND active > 0")
            .bind(owner.as_str())
            .execute(self.db.pool())
            .await
            .map_err(|e| port_error(&format!("returning a slot of {owner}"), e))?;
        Ok(())
    }

    async fn commit_releasing_slot(
        &self,
        record: &RequestRecord,
        expected_version: u64,
    ) -> Result<(), PortError> {
        self.commit_in_transaction(record, expected_version, Appended::default(), true)
            .await
    }
}
