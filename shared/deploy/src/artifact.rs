//! Reading a build artifact (`.output/…` as a gzip'd tar) into a checked, sorted list of
//! entries, and writing such a list to a directory.
//!
//! Both deployers go through here, so both refuse the same things: a checksum that does
//! not match, absolute paths, `..`, links pointing out of the tree, entries below a
//! symbolic link, device files, an archive that unpacks to more than
//! [`MAX_UNPACKED_BYTES`], and an artifact without `.output/server/index.mjs`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use tb_core::encoding::sha256_hex;
use tb_core::ports::Artifact;

use crate::DeployError;

/// The server entry point every artifact must hold.
pub const ENTRY_POINT: &str = ".output/server/index.mjs";
/// An artifact unpacking to more than this is refused.
pub const MAX_UNPACKED_BYTES: u64 = 1 << 30;

/// One file system object of the artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File { data: Vec<u8>, executable: bool },
    Symlink { target: String },
}

/// The artifact's entries keyed by normalised relative path (`.output/server/index.mjs`),
/// every parent directory present, in path order (parents before children).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, EntryKind>,
}

/// Checks the artifact's SHA-256 against its bytes.
pub fn verify(artifact: &Artifact) -> Result<(), DeployError> {
    let actual = sha256_hex(&artifact.tar_gz);
    if !actual.eq_ignore_ascii_case(&artifact.sha256) {
        return Err(DeployError::Artifact(format!(
            "its SHA-256 is {actual}, not the {} it was given with",
            artifact.sha256
        )));
    }
    Ok(())
}

/// Reads and checks a gzip'd tar.
pub fn read(tar_gz: &[u8]) -> Result<Tree, DeployError> {
    let bad = |what: String| DeployError::Artifact(what);
    let gz = flate2::read::GzDecoder::new(tar_gz);
    let mut archive = tar::Archive::new(gz.take(MAX_UNPACKED_BYTES + 1));
    let mut tree = Tree::default();
    let mut total = 0u64;
    for entry in archive
        .entries()
        .map_err(|e| bad(format!("not a tar.gz: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("a damaged tar entry: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("an entry path: {e}")))?
            .to_string_lossy()
            .into_owned();
        let Some(path) = normalise(&raw) else {
            if raw
                .trim_start_matches("./")
                .trim_end_matches('/')
                .is_empty()
            {
                continue; // `./` itself
            }
            return Err(bad(format!("unsafe entry path {raw:?}")));
        };
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total += entry.size();
                if total > MAX_UNPACKED_BYTES {
                    return Err(bad(format!(
                        "it unpacks to more than {MAX_UNPACKED_BYTES} bytes"
                    )));
                }
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| bad(format!("reading {path}: {e}")))?;
                let mode = entry.header().mode().unwrap_or(0o644);
                EntryKind::File {
                    data,
                    executable: mode & 0o111 != 0,
                }
            }
            tar::EntryType::Symlink => {
                let target = link_name(&entry, &path)?;
                if target.starts_with('/') || escapes(&path, &target) {
                    return Err(bad(format!("the link {path} points out of the tree")));
                }
                EntryKind::Symlink { target }
            }
            // GNU tar stores a second name of the same file as a hard link: copy the data.
            tar::EntryType::Link => {
                let target = normalise(&link_name(&entry, &path)?)
                    .ok_or_else(|| bad(format!("the hard link {path} points out of the tree")))?;
                match tree.entries.get(&target) {
                    Some(file @ EntryKind::File { .. }) => file.clone(),
                    _ => return Err(bad(format!("the hard link {path} names no earlier file"))),
                }
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(bad(format!(
                    "{path} is a {other:?}, not a file or directory"
                )));
            }
        };
        tree.entries.insert(path, kind);
    }
    // Parents, then the checks that need the whole tree.
    let paths: Vec<String> = tree.entries.keys().cloned().collect();
    for path in &paths {
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            parent = p;
            match tree.entries.get(parent) {
                None => {
                    tree.entries.insert(parent.to_owned(), EntryKind::Dir);
                }
                Some(EntryKind::Dir) => {}
                Some(_) => {
                    return Err(bad(format!(
                        "{path} lies below {parent}, which is no directory"
                    )));
                }
            }
        }
    }
    match tree.entries.get(ENTRY_POINT) {
        Some(EntryKind::File { .. }) => Ok(tree),
        _ => Err(bad(format!("it has no {ENTRY_POINT}"))),
    }
}

