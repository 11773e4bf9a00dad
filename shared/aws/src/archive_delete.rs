//! Removing a deleted project's objects: `ListObjectsV2` under its prefix, then
//! `DeleteObject` on each key. Kept apart from [`crate::archive`] because only the finalizer
//! removes objects; `infra/check_iam.py` grants `s3:DeleteObject` from the calls made here.
//! (One `DeleteObject` per key rather than `DeleteObjects`: a project holds a few objects per
//! request, and both are authorised by `s3:DeleteObject`.)

use tb_core::ports::PortError;

use crate::error::classify;

/// Deletes every object of `bucket` under `prefix`; returns how many there were. Deleting a
/// key that is already gone succeeds (S3 DeleteObject answers 204 either way), so a
/// redelivered removal is harmless.
pub(crate) async fn delete_prefix(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<u64, PortError> {
    let mut removed = 0u64;
    let mut token: Option<String> = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(|e| classify(&format!("listing s3://{bucket}/{prefix}"), &e))?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            s3.delete_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| classify(&format!("deleting s3://{bucket}/{key}"), &e))?;
            removed += 1;
        }
        match page.next_continuation_token() {
            Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
            _ => return Ok(removed),
        }
    }
}
