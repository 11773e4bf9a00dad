//! The archive as a directory (the embedded default's stand-in for S3).

use std::path::PathBuf;

use async_trait::async_trait;
use tb_core::ids::sha256_hex;
use tb_core::ports::{Archive, PortError};

pub struct DirArchive {
    root: PathBuf,
}

impl DirArchive {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirArchive { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, PortError> {
        let safe = key
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\\'));
        if !safe {
            return Err(PortError::Permanent(format!("bad archive key `{key}`")));
        }
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl Archive for DirArchive {
    async fn put(&self, key: &str, bytes: &[u8], sha256: &str) -> Result<(), PortError> {
        let path = self.path(key)?;
        if let Ok(existing) = tokio::fs::read(&path).await
            && sha256_hex(&existing) == sha256
        {
            return Ok(());
        }
        let io = |e: std::io::Error| PortError::Transient(format!("archive {key}: {e}"));
        tokio::fs::create_dir_all(path.parent().expect("a key has a parent"))
            .await
            .map_err(io)?;
        // Write then rename: a reader never sees half an archive.
        let tmp = path.with_extension("partial");
        tokio::fs::write(&tmp, bytes).await.map_err(io)?;
        tokio::fs::write(path.with_extension("sha256"), sha256)
            .await
            .map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PortError::Transient(format!("archive {key}: {e}"))),
        }
    }

    /// Removes the directory `prefix` names (a prefix ends with `/`), counting its files.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, PortError> {
        let dir = self.path(prefix.trim_end_matches('/'))?;
        let io = |e: std::io::Error| PortError::Transient(format!("archive {prefix}: {e}"));
        let mut files = 0u64;
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let mut entries = match tokio::fs::read_dir(&d).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(io)? {
                if entry.file_type().await.map_err(io)?.is_dir() {
                    stack.push(entry.path());
                } else if entry.path().extension().is_none_or(|x| x != "sha256") {
                    files += 1;
                }
            }
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(files),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deleting_a_prefix_removes_its_objects_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirArchive::new(dir.path());
        for key in [
            "projects/p1/current.json",
            "projects/p1/requests/r1/source.tar.gz",
            "projects/p10/current.json",
        ] {
            a.put(key, b"x", &sha256_hex(b"x")).await.unwrap();
        }
        assert_eq!(a.delete_prefix("projects/p1/").await.unwrap(), 2);
        assert_eq!(a.get("projects/p1/current.json").await.unwrap(), None);
        assert!(a.get("projects/p10/current.json").await.unwrap().is_some());
        assert_eq!(a.delete_prefix("projects/p1/").await.unwrap(), 0);
        assert!(a.delete_prefix("projects/../x/").await.is_err());
    }
}
