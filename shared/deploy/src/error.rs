//! What can go wrong while deploying, and how each case maps onto [`PortError`].

use tb_core::domain::ProjectId;
use tb_core::ports::PortError;

/// A deploy failure. Messages never hold credentials: text from servers is scrubbed
/// ([`crate::Secret::scrub`]) before it lands here.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The artifact is unusable (bad checksum, unsafe paths, no server entry point).
    #[error("invalid artifact: {0}")]
    Artifact(String),
    /// An image reference or a configuration value is malformed.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A registry answered with an error status, or did not answer (`status: None`).
    #[error("registry {operation}: {}{message}", status_prefix(*.status))]
    Registry {
        operation: String,
        status: Option<u16>,
        message: String,
    },
    /// The Fly.io Machines API answered with an error status, or did not answer.
    #[error("Fly.io {operation}: {}{message}", status_prefix(*.status))]
    Fly {
        operation: String,
        status: Option<u16>,
        message: String,
    },
    /// The image is malformed (what a registry served does not fit together).
    #[error("invalid image: {0}")]
    Image(String),
    /// The app did not become healthy in time; what was created was cleaned up.
    #[error("the app did not become healthy: {0}")]
    Unhealthy(String),
    /// A local operation (files, processes) failed.
    #[error("{0}")]
    Local(String),
}

fn status_prefix(status: Option<u16>) -> String {
    status.map(|s| format!("HTTP {s}: ")).unwrap_or_default()
}

/// Retry with backoff for network failures, 408, 429 and 5xx; a conflict for 409/412;
/// not found for 404; permanent otherwise.
fn by_status(status: Option<u16>, text: String) -> PortError {
    match status {
        None | Some(408) | Some(429) | Some(500..=599) => PortError::Transient(text),
        Some(404) => PortError::NotFound(text),
        Some(409) | Some(412) => PortError::Conflict(text),
        Some(_) => PortError::Permanent(text),
    }
}

impl From<DeployError> for PortError {
    fn from(e: DeployError) -> Self {
        let text = e.to_string();
        match e {
            DeployError::Registry { status, .. } | DeployError::Fly { status, .. } => {
                by_status(status, text)
            }
            DeployError::Local(_) => PortError::Transient(text),
            DeployError::Artifact(_)
            | DeployError::Config(_)
            | DeployError::Image(_)
            | DeployError::Unhealthy(_) => PortError::Permanent(text),
        }
    }
}

/// `result` as a deployer answers the port: a failure is logged ("`what` failed", with
/// the project), then converted.
pub(crate) fn answer<T>(
    project: &ProjectId,
    what: &str,
    result: Result<T, DeployError>,
) -> Result<T, PortError> {
    result.map_err(|e| {
        tracing::warn!(%project, "{what} failed: {e}");
        e.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_onto_port_errors_by_how_to_react() {
        let fly = |status| DeployError::Fly {
            operation: "create app".into(),
            status,
            message: "m".into(),
        };
        assert!(matches!(fly(Some(429)).into(), PortError::Transient(_)));
        assert!(matches!(fly(None).into(), PortError::Transient(_)));
        assert!(matches!(fly(Some(503)).into(), PortError::Transient(_)));
        assert!(matches!(fly(Some(422)).into(), PortError::Permanent(_)));
        assert!(matches!(fly(Some(412)).into(), PortError::Conflict(_)));
        assert_eq!(
            PortError::from(fly(Some(401))).to_string(),
            "Fly.io create app: HTTP 401: m"
        );
        assert!(matches!(
            DeployError::Unhealthy("x".into()).into(),
            PortError::Permanent(_)
        ));
    }
}
