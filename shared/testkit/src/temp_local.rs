//! A local sandbox provider living in a temporary directory.

use std::path::Path;
use std::sync::Arc;

use tb_core::sandbox::{SandboxProvider, SandboxSpec};
use tb_sandbox::{LocalSandbox, LocalSandboxConfig, LocalSandboxProvider};
use tempfile::TempDir;

/// A [`LocalSandboxProvider`] whose root is a fresh temporary directory, deleted (with
/// every sandbox in it) when this value is dropped.
#[derive(Debug)]
pub struct TempLocalProvider {
    provider: LocalSandboxProvider,
    // Dropped after the provider, which only refers to it by path.
    dir: TempDir,
}

impl TempLocalProvider {
    /// With the default configuration.
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// With the default configuration changed by `configure` (its `root` is set already).
    pub fn with_config(configure: impl FnOnce(&mut LocalSandboxConfig)) -> Self {
        let dir = TempDir::new().expect("creating a temporary directory");
        let mut config = LocalSandboxConfig::new(dir.path().join("sandboxes"));
        configure(&mut config);
        TempLocalProvider {
            provider: LocalSandboxProvider::new(config),
            dir,
        }
    }

    pub fn provider(&self) -> &LocalSandboxProvider {
        &self.provider
    }

    /// The provider behind the port, for code that takes `Arc<dyn SandboxProvider>`.
    pub fn shared(&self) -> Arc<dyn SandboxProvider> {
        Arc::new(self.provider.clone())
    }

    /// The temporary directory (the sandboxes are in its `sandboxes/`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new sandbox with a random id and no labels.
    pub async fn sandbox(&self) -> LocalSandbox {
        self.provider
            .create_local(&SandboxSpec::default())
            .await
            .expect("creating a local sandbox")
    }
}

impl Default for TempLocalProvider {
    fn default() -> Self {
        Self::new()
    }
}
