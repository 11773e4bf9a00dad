//! Adapters for the [`tb_core::sandbox`] ports: where the agent's commands run and its
//! files live.
//!
//! - [`local`]: a directory per sandbox on this host, commands run with `bash` as the host
//!   user. Confines the file tools to the project; it is not an isolation boundary for
//!   commands.
//! - [`daytona`]: a REST client for Daytona sandboxes (isolated VMs/containers).
//!
//! Both bound command output in memory the same way ([`OutputCap`]).

pub mod daytona;
pub mod local;
pub mod rfc3339;

mod output_cap;

pub use daytona::{DaytonaConfig, DaytonaProvider, DaytonaSandbox, RetryPolicy};
pub use local::{LocalSandbox, LocalSandboxConfig, LocalSandboxProvider};
pub use output_cap::OutputCap;
