//! Payloads too large for a DynamoDB item: written to S3 before the transaction that points
//! to them, read back (and checked against their SHA-256) when an item holds a pointer.

use aws_sdk_s3::primitives::ByteStream;
use tb_core::domain::RequestId;
use tb_core::encoding::sha256_hex;
use tb_core::ports::PortError;

use crate::error::classify;
use crate::layout::{self, Item};

/// A JSON payload as it will be stored in an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Payload {
    Inline(String),
    Spilled { key: String, sha256: String },
}

impl Payload {
    /// The item attributes that hold (or point to) the payload.
    pub(crate) fn attributes(&self, item: &mut Item) {
        match self {
            Payload::Inline(json) => {
                item.insert(layout::BODY.into(), layout::s(json.clone()));
            }
            Payload::Spilled { key, sha256 } => {
                item.insert(layout::SPILL.into(), layout::s(key.clone()));
                item.insert(layout::SHA256.into(), layout::s(sha256.clone()));
            }
        }
    }
}

/// The S3 side of spilled payloads.
#[derive(Clone, Debug)]
pub(crate) struct Spill {
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl Spill {
    pub(crate) fn new(s3: aws_sdk_s3::Client, bucket: String) -> Self {
        Spill { s3, bucket }
    }

    /// Uploads `json` (the payload of item `sk` of request `id`) and returns the pointer.
    /// The key is content-addressed, so uploading the same payload twice is harmless.
    pub(crate) async fn put(
        &self,
        id: &RequestId,
        sk: &str,
        json: &str,
    ) -> Result<Payload, PortError> {
        let sha256 = sha256_hex(json.as_bytes());
        let key = layout::spill_key(id, sk, &sha256);
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(json.as_bytes().to_vec()))
            .send()
            .await
            .map_err(|e| {
                classify(
                    &format!("spilling {sk} of {id} to s3://{}/{key}", self.bucket),
                    &e,
                )
            })?;
        Ok(Payload::Spilled { key, sha256 })
    }

    /// The JSON payload of an item: its `body`, or the spilled object its `spill` names.
    pub(crate) async fn payload(&self, item: &Item) -> Result<String, PortError> {
        if let Some(body) = item.get(layout::BODY) {
            return body.as_s().cloned().map_err(|_| {
                PortError::Permanent(format!(
                    "{} of {} is not a string",
                    layout::BODY,
                    describe(item)
                ))
            });
        }
        let Some(Ok(key)) = item.get(layout::SPILL).map(|v| v.as_s()) else {
            return Err(PortError::Permanent(format!(
                "{} has neither `{}` nor `{}`",
                describe(item),
                layout::BODY,
                layout::SPILL
            )));
        };
        let what = format!("reading the spilled payload s3://{}/{key}", self.bucket);
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    // The item is committed, so its payload was uploaded first: this is loss.
                    PortError::Permanent(format!("{what}: the object is missing"))
                } else {
                    classify(&what, &e)
                }
            })?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| PortError::Transient(format!("{what}: {e}")))?
            .into_bytes();
        if let Some(Ok(want)) = item.get(layout::SHA256).map(|v| v.as_s())
            && sha256_hex(&bytes) != *want
        {
            return Err(PortError::Permanent(format!(
                "{what}: its SHA-256 does not match the item's"
            )));
        }
        String::from_utf8(bytes.to_vec())
            .map_err(|_| PortError::Permanent(format!("{what}: not UTF-8")))
    }
}

/// `REQ#<id>/<sk>`, for error messages.
pub(crate) fn describe(item: &Item) -> String {
    let get = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
            .unwrap_or("?")
    };
    format!("{}/{}", get(layout::PK), get(layout::SK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
