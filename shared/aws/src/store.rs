//! [`DynamoStore`]: request state and conversations in one DynamoDB table (layout in
//! [`crate::layout`]), with payloads too large for an item spilled to S3.
//!
//! Every write is one `TransactWriteItems`: the `STATE` item, conditional on the version the
//! writer read, plus the new `MSG#`/`CALL#` items, each conditional on not existing yet. So a
//! commit is all-or-nothing, a fenced-out writer changes nothing, and a commit writes only
//! what it appends: its cost does not grow with the conversation.
//!
//! Listings never scan the table: they query (or, for the sweeper, scan) a global secondary
//! index whose items are the `STATE` items it selects (see [`crate::layout`] and
//! [`crate::index`]), so what they read does not grow with the table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::QueryOutput;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::scan::ScanOutput;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use aws_smithy_async::future::pagination_stream::PaginationStream;
use serde::de::DeserializeOwned;
use tb_core::domain::{ProjectId, RequestId, UserId};
use tb_core::ports::PortError;
use tb_core::{Message, ModelCall};
use tb_pipeline::{Appended, Created, RequestRecord, StateStore};

use crate::error::{TransactionFailure, classify, transaction_failure};
use crate::layout::{self, Item, n, s};
use crate::spill::{Payload, Spill, describe};

/// Gives back one of `owner`'s slots (`ADD -1`, conditional on the counter being above
/// zero) on `builder`: an `UpdateItem` call or the `Update` of a transaction, which have
/// the same methods but no common type.
macro_rules! release_one_slot {
    ($builder:expr, $table:expr, $owner:expr) => {
        $builder
            .table_name($table)
            .key(layout::PK, s(layout::user_pk($owner)))
            .key(layout::SK, s(layout::SLOTS_SK))
            .update_expression("ADD #active :minus")
            .condition_expression("#active > :zero")
            .expression_attribute_names("#active", layout::ACTIVE_SLOTS)
            .expression_attribute_values(
                ":minus",
                aws_sdk_dynamodb::types::AttributeValue::N("-1".into()),
            )
            .expression_attribute_values(":zero", n(0))
    };
}

/// Payloads (messages, calls) above this many bytes of JSON go to S3.
pub const DEFAULT_SPILL_THRESHOLD: usize = 64 * 1024;
/// A `STATE` body above this many bytes goes to S3 (DynamoDB's item limit is 400 KB).
pub const DEFAULT_STATE_SPILL_THRESHOLD: usize = 300 * 1024;

/// Totals of what a store has written in successful transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub transactions: u64,
    pub items: u64,
    /// The DynamoDB size of the items put (names plus values; see [`layout::item_size`]).
    pub item_bytes: u64,
    pub spilled_objects: u64,
    pub spilled_bytes: u64,
    /// On-demand write request units these writes are billed, by DynamoDB's rules: a
    /// transactional put costs 2 per KB (rounded up) of the item; each index holding the
    /// `STATE` item costs 1 per KB more (an upper bound: leaving the `active` index is counted
    /// at every terminal write, though only the first removes it); a slot update costs 1.
    pub write_units: u64,
}

/// A page of a `Query` or a `Scan`.
pub(crate) trait Page {
    /// How many items the page read, and the items it returned.
    fn into_items(self) -> (i32, Vec<Item>);
}

impl Page for QueryOutput {
    fn into_items(self) -> (i32, Vec<Item>) {
        (self.scanned_count, self.items.unwrap_or_default())
    }
}

impl Page for ScanOutput {
    fn into_items(self) -> (i32, Vec<Item>) {
        (self.scanned_count, self.items.unwrap_or_default())
    }
}

/// Kilobytes (1,024 bytes) rounded up, at least one: DynamoDB's write unit of size.
fn write_units_of(bytes: usize) -> u64 {
    bytes.div_ceil(1024).max(1) as u64
}

/// Totals of what a store has read: requests made and items DynamoDB read for them (its
/// `ScannedCount` for queries and scans, one per `GetItem`), the measure reads are billed by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub requests: u64,
    pub items: u64,
    /// Half read request units, by DynamoDB's rules: per request, the bytes read rounded up
    /// to 4 KB, at least 4 KB; a strongly consistent read costs 1 unit per 4 KB (2 halves),
    /// an eventually consistent one (every index read) half that.
    pub half_read_units: u64,
}

