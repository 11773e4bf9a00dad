//! The table's item layout: keys, attribute names and what goes where.
//!
//! One table, key `pk` (S) + `sk` (S), TTL attribute `ttl`. Per request `<id>`:
//!
//! | pk | sk | attributes |
//! |---|---|---|
//! | `REQ#<id>` | `STATE` | `body` (the `RequestRecord` as JSON) or `spill`; `version` N, `phase` S, `owner` S, `created_at_ms` N, `updated_at_ms` N; `active` S (= the phase, only while not terminal); `ttl` N (epoch seconds, only once terminal) |
//! | `REQ#<id>` | `MSG#<index, 9 digits>` | `body` (a `Message` as JSON) or `spill`; `ttl` N (60 days after writing) |
//! | `REQ#<id>` | `CALL#<iteration, 9 digits>` | `body` (a `ModelCall` as JSON) or `spill`; `ttl` N (60 days after writing) |
//!
//! The `STATE` item also carries `project` S, and `active_owner` S (= the owner, only while
//! not terminal). Three global secondary indexes (projection ALL) select `STATE` items
//! without scanning the table; no other item carries their keys:
//!
//! | index | partition key | sort key | holds |
//! |---|---|---|---|
//! | `by_owner` | `owner` | `created_at_ms` | every request |
//! | `by_project` | `project` | `created_at_ms` | every request |
//! | `active` | `active_owner` | `created_at_ms` | requests not finished (sparse) |
//!
//! Per user: `pk = USER#<id>`, `sk = SLOTS` (the slot counter).
//!
//! A spilled payload lives in S3 under `spill/<id>/<sk>-<sha256 prefix>.json`; the item holds
//! the key in `spill` and the payload's SHA-256 (hex) in `sha256`. The key is
//! content-addressed so a fenced-out writer that uploads before its transaction fails can
//! never overwrite a payload a committed item points to.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;
use tb_core::domain::{Phase, RequestId};

pub const PK: &str = "pk";
/// Per user: `pk = USER#<id>`, `sk = SLOTS`, `slots_active` N = requests holding a
/// concurrent-request slot.
pub const SLOTS_SK: &str = "SLOTS";
pub const ACTIVE_SLOTS: &str = "slots_active";

pub fn user_pk(owner: &tb_core::domain::UserId) -> String {
    format!("USER#{owner}")
}
pub const SK: &str = "sk";
/// The payload as JSON, when stored inline.
pub const BODY: &str = "body";
/// The S3 key of the payload, when spilled.
pub const SPILL: &str = "spill";
/// The SHA-256 (hex) of a spilled payload.
pub const SHA256: &str = "sha256";
pub const VERSION: &str = "version";
pub const PHASE: &str = "phase";
pub const OWNER: &str = "owner";
pub const CREATED_AT_MS: &str = "created_at_ms";
pub const UPDATED_AT_MS: &str = "updated_at_ms";
pub const PROJECT: &str = "project";
/// The owner, present only while the request is not terminal: the key of the sparse
/// [`ACTIVE_INDEX`].
pub const ACTIVE_OWNER: &str = "active_owner";
/// GSI (`owner`, `created_at_ms`): a user's requests, newest first.
pub const OWNER_INDEX: &str = "by_owner";
/// GSI (`project`, `created_at_ms`): a project's requests, newest first.
pub const PROJECT_INDEX: &str = "by_project";
/// Sparse GSI (`active_owner`, `created_at_ms`): the requests not finished, by owner.
pub const ACTIVE_INDEX: &str = "active";
/// Present (holding the phase) only while the request is not terminal: a sparse attribute
/// kept for readers of the raw table (the sparse index is keyed on [`ACTIVE_OWNER`]).
pub const ACTIVE: &str = "active";
/// The table's TTL attribute: epoch seconds, set on the `STATE` item once terminal.
pub const TTL: &str = "ttl";

