//! The local adapters of the embedded default: everything the pipeline needs to run in one
//! process on one machine, with no cloud account and no server to install.
//!
//! - [`LocalDb`]: one SQLite file (WAL, `synchronous=FULL`), shared by
//! - [`SqliteStore`]: request state and conversations (`tb_pipeline::StateStore`), and
//! - [`SqliteRecords`]: API keys, projects and the usage ledger
//!   (`tb_core::ports::PlatformRecords`);
//! - [`LocalQueue`]: the work and finalize queues as in-process channels, dead letters in a
//!   JSON-lines file;
//! - [`dispatch`]: the loops that feed queued messages to the worker and finalizer handlers,
//!   with bounded concurrency, retries and the periodic sweeper;
//! - [`npm_cache`]: the npm cache the sandboxes share, warmed with the template's packages;
//! - [`private`]: the modes of what holds secrets (data directory 0700, secret files 0600).
//!
//! A host wires them up like this (building the `Worker` and the `Finalizer` themselves
//! is the host's business):
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use tb_local::{LocalQueue, SqliteRecords, SqliteStore};
//! # use tb_pipeline::{Finalizer, Worker};
//! # fn worker(_: Arc<SqliteStore>, _: Arc<LocalQueue>, _: Arc<SqliteRecords>) -> Worker { unimplemented!() }
//! # fn finalizer(_: Arc<SqliteStore>, _: Arc<SqliteRecords>) -> Finalizer { unimplemented!() }
//! # async fn host(data_dir: std::path::PathBuf) -> Result<(), tb_core::ports::PortError> {
//! let db = tb_local::LocalDb::open(data_dir.join("turbobackend.sqlite")).await?;
//! let store = Arc::new(SqliteStore::new(db.clone()));
//! let records = Arc::new(SqliteRecords::new(db));
//! let (queue, receivers) = LocalQueue::new(&data_dir);
//! // With `slices: tb_local::dispatch::local_slice_settings()` in the worker and
//! // `settings: tb_local::dispatch::local_finalizer_settings()` in the finalizer.
//! let worker = Arc::new(worker(store.clone(), Arc::new(queue), records.clone()));
//! let finalizer = Arc::new(finalizer(store, records));
//! // Sweeps at once (re-driving what a killed process left behind), then periodically.
//! let dispatcher = tb_local::dispatch::run_workers(worker, finalizer, receivers, 2);
//! # dispatcher.await.ok();
//! # Ok(()) }
//! ```

mod db;
pub mod dir_archive;
pub mod dispatch;
mod error;
mod gates;
pub mod npm_cache;
mod oauth;
pub mod private;
mod queue;
mod records;
mod schema;
mod store;

pub use db::LocalDb;
pub use dir_archive::DirArchive;
pub use queue::{DEAD_LETTER_FILE, LocalQueue, Receivers};
pub use records::SqliteRecords;
pub use store::SqliteStore;
pub use tb_core::api_key::MAX_LABEL_CHARS;