impl std::ops::Sub for ReadStats {
    type Output = ReadStats;
    fn sub(self, earlier: ReadStats) -> ReadStats {
        ReadStats {
            requests: self.requests - earlier.requests,
            items: self.items - earlier.items,
            half_read_units: self.half_read_units - earlier.half_read_units,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    read_requests: AtomicU64,
    items_read: AtomicU64,
    half_read_units: AtomicU64,
    write_units: AtomicU64,
    transactions: AtomicU64,
    items: AtomicU64,
    item_bytes: AtomicU64,
    spilled_objects: AtomicU64,
    spilled_bytes: AtomicU64,
}

/// The DynamoDB (+ S3) implementation of [`StateStore`]. Cheap to clone; clones share their
/// write counters.
#[derive(Clone, Debug)]
pub struct DynamoStore {
    pub(crate) dynamo: aws_sdk_dynamodb::Client,
    spill: Spill,
    pub(crate) table: String,
    spill_threshold: usize,
    state_spill_threshold: usize,
    counters: Arc<Counters>,
}

/// One item to put in a transaction, before its payload is placed.
struct Draft {
    sk: String,
    json: String,
    attributes: Item,
    condition: Condition,
}

enum Condition {
    /// The item must not exist yet.
    Absent,
    /// The stored `version` must be this.
    Version(u64),
}

fn to_json<T: serde::Serialize>(what: &str, value: &T) -> Result<String, PortError> {
    serde_json::to_string(value)
        .map_err(|e| PortError::Permanent(format!("serializing {what}: {e}")))
}

impl DynamoStore {
    /// Opens the connection every invocation needs, at start-up: one `GetItem` of a key no
    /// request has, bounded to two seconds. On Lambda the first call on a new client pays
    /// for credentials, endpoint resolution and the TLS handshake; made during init it
    /// runs at full CPU and off the first request's path. Errors are only logged: the first
    /// real call then pays instead.
    pub async fn warm(&self) {
        let get = self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .key(
                layout::PK,
                aws_sdk_dynamodb::types::AttributeValue::S("WARM".into()),
            )
            .key(
                layout::SK,
                aws_sdk_dynamodb::types::AttributeValue::S("WARM".into()),
            )
            .send();
        match tokio::time::timeout(std::time::Duration::from_secs(2), get).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                "warming the DynamoDB connection failed: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            ),
            Err(_) => tracing::warn!("warming the DynamoDB connection timed out"),
        }
    }

    /// A store over `table`, spilling large payloads to `bucket` (under `spill/`).
    pub fn new(
        dynamo: aws_sdk_dynamodb::Client,
        s3: aws_sdk_s3::Client,
        table: impl Into<String>,
        bucket: impl Into<String>,
    ) -> Self {
        DynamoStore {
            dynamo,
            spill: Spill::new(s3, bucket.into()),
            table: table.into(),
            spill_threshold: DEFAULT_SPILL_THRESHOLD,
            state_spill_threshold: DEFAULT_STATE_SPILL_THRESHOLD,
            counters: Arc::default(),
        }
    }

    /// Messages and calls whose JSON exceeds `bytes` go to S3.
    pub fn with_spill_threshold(mut self, bytes: usize) -> Self {
        self.spill_threshold = bytes;
        self
    }

    /// A `STATE` body exceeding `bytes` goes to S3 (keep it well below 400 KB).
    pub fn with_state_spill_threshold(mut self, bytes: usize) -> Self {
        self.state_spill_threshold = bytes;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Bytes of DynamoDB items written so far by successful commits and creates.
    pub fn bytes_written(&self) -> u64 {
        self.counters.item_bytes.load(Ordering::Relaxed)
    }

    pub fn write_stats(&self) -> WriteStats {
        let c = &self.counters;
        WriteStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            items: c.items.load(Ordering::Relaxed),
            item_bytes: c.item_bytes.load(Ordering::Relaxed),
            spilled_objects: c.spilled_objects.load(Ordering::Relaxed),
            spilled_bytes: c.spilled_bytes.load(Ordering::Relaxed),
            write_units: c.write_units.load(Ordering::Relaxed),
        }
    }

    /// Reads made so far (every clone counts into the same totals).
    pub fn read_stats(&self) -> ReadStats {
        let c = &self.counters;
        ReadStats {
            requests: c.read_requests.load(Ordering::Relaxed),
            items: c.items_read.load(Ordering::Relaxed),
            half_read_units: c.half_read_units.load(Ordering::Relaxed),
        }
    }

    /// Counts one read request that read `scanned` items, these `returned` ones among them.
    pub(crate) fn count_read(&self, scanned: i32, returned: &[Item], consistent: bool) {
        let c = &self.counters;
        c.read_requests.fetch_add(1, Ordering::Relaxed);
        c.items_read
            .fetch_add(u64::try_from(scanned).unwrap_or(0), Ordering::Relaxed);
        let bytes: usize = returned.iter().map(layout::item_size).sum();
        let units = bytes.div_ceil(4096).max(1) as u64;
        c.half_read_units.fetch_add(
            if consistent { 2 * units } else { units },
            Ordering::Relaxed,
        );
    }

    /// The items of `pages` until there are at least `limit` or the pages run out, each
    /// page counted as a read; `what` leads the error message.
    pub(crate) async fn read_pages<P: Page, E>(
        &self,
        what: &str,
        mut pages: PaginationStream<Result<P, SdkError<E, HttpResponse>>>,
        limit: usize,
        consistent: bool,
    ) -> Result<Vec<Item>, PortError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let mut items = Vec::new();
        while items.len() < limit {
            let Some(page) = pages.next().await else {
                break;
            };
            let (scanned, page_items) = page.map_err(|e| classify(what, &e))?.into_items();
            self.count_read(scanned, &page_items, consistent);
            items.extend(page_items);
        }
        Ok(items)
    }

