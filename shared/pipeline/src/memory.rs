//! In-memory adapters of the pipeline's ports, with the same semantics as the real ones
//! (conditional commits, append-only items). For unit tests of the pipeline logic and for
//! short-lived single-process runs; nothing survives the process.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tb_core::domain::{RequestId, UserId};
use tb_core::ports::PortError;
use tb_core::{Message, ModelCall};

use crate::messages::{FinalizeMessage, WorkMessage};
use crate::ports::{Appended, Created, Queue, StateStore};
use crate::record::RequestRecord;

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<BTreeMap<RequestId, Stored>>,
    slots: Mutex<BTreeMap<UserId, u32>>,
}

struct Stored {
    record: RequestRecord,
    messages: BTreeMap<usize, Message>,
    calls: BTreeMap<u32, ModelCall>,
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn create(&self, record: &RequestRecord, first: &Message) -> Result<Created, PortError> {
        let mut m = self.inner.lock().unwrap();
        if let Some(s) = m.get(&record.id) {
            return Ok(Created::Existing(Box::new(s.record.clone())));
        }
        m.insert(
            record.id.clone(),
            Stored {
                record: record.clone(),
                messages: BTreeMap::from([(0, first.clone())]),
                calls: BTreeMap::new(),
            },
        );
        Ok(Created::New)
    }

    async fn load(&self, id: &RequestId) -> Result<Option<RequestRecord>, PortError> {
        Ok(self.inner.lock().unwrap().get(id).map(|s| s.record.clone()))
    }

    async fn conversation(
        &self,
        record: &RequestRecord,
    ) -> Result<(Vec<Message>, Vec<ModelCall>), PortError> {
        let m = self.inner.lock().unwrap();
        let s = m
            .get(&record.id)
            .ok_or_else(|| PortError::NotFound(record.id.to_string()))?;
        let messages = s
            .messages
            .values()
            .take(record.agent.messages)
            .cloned()
            .collect();
        let calls = s.calls.values().take(record.agent.calls).cloned().collect();
        Ok((messages, calls))
    }

    async fn commit(
        &self,
        record: &RequestRecord,
        expected_version: u64,
        appended: Appended<'_>,
    ) -> Result<(), PortError> {
        let mut m = self.inner.lock().unwrap();
        let s = m
            .get_mut(&record.id)
            .ok_or_else(|| PortError::NotFound(record.id.to_string()))?;
        if s.record.version != expected_version {
            return Err(PortError::Conflict(format!(
                "version {} is not {expected_version}",
                s.record.version
            )));
        }
        let clash = (0..appended.messages.len())
            .any(|i| s.messages.contains_key(&(appended.first_index + i)))
            || appended
                .calls
                .iter()
                .any(|c| s.calls.contains_key(&c.iteration));
        if clash {
            return Err(PortError::Conflict(
                "an appended item already exists".into(),
            ));
        }
        for (i, msg) in appended.messages.iter().enumerate() {
            s.messages.insert(appended.first_index + i, msg.clone());
        }
        for c in appended.calls {
            s.calls.insert(c.iteration, c.clone());
        }
        s.record = record.clone();
        Ok(())
    }

    async fn acquire_slot(&self, owner: &UserId, limit: u32) -> Result<bool, PortError> {
        let mut slots = self.slots.lock().unwrap();
        let taken = slots.entry(owner.clone()).or_insert(0);
        if *taken >= limit {
            return Ok(false);
        }
        *taken += 1;
        Ok(true)
    }

    async fn release_slot(&self, owner: &UserId) -> Result<(), PortError> {
        if let Some(taken) = self.slots.lock().unwrap().get_mut(owner) {
            *taken = taken.saturating_sub(1);
        }
        Ok(())
    }

    async fn commit_releasing_slot(
        &self,
        record: &RequestRecord,
        expected_version: u64,
    ) -> Result<(), PortError> {
        // `commit` never waits, so both happen in the same poll: no caller can be cancelled
        // between them.
        self.commit(record, expected_version, Appended::default())
            .await?;
        if let Some(taken) = self.slots.lock().unwrap().get_mut(&record.owner) {
            *taken = taken.saturating_sub(1);
        }
        Ok(())
    }

    async fn active(&self) -> Result<Vec<RequestRecord>, PortError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .values()
            .filter(|s| !s.record.phase.is_terminal())
            .map(|s| s.record.clone())
            .collect())
    }

    async fn list_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        let mut v: Vec<_> = self
            .inner
            .lock()
            .unwrap()
            .values()
            .filter(|s| &s.record.owner == owner)
            .map(|s| s.record.clone())
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
        v.truncate(limit);
        Ok(v)
    }
}

/// Records what was sent, for the caller to deliver (or inspect).
#[derive(Default)]
pub struct MemoryQueue {
    pub work: Mutex<Vec<WorkMessage>>,
    pub finalize: Mutex<Vec<FinalizeMessage>>,
    pub dead: Mutex<Vec<(String, String)>>,
}

impl MemoryQueue {
    pub fn take_work(&self) -> Vec<WorkMessage> {
        std::mem::take(&mut *self.work.lock().unwrap())
    }
    pub fn take_finalize(&self) -> Vec<FinalizeMessage> {
        std::mem::take(&mut *self.finalize.lock().unwrap())
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send_work(&self, message: &WorkMessage, _delay: Duration) -> Result<(), PortError> {
        self.work.lock().unwrap().push(message.clone());
        Ok(())
    }

    async fn send_finalize(&self, message: &FinalizeMessage) -> Result<(), PortError> {
        self.finalize.lock().unwrap().push(message.clone());
        Ok(())
    }

    async fn dead_letter(&self, body: &str, reason: &str) -> Result<(), PortError> {
        self.dead
            .lock()
            .unwrap()
            .push((body.to_string(), reason.to_string()));
        Ok(())
    }
}
