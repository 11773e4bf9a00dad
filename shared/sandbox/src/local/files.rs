//! File tools confined to a workspace directory by the kernel, not by checks.
//!
//! The workspace root is opened once; every path a file tool touches is then opened
//! relative to that descriptor with `openat2(2)` and `RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS`. The kernel resolves the path, symlinks included, and refuses
//! (`EXDEV`) any step that would leave the root: absolute symlinks, `..` above the root,
//! `/proc` magic links. There is no window between a check and the open: a command swapping
//! a directory for a symlink at the same moment changes which file *inside* the workspace
//! is opened, never whether it is inside. A link that stays inside is followed.
//!
//! On top of that:
//!
//! - Only regular files and directories are handled. FIFOs, sockets and devices are refused
//!   with their type named. Every open is `O_NONBLOCK` (a FIFO cannot stall a tool) and the
//!   type is checked on the opened descriptor (`fstat`), never on the path.
//! - A regular file with more than one hard link is refused: its other name may be a file
//!   outside the project (a hard link is not a symlink; no path resolution can see it).
//! - `write_file` opens the target with `O_NOFOLLOW` and without `O_TRUNC`: a symlink at the
//!   target is refused (even one pointing inside), and nothing is truncated before the
//!   opened file has passed the checks above. Parent directories are created one at a time
//!   (`mkdirat` in the opened parent), each reopened beneath the root.
//! - Delete removes a symlink itself, never its target, and walks a directory tree through
//!   descriptors opened with `O_NOFOLLOW`.
//!
//! Needs Linux 5.6 or later (`openat2`); elsewhere the file tools answer "unavailable".
//! Commands are another matter: see the module docs of [`crate::local`].

use std::ffi::CStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use tb_core::sandbox::{FileEntry, PathError, SandboxError, WorkspacePath};

const OUTSIDE: &str = "resolves outside the project through a symlink";
const DANGLING: &str = "goes through a symlink that points nowhere";
const IS_SYMLINK: &str = "is a symlink (or a loop of symlinks) the file tools do not follow here";

/// How every path is resolved: beneath the start directory, no magic links.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);
/// `openat2` answers `EAGAIN` when a rename raced with the resolution; it is retried.
const RACE_RETRIES: usize = 16;

/// A workspace directory and the operations confined to it (all blocking, none of them
/// waiting on anything but the disk).
#[derive(Clone, Debug)]
pub(crate) struct Workspace {
    /// Canonical (symlink-free, absolute) path of the workspace root.
    root: PathBuf,
    /// The root, opened once (`O_PATH`): every file tool resolves beneath it.
    dir: Arc<OwnedFd>,
}