/// Writes `tree` into `dest` (which must be empty or missing). Modes: 0755 for
/// directories and executables, 0644 for other files.
pub fn unpack(tree: &Tree, dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, symlink};
    std::fs::create_dir_all(dest)?;
    for (path, kind) in &tree.entries {
        let target = dest.join(path);
        match kind {
            EntryKind::Dir => std::fs::create_dir(&target)?,
            EntryKind::File { data, executable } => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if *executable { 0o755 } else { 0o644 })
                    .open(&target)?;
                std::io::Write::write_all(&mut file, data)?;
            }
            EntryKind::Symlink { target: link } => symlink(link, &target)?,
        }
    }
    Ok(())
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, path: &str) -> Result<String, DeployError> {
    entry
        .link_name()
        .map_err(|e| DeployError::Artifact(format!("the link {path}: {e}")))?
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or_else(|| DeployError::Artifact(format!("the link {path} has no target")))
}

/// `./a//b/` → `a/b`; `None` for absolute paths, `..`, empty paths and NUL bytes.
fn normalise(raw: &str) -> Option<String> {
    if raw.starts_with('/') || raw.contains('\0') {
        return None;
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

/// Whether a relative link `target`, placed at `path`, resolves above the tree's root.
fn escapes(path: &str, target: &str) -> bool {
    let mut depth = path.matches('/').count() as i64; // directories above the link
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(link) = link {
                h.set_link_name(link).unwrap();
            }
            // Bypass the builder's own path checks: the reader must catch bad paths.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    const SERVER: (&str, tar::EntryType, &[u8], Option<&str>) = (
        "./.output/server/index.mjs",
        tar::EntryType::Regular,
        b"x",
        None,
    );

    #[test]
    fn a_good_artifact_reads_with_its_parent_directories() {
        let tree = read(&tar_gz(&[
            SERVER,
            (".output/public/a.txt", tar::EntryType::Regular, b"a", None),
            (
                ".output/public/b",
                tar::EntryType::Symlink,
                b"",
                Some("a.txt"),
            ),
        ]))
        .unwrap();
        let paths: Vec<&str> = tree.entries.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                ".output",
                ".output/public",
                ".output/public/a.txt",
                ".output/public/b",
                ".output/server",
                ".output/server/index.mjs"
            ]
        );
    }

    #[test]
    fn unsafe_artifacts_are_refused() {
        for bad in [
            vec![
                SERVER,
                ("../evil", tar::EntryType::Regular, b"x".as_slice(), None),
            ],
            vec![SERVER, ("/etc/evil", tar::EntryType::Regular, b"x", None)],
            vec![
                SERVER,
                (".output/l", tar::EntryType::Symlink, b"", Some("../../x")),
            ],
            vec![
                SERVER,
                (".output/l", tar::EntryType::Symlink, b"", Some("/etc")),
            ],
            vec![SERVER, (".output/dev", tar::EntryType::Char, b"", None)],
            vec![(
                ".output/server/other.mjs",
                tar::EntryType::Regular,
                b"x",
                None,
            )],
        ] {
            assert!(
                matches!(read(&tar_gz(&bad)), Err(DeployError::Artifact(_))),
                "{bad:?}"
            );
        }
        assert!(read(b"not gzip").is_err());
        let tree = read(&tar_gz(&[
            SERVER,
            (".output/l", tar::EntryType::Symlink, b"", Some(".")),
            (".output/l/x", tar::EntryType::Regular, b"x", None),
        ]));
        // `.output/l` is a link, so `.output/l/x` cannot be placed below it.
        assert!(tree.is_err());
    }

    #[test]
    fn a_mismatched_checksum_is_refused() {
        let artifact = Artifact {
            tar_gz: b"abc".to_vec(),
            sha256: "00".repeat(32),
        };
        assert!(verify(&artifact).is_err());
        let artifact = Artifact {
            sha256: sha256_hex(b"abc"),
            ..artifact
        };
        assert!(verify(&artifact).is_ok());
    }
}
