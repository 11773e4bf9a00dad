//! Postgres adapters of turbobackend's ports.
//!
//! - [`PgProvisioner`] ([`DatabaseProvisioner`]): a role and a database per project (and
//!   per project's dev database) on a cluster configured by `DB_CLUSTER_*`
//!   ([`ClusterSettings`]); the project's own migrations, applied as the project role.
//! - [`PgDevDatabase`] ([`DevDatabase`]): the agent's `query_database` tool, one statement
//!   at a time, as the dev role, with a statement timeout and a row limit.
//! - [`PgPlatformRecords`] ([`PlatformRecords`]): API keys (hashed), projects with their
//!   deployment history, and the usage ledger, in the schema of the workspace's
//!   `migrations/` directory ([`schema`]).
//!
//! Errors are [`PgError`], mapped onto [`PortError`] at the trait boundary: connection
//! trouble and timeouts are transient, a missing database is "not found", the rest is
//! permanent. Passwords and connection URLs are never logged nor shown by `Debug`.
//!
//! All SQL uses runtime queries (no compile-time checked macros), so building needs no
//! database.
//!
//! [`DatabaseProvisioner`]: tb_core::ports::DatabaseProvisioner
//! [`DevDatabase`]: tb_core::ports::DevDatabase
//! [`PlatformRecords`]: tb_core::ports::PlatformRecords
//! [`PortError`]: tb_core::ports::PortError

mod connect;
pub mod dev_database;
pub mod error;
pub mod migrations;
pub mod naming;
pub mod oauth;
pub mod provisioner;
pub mod quote;
pub mod records;
mod rows;
pub mod schema;
pub mod scram;
pub mod secret;
pub mod settings;
#[cfg(feature = "testing")]
pub mod testing;
pub mod url;

pub use dev_database::{PgDevDatabase, PgDevDatabases};
pub use error::PgError;
pub use naming::DatabaseNames;
pub use provisioner::PgProvisioner;
pub use quote::{quote_ident, quote_literal};
pub use records::PgPlatformRecords;
pub use settings::ClusterSettings;
