//! The app layer: the artifact's tree placed under `/app/`, as a reproducible tar.
//!
//! Entries are sorted by path, every parent directory is present, owners are `0:0` with
//! no names, modes are normalised (0755 directories and executables, 0644 files), and every
//! time is [`LAYER_MTIME`]; the gzip header has no name and a zero time. The same tree
//! therefore always gives the same bytes, whatever order, times or owners the artifact's
//! tar had: the same digest, and the registry skips the upload.

use tb_core::encoding::sha256_hex;

use crate::DeployError;
use crate::artifact::{EntryKind, Tree};

/// Where the artifact lands in the image.
pub const APP_DIR: &str = "app";
/// The modification time of every entry: one second after the epoch, as Jib does (some
/// tools treat a zero time as "unset").
pub const LAYER_MTIME: u64 = 1;

/// A layer ready to push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The gzip'd tar, as pushed.
    pub blob: Vec<u8>,
    /// `sha256:` of [`Layer::blob`]: the layer's digest in the manifest.
    pub digest: String,
    /// `sha256:` of the uncompressed tar: its entry in the config's `rootfs.diff_ids`.
    pub diff_id: String,
}

/// Builds the app layer from an artifact's tree.
pub fn app_layer(tree: &Tree) -> Result<Layer, DeployError> {
    let tar = app_tar(tree).map_err(|e| DeployError::Local(format!("building the layer: {e}")))?;
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let blob = gzip(&tar).map_err(|e| DeployError::Local(format!("compressing the layer: {e}")))?;
    let digest = format!("sha256:{}", sha256_hex(&blob));
    Ok(Layer {
        blob,
        digest,
        diff_id,
    })
}

/// The uncompressed layer tar.
pub fn app_tar(tree: &Tree) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, APP_DIR, &EntryKind::Dir)?;
    for (path, kind) in &tree.entries {
        append(&mut builder, &format!("{APP_DIR}/{path}"), kind)?;
    }
    builder.into_inner()
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: &EntryKind,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(LAYER_MTIME);
    header.set_uid(0);
    header.set_gid(0);
    match kind {
        EntryKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, format!("{path}/"), std::io::empty())
        }
        EntryKind::File { data, executable } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if *executable { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, data.as_slice())
        }
        EntryKind::Symlink { target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, path, target)
        }
    }
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(data)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> Tree {
        let mut t = Tree::default();
        for (path, data) in files {
            t.entries.insert(
                (*path).to_owned(),
                EntryKind::File {
                    data: data.as_bytes().to_vec(),
                    executable: false,
                },
            );
        }
        t.entries.insert(".output".into(), EntryKind::Dir);
        t.entries.insert(".output/server".into(), EntryKind::Dir);
        t
    }

    #[test]
    fn the_layer_places_the_tree_under_app_with_fixed_metadata() {
        let layer_tar = app_tar(&tree(&[(".output/server/index.mjs", "js")])).unwrap();
        let mut archive = tar::Archive::new(layer_tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(
                (h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
                (1, 0, 0)
            );
            seen.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(
            seen,
            [
                "app/",
                "app/.output/",
                "app/.output/server/",
                "app/.output/server/index.mjs"
            ]
        );
    }

    #[test]
    fn different_trees_give_different_layers() {
        let a = app_layer(&tree(&[(".output/server/index.mjs", "a")])).unwrap();
        let b = app_layer(&tree(&[(".output/server/index.mjs", "b")])).unwrap();
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.diff_id, b.diff_id);
        assert_eq!(
            a,
            app_layer(&tree(&[(".output/server/index.mjs", "a")])).unwrap()
        );
    }
}
