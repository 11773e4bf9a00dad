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
}
