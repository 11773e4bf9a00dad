//! [`S3Archive`]: finished project snapshots and build artifacts in S3, each object carrying
//! its SHA-256 as metadata (`sha256`, hex) and as S3's own checksum, so S3 rejects a body
//! that does not match and re-storing identical bytes is a cheap HEAD.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use tb_core::ports::{Archive, PortError};

use crate::error::classify;
use crate::spill::{hex, sha256_hex};

/// The metadata key holding the object's SHA-256 (hex).
pub const SHA256_METADATA: &str = "sha256";

#[derive(Clone, Debug)]
pub struct S3Archive {
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Archive {
    pub fn new(s3: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        S3Archive {
            s3,
            bucket: bucket.into(),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The `sha256` metadata of `key`, or `None` when there is no such object.
    async fn stored_sha256(&self, key: &str) -> Result<Option<String>, PortError> {
        match self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(
                head.metadata()
                    .and_then(|m| m.get(SHA256_METADATA))
                    .cloned()
                    .unwrap_or_default(),
            )),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(classify(
                &format!("checking s3://{}/{key}", self.bucket),
                &e,
            )),
        }
    }
}

#[async_trait]
impl Archive for S3Archive {
    async fn put(&self, key: &str, bytes: &[u8], sha256: &str) -> Result<(), PortError> {
        let digest = Sha256::digest(bytes);
        let actual = hex(&digest);
        if !actual.eq_ignore_ascii_case(sha256) {
            return Err(PortError::Permanent(format!(
                "archiving {key}: the bytes hash to {actual}, not the given {sha256}"
            )));
        }
        if self.stored_sha256(key).await?.as_deref() == Some(actual.as_str()) {
            tracing::debug!(key, "already archived with the same SHA-256");
            return Ok(());
        }
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .metadata(SHA256_METADATA, &actual)
            .checksum_sha256(BASE64.encode(digest))
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .map_err(|e| classify(&format!("archiving s3://{}/{key}", self.bucket), &e))?;
        Ok(())
    }

    /// The object's bytes, checked against its `sha256` metadata when it has one.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, PortError> {
        let what = format!("reading s3://{}/{key}", self.bucket);
        let out = match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(classify(&what, &e)),
        };
        let want = out.metadata().and_then(|m| m.get(SHA256_METADATA)).cloned();
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| PortError::Transient(format!("{what}: {e}")))?
            .into_bytes()
            .to_vec();
        if let Some(want) = want
            && !want.is_empty()
            && !sha256_hex(&bytes).eq_ignore_ascii_case(&want)
        {
            return Err(PortError::Permanent(format!(
                "{what}: the bytes do not match their sha256 metadata"
            )));
        }
        Ok(Some(bytes))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, PortError> {
        crate::archive_delete::delete_prefix(&self.s3, &self.bucket, prefix).await
    }
}
