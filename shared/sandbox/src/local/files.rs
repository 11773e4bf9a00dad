//! File tools confined to a workspace directory, symlinks included.
//!
//! A [`WorkspacePath`] cannot leave the workspace lexically; what is left is symlinks,
//! which commands may create anywhere. Every operation resolves the deepest existing part of
//! its path and requires the result to be inside the canonical workspace root:
//!
//! - read and list resolve the whole path (a link that stays inside is followed);
//! - write resolves the parent before creating anything and opens the file itself with
//!   `O_NOFOLLOW`, so a link planted at the target is refused rather than followed;
//! - delete resolves the parent and removes a link itself, never its target.
//!
//! These are checks, then actions: a command running at the same moment could swap a
//! directory for a link in between. The checks keep the file tools from being a way out;
//! they do not make commands safe (see the module docs of [`crate::local`]).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tb_core::sandbox::{FileEntry, PathError, SandboxError, WorkspacePath};

const OUTSIDE: &str = "resolves outside the project through a symlink";
const DANGLING: &str = "goes through a symlink that points nowhere";
const IS_SYMLINK: &str = "is a symlink; refusing to write through it";

/// A workspace directory and the operations confined to it (all blocking).
#[derive(Clone, Debug)]
pub(crate) struct Workspace {
    /// Canonical (symlink-free, absolute) path of the workspace root.
    root: PathBuf,
}

impl Workspace {
    /// `root` must exist; it is canonicalised once here.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        Ok(Workspace {
            root: fs::canonicalize(root)?,
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn read(&self, path: &WorkspacePath, limit: u64) -> Result<Vec<u8>, SandboxError> {
        let resolved = self.resolve_existing(path)?;
        let meta = fs::metadata(&resolved).map_err(|e| io_error(path, e))?;
        if meta.is_dir() {
            return Err(SandboxError::Invalid(format!("`{path}` is a directory")));
        }
        if !meta.is_file() {
            return Err(SandboxError::Invalid(format!(
                "`{path}` is not a regular file"
            )));
        }
        if meta.len() > limit {
            return Err(too_large(path, meta.len(), limit));
        }
        let file = fs::File::open(&resolved).map_err(|e| io_error(path, e))?;
        let mut contents = Vec::with_capacity(meta.len() as usize);
        file.take(limit + 1)
            .read_to_end(&mut contents)
            .map_err(|e| io_error(path, e))?;
        if contents.len() as u64 > limit {
            // It grew between the size check and the read.
            return Err(too_large(path, contents.len() as u64, limit));
        }
        Ok(contents)
    }

    pub(crate) fn write(&self, path: &WorkspacePath, contents: &[u8]) -> Result<(), SandboxError> {
        let (parent, name) = split_parent(path).ok_or_else(|| {
            SandboxError::Invalid("`.` is the project root; give a file path".into())
        })?;
        let parent = self.make_dirs(&parent, path)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(parent.join(name))
            .map_err(|e| io_error(path, e))?;
        file.write_all(contents).map_err(|e| io_error(path, e))?;
        Ok(())
    }

    /// `mkdir -p` inside the workspace.
    pub(crate) fn create_dir_all(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        self.make_dirs(path, path).map(|_| ())
    }

    pub(crate) fn delete(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        let (parent, name) = split_parent(path)
            .ok_or_else(|| SandboxError::Invalid("refusing to delete the project root".into()))?;
        let parent = self.resolve_existing(&parent).map_err(|e| match e {
            SandboxError::NotFound(_) => SandboxError::NotFound(path.to_string()),
            other => other,
        })?;
        let target = parent.join(name);
        let meta = fs::symlink_metadata(&target).map_err(|e| io_error(path, e))?;
        if meta.is_dir() {
            fs::remove_dir_all(&target).map_err(|e| io_error(path, e))
        } else {
            fs::remove_file(&target).map_err(|e| io_error(path, e))
        }
    }

