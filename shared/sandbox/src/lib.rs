//! Adapters for the [`tb_core::sandbox`] ports: where the agent's commands run and its
//! files live.
//!
//! - [`local`]: a directory per sandbox on this host; commands run inside a bubblewrap
//!   boundary (namespaces, limits, network only through [`egress`]) where the host allows
//!   it, as the host user otherwise. The file tools are confined to the project by the
//!   kernel (`openat2` with `RESOLVE_BENEATH`; regular files and directories only, no
//!   hard-linked files; see `local/files.rs`).
//! - [`daytona`]: a REST client for Daytona sandboxes (isolated VMs/containers).
//!
//! Both bound command output in memory the same way ([`OutputCap`]).

pub mod daytona;
pub mod egress;
pub mod local;

mod output_cap;

pub use daytona::{DaytonaConfig, DaytonaProvider, DaytonaSandbox, RetryPolicy};
pub use egress::EgressPolicy;
pub use local::{Isolation, Limits, LocalSandbox, LocalSandboxConfig, LocalSandboxProvider};
pub use output_cap::OutputCap;
