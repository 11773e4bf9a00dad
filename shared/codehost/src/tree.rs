//! A snapshot checked and laid out as a git tree: the files with their blob ids, and the
//! id of the whole tree, as both adapters will write it.

use std::collections::{BTreeMap, BTreeSet};

use tb_core::ports::{PLATFORM_DIR, Snapshot, SnapshotFile};
use tb_core::sandbox::WorkspacePath;

use crate::error::CodeHostError;
use crate::git_object::{self, EntryKind, ObjectId, TreeEntry};

/// One file of a [`ProjectTree`].
#[derive(Debug)]
pub(crate) struct TreeFile<'a> {
    /// Relative, `/`-separated, normalised (see `WorkspacePath`).
    pub path: &'a str,
    pub contents: &'a [u8],
    pub executable: bool,
    pub blob_id: ObjectId,
}

impl TreeFile<'_> {
    /// The mode git records for the file.
    pub fn mode(&self) -> &'static str {
        if self.executable { "100755" } else { "100644" }
    }
}

/// A snapshot that can be committed as is: every path a file, no duplicates, no path
/// both a file and a directory, nothing under `.git`, at least one file.
#[derive(Debug)]
pub(crate) struct ProjectTree<'a> {
    /// Sorted by path.
    pub files: Vec<TreeFile<'a>>,
    /// The id git gives the root tree of these files.
    pub tree_id: ObjectId,
}

/// A snapshot of one file (not executable), to check and lay out with [`ProjectTree::new`].
pub(crate) fn one_file(path: &WorkspacePath, contents: &[u8]) -> Snapshot {
    Snapshot {
        files: vec![SnapshotFile {
            path: path.clone(),
            contents: contents.to_vec(),
            executable: false,
        }],
    }
}

