//! The npm cache the local sandboxes share, warmed with the template's packages.
//!
//! Every sandbox's npm uses one cache (`TB_NPM_CACHE`) and prefers it to the registry
//! (`npm_config_prefer_offline`). [`warm`] installs the template's lockfile once into a
//! scratch directory with that cache, so the cache then holds every package a new project
//! starts with, and the project's first `npm install` reads only the cache: no request to
//! the registry. It runs again only when the template's lockfile changes (a marker file
//! named by the lockfile's digest records that it ran).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tb_core::ids::sha256_hex;
use tb_pipeline::template;

/// How long installing the template's packages into the cache may take.
const WARM_TIMEOUT: Duration = Duration::from_secs(600);

/// What [`warm`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Warmed {
    /// The cache already held this lockfile's packages.
    Already,
    /// The packages were installed into the cache now.
    Now,
}

#[derive(Debug, thiserror::Error)]
pub enum NpmCacheError {
    #[error("preparing the npm cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("installing the template's packages into the npm cache failed: {0}")]
    Install(String),
}

/// The file whose presence says the cache holds the current template's packages.
pub fn marker(cache: &Path) -> PathBuf {
    let lock = template::file("package-lock.json").expect("the template has a lockfile");
    cache.join(format!(
        ".turbobackend-template-{}-{}",
        template::NAME,
        &sha256_hex(lock)[..16]
    ))
}

/// Fills `cache` with the template's packages (`npm ci --ignore-scripts` of its lockfile in
/// a scratch directory), unless it already holds them.
pub async fn warm(cache: &Path) -> Result<Warmed, NpmCacheError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NpmCacheError::Io { path, source }
    };
    let marker = marker(cache);
    if marker.exists() {
        return Ok(Warmed::Already);
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let scratch = std::env::temp_dir().join(format!(
        "turbobackend-npm-warm-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&scratch).map_err(io(&scratch))?;
    let result = install(cache, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    std::fs::write(&marker, b"").map_err(io(&marker))?;
    Ok(Warmed::Now)
}

async fn install(cache: &Path, scratch: &Path) -> Result<(), NpmCacheError> {
    for name in ["package.json", "package-lock.json", ".npmrc"] {
        let path = scratch.join(name);
        std::fs::write(&path, template::file(name).expect("a template file")).map_err(
            |source| NpmCacheError::Io {
                path: path.clone(),
                source,
            },
        )?;
    }
    let run = tokio::process::Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
        .current_dir(scratch)
        .env("npm_config_cache", cache)
        .env("npm_config_prefer_offline", "true")
        .env("npm_config_update_notifier", "false")
        .env("CI", "1")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WARM_TIMEOUT, run)
        .await
        .map_err(|_| NpmCacheError::Install(format!("npm ci did not end within {WARM_TIMEOUT:?}")))?
        .map_err(|e| NpmCacheError::Install(format!("running npm: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(NpmCacheError::Install(format!(
            "npm ci {}: {tail}",
            out.status
        )));
    }
    Ok(())
}
