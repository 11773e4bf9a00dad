//! The ports the agent engine and the finalizer talk through, besides [`Model`] and
//! [`Sandbox`]. Each is a small trait; adapters live in other crates.
//!
//! [`Model`]: crate::model::Model
//! [`Sandbox`]: crate::sandbox::Sandbox

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Errors of the outside world, by how the caller must react.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PortError {
    /// Retry with backoff.
    #[error("temporarily unavailable: {0}")]
    Transient(String),
    /// Someone else wrote first (optimistic concurrency); reload and decide again.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// Will not succeed as asked.
    #[error("{0}")]
    Permanent(String),
}

/// Rows a `query_database` call returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Rows affected, for statements that do not return rows.
    pub rows_affected: u64,
    /// More rows existed than were returned.
    pub truncated: bool,
}

/// The project's development database, which the agent may query while it works. Never the
/// production database of the project, and never with admin rights.
#[async_trait]
pub trait DevDatabase: Send + Sync {
    /// Runs one SQL statement and returns at most `max_rows` rows. Errors are plain text the
    /// model can act on (syntax errors, missing tables).
    async fn query(&self, sql: &str, max_rows: usize) -> Result<QueryRows, String>;
}

/// Where finished project snapshots and build artifacts are kept.
#[async_trait]
pub trait Archive: Send + Sync {
    /// Stores `bytes` under `key` with its SHA-256 as metadata; storing the same bytes again
    /// is a no-op.
    async fn put(&self, key: &str, bytes: &[u8], sha256: &str) -> Result<(), PortError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError>;
}
