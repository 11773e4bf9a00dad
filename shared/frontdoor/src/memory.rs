//! In-memory [`PlatformRecords`], with the semantics of the real adapters: API keys are stored
//! as SHA-256 hashes only (the key is returned once, by `create_key`), revoked keys stop
//! authenticating, ledger rows are keyed by request and iteration (writing twice is a no-op).
//! For tests and short-lived single-process runs; nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use rand::RngCore;
use tb_core::MicroUsd;
use tb_core::agent::now_ms;
use tb_core::domain::{ProjectId, RequestId, UserId};
use tb_core::ids::{hex, sha256_hex};
use tb_core::ports::{
    ApiKey, GrantUse, OAuthClient, OAuthGrant, OAuthStore, PlatformRecords, PortError,
    ProjectRecord,
};
use tb_core::usage::ModelCall;

/// Keys look like `tb_<40 hex characters>` (160 random bits).
pub const KEY_PREFIX: &str = "tb_";
/// Characters of a key shown in listings.
const VISIBLE: usize = 10;

#[derive(Default)]
pub struct MemoryRecords {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// SHA-256 (hex) of the key → the key's record.
    keys: HashMap<String, ApiKey>,
    projects: BTreeMap<ProjectId, ProjectRecord>,
    /// (request, iteration) → (owner, cost).
    ledger: BTreeMap<(RequestId, u32), (UserId, MicroUsd)>,
}

impl MemoryRecords {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many keys are stored (for tests).
    pub fn key_count(&self) -> usize {
        self.lock().keys.len()
    }

    /// Whether any stored value contains `needle` (tests check that keys are not stored).
    pub fn stores_text(&self, needle: &str) -> bool {
        let inner = self.lock();
        inner
            .keys
            .iter()
            .any(|(hash, k)| hash.contains(needle) || format!("{k:?}").contains(needle))
    }
}

fn generate_key() -> String {
    let mut bytes = [0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex(&bytes))
}

#[async_trait]
impl PlatformRecords for MemoryRecords {
    async fn create_key(&self, user: &UserId, label: &str) -> Result<(ApiKey, String), PortError> {
        let key = generate_key();
        let record = ApiKey {
            id: format!("key_{}", &sha256_hex(key.as_bytes())[..16]),
            user: user.clone(),
            prefix: format!("{}…", &key[..VISIBLE]),
            label: label.chars().take(200).collect(),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
        };
        self.lock()
            .keys
            .insert(sha256_hex(key.as_bytes()), record.clone());
        Ok((record, key))
    }

    async fn authenticate(&self, presented: &str) -> Result<Option<ApiKey>, PortError> {
        Ok(self
            .lock()
            .keys
            .get(&sha256_hex(presented.as_bytes()))
            .filter(|k| k.revoked_at_ms.is_none())
            .cloned())
    }

    async fn list_keys(&self, user: &UserId) -> Result<Vec<ApiKey>, PortError> {
        let mut keys: Vec<ApiKey> = self
            .lock()
            .keys
            .values()
            .filter(|k| &k.user == user)
            .cloned()
            .collect();
        keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, user: &UserId, key_id: &str) -> Result<bool, PortError> {
        let mut inner = self.lock();
        match inner
            .keys
            .values_mut()
            .find(|k| &k.user == user && k.id == key_id && k.revoked_at_ms.is_none())
        {
            Some(k) => {
                k.revoked_at_ms = Some(now_ms());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn save_project(&self, project: &ProjectRecord) -> Result<(), PortError> {
        let mut inner = self.lock();
        if let Some(existing) = inner.projects.get(&project.id)
            && existing.owner != project.owner
        {
            return Err(PortError::Permanent(format!(
                "project {} belongs to another user",
                project.id
            )));
        }
        let mut project = project.clone();
        if let Some(existing) = inner.projects.get(&project.id) {
            // The lifecycle is written by `save_lifecycle` only.
            project.lifecycle = existing.lifecycle.clone();
        }
        inner.projects.insert(project.id.clone(), project);
        Ok(())
    }

    async fn save_lifecycle(
        &self,
        id: &ProjectId,
        lifecycle: &tb_core::ports::Lifecycle,
    ) -> Result<(), PortError> {
        match self.lock().projects.get_mut(id) {
            Some(p) if p.lifecycle.version != lifecycle.version.saturating_sub(1) => Err(
                PortError::Conflict(format!("the lifecycle of project {id} changed")),
            ),
            Some(p) => {
                p.lifecycle = lifecycle.clone();
                Ok(())
            }
            None => Err(PortError::NotFound(format!("project {id}"))),
        }
    }

    async fn project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, PortError> {
        Ok(self.lock().projects.get(id).cloned())
    }

    async fn projects(&self, owner: &UserId) -> Result<Vec<ProjectRecord>, PortError> {
        let mut v: Vec<ProjectRecord> = self
            .lock()
            .projects
            .values()
            .filter(|p| &p.owner == owner)
            .cloned()
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.updated_at_ms));
        Ok(v)
    }

    async fn record_usage(
        &self,
        request: &RequestId,
        owner: &UserId,
        _project: &ProjectId,
        calls: &[ModelCall],
    ) -> Result<(), PortError> {
        let mut inner = self.lock();
        for c in calls {
            inner
                .ledger
                .entry((request.clone(), c.iteration))
                .or_insert((owner.clone(), c.cost));
        }
        Ok(())
    }

    async fn spent(&self, owner: &UserId) -> Result<MicroUsd, PortError> {
        Ok(self
            .lock()
            .ledger
            .values()
            .filter(|(o, _)| o == owner)
            .map(|(_, c)| *c)
            .sum())
    }
}

/// In-memory [`OAuthStore`], with the semantics of the real adapters: `use_grant` marks a
/// grant used atomically, `revoke_family` revokes every grant of the family.
#[derive(Default)]
pub struct MemoryOAuth {
    inner: Mutex<(HashMap<String, OAuthClient>, HashMap<String, OAuthGrant>)>,
}

impl MemoryOAuth {
    pub fn new() -> Self {
        Self::default()
    }