    /// The first `limit` items `query` returns (fewer when it has no more), read in pages of
    /// `limit`; nothing is sent for a `limit` of 0.
    pub(crate) async fn query_items(
        &self,
        what: &str,
        query: QueryFluentBuilder,
        limit: usize,
    ) -> Result<Vec<Item>, PortError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let consistent = query.get_consistent_read().unwrap_or(false);
        let pages = query
            .into_paginator()
            .page_size(limit.min(i32::MAX as usize) as i32)
            .send();
        let mut items = self.read_pages(what, pages, limit, consistent).await?;
        items.truncate(limit);
        Ok(items)
    }

    fn count_slot_update(&self) {
        self.counters.write_units.fetch_add(1, Ordering::Relaxed);
    }

    fn state_draft(record: &RequestRecord, condition: Condition) -> Result<Draft, PortError> {
        let mut attributes = Item::from([
            (layout::VERSION.to_string(), n(record.version)),
            (
                layout::PHASE.to_string(),
                s(layout::phase_name(record.phase)),
            ),
            (layout::OWNER.to_string(), s(record.owner.as_str())),
            (layout::PROJECT.to_string(), s(record.project.as_str())),
            (layout::CREATED_AT_MS.to_string(), n(record.created_at_ms)),
            (layout::UPDATED_AT_MS.to_string(), n(record.updated_at_ms)),
        ]);
        if record.phase.is_terminal() {
            attributes.insert(
                layout::TTL.into(),
                n(layout::expiry_secs(record.updated_at_ms)),
            );
        } else {
            attributes.insert(layout::ACTIVE.into(), s(layout::phase_name(record.phase)));
            attributes.insert(layout::ACTIVE_OWNER.into(), s(record.owner.as_str()));
        }
        Ok(Draft {
            sk: layout::STATE_SK.into(),
            json: to_json("the request record", record)?,
            attributes,
            condition,
        })
    }

    fn message_draft(index: usize, message: &Message) -> Result<Draft, PortError> {
        Self::conversation_draft(layout::message_sk(index), message)
    }

    fn call_draft(call: &ModelCall) -> Result<Draft, PortError> {
        Self::conversation_draft(layout::call_sk(call.iteration), call)
    }

    /// A new conversation item (a message or a call) at `sk`, expiring like every one.
    fn conversation_draft(sk: String, value: &impl serde::Serialize) -> Result<Draft, PortError> {
        Ok(Draft {
            json: to_json(&sk, value)?,
            sk,
            attributes: Item::from([(
                layout::TTL.to_string(),
                aws_sdk_dynamodb::types::AttributeValue::N(layout::item_expiry_secs().to_string()),
            )]),
            condition: Condition::Absent,
        })
    }

    /// Writes the drafts in one transaction, spilling payloads first where needed.
    /// Writes `drafts` (spilling large payloads to S3) and then `extra`, in one transaction.
    async fn transact(
        &self,
        id: &RequestId,
        drafts: Vec<Draft>,
        extra: Vec<TransactWriteItem>,
    ) -> Result<(), TransactionFailure> {
        let fail = TransactionFailure::Other;
        if drafts.len() > layout::MAX_TRANSACTION_ITEMS {
            return Err(fail(PortError::Permanent(format!(
                "a commit of {} items exceeds DynamoDB's {} items per transaction; commit more often",
                drafts.len(),
                layout::MAX_TRANSACTION_ITEMS
            ))));
        }
        // Which payloads go to S3: those over their threshold, then the largest ones until
        // the transaction fits DynamoDB's aggregate limit.
        let mut spill: Vec<bool> = drafts
            .iter()
            .map(|d| {
                let threshold = if d.sk == layout::STATE_SK {
                    self.state_spill_threshold
                } else {
                    self.spill_threshold
                };
                d.json.len() > threshold
            })
            .collect();
        let inline_size = |spill: &[bool]| -> usize {
            drafts
                .iter()
                .zip(spill)
                .map(|(d, &s)| if s { 200 } else { d.json.len() + 200 })
                .sum()
        };
        while inline_size(&spill) > layout::TRANSACTION_BYTES_BUDGET {
            let Some((largest, _)) = drafts
                .iter()
                .enumerate()
                .filter(|(i, _)| !spill[*i])
                .max_by_key(|(_, d)| d.json.len())
            else {
                break;
            };
            spill[largest] = true;
        }

        let pk = layout::request_pk(id);
        let (mut items, mut item_bytes, mut spilled_objects, mut spilled_bytes) =
            (Vec::new(), 0u64, 0u64, 0u64);
        let mut write_units = 0u64;
        for (draft, spill) in drafts.into_iter().zip(spill) {
            let payload = if spill {
                let p = self
                    .spill
                    .put(id, &draft.sk, &draft.json)
                    .await
                    .map_err(fail)?;
                spilled_objects += 1;
                spilled_bytes += draft.json.len() as u64;
                p
            } else {
                Payload::Inline(draft.json)
            };
            let mut item = draft.attributes;
            item.insert(layout::PK.into(), s(pk.clone()));
            item.insert(layout::SK.into(), s(draft.sk));
            payload.attributes(&mut item);
            let size = layout::item_size(&item);
            item_bytes += size as u64;
            write_units += 2 * write_units_of(size);
            if item.contains_key(layout::OWNER) {
                // by_owner and by_project hold every STATE item; `active` holds it while it
                // carries active_owner, and a terminal write takes it out.
                write_units += 2 * write_units_of(size);
                write_units += if item.contains_key(layout::ACTIVE_OWNER) {
                    write_units_of(size)
                } else {
                    1
                };
            }
            let put = Put::builder().table_name(&self.table).set_item(Some(item));
            let put = match draft.condition {
                Condition::Absent => put
                    .condition_expression("attribute_not_exists(#pk)")
                    .expression_attribute_names("#pk", layout::PK),
                Condition::Version(v) => put
                    .condition_expression("#version = :expected")
                    .expression_attribute_names("#version", layout::VERSION)
                    .expression_attribute_values(":expected", n(v)),
            };
            let put = put
                .build()
                .map_err(|e| fail(PortError::Permanent(format!("building a put: {e}"))))?;
            items.push(TransactWriteItem::builder().put(put).build());
        }

        items.extend(extra);
        let count = items.len() as u64;
        let what = format!("writing {count} items of {id}");
        self.dynamo
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
            .map_err(|e| transaction_failure(&what, &e))?;
        let c = &self.counters;
        c.transactions.fetch_add(1, Ordering::Relaxed);
        c.items.fetch_add(count, Ordering::Relaxed);
        c.write_units.fetch_add(write_units, Ordering::Relaxed);
        c.item_bytes.fetch_add(item_bytes, Ordering::Relaxed);
        c.spilled_objects
            .fetch_add(spilled_objects, Ordering::Relaxed);
        c.spilled_bytes.fetch_add(spilled_bytes, Ordering::Relaxed);
        tracing::debug!(request_id = %id, items = count, item_bytes, spilled_bytes, "committed");
        Ok(())
    }

    pub(crate) async fn decode<T: DeserializeOwned>(&self, item: &Item) -> Result<T, PortError> {
        let json = self.spill.payload(item).await?;
        serde_json::from_str(&json)
            .map_err(|e| PortError::Permanent(format!("{} does not parse: {e}", describe(item))))
    }

    /// The first `count` items of request `id` whose sort key starts with `prefix`, in order.
    async fn items<T: DeserializeOwned>(
        &self,
        id: &RequestId,
        prefix: &str,
        count: usize,
        expected_sk: impl Fn(usize) -> Option<String>,
    ) -> Result<Vec<T>, PortError> {
        let query = self
            .dynamo
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", layout::PK)
            .expression_attribute_names("#sk", layout::SK)
            .expression_attribute_values(":pk", s(layout::request_pk(id)))
            .expression_attribute_values(":prefix", s(prefix));
        // Items beyond the record's counts cannot be committed by a fenced-out writer (its
        // transaction fails as a whole), but if there are any, they are not ours to read.
        let raw = self
            .query_items(&format!("reading the {prefix} items of {id}"), query, count)
            .await?;
        if raw.len() < count {
            return Err(PortError::Transient(format!(
                "conversation not yet visible: {} of {count} {prefix} items of {id}",
                raw.len()
            )));
        }
        let mut out = Vec::with_capacity(count);
        for (i, item) in raw.iter().enumerate() {
            if let Some(want) = expected_sk(i) {
                let got = item.get(layout::SK).and_then(|v| v.as_s().ok());
                if got != Some(&want) {
                    return Err(PortError::Permanent(format!(
                        "the conversation of {id} has a gap: expected {want}, found {}",
                        got.map(String::as_str).unwrap_or("?")
                    )));
                }
            }
            out.push(self.decode(item).await?);
        }
        Ok(out)
    }
}

