//! The pipeline's ports: where request state lives and how work is handed on.

use std::time::Duration;

use async_trait::async_trait;
use tb_core::domain::{ProjectId, RequestId, UserId};
use tb_core::ports::PortError;
use tb_core::{Message, ModelCall};

use crate::messages::{FinalizeMessage, WorkMessage};
use crate::record::RequestRecord;

/// What [`StateStore::create`] found.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    New,
    /// A request with this id already existed (an idempotent retry); here it is.
    Existing(Box<RequestRecord>),
}

/// What one commit appends: messages with their indices, and model calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Appended<'a> {
    /// The index of `messages[0]` in the conversation.
    pub first_index: usize,
    pub messages: &'a [Message],
    pub calls: &'a [ModelCall],
}

/// How many of an owner's newest requests [`StateStore::list_for_project`]'s default looks
/// through.
pub const OWNER_SCAN: usize = 1000;

/// Request state and conversations.
///
/// Invariants every adapter keeps: `commit` is all-or-nothing and succeeds only if the stored
/// version equals `expected_version` (then the stored record is `record`, whose version the
/// caller has already bumped); appended messages and calls never overwrite existing ones;
/// the bytes written by a commit depend on what it appends, not on the conversation's length.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Stores a new request with its first message, unless the id exists.
    async fn create(&self, record: &RequestRecord, first: &Message) -> Result<Created, PortError>;
    async fn load(&self, id: &RequestId) -> Result<Option<RequestRecord>, PortError>;
    /// The conversation and model calls of a request, in order.
    async fn conversation(
        &self,
        record: &RequestRecord,
    ) -> Result<(Vec<Message>, Vec<ModelCall>), PortError>;
    /// Writes `record` and appends, conditional on the stored version being `expected_version`.
    /// `PortError::Conflict` when someone else wrote first.
    async fn commit(
        &self,
        record: &RequestRecord,
        expected_version: u64,
        appended: Appended<'_>,
    ) -> Result<(), PortError>;
    /// Requests not in a terminal phase (for the sweeper).
    async fn active(&self) -> Result<Vec<RequestRecord>, PortError>;
    /// A user's requests, newest first, at most `limit`.
    async fn list_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError>;
    /// A user's requests not in a terminal phase, newest first: at most `limit`, and at
    /// least those among the user's `limit` newest requests. The default lists the `limit`
    /// newest and keeps those; a store that can select running requests by owner should, so
    /// that the cost does not grow with the user's finished requests.
    async fn running_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        let mut listed = self.list_for_owner(owner, limit).await?;
        listed.retain(|r| !r.phase.is_terminal());
        Ok(listed)
    }
    /// `owner`'s requests for `project`, newest first, at most `limit`. The default lists the
    /// owner's [`OWNER_SCAN`] newest requests and keeps those; a store that can select by
    /// project should, so that the cost does not grow with the owner's other requests.
    async fn list_for_project(
        &self,
        owner: &UserId,
        project: &ProjectId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        let mut listed = self.list_for_owner(owner, OWNER_SCAN).await?;
        listed.retain(|r| &r.project == project);
        listed.truncate(limit);
        Ok(listed)
    }
    /// Takes one of `owner`'s concurrent-request slots if fewer than `limit` are taken,
    /// atomically across processes; `false` when all are taken.
    async fn acquire_slot(&self, owner: &UserId, limit: u32) -> Result<bool, PortError>;
    /// Gives a slot back (a request that was not created after all); never below zero.
    async fn release_slot(&self, owner: &UserId) -> Result<(), PortError>;
    /// Writes `record` as [`StateStore::commit`] does (conditional on `expected_version`,
    /// appending nothing) and gives back one of its owner's slots, in one atomic write:
    /// both happen or neither, so a request that ended gives its slot back exactly once
    /// however often (and however concurrently) its finalization is retried. A counter
    /// already at zero stays there and the record is still written.
    async fn commit_releasing_slot(
        &self,
        record: &RequestRecord,
        expected_version: u64,
    ) -> Result<(), PortError>;
}

/// The work and finalize queues. At-least-once: every message may arrive twice, late, or
/// (if sending fails after the state was committed) never; the sweeper covers the last case.
#[async_trait]
pub trait Queue: Send + Sync {
    async fn send_work(&self, message: &WorkMessage, delay: Duration) -> Result<(), PortError>;
    async fn send_finalize(&self, message: &FinalizeMessage) -> Result<(), PortError>;
    /// Parks a work message that can never succeed on the work dead-letter queue, with the
    /// reason: `{"reason": …, "body": <the original body>}`.
    async fn dead_letter(&self, body: &str, reason: &str) -> Result<(), PortError>;
}

/// Writes `rec` as its next version, conditional on the version it was read at; on failure
/// `rec` keeps the version it had, so the caller can reload and decide again.
pub async fn save_next(
    store: &dyn StateStore,
    rec: &mut RequestRecord,
    appended: Appended<'_>,
) -> Result<(), PortError> {
    let expected = rec.version;
    rec.version += 1;
    rec.updated_at_ms = tb_core::agent::now_ms();
    let result = store.commit(rec, expected, appended).await;
    if result.is_err() {
        rec.version = expected;
    }
    result
}

/// Gives back the owner's concurrent-request slot of a request that has ended, in the same
/// atomic write that records it ([`StateStore::commit_releasing_slot`]): a retry after a
/// crash, or a duplicate delivery racing this one, can never give it back a second time.
/// Best effort: a failure is logged, and a later finalize delivery retries.
pub async fn give_back_slot(store: &dyn StateStore, rec: &mut RequestRecord) {
    if !rec.holds_slot || !rec.phase.is_terminal() {
        return;
    }
    let expected = rec.version;
    rec.version += 1;
    rec.holds_slot = false;
    rec.updated_at_ms = tb_core::agent::now_ms();
    if let Err(e) = store.commit_releasing_slot(rec, expected).await {
        rec.version = expected;
        rec.holds_slot = true;
        tracing::warn!(request_id = %rec.id, "giving back the slot failed: {e}");
    }
}
