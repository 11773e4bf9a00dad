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
//! A host wires them up like this (building the `Pipeline` and the `Finalizer` themselves
//! is the host's business):
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use tb_local::{LocalQueue, SqliteRecords, SqliteStore};
//! # use tb_pipeline::{Finalizer, Pipeline};
//! # fn pipeline(_: Arc<SqliteStore>, _: Arc<LocalQueue>) -> Pipeline { unimplemented!() }
//! # fn finalizer(_: Arc<SqliteStore>, _: Arc<SqliteRecords>) -> Finalizer { unimplemented!() }
//! # async fn host(data_dir: std::path::PathBuf) -> Result<(), tb_core::ports::PortError> {
//! let db = tb_local::LocalDb::open(data_dir.join("turbobackend.sqlite")).await?;
//! let store = Arc::new(SqliteStore::new(db.clone()));
//! let records = Arc::new(SqliteRecords::new(db));
//! let (queue, receivers) = LocalQueue::new(&data_dir);
//! // With `slices: tb_local::dispatch::local_slice_settings()` in the pipeline and
//! // `settings: tb_local::dispatch::local_finalizer_settings()` in the finalizer.
//! let pipeline = Arc::new(pipeline(store.clone(), Arc::new(queue)));
//! let finalizer = Arc::new(finalizer(store, records));
//! // Sweeps at once (re-driving what a killed process left behind), then periodically.
//! let dispatcher = tb_local::dispatch::run_workers(pipeline, finalizer, receivers, 2);
//! # dispatcher.await.ok();
//! # Ok(()) }
//! ```

mod db;
pub mod dispatch;
mod error;
mod gates;
pub mod keys;
pub mod npm_cache;
mod oauth;
pub mod private;
mod queue;
mod records;
mod schema;
mod store;

pub use db::LocalDb;
pub use queue::{DEAD_LETTER_FILE, LocalQueue, Receivers};
pub use records::{MAX_LABEL_CHARS, SqliteRecords};
pub use store::SqliteStore;