#[async_trait]
impl StateStore for DynamoStore {
    async fn create(&self, record: &RequestRecord, first: &Message) -> Result<Created, PortError> {
        let drafts = vec![
            Self::state_draft(record, Condition::Absent)?,
            Self::message_draft(0, first)?,
        ];
        match self.transact(&record.id, drafts, Vec::new()).await {
            Ok(()) => Ok(Created::New),
            Err(TransactionFailure::ConditionFailed(failed)) if failed.contains(&0) => {
                match self.load(&record.id).await? {
                    Some(existing) => Ok(Created::Existing(Box::new(existing))),
                    None => Err(PortError::Transient(format!(
                        "{} exists but is not readable yet",
                        record.id
                    ))),
                }
            }
            Err(TransactionFailure::ConditionFailed(_)) => Err(PortError::Conflict(format!(
                "{} has no state but its first message exists",
                record.id
            ))),
            Err(TransactionFailure::Other(e)) => Err(e),
        }
    }

    async fn load(&self, id: &RequestId) -> Result<Option<RequestRecord>, PortError> {
        let out = self
            .dynamo
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .key(layout::PK, s(layout::request_pk(id)))
            .key(layout::SK, s(layout::STATE_SK))
            .send()
            .await
            .map_err(|e| classify(&format!("loading {id}"), &e))?;
        self.count_read(1, out.item.as_slice(), true);
        match out.item {
            Some(item) => Ok(Some(self.decode(&item).await?)),
            None => Ok(None),
        }
    }

