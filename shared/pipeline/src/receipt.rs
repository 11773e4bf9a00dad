//! The verification receipt: what was deployed and the proof that it works, signed.
//!
//! After `verify` passes, the finalizer's `receipt` step writes a JSON document:
//!
//! ```json
//! {"receipt": {"format": 1, "request_id": "req_…", "project_id": "prj_…",
//!              "commit_sha": "…", "deployment": {"url": "…", "version": "sha256:… or a local path"},
//!              "migrations": [{"name": "001_todos.sql", "sha256": "…", "applied_now": true}],
//!              "checks": [{"method": "GET", "path": "/api/health", "status": 200,
//!                          "expected_status": 200, "passed": true, "latency_ms": 12}],
//!              "verified": true, "verified_at_ms": 1700000000000,
//!              "repair_rounds": 1,
//!              "cost_micro_usd": {"agent": 81234, "repair_round_1": 9000, "total": 90234}},
//!  "signature": {"alg": "HMAC-SHA256", "value": "<hex>"}}
//! ```
//!
//! The signature is the hex HMAC-SHA256, under the platform's key (the one that signs
//! callbacks, `TB_CALLBACK_SECRET`), of the `receipt` object serialised as compact JSON. It
//! is archived beside the request's source (`…/receipt.json`), committed to the project's
//! repository ([`commit`]), returned in the request's result and in its callback;
//! `turbobackend receipt verify FILE` checks it ([`verify_document`]). The document is
//! built only from what the steps recorded, so a retried step writes the same bytes (and
//! commits nothing new).
//!
//! **In the repository.** A signed receipt is committed as `.turbobackend/receipt.json`
//! ([`RECEIPT_PATH`]) on `main`, as a new commit ("Verification receipt for request
//! <id>") whose parent is the source commit the receipt names and whose tree is that
//! commit's plus the file ([`CodeHost::commit_file`]). A fast-forward only: when `main`
//! has moved past the source commit (a newer request pushed meanwhile) it is not
//! committed, and the step's note says so; the archived copy and the record keep it. Later
//! pushes carry `.turbobackend/` over, so the latest receipt stays in the tree until the
//! next one replaces it. Unsigned receipts are never committed.
//!
//! [`CodeHost::commit_file`]: tb_core::ports::CodeHost::commit_file

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tb_core::encoding::sha256_hex;
use tb_core::ports::{CodeHost, FileCommit, Migration, PortError};
use tb_core::sandbox::WorkspacePath;

use crate::record::RequestRecord;

/// The key receipts are signed with. `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        SigningKey(key.into())
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

/// The receipt of `rec` (see the module documentation), from its recorded steps and the
/// migrations of its archived source.
pub fn build(rec: &RequestRecord, migrations: &[Migration]) -> Value {
    let steps = &rec.steps;
    let applied_now = steps.applied_now();
    let migrations: Vec<Value> = migrations
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "sha256": sha256_hex(m.sql.as_bytes()),
                "applied_now": applied_now.contains(&m.name),
            })
        })
        .collect();
    let verified = steps.verified();
    let checks: Vec<Value> = verified
        .map(|v| v.calls.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "method": c.method, "path": c.path, "status": c.status,
                "expected_status": c.expected_status, "passed": c.passed,
                "error": c.error, "latency_ms": c.latency_ms,
            })
        })
        .collect();
    // Cost by phase: the agent until the first failed verification, then each repair round.
    let total = rec.agent.cost.micros();
    let starts: Vec<i64> = steps
        .repairs
        .iter()
        .map(|r| r.cost_micro_usd_before)
        .collect();
    let mut cost = serde_json::Map::new();
    let mut bounds = starts.clone();
    bounds.push(total);
    cost.insert("agent".into(), json!(bounds[0]));
    for (k, w) in bounds.windows(2).enumerate() {
        cost.insert(format!("repair_round_{}", k + 1), json!(w[1] - w[0]));
    }
    cost.insert("total".into(), json!(total));
    let deployment = steps.deployment();
    json!({
        "format": 1,
        "request_id": rec.id,
        "project_id": rec.project,
        "commit_sha": steps.commit_sha(),
        "deployment": {"url": deployment.map(|d| &d.url), "version": deployment.map(|d| &d.version)},
        "database_skipped": steps.database_skipped(),
        "migrations": migrations,
        "checks": checks,
        "declared_checks": verified.map(|v| v.declared),
        "verified": verified.map(|v| v.passed),
        "verified_at_ms": verified.map(|v| v.at_ms),
        "repair_rounds": starts.len(),
        "cost_micro_usd": cost,
    })
}

