//! Test doubles and helpers shared by the workspace's tests.
//!
//! - [`FakeDaytona`]: an HTTP server speaking Daytona's main API and toolbox, backed by
//!   real local sandboxes, so commands really run and files really land on disk.
//! - [`fake_github::FakeGitHub`] and [`fake_fly::FakeFly`]: GitHub's REST API over real
//!   bare git repositories; Fly's Machines API pulling images from a real registry and
//!   running them as real processes.
//! - [`oci::synthetic_node_base`]: a small Node base image to push to a test registry.
//! - [`registry_proxy::RegistryProxy`]: a counting proxy in front of the test registry,
//!   optionally asking for Basic credentials.
//! - [`TempLocalProvider`]: a [`tb_sandbox::LocalSandboxProvider`] in a temporary
//!   directory removed on drop.

pub mod fake_daytona;
pub mod fake_fly;
pub mod fake_github;
pub mod oauth_store;
pub mod oci;
pub mod registry_proxy;
pub mod temp_local;

pub use fake_daytona::FakeDaytona;
pub use temp_local::TempLocalProvider;

/// A server's task; the server stops when this is dropped.
struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `app` on `listener` on a task of its own, logging why it stopped (`name` says
/// which server).
fn serve(listener: tokio::net::TcpListener, app: axum::Router, name: &'static str) -> Server {
    Server(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "{name} stopped");
        }
    }))
}

/// Locks a fake's state, taking it over from a handler that panicked while holding it.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