    #[allow(clippy::type_complexity)]
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (HashMap<String, OAuthClient>, HashMap<String, OAuthGrant>)>
    {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any stored grant or client contains `needle` (tests check that tokens are
    /// stored as hashes only).
    pub fn stores_text(&self, needle: &str) -> bool {
        let inner = self.lock();
        inner
            .1
            .iter()
            .any(|(h, g)| h.contains(needle) || format!("{g:?}").contains(needle))
    }
}

#[async_trait]
impl OAuthStore for MemoryOAuth {
    async fn save_client(&self, client: &OAuthClient) -> Result<(), PortError> {
        self.lock()
            .0
            .insert(client.client_id.clone(), client.clone());
        Ok(())
    }

    async fn client(&self, client_id: &str) -> Result<Option<OAuthClient>, PortError> {
        Ok(self.lock().0.get(client_id).cloned())
    }

    async fn save_grant(&self, grant: &OAuthGrant) -> Result<(), PortError> {
        self.lock().1.insert(grant.hash.clone(), grant.clone());
        Ok(())
    }

    async fn grant(&self, hash: &str) -> Result<Option<OAuthGrant>, PortError> {
        Ok(self.lock().1.get(hash).cloned())
    }

    async fn use_grant(&self, hash: &str) -> Result<GrantUse, PortError> {
        let mut inner = self.lock();
        Ok(match inner.1.get_mut(hash) {
            None => GrantUse::Unknown,
            Some(g) if g.used_at_ms.is_some() => GrantUse::Again(g.clone()),
            Some(g) => {
                let before = g.clone();
                g.used_at_ms = Some(now_ms());
                GrantUse::First(before)
            }
        })
    }

    async fn revoke_family(&self, family: &str) -> Result<(), PortError> {
        let now = now_ms();
        for g in self.lock().1.values_mut() {
            if g.family == family && g.revoked_at_ms.is_none() {
                g.revoked_at_ms = Some(now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn keys_are_stored_hashed_and_stop_working_when_revoked() {
        let r = MemoryRecords::new();
        let (k, key) = r.create_key(&user("user_a"), "laptop").await.unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == 43);
        assert!(!r.stores_text(&key), "the key itself is stored");
        assert!(!r.stores_text(&key[VISIBLE..]), "the secret part is stored");
        assert_eq!(r.authenticate(&key).await.unwrap().unwrap().id, k.id);
        assert!(r.authenticate("tb_wrong").await.unwrap().is_none());
        assert!(!r.revoke_key(&user("user_b"), &k.id).await.unwrap());
        assert!(r.revoke_key(&user("user_a"), &k.id).await.unwrap());
        assert!(r.authenticate(&key).await.unwrap().is_none());
        assert!(!r.revoke_key(&user("user_a"), &k.id).await.unwrap());
    }

    #[tokio::test]
    async fn the_ledger_counts_each_call_once_per_owner() {
        let r = MemoryRecords::new();
        let call = |iteration, micros| ModelCall {
            iteration,
            model: "m".into(),
            usage: Default::default(),
            cost: MicroUsd::from_micros(micros),
            latency_ms: 0,
            stop_reason: tb_core::model::StopReason::EndTurn,
        };
        let req = RequestId::parse("req_1").unwrap();
        let proj = ProjectId::parse("proj_1").unwrap();
        let calls = [call(1, 100), call(2, 50)];
        r.record_usage(&req, &user("user_a"), &proj, &calls)
            .await
            .unwrap();
        r.record_usage(&req, &user("user_a"), &proj, &calls)
            .await
            .unwrap();
        assert_eq!(r.spent(&user("user_a")).await.unwrap().micros(), 150);
        assert_eq!(r.spent(&user("user_b")).await.unwrap(), MicroUsd::ZERO);
    }
}
