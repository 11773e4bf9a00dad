//! AWS adapters of the pipeline's ports.
//!
//! - [`DynamoStore`]: [`tb_pipeline::StateStore`] over one DynamoDB table, payloads too
//!   large for an item spilled to S3 (item layout in [`layout`]).
//! - [`SqsQueue`]: [`tb_pipeline::Queue`] over the SQS work and finalize queues.
//! - [`S3Archive`]: [`tb_core::ports::Archive`] over an S3 bucket.
//! - [`AwsSettings`] / [`AwsClients`]: which resources, and the SDK clients.
//!
//! SDK errors become [`tb_core::ports::PortError`]s by what the caller must do: retry
//! (`Transient`), reload (`Conflict`) or give up (`Permanent`).

pub mod archive;
mod archive_delete;
mod error;
mod index;
pub mod layout;
pub mod queue;
pub mod settings;
mod spill;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use archive::S3Archive;
pub use queue::SqsQueue;
pub use settings::{AwsClients, AwsSettings, SettingsError};
pub use store::{DynamoStore, ReadStats, WriteStats};
