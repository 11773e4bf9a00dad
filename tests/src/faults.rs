//! Fault injection around a real state store: the worker "dies" at a chosen write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use tb_core::domain::{RequestId, UserId};
use tb_core::ports::PortError;
use tb_core::{Message, ModelCall};
use tb_pipeline::{Appended, Created, RequestRecord, StateStore};

/// Where the fault strikes relative to the chosen commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strike {
    /// The write never happens.
    BeforeWrite,
    /// The write happens but its answer is lost.
    AfterWrite,
}

/// Passes through to `inner` until the `at`-th commit (1-based); from then on the store is
/// "dead" (every call fails, as if the process had died) until [`FaultyStore::revive`].
pub struct FaultyStore {
    inner: Arc<dyn StateStore>,
    at: usize,
    strike: Strike,
    commits: AtomicUsize,
    dead: AtomicBool,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn StateStore>, at: usize, strike: Strike) -> Self {
        FaultyStore {
            inner,
            at,
            strike,
            commits: AtomicUsize::new(0),
            dead: AtomicBool::new(false),
        }
    }

    pub fn revive(&self) {
        self.dead.store(false, Ordering::SeqCst);
    }

    /// Commits attempted so far.
    pub fn commits(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }

    pub fn struck(&self) -> bool {
        self.commits.load(Ordering::SeqCst) >= self.at
    }

    /// Counts a commit; at the `at`-th, dies before or after letting `write` happen.
    async fn strike(
        &self,
        write: impl std::future::Future<Output = Result<(), PortError>>,
    ) -> Result<(), PortError> {
        self.check()?;
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.at {
            self.dead.store(true, Ordering::SeqCst);
            if self.strike == Strike::AfterWrite {
                write.await?;
            }
            return Err(PortError::Transient(
                "injected fault: the worker died".into(),
            ));
        }
        write.await
    }

    fn check(&self) -> Result<(), PortError> {
        if self.dead.load(Ordering::SeqCst) {
            Err(PortError::Transient(
                "injected fault: the worker died".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl StateStore for FaultyStore {
    async fn create(&self, record: &RequestRecord, first: &Message) -> Result<Created, PortError> {
        self.check()?;
        self.inner.create(record, first).await
    }

    async fn load(&self, id: &RequestId) -> Result<Option<RequestRecord>, PortError> {
        self.check()?;
        self.inner.load(id).await
    }

    async fn conversation(
        &self,
        record: &RequestRecord,
    ) -> Result<(Vec<Message>, Vec<ModelCall>), PortError> {
        self.check()?;
        self.inner.conversation(record).await
    }

    async fn commit(
        &self,
        record: &RequestRecord,
        expected_version: u64,
        appended: Appended<'_>,
    ) -> Result<(), PortError> {
        self.strike(self.inner.commit(record, expected_version, appended))
            .await
    }

    async fn active(&self) -> Result<Vec<RequestRecord>, PortError> {
        self.check()?;
        self.inner.active().await
    }

    async fn list_for_owner(
        &self,
        owner: &UserId,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, PortError> {
        self.check()?;
        self.inner.list_for_owner(owner, limit).await
    }

    async fn acquire_slot(&self, owner: &UserId, limit: u32) -> Result<bool, PortError> {
        self.check()?;
        self.inner.acquire_slot(owner, limit).await
    }

    async fn release_slot(&self, owner: &UserId) -> Result<(), PortError> {
        self.check()?;
        self.inner.release_slot(owner).await
    }

    /// A commit like any other: the fault may strike it.
    async fn commit_releasing_slot(
        &self,
        record: &RequestRecord,
        expected_version: u64,
    ) -> Result<(), PortError> {
        self.strike(self.inner.commit_releasing_slot(record, expected_version))
            .await
    }
}