/// Where a signed receipt is committed in the project's repository.
pub const RECEIPT_PATH: &str = ".turbobackend/receipt.json";

/// Commits the signed receipt `bytes` of `rec` on top of its source commit (see the module
/// documentation): the commit that holds it (`None`: not committed), and what happened, for
/// the step's note.
pub async fn commit(
    code_host: &dyn CodeHost,
    rec: &RequestRecord,
    bytes: &[u8],
) -> Result<(Option<String>, String), PortError> {
    let Some(source) = rec.steps.commit_sha() else {
        return Ok((None, "not committed: no source commit".into()));
    };
    let path = WorkspacePath::parse(RECEIPT_PATH).expect("a valid path");
    let message = format!("Verification receipt for request {}", rec.id);
    Ok(
        match code_host
            .commit_file(&rec.project, source, &path, bytes, &message)
            .await?
        {
            FileCommit::Committed { pushed } => {
                let said = format!("committed as {RECEIPT_PATH} in {}", pushed.commit_sha);
                (Some(pushed.commit_sha), said)
            }
            FileCommit::BranchMoved { head, .. } => (
                None,
                format!(
                    "not committed to the repository: main moved past {source} to {head} (a newer push)"
                ),
            ),
        },
    )
}

/// Signs `receipt`: the document that is archived and returned.
pub fn sign(key: &SigningKey, receipt: Value) -> Value {
    let value = mac(key, &receipt);
    json!({"receipt": receipt, "signature": {"alg": "HMAC-SHA256", "value": value}})
}

fn mac(key: &SigningKey, receipt: &Value) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes any key length");
    m.update(receipt.to_string().as_bytes());
    tb_core::encoding::hex(&m.finalize().into_bytes())
}

/// Why a signed receipt does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("not a receipt: {0}")]
    Malformed(String),
    #[error("the signature does not match: the receipt was changed, or signed with another key")]
    BadSignature,
}

/// Checks a signed receipt document (the text of `receipt.json`) against `key`; the
/// receipt when it verifies.
pub fn verify_document(key: &SigningKey, text: &str) -> Result<Value, ReceiptError> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    let receipt = doc
        .get("receipt")
        .filter(|r| r.is_object())
        .ok_or_else(|| ReceiptError::Malformed("no `receipt` object".into()))?;
    if doc["signature"]["alg"] != "HMAC-SHA256" {
        return Err(ReceiptError::Malformed("no HMAC-SHA256 `signature`".into()));
    }
    let given = doc["signature"]["value"]
        .as_str()
        .ok_or_else(|| ReceiptError::Malformed("no signature value".into()))?;
    let mut m = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes any key length");
    m.update(receipt.to_string().as_bytes());
    let given = decode_hex(given).ok_or(ReceiptError::BadSignature)?;
    // Constant-time comparison.
    m.verify_slice(&given)
        .map_err(|_| ReceiptError::BadSignature)?;
    Ok(receipt.clone())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_receipt_verifies_and_any_change_or_other_key_does_not() {
        let key = SigningKey::new("platform-key");
        let receipt = json!({"format": 1, "request_id": "req_1", "checks": [{"path": "/api/health", "status": 200, "passed": true}], "cost_micro_usd": {"agent": 5}});
        let text = serde_json::to_string_pretty(&sign(&key, receipt.clone())).unwrap();
        assert_eq!(verify_document(&key, &text), Ok(receipt));
        let tampered = text.replace("\"status\": 200", "\"status\": 201");
        assert_ne!(tampered, text);
        assert_eq!(
            verify_document(&key, &tampered),
            Err(ReceiptError::BadSignature)
        );
        assert_eq!(
            verify_document(&SigningKey::new("another"), &text),
            Err(ReceiptError::BadSignature)
        );
        assert!(matches!(
            verify_document(&key, "{\"receipt\": 1}"),
            Err(ReceiptError::Malformed(_))
        ));
    }
}