    pub(crate) fn list(&self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, SandboxError> {
        let resolved = self.resolve_existing(dir)?;
        if !fs::metadata(&resolved)
            .map_err(|e| io_error(dir, e))?
            .is_dir()
        {
            return Err(SandboxError::Invalid(format!("`{dir}` is not a directory")));
        }
        let mut entries = Vec::new();
        for entry in fs::read_dir(&resolved).map_err(|e| io_error(dir, e))? {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Not followed: a link is listed as what it is.
            let meta = match fs::symlink_metadata(entry.path()) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted meanwhile
                Err(e) => return Err(io_error(dir, e)),
            };
            let path = if dir.is_root() {
                name
            } else {
                format!("{}/{name}", dir.as_str())
            };
            let is_dir = meta.is_dir();
            entries.push(FileEntry {
                path,
                is_dir,
                size: if is_dir { 0 } else { meta.len() },
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    /// Whether `path` is a directory (not followed through a final symlink).
    pub(crate) fn is_dir(&self, path: &WorkspacePath) -> Result<bool, SandboxError> {
        let Some((parent, name)) = split_parent(path) else {
            return Ok(true);
        };
        let parent = self.resolve_existing(&parent)?;
        let meta = fs::symlink_metadata(parent.join(name)).map_err(|e| io_error(path, e))?;
        Ok(meta.is_dir())
    }

    fn host_path(&self, path: &WorkspacePath) -> PathBuf {
        if path.is_root() {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        }
    }

    /// Resolves every symlink of an existing path and checks that it stays inside.
    fn resolve_existing(&self, path: &WorkspacePath) -> Result<PathBuf, SandboxError> {
        let resolved = fs::canonicalize(self.host_path(path)).map_err(|e| io_error(path, e))?;
        self.check_inside(path, &resolved)?;
        Ok(resolved)
    }

    /// Creates `dir` and its parents after checking that the deepest existing ancestor
    /// resolves inside; returns the canonical directory. `reported` names errors.
    fn make_dirs(
        &self,
        dir: &WorkspacePath,
        reported: &WorkspacePath,
    ) -> Result<PathBuf, SandboxError> {
        let host = self.host_path(dir);
        let ancestor = self.deepest_existing(&host, reported)?;
        let resolved = fs::canonicalize(&ancestor).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => refuse(reported, DANGLING),
            _ => io_error(reported, e),
        })?;
        self.check_inside(reported, &resolved)?;
        if ancestor != host {
            fs::create_dir_all(&host).map_err(|e| io_error(reported, e))?;
        }
        // Again, now that it exists: nothing was swapped in between.
        let resolved = fs::canonicalize(&host).map_err(|e| io_error(reported, e))?;
        self.check_inside(reported, &resolved)?;
        if !resolved.is_dir() {
            return Err(SandboxError::Invalid(format!(
                "a parent of `{reported}` is not a directory"
            )));
        }
        Ok(resolved)
    }

    /// The deepest of `host` and its ancestors (up to the root) that exists, links included.
    fn deepest_existing(
        &self,
        host: &Path,
        reported: &WorkspacePath,
    ) -> Result<PathBuf, SandboxError> {
        for candidate in host.ancestors() {
            match fs::symlink_metadata(candidate) {
                Ok(_) => return Ok(candidate.to_path_buf()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) => {}
                Err(e) => return Err(io_error(reported, e)),
            }
            if candidate == self.root {
                break;
            }
        }
        Err(SandboxError::Unavailable(
            "the project directory is gone".into(),
        ))
    }

    fn check_inside(&self, path: &WorkspacePath, resolved: &Path) -> Result<(), SandboxError> {
        if resolved.starts_with(&self.root) {
            Ok(())
        } else {
            Err(refuse(path, OUTSIDE))
        }
    }
}

/// `a/b/c` → (`a/b`, `c`); `None` for the root.
fn split_parent(path: &WorkspacePath) -> Option<(WorkspacePath, &str)> {
    if path.is_root() {
        return None;
    }
    Some(match path.as_str().rsplit_once('/') {
        Some((parent, name)) => (WorkspacePath::parse(parent).ok()?, name),
        None => (WorkspacePath::root(), path.as_str()),
    })
}

fn refuse(path: &WorkspacePath, reason: &'static str) -> SandboxError {
    SandboxError::Path(PathError {
        path: path.as_str().chars().take(200).collect(),
        reason,
    })
}

fn too_large(path: &WorkspacePath, size: u64, limit: u64) -> SandboxError {
    SandboxError::Invalid(format!(
        "`{path}` is {size} bytes; larger than the read limit of {limit} bytes (read a part of it with a command)"
    ))
}

/// Maps an I/O error on `path` to what the caller can act on.
pub(crate) fn io_error(path: &WorkspacePath, e: io::Error) -> SandboxError {
    use io::ErrorKind as K;
    if e.raw_os_error() == Some(libc::ELOOP) {
        return refuse(path, IS_SYMLINK);
    }
    match e.kind() {
        K::NotFound => SandboxError::NotFound(path.to_string()),
        K::IsADirectory => SandboxError::Invalid(format!("`{path}` is a directory")),
        K::NotADirectory => {
            SandboxError::Invalid(format!("a parent of `{path}` is not a directory"))
        }
        K::PermissionDenied => SandboxError::Invalid(format!("permission denied: `{path}`")),
        K::AlreadyExists => SandboxError::Invalid(format!("`{path}` already exists")),
        K::InvalidFilename | K::InvalidInput => SandboxError::Invalid(format!("`{path}`: {e}")),
        K::DirectoryNotEmpty => SandboxError::Invalid(format!("`{path}` is not empty")),
        _ => SandboxError::Unavailable(format!("`{path}`: {e}")),
    }
}
