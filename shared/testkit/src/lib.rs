//! Test doubles and helpers shared by the workspace's tests.
//!
//! - [`FakeDaytona`]: an HTTP server speaking Daytona's main API and toolbox, backed by
//!   real local sandboxes, so commands really run and files really land on disk.
//! - [`TempLocalProvider`]: a [`tb_sandbox::LocalSandboxProvider`] in a temporary
//!   directory removed on drop.

pub mod fake_daytona;
pub mod fake_fly;
pub mod fake_github;
pub mod temp_local;

pub use fake_daytona::FakeDaytona;
pub use temp_local::TempLocalProvider;
