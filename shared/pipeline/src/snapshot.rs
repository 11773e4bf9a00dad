//! Taking the project out of the sandbox, and packing it as a deterministic tar.gz.

use std::collections::VecDeque;
use std::io::{Read, Write};

use tb_core::encoding::sha256_hex;
use tb_core::ports::{Snapshot, SnapshotFile};
use tb_core::sandbox::{Sandbox, SandboxError, WorkspacePath};

/// Directories never part of the project's source.
pub const EXCLUDED_DIRS: [&str; 5] = ["node_modules", ".output", ".git", ".nitro", ".turbobackend"];
/// A snapshot larger than this is refused (a project is source code, not data).
pub const MAX_SNAPSHOT_BYTES: usize = 50 << 20;

/// Reads every project file out of the sandbox, sorted by path.
pub async fn take(sandbox: &dyn Sandbox) -> Result<Snapshot, SandboxError> {
    let mut files = Vec::new();
    let mut total = 0usize;
    let mut dirs = VecDeque::from([WorkspacePath::root()]);
    while let Some(dir) = dirs.pop_front() {
        for entry in sandbox.list(&dir).await? {
            let name = entry.path.rsplit('/').next().unwrap_or(&entry.path);
            let path = WorkspacePath::parse(&entry.path)?;
            if entry.is_dir {
                if !EXCLUDED_DIRS.contains(&name) {
                    dirs.push_back(path);
                }
                continue;
            }
            let contents = sandbox.read_file(&path).await?;
            total += contents.len();
            if total > MAX_SNAPSHOT_BYTES {
                return Err(SandboxError::Invalid(format!(
                    "the project is larger than {} MiB",
                    MAX_SNAPSHOT_BYTES >> 20
                )));
            }
            files.push(SnapshotFile {
                path,
                contents,
                executable: false,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Snapshot { files })
}

/// The snapshot as a tar.gz (sorted entries, zero times and owners: the same files always
/// give the same bytes) and its SHA-256.
pub fn pack(snapshot: &Snapshot) -> std::io::Result<(Vec<u8>, String)> {
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    for f in &snapshot.files {
        let mut h = tar::Header::new_gnu();
        h.set_size(f.contents.len() as u64);
        h.set_mode(if f.executable { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, f.path.as_str(), f.contents.as_slice())?;
    }
    let mut gz = tar.into_inner()?;
    gz.flush()?;
    let bytes = gz.finish()?;
    let sha = sha256_hex(&bytes);
    Ok((bytes, sha))
}

/// Reads a snapshot packed by [`pack`]. Entries that are not plain files with safe relative
/// paths are refused.
pub fn unpack(tar_gz: &[u8]) -> std::io::Result<Snapshot> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tar_gz));
    let mut files = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(std::io::Error::other(
                "only regular files are allowed in a snapshot",
            ));
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = WorkspacePath::parse(&path).map_err(std::io::Error::other)?;
        let executable = entry.header().mode()? & 0o111 != 0;
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents)?;
        files.push(SnapshotFile {
            path,
            contents,
            executable,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Snapshot { files })
}

/// The snapshot without its CI workflows (files under `.github/workflows/`, in any ASCII
/// case), and the paths left out. They are never published to a repository: GitHub
/// Actions in the repository owner's organisation would run agent-written code with that
/// organisation's secrets. The archive keeps them.
pub fn without_workflows(snapshot: &Snapshot) -> (Snapshot, Vec<String>) {
    const DIR: &str = ".github/workflows/";
    let is_workflow = |p: &str| {
        p.len() > DIR.len()
            && p.get(..DIR.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(DIR))
    };
    let (left_out, kept): (Vec<_>, Vec<_>) = snapshot
        .files
        .iter()
        .cloned()
        .partition(|f| is_workflow(f.path.as_str()));
    (
        Snapshot { files: kept },
        left_out
            .into_iter()
            .map(|f| f.path.as_str().to_owned())
            .collect(),
    )
}

/// The project's SQL migrations (`migrations/*.sql`), in name order.
pub fn migrations(snapshot: &Snapshot) -> Vec<tb_core::ports::Migration> {
    snapshot
        .files
        .iter()
        .filter_map(|f| {
            let name = f.path.as_str().strip_prefix("migrations/")?;
            (name.ends_with(".sql") && !name.contains('/')).then(|| tb_core::ports::Migration {
                name: name.to_string(),
                sql: String::from_utf8_lossy(&f.contents).into_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflows_are_left_out_and_named() {
        let f = |p: &str| SnapshotFile {
            path: WorkspacePath::parse(p).unwrap(),
            contents: b"x".to_vec(),
            executable: false,
        };
        let snap = Snapshot {
            files: vec![
                f(".github/CODEOWNERS"),
                f(".github/workflows/ci.yml"),
                f(".GitHub/Workflows/x.yaml"),
                f("server/api/a.ts"),
            ],
        };
        let (kept, left_out) = without_workflows(&snap);
        let kept: Vec<_> = kept.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(kept, [".github/CODEOWNERS", "server/api/a.ts"]);
        assert_eq!(
            left_out,
            [".github/workflows/ci.yml", ".GitHub/Workflows/x.yaml"]
        );
    }

    fn snap() -> Snapshot {
        let f = |p: &str, c: &str| SnapshotFile {
            path: WorkspacePath::parse(p).unwrap(),
            contents: c.as_bytes().to_vec(),
            executable: false,
        };
        Snapshot {
            files: vec![
                f("migrations/001_a.sql", "create table a();"),
                f("package.json", "{}"),
                f("server/api/health.get.ts", "x"),
            ],
        }
    }

    #[test]
    fn packing_is_deterministic_and_round_trips() {
        let (a, sha_a) = pack(&snap()).unwrap();
        let (b, sha_b) = pack(&snap()).unwrap();
        assert_eq!((a.clone(), sha_a.clone()), (b, sha_b));
        assert_eq!(sha_a, sha256_hex(&a));
        assert_eq!(unpack(&a).unwrap(), snap());
    }

    #[test]
    fn migrations_are_the_sql_files_directly_under_migrations() {
        let m = migrations(&snap());
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "001_a.sql");
    }

    #[test]
    fn hostile_archives_are_refused() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        // `append_data` refuses `..` itself, so write the name into the header directly.
        h.as_gnu_mut().unwrap().name[..16].copy_from_slice(b"../../etc/passwd");
        h.set_cksum();
        tar.append(&h, &b"x"[..]).unwrap();
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        assert!(unpack(&gz.finish().unwrap()).is_err());
    }
}
