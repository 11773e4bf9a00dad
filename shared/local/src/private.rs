//! Secrets at rest: the data directory is readable by its owner only (0700), and files that
//! hold secrets (the SQLite database and its `-wal`/`-shm`, the callback secret) are 0600.
//! Applied when they are created and again at every start, so a data directory made by an
//! older version, or loosened by hand, is tightened.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file that holds a secret.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) if missing, and makes it 0700.
pub fn secure_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    set_mode(dir, DIR_MODE)
}

/// Makes `file` 0600 if it exists.
pub fn secure_file(file: &Path) -> io::Result<()> {
    match set_mode(file, FILE_MODE) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Writes a new file that is 0600 from its first byte; fails if it exists.
pub fn write_new_secret(file: &Path, contents: &[u8]) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(file)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// The database file and the two SQLite makes beside it in WAL mode.
pub fn sqlite_files(db: &Path) -> [std::path::PathBuf; 3] {
    let with = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    // Not through a symlink: the mode belongs to what is in the data directory.
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{} is a symlink; refusing to change the mode of its target",
            path.display()
        )));
    }
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn existing_files_and_directories_are_tightened_and_new_secrets_start_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        secure_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);

        let old = dir.join("old-secret");
        fs::write(&old, "x").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        secure_file(&old).unwrap();
        assert_eq!(mode(&old), 0o600);
        secure_file(&dir.join("missing")).unwrap();

        let new = dir.join("new-secret");
        write_new_secret(&new, b"s").unwrap();
        assert_eq!(mode(&new), 0o600);
        assert!(write_new_secret(&new, b"again").is_err());
        assert_eq!(fs::read(&new).unwrap(), b"s");
    }
}