    async fn conversation(
        &self,
        record: &RequestRecord,
    ) -> Result<(Vec<Message>, Vec<ModelCall>), PortError> {
        tokio::try_join!(
            self.items::<Message>(&record.id, layout::MSG_PREFIX, record.agent.messages, |i| {
                Some(layout::message_sk(i))
            }),
            // Calls are keyed by iteration, which need not be contiguous.
            self.items::<ModelCall>(&record.id, layout::CALL_PREFIX, record.agent.calls, |_| {
                None
            }),
        )
    }

    async fn commit(
        &self,
        record: &RequestRecord,
        expected_version: u64,
        appended: Appended<'_>,
    ) -> Result<(), PortError> {
        let Appended {
            first_index,
            messages,
            calls,
        } = appended;
        if !messages.is_empty() && first_index + messages.len() != record.agent.messages {
            return Err(PortError::Permanent(format!(
                "appended messages {first_index}..{} do not end where the record's {} messages do",
                first_index + messages.len(),
                record.agent.messages
            )));
        }
        let mut drafts = Vec::with_capacity(1 + messages.len() + calls.len());
        drafts.push(Self::state_draft(
            record,
            Condition::Version(expected_version),
        )?);
        for (i, m) in messages.iter().enumerate() {
            drafts.push(Self::message_draft(first_index + i, m)?);
        }
        for c in calls {
            drafts.push(Self::call_draft(c)?);
        }
        let sks: Vec<String> = drafts.iter().map(|d| d.sk.clone()).collect();
        match self.transact(&record.id, drafts, Vec::new()).await {
            Ok(()) => Ok(()),
            Err(TransactionFailure::ConditionFailed(failed)) => {
                let why: Vec<String> = failed
                    .iter()
                    .map(|&i| match i {
                        0 => format!("the stored version is no longer {expected_version}"),
                        _ => format!(
                            "{} already exists",
                            sks.get(i).map(String::as_str).unwrap_or("an item")
                        ),
                    })
                    .collect();
                Err(PortError::Conflict(format!(
                    "{}: {}",
                    record.id,
                    why.join("; ")
                )))
            }
            Err(TransactionFailure::Other(e)) => Err(e),
        }
    }

