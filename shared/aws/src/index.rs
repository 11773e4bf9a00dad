//! Reads of the table's global secondary indexes (keys in [`crate::layout`]): the listings
//! of [`DynamoStore`], each reading only the `STATE` items it returns.
//!
//! An index is eventually consistent (DynamoDB does not offer strongly consistent reads on a
//! GSI): a write shows in it typically within a second. Callers that must not act on a stale
//! record load it by key first; ARCHITECTURE.md ("Access patterns") says where it matters.
//!
//! The IAM grants for these calls are on the indexes' ARN (`<table>/index/*`), which
//! `infra/check_iam.py` derives from this file.

use tb_core::ports::PortError;
use tb_pipeline::RequestRecord;

use crate::layout::{self, Item, s};
use crate::store::DynamoStore;

impl DynamoStore {
    /// At most `limit` `STATE` items of `index` whose partition key `key` is `value`, newest
    /// first (the indexes sort on `created_at_ms`), decoded.
    pub(crate) async fn query_index(
        &self,
        index: &str,
        key: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        let query = self
            .dynamo
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("#key = :value")
            .expression_attribute_names("#key", key)
            .expression_attribute_values(":value", s(value))
            .scan_index_forward(false);
        let items = self
            .query_items(&format!("querying index {index} for {value}"), query, limit)
            .await?;
        self.decode_all(items).await
    }

    /// Every item of `index` (for a sparse index, only the items that carry its key).
    pub(crate) async fn scan_index(&self, index: &str) -> Result<Vec<RequestRecord>, PortError> {
        let pages = self
            .dynamo
            .scan()
            .table_name(&self.table)
            .index_name(index)
            .into_paginator()
            .send();
        let items = self
            .read_pages(&format!("scanning index {index}"), pages, usize::MAX, false)
            .await?;
        self.decode_all(items).await
    }

    async fn decode_all(&self, items: Vec<Item>) -> Result<Vec<RequestRecord>, PortError> {
        let mut records = Vec::with_capacity(items.len());
        for item in &items {
            // Only `STATE` items carry the indexes' keys; anything else is not a request.
            if item
                .get(layout::SK)
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                != Some(layout::STATE_SK)
            {
                continue;
            }
            records.push(self.decode(item).await?);
        }
        Ok(records)
    }
}