pub const STATE_SK: &str = "STATE";
pub const MSG_PREFIX: &str = "MSG#";
pub const CALL_PREFIX: &str = "CALL#";
pub const SPILL_PREFIX: &str = "spill/";

/// How long a finished request stays in the table.
pub const RETENTION_SECS: u64 = 30 * 24 * 3600;
/// Message and call items expire this long after they were written: an item's end is not
/// known when it is written, and requests last hours at most, so this outlives the `STATE`
/// item's expiry. (The bucket's `spill/` lifecycle must be longer still.)
pub const ITEM_RETENTION_SECS: u64 = 60 * 24 * 3600;

/// The `ttl` of a message or call item written now.
pub fn item_expiry_secs() -> u64 {
    tb_core::clock::now_ms() / 1000 + ITEM_RETENTION_SECS
}

/// DynamoDB's limit on the items of one transaction.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// DynamoDB's limit on the aggregate size of one transaction is 4 MB; we stay below it.
pub const TRANSACTION_BYTES_BUDGET: usize = 3_500_000;

pub type Item = HashMap<String, AttributeValue>;

pub fn request_pk(id: &RequestId) -> String {
    format!("REQ#{id}")
}

pub fn message_sk(index: usize) -> String {
    format!("{MSG_PREFIX}{index:09}")
}

pub fn call_sk(iteration: u32) -> String {
    format!("{CALL_PREFIX}{iteration:09}")
}

/// Where a spilled payload goes. `sha256` is the payload's hex digest.
pub fn spill_key(id: &RequestId, sk: &str, sha256: &str) -> String {
    format!(
        "{SPILL_PREFIX}{id}/{sk}-{}.json",
        &sha256[..16.min(sha256.len())]
    )
}

/// The phase as stored (`running`, `succeeded`, ...): its serde name.
pub fn phase_name(phase: Phase) -> String {
    match serde_json::to_value(phase) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{phase:?}").to_lowercase(),
    }
}

/// The `ttl` of a request last updated at `updated_at_ms` in a terminal phase.
pub fn expiry_secs(updated_at_ms: u64) -> u64 {
    updated_at_ms / 1000 + RETENTION_SECS
}

/// DynamoDB's billed size of an item (attribute names plus values), the measure of
/// "bytes written". Numbers are counted by their decimal text, a close upper bound.
pub fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) | AttributeValue::Ns(v) => v.iter().map(String::len).sum(),
        AttributeValue::L(v) => 3 + v.iter().map(|x| 1 + value_size(x)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, x)| 1 + k.len() + value_size(x))
                .sum::<usize>()
        }
        _ => 0,
    }
}

pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_are_zero_padded_so_they_sort_in_order() {
        assert_eq!(message_sk(7), "MSG#000000007");
        assert_eq!(call_sk(12), "CALL#000000012");
        assert!(message_sk(9) < message_sk(10) && message_sk(99) < message_sk(100));
    }

    #[test]
    fn phases_are_stored_by_their_serde_names() {
        assert_eq!(phase_name(Phase::Running), "running");
        assert_eq!(phase_name(Phase::Cancelled), "cancelled");
    }

    #[test]
    fn spill_keys_are_content_addressed() {
        let id = RequestId::parse("req_1").unwrap();
        let a = spill_key(&id, &message_sk(3), &"ab".repeat(32));
        assert_eq!(a, "spill/req_1/MSG#000000003-abababababababab.json");
        assert_ne!(a, spill_key(&id, &message_sk(3), &"cd".repeat(32)));
    }

    #[test]
    fn item_size_counts_names_and_values() {
        let item = Item::from([
            ("pk".to_string(), s("REQ#x")),
            ("version".to_string(), n(12)),
        ]);
        assert_eq!(item_size(&item), 2 + 5 + 7 + 2);
    }

    #[test]
    fn finished_requests_expire_thirty_days_after_their_last_update() {
        assert_eq!(expiry_secs(1_000_500), 1_000 + 30 * 86_400);
    }
}