impl Workspace {
    /// `root` must exist; it is canonicalised and opened once here.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        let root = fs::canonicalize(root)?;
        let dir = rustix::fs::open(
            &root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Workspace {
            root,
            dir: Arc::new(dir),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn read(&self, path: &WorkspacePath, limit: u64) -> Result<Vec<u8>, SandboxError> {
        let fd = self.open_from_root(path, OFlags::RDONLY | OFlags::NONBLOCK, path)?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| io_error(path, e.into()))?;
        check_regular(path, &stat)?;
        let size = stat.st_size as u64;
        if size > limit {
            return Err(too_large(path, size, limit));
        }
        let mut contents = Vec::with_capacity(size as usize);
        fs::File::from(fd)
            .take(limit + 1)
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
        let fd = self
            .open_beneath(
                parent.as_fd(),
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            )
            .map_err(|e| io_error(path, e))?;
        // Checked on what was opened, before a byte of it changes.
        let stat = rustix::fs::fstat(&fd).map_err(|e| io_error(path, e.into()))?;
        check_regular(path, &stat)?;
        rustix::fs::ftruncate(&fd, 0).map_err(|e| io_error(path, e.into()))?;
        fs::File::from(fd)
            .write_all(contents)
            .map_err(|e| io_error(path, e))
    }

    /// `mkdir -p` inside the workspace.
    pub(crate) fn create_dir_all(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        self.make_dirs(path, path).map(|_| ())
    }

    pub(crate) fn delete(&self, path: &WorkspacePath) -> Result<(), SandboxError> {
        let (parent, name, is_dir) = self
            .entry(path)?
            .ok_or_else(|| SandboxError::Invalid("refusing to delete the project root".into()))?;
        if is_dir {
            remove_tree(parent.as_fd(), name).map_err(|e| io_error(path, e))
        } else {
            rustix::fs::unlinkat(&parent, name, AtFlags::empty())
                .map_err(|e| io_error(path, e.into()))
        }
    }

    pub(crate) fn list(&self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, SandboxError> {
        let fd = self
            .open_beneath(
                self.dir.as_fd(),
                dir.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK,
            )
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) => SandboxError::Invalid(format!("`{dir}` is not a directory")),
                _ => io_error(dir, e),
            })?;
        let mut entries = Vec::new();
        for entry in Dir::read_from(&fd).map_err(|e| io_error(dir, e.into()))? {
            let entry = entry.map_err(|e| io_error(dir, e.into()))?;
            let name = entry.file_name();
            if is_dot(name) {
                continue;
            }
            // Not followed: a link is listed as what it is.
            let stat = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::NOENT) => continue, // deleted meanwhile
                Err(e) => return Err(io_error(dir, e.into())),
            };
            let name = name.to_string_lossy();
            let path = if dir.is_root() {
                name.into_owned()
            } else {
                format!("{}/{name}", dir.as_str())
            };
            let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
            entries.push(FileEntry {
                path,
                is_dir,
                size: if is_dir { 0 } else { stat.st_size as u64 },
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    /// Whether `path` is a directory (not followed through a final symlink).
    pub(crate) fn is_dir(&self, path: &WorkspacePath) -> Result<bool, SandboxError> {
        Ok(self.entry(path)?.is_none_or(|(_, _, is_dir)| is_dir))
    }

    /// The directory holding `path` (opened beneath the workspace), `path`'s name in it, and
    /// whether it is a directory (not followed through a final symlink); `None` for the
    /// root.
    fn entry<'p>(
        &self,
        path: &'p WorkspacePath,
    ) -> Result<Option<(OwnedFd, &'p str, bool)>, SandboxError> {
        let Some((parent, name)) = split_parent(path) else {
            return Ok(None);
        };
        let parent = self.open_from_root(&parent, OFlags::PATH | OFlags::DIRECTORY, path)?;
        let stat = rustix::fs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_error(path, e.into()))?;
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        Ok(Some((parent, name, is_dir)))
    }

    /// `rel` opened beneath the workspace's root ([`Workspace::open_beneath`]); errors name
    /// `reported`.
    fn open_from_root(
        &self,
        rel: &WorkspacePath,
        flags: OFlags,
        reported: &WorkspacePath,
    ) -> Result<OwnedFd, SandboxError> {
        self.open_beneath(self.dir.as_fd(), rel.as_str(), flags)
            .map_err(|e| io_error(reported, e))
    }

    /// `openat2(start, rel, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`; `""` is
    /// `start` itself. Files are created 0644.
    fn open_beneath(&self, start: BorrowedFd<'_>, rel: &str, flags: OFlags) -> io::Result<OwnedFd> {
        let rel = if rel.is_empty() { "." } else { rel };
        // openat2 refuses flags that mean nothing with O_PATH (EINVAL), O_NOCTTY among them.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        let mode = if flags.contains(OFlags::CREATE) {
            Mode::from_raw_mode(0o644)
        } else {
            Mode::empty()
        };
        for _ in 0..RACE_RETRIES {
            match rustix::fs::openat2(start, rel, flags, mode, BENEATH) {
                Err(Errno::AGAIN) => continue,
                other => return other.map_err(Into::into),
            }
        }
        Err(Errno::AGAIN.into())
    }

    /// Creates `dir` and its parents one at a time, each made in its opened parent and
    /// reopened beneath the root; returns the directory (`O_PATH`). `reported` names errors.
    fn make_dirs(
        &self,
        dir: &WorkspacePath,
        reported: &WorkspacePath,
    ) -> Result<OwnedFd, SandboxError> {
        let as_dir = OFlags::PATH | OFlags::DIRECTORY;
        let root = self.dir.as_fd();
        let mut current = self
            .open_beneath(root, "", as_dir)
            .map_err(|e| io_error(reported, e))?;
        let mut prefix = String::new();
        for part in dir.as_str().split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            current = match self.open_beneath(root, &prefix, as_dir) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(&current, part, Mode::from_raw_mode(0o755)) {
                        // EEXIST: made meanwhile, or a symlink is there (reopened below).
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_error(reported, e.into())),
                    }
                    self.open_beneath(root, &prefix, as_dir)
                        .map_err(|e| match e.kind() {
                            io::ErrorKind::NotFound => refuse(reported, DANGLING),
                            _ => io_error(reported, e),
                        })?
                }
                Err(e) => return Err(io_error(reported, e)),
            };
        }
        Ok(current)
    }
}

