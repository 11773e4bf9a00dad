//! Deployers for built apps (the [`Deployer`](tb_core::ports::Deployer) port).
//!
//! - [`FlyDeployer`]: Fly.io Machines. Fly has no build service and no Docker daemon is
//!   around, so the image is assembled here ([`image`]): a Node base image plus one layer
//!   holding the artifact, pushed over the OCI distribution API ([`registry`]) to
//!   `registry.fly.io/<app>`, and run by digest. Rollback is the previous digest.
//! - [`LocalDeployer`]: the embedded default; unpacks the artifact and runs it as a local
//!   `node` process on a free port.

pub mod artifact;
mod error;
pub mod fly;
mod health;
pub mod image;
pub mod layer;
pub mod local;
pub mod reference;
pub mod registry;

pub use error::DeployError;
pub use fly::{FlyConfig, FlyDeployer};
pub use local::{LocalConfig, LocalDeployer};
pub use reference::ImageRef;
pub use tb_core::secret::Secret;

/// The HTTP client of the Fly and registry clients: the shared TLS configuration, a 10 s
/// connect timeout, our User-Agent, and `timeout` for a whole request when given.
fn http_client(timeout: Option<std::time::Duration>) -> Result<reqwest::Client, DeployError> {
    let builder = tb_tls::http_client()
        .connect_timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("turbobackend/", env!("CARGO_PKG_VERSION")));
    let builder = match timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder,
    };
    builder
        .build()
        .map_err(|e| DeployError::Local(format!("building an HTTP client: {e}")))
}