/// Whether `path` is the platform's directory ([`PLATFORM_DIR`]) or inside it.
pub(crate) fn is_platform_path(path: &str) -> bool {
    path.strip_prefix(PLATFORM_DIR)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl<'a> ProjectTree<'a> {
    /// Every file of `snapshot`.
    pub fn new(snapshot: &'a Snapshot) -> Result<Self, CodeHostError> {
        Self::build(snapshot, false)
    }

    /// The files of `snapshot` outside the platform's directory (which a push carries over
    /// from the head instead).
    pub fn project(snapshot: &'a Snapshot) -> Result<Self, CodeHostError> {
        Self::build(snapshot, true)
    }

    /// The id of the root tree of these files with `platform_dir` (a tree id), if any, as
    /// [`PLATFORM_DIR`].
    pub fn tree_id_with(&self, platform_dir: Option<&str>) -> Result<ObjectId, CodeHostError> {
        match platform_dir {
            None => Ok(self.tree_id.clone()),
            Some(dir) => root_tree_id(&self.files, Some(dir)),
        }
    }

    fn build(snapshot: &'a Snapshot, skip_platform: bool) -> Result<Self, CodeHostError> {
        let invalid = |reason: String| Err(CodeHostError::InvalidSnapshot(reason));
        let mut files = Vec::with_capacity(snapshot.files.len());
        for file in &snapshot.files {
            let path = file.path.as_str();
            if skip_platform && is_platform_path(path) {
                continue;
            }
            if file.path.is_root() {
                return invalid("a file has an empty path".into());
            }
            if path
                .split('/')
                .any(|part| part.eq_ignore_ascii_case(".git"))
            {
                return invalid(format!("`{path}` is inside `.git`, which git refuses"));
            }
            files.push(TreeFile {
                path,
                contents: &file.contents,
                executable: file.executable,
                blob_id: git_object::blob_id(&file.contents),
            });
        }
        if files.is_empty() {
            return invalid("it has no files; there is nothing to commit".into());
        }
        files.sort_by(|a, b| a.path.cmp(b.path));
        let mut seen = BTreeSet::new();
        for file in &files {
            if !seen.insert(file.path) {
                return invalid(format!("`{}` appears twice", file.path));
            }
        }
        for file in &files {
            let mut prefix = file.path;
            while let Some((parent, _)) = prefix.rsplit_once('/') {
                if seen.contains(parent) {
                    return invalid(format!(
                        "`{parent}` is a file and also the directory of `{}`",
                        file.path
                    ));
                }
                prefix = parent;
            }
        }
        let tree_id = root_tree_id(&files, None)?;
        Ok(ProjectTree { files, tree_id })
    }
}

/// A directory while the tree is being built.
#[derive(Default)]
struct Dir {
    files: Vec<TreeEntry>,
    /// Trees given by id.
    trees: Vec<TreeEntry>,
    dirs: BTreeMap<String, Dir>,
}

impl Dir {
    fn id(&self) -> Option<ObjectId> {
        let mut entries = self.files.clone();
        entries.extend(self.trees.iter().cloned());
        for (name, dir) in &self.dirs {
            entries.push(TreeEntry {
                name: name.clone(),
                kind: EntryKind::Tree,
                id: dir.id()?,
            });
        }
        git_object::tree_id(&entries)
    }
}

/// The root tree of `files`, plus `platform_dir` (a tree id) as [`PLATFORM_DIR`].
fn root_tree_id(
    files: &[TreeFile<'_>],
    platform_dir: Option<&str>,
) -> Result<ObjectId, CodeHostError> {
    let mut root = Dir::default();
    if let Some(id) = platform_dir {
        root.trees.push(TreeEntry {
            name: PLATFORM_DIR.to_owned(),
            kind: EntryKind::Tree,
            id: id.to_owned(),
        });
    }
    for file in files {
        let mut parts: Vec<&str> = file.path.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        let mut dir = &mut root;
        for part in parts {
            dir = dir.dirs.entry(part.to_owned()).or_default();
        }
        dir.files.push(TreeEntry {
            name: name.to_owned(),
            kind: EntryKind::Blob {
                executable: file.executable,
            },
            id: file.blob_id.clone(),
        });
    }
    root.id()
        .ok_or_else(|| CodeHostError::Internal("a computed object id is malformed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tb_core::ports::SnapshotFile;
    use tb_core::sandbox::WorkspacePath;

    fn snapshot(files: &[(&str, &str, bool)]) -> Snapshot {
        Snapshot {
            files: files
                .iter()
                .map(|(path, contents, executable)| SnapshotFile {
                    path: WorkspacePath::parse(path).unwrap(),
                    contents: contents.as_bytes().to_vec(),
                    executable: *executable,
                })
                .collect(),
        }
    }

    #[test]
    fn a_snapshot_is_refused_when_git_could_not_hold_it() {
        for (files, why) in [
            (vec![], "no files"),
            (vec![("a", "1", false), ("a", "2", false)], "twice"),
            (vec![("a", "1", false), ("a/b", "2", false)], "directory"),
            (vec![(".git/config", "x", false)], ".git"),
            (vec![("x/.GIT/hooks", "x", false)], ".git"),
        ] {
            let err = ProjectTree::new(&snapshot(&files)).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn the_platform_directory_is_left_out_of_a_project_tree_and_can_be_added_by_id() {
        let snap = snapshot(&[
            ("a.txt", "a", false),
            (".turbobackend/receipt.json", "{}", false),
            (".turbobackend", "x", false),
            (".turbobackendx/keep", "k", false),
        ]);
        let tree = ProjectTree::project(&snap).unwrap();
        let paths: Vec<_> = tree.files.iter().map(|f| f.path).collect();
        assert_eq!(paths, [".turbobackendx/keep", "a.txt"]);
        let only_platform = snapshot(&[(".turbobackend/receipt.json", "{}", false)]);
        assert!(ProjectTree::project(&only_platform).is_err());
        // A tree id given for the platform's directory counts like its files would.
        let with_receipt = snapshot(&[
            ("a.txt", "a", false),
            (".turbobackendx/keep", "k", false),
            (".turbobackend/receipt.json", "{}", false),
        ]);
        let receipt_dir = git_object::tree_id(&[TreeEntry {
            name: "receipt.json".into(),
            kind: EntryKind::Blob { executable: false },
            id: git_object::blob_id(b"{}"),
        }])
        .unwrap();
        assert_eq!(
            tree.tree_id_with(Some(&receipt_dir)).unwrap(),
            ProjectTree::new(&with_receipt).unwrap().tree_id
        );
        assert_eq!(tree.tree_id_with(None).unwrap(), tree.tree_id);
    }

    #[test]
    fn files_are_sorted_and_carry_their_blob_ids() {
        let snap = snapshot(&[("b.txt", "hello\n", false), ("a/run.sh", "x", true)]);
        let tree = ProjectTree::new(&snap).unwrap();
        let paths: Vec<_> = tree.files.iter().map(|f| f.path).collect();
        assert_eq!(paths, ["a/run.sh", "b.txt"]);
        assert_eq!(tree.files[0].mode(), "100755");
        assert_eq!(
            tree.files[1].blob_id,
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}