/// Removes the directory `name` in `parent` and everything in it, through descriptors: a
/// symlink inside is unlinked, never followed.
fn remove_tree(parent: BorrowedFd<'_>, name: impl rustix::path::Arg) -> io::Result<()> {
    let name = name.into_c_str()?;
    let dir = rustix::fs::openat2(
        parent,
        name.as_ref(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    )?;
    let mut children = Vec::new();
    for entry in Dir::read_from(&dir)? {
        let entry = entry?;
        if !is_dot(entry.file_name()) {
            children.push((entry.file_name().to_owned(), entry.file_type()));
        }
    }
    for (child, kind) in children {
        let kind = match kind {
            FileType::Unknown => {
                match rustix::fs::statat(&dir, &child, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            known => known,
        };
        let removed = if kind == FileType::Directory {
            remove_tree(dir.as_fd(), child.as_c_str())
        } else {
            rustix::fs::unlinkat(&dir, &child, AtFlags::empty()).map_err(Into::into)
        };
        match removed {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    rustix::fs::unlinkat(parent, name.as_ref(), AtFlags::REMOVEDIR)?;
    Ok(())
}

fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

/// Only a regular file with a single name passes.
fn check_regular(path: &WorkspacePath, stat: &Stat) -> Result<(), SandboxError> {
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile if stat.st_nlink > 1 => {
            return Err(SandboxError::Invalid(format!(
                "`{path}` has {} hard links; the file tools refuse a file with more than one name, since another may lie outside the project. Delete it, or replace it with a copy of its own (`cp {path} {path}.copy && mv {path}.copy {path}`).",
                stat.st_nlink
            )));
        }
        FileType::RegularFile => return Ok(()),
        FileType::Directory => {
            return Err(SandboxError::Invalid(format!("`{path}` is a directory")));
        }
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Symlink => "a symlink",
        FileType::Unknown => "not a regular file",
    };
    Err(not_regular(path, kind))
}

fn not_regular(path: &WorkspacePath, kind: &str) -> SandboxError {
    SandboxError::Invalid(format!(
        "`{path}` is {kind}; the file tools only read and write regular files and directories. Delete it with delete_file, or leave it alone."
    ))
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
    match e.raw_os_error() {
        Some(libc::EXDEV) => return refuse(path, OUTSIDE),
        Some(libc::ELOOP) => return refuse(path, IS_SYMLINK),
        // Opening a socket, or a FIFO for writing with no reader, without blocking.
        Some(libc::ENXIO) => return not_regular(path, "a FIFO (named pipe) or a socket"),
        Some(libc::EAGAIN) => {
            return SandboxError::Invalid(format!(
                "`{path}` kept changing while it was opened; try again"
            ));
        }
        Some(libc::ENOSYS) => {
            return SandboxError::Unavailable(
                "the file tools need openat2 (Linux 5.6 or later), which this host refuses".into(),
            );
        }
        _ => {}
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