    async fn active(&self) -> Result<Vec<RequestRecord>, PortError> {
        self.scan_index(layout::ACTIVE_INDEX).await
    }

    async fn list_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        self.query_index(layout::OWNER_INDEX, layout::OWNER, owner.as_str(), limit)
            .await
    }

    async fn running_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        self.query_index(
            layout::ACTIVE_INDEX,
            layout::ACTIVE_OWNER,
            owner.as_str(),
            limit,
        )
        .await
    }

    async fn list_for_project(
        &self,
        owner: &UserId,
        project: &ProjectId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        // Project ids are unique, so every request of the project is the owner's; the filter
        // only keeps someone else's out should that ever not hold.
        let mut records = self
            .query_index(
                layout::PROJECT_INDEX,
                layout::PROJECT,
                project.as_str(),
                limit,
            )
            .await?;
        records.retain(|r| &r.owner == owner);
        Ok(records)
    }

    async fn acquire_slot(&self, owner: &UserId, limit: u32) -> Result<bool, PortError> {
        if limit == 0 {
            return Ok(false);
        }
        // One conditional update of the owner's counter item: atomic across every instance.
        let result = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key(layout::PK, s(layout::user_pk(owner)))
            .key(layout::SK, s(layout::SLOTS_SK))
            .update_expression("ADD #active :one")
            .condition_expression("attribute_not_exists(#active) OR #active < :limit")
            .expression_attribute_names("#active", layout::ACTIVE_SLOTS)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(u64::from(limit)))
            .send()
            .await;
        // A refused conditional write is billed too.
        self.count_slot_update();
        match result {
            Ok(_) => Ok(true),
            Err(e) => match classify(&format!("taking a slot of {owner}"), &e) {
                PortError::Conflict(_) => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn release_slot(&self, owner: &UserId) -> Result<(), PortError> {
        let result = release_one_slot!(self.dynamo.update_item(), &self.table, owner)
            .send()
            .await;
        self.count_slot_update();
        match result {
            Ok(_) => Ok(()),
            Err(e) => match classify(&format!("returning a slot of {owner}"), &e) {
                PortError::Conflict(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn commit_releasing_slot(
        &self,
        record: &RequestRecord,
        expected_version: u64,
    ) -> Result<(), PortError> {
        // The STATE put (conditional on the version) and the counter's decrement
        // (conditional on it being above zero) in one transaction.
        let state = Self::state_draft(record, Condition::Version(expected_version))?;
        let release = release_one_slot!(Update::builder(), &self.table, &record.owner)
            .build()
            .map_err(|e| PortError::Permanent(format!("building an update: {e}")))?;
        let release = TransactWriteItem::builder().update(release).build();
        match self.transact(&record.id, vec![state], vec![release]).await {
            Ok(()) => {
                // A small item written in a transaction: 2 write units.
                self.count_slot_update();
                self.count_slot_update();
                Ok(())
            }
            // Only the counter's condition failed: it is at zero already, nothing to give
            // back; the record is still written.
            Err(TransactionFailure::ConditionFailed(failed)) if failed == [1] => {
                self.commit(record, expected_version, Appended::default())
                    .await
            }
            Err(TransactionFailure::ConditionFailed(_)) => Err(PortError::Conflict(format!(
                "{}: the stored version is no longer {expected_version}",
                record.id
            ))),
            Err(TransactionFailure::Other(e)) => Err(e),
        }
    }
}
