//! A project's current source, and how a request starts from it.
//!
//! When a request succeeds, the finalizer records its archived snapshot as the project's
//! current source (`projects/<project>/current.json`, next to the snapshots). A later request
//! on the same project has its sandbox seeded from that snapshot before its first iteration;
//! a new project's (one with no current source) is seeded from the platform's template
//! ([`crate::template`]). What it was seeded with ([`ProjectBase`]) is kept on the request as
//! the `seed` step, so every slice tells the model the same thing and keeps the applied
//! migrations as they are.

use serde::{Deserialize, Serialize};
use tb_core::agent::{APPLIED_COPY_DIR, AppliedMigration, ProjectBase};
use tb_core::domain::{ProjectId, RequestId};
use tb_core::ids::sha256_hex;
use tb_core::ports::{Archive, PortError, Snapshot};
use tb_core::sandbox::{Sandbox, SandboxError, WorkspacePath};

use crate::snapshot;

/// The request record's `steps` entry holding the [`ProjectBase`] of a change request.
pub const SEED_STEP: &str = "seed";

/// Where the pointer to a project's current source is kept in the archive.
pub fn current_key(project: &ProjectId) -> String {
    format!("projects/{project}/current.json")
}

/// The pointer: which request's snapshot is the project's current source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Current {
    pub request_id: RequestId,
    pub source_key: String,
    pub sha256: String,
}

/// Records `current` as the project's current source (the finalizer, on success).
pub async fn set_current(
    archive: &dyn Archive,
    project: &ProjectId,
    current: &Current,
) -> Result<(), PortError> {
    let bytes = serde_json::to_vec(current).expect("serialisable");
    archive
        .put(&current_key(project), &bytes, &sha256_hex(&bytes))
        .await
}

/// Why seeding did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// A service is unreachable: wait it out like any outage.
    #[error("{service}: {cause}")]
    Unavailable {
        service: &'static str,
        cause: String,
    },
    /// The archived source cannot be used; retrying will not help.
    #[error("{0}")]
    Broken(String),
}

/// Seeds `sandbox` with the project's current source, or, for a project with none (a new
/// project, one whose every request failed, or a host without an archive), with the
/// template. Idempotent: seeding again writes the same files.
pub async fn seed(
    archive: Option<&dyn Archive>,
    project: &ProjectId,
    sandbox: &dyn Sandbox,
) -> Result<ProjectBase, SeedError> {
    let current = match archive {
        Some(archive) => current_source(archive, project).await?,
        None => None,
    };
    let Some((current, snap)) = current else {
        let snap = crate::template::snapshot();
        write(sandbox, &snap).await?;
        return Ok(ProjectBase {
            template: Some(crate::template::NAME.to_string()),
            files: paths(&snap),
            ..ProjectBase::default()
        });
    };
    write(sandbox, &snap).await?;
    let migrations = snapshot::migrations(&snap);
    let contents = |name: &str| {
        snap.files
            .iter()
            .find(|f| f.path.as_str() == format!("migrations/{name}"))
            .map(|f| f.contents.as_slice())
            .unwrap_or_default()
    };
    for m in &migrations {
        let copy = WorkspacePath::parse(&format!("{APPLIED_COPY_DIR}/{}", m.name))
            .map_err(|e| SeedError::Broken(e.to_string()))?;
        sandbox
            .write_file(&copy, contents(&m.name))
            .await
            .map_err(sandbox_err)?;
    }
    let sha_of = |name: &str| sha256_hex(contents(name));
    Ok(ProjectBase {
        from_request: current.request_id.to_string(),
        template: None,
        files: paths(&snap),
        applied_migrations: migrations
            .iter()
            .map(|m| AppliedMigration {
                sha256: sha_of(&m.name),
                name: m.name.clone(),
            })
            .collect(),
    })
}

/// The project's current source and its pointer, `None` when it has none.
async fn current_source(
    archive: &dyn Archive,
    project: &ProjectId,
) -> Result<Option<(Current, Snapshot)>, SeedError> {
    let unavailable = |service| {
        move |e: PortError| match e {
            PortError::Transient(cause) => SeedError::Unavailable { service, cause },
            other => SeedError::Broken(format!("{service}: {other}")),
        }
    };
    let Some(pointer) = archive
        .get(&current_key(project))
        .await
        .map_err(unavailable("the archive"))?
    else {
        return Ok(None);
    };
    let current: Current = serde_json::from_slice(&pointer)
        .map_err(|e| SeedError::Broken(format!("the project's current source pointer: {e}")))?;
    let bytes = archive
        .get(&current.source_key)
        .await
        .map_err(unavailable("the archive"))?
        .ok_or_else(|| {
            SeedError::Broken(format!(
                "the project's current source {} is missing from the archive",
                current.source_key
            ))
        })?;
    if sha256_hex(&bytes) != current.sha256 {
        return Err(SeedError::Broken(format!(
            "the project's current source {} does not match its recorded SHA-256",
            current.source_key
        )));
    }
    let snap = snapshot::unpack(&bytes)
        .map_err(|e| SeedError::Broken(format!("reading {}: {e}", current.source_key)))?;
    Ok(Some((current, snap)))
}

fn sandbox_err(e: SandboxError) -> SeedError {
    match e {
        SandboxError::Unavailable(cause) => SeedError::Unavailable {
            service: "the sandbox provider",
            cause,
        },
        other => SeedError::Broken(format!("seeding the sandbox: {other}")),
    }
}

/// Writes the snapshot's files into the sandbox, executable bits included.
async fn write(sandbox: &dyn Sandbox, snap: &Snapshot) -> Result<(), SeedError> {
    let mut executable = Vec::new();
    for f in &snap.files {
        sandbox
            .write_file(&f.path, &f.contents)
            .await
            .map_err(sandbox_err)?;
        if f.executable {
            executable.push(shell_quote(f.path.as_str()));
        }
    }
    if !executable.is_empty() {
        let out = sandbox
            .exec(
                &format!("chmod +x -- {}", executable.join(" ")),
                std::time::Duration::from_secs(60),
            )
            .await
            .map_err(sandbox_err)?;
        if out.exit_code != Some(0) {
            return Err(SeedError::Broken(format!(
                "seeding the sandbox: chmod failed: {}",
                out.output
            )));
        }
    }
    Ok(())
}

fn paths(snap: &Snapshot) -> Vec<String> {
    snap.files
        .iter()
        .map(|f| f.path.as_str().to_string())
        .collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
