//! Git object ids (SHA-1) of blobs and trees, computed the way `git hash-object` and
//! `git write-tree` do, without a repository.
//!
//! The GitHub adapter uses them to tell an unchanged snapshot from a changed one before
//! sending anything (an unchanged push creates no content), and to skip uploading blobs
//! the repository already holds.

use sha1::{Digest, Sha1};
use tb_core::encoding::hex;

/// A git object id: 40 lower-case hex digits.
pub type ObjectId = String;

/// The id of a blob holding `contents`: `sha1("blob <len>\0" + contents)`.
pub fn blob_id(contents: &[u8]) -> ObjectId {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", contents.len()).as_bytes());
    hasher.update(contents);
    hex(&hasher.finalize())
}

/// What a tree entry points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A file, executable or not.
    Blob {
        executable: bool,
    },
    Tree,
}

/// One entry of a tree object: a name (no `/`) and the id of what it points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub name: String,
    pub kind: EntryKind,
    pub id: ObjectId,
}

impl TreeEntry {
    /// The mode as git writes it inside tree objects (`40000` has no leading zero there).
    fn raw_mode(&self) -> &'static str {
        match self.kind {
            EntryKind::Blob { executable: false } => "100644",
            EntryKind::Blob { executable: true } => "100755",
            EntryKind::Tree => "40000",
        }
    }

    /// The key git sorts entries by: the name, with `/` appended for trees.
    fn sort_key(&self) -> Vec<u8> {
        let mut key = self.name.as_bytes().to_vec();
        if self.kind == EntryKind::Tree {
            key.push(b'/');
        }
        key
    }
}

/// The id of the tree object made of `entries` (in any order). Returns `None` if an id is
/// not 40 hex digits.
pub fn tree_id(entries: &[TreeEntry]) -> Option<ObjectId> {
    let mut sorted: Vec<&TreeEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.sort_key());
    let mut body = Vec::new();
    for entry in sorted {
        body.extend_from_slice(entry.raw_mode().as_bytes());
        body.push(b' ');
        body.extend_from_slice(entry.name.as_bytes());
        body.push(0);
        body.extend_from_slice(&unhex(&entry.id)?);
    }
    let mut hasher = Sha1::new();
    hasher.update(format!("tree {}\0", body.len()).as_bytes());
    hasher.update(&body);
    Some(hex(&hasher.finalize()))
}

fn unhex(id: &str) -> Option<[u8; 20]> {
    if id.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, pair) in id.as_bytes().chunks(2).enumerate() {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        out[i] = (high * 16 + low) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_match_git() {
        // `printf '' | git hash-object --stdin` and `printf 'hello\n' | git hash-object --stdin`.
        assert_eq!(blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(
            blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    #[test]
    fn the_empty_tree_has_gits_well_known_id() {
        assert_eq!(
            tree_id(&[]).unwrap(),
            "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
    }

    #[test]
    fn a_malformed_id_is_refused() {
        let entry = TreeEntry {
            name: "a".into(),
            kind: EntryKind::Tree,
            id: "xyz".into(),
        };
        assert_eq!(tree_id(&[entry]), None);
    }
}
