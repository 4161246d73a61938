//! [`MemoryStore`]: the [`Store`] contract held in memory, with writes that
//! can be made to fail.
//!
//! Public (not `#[cfg(test)]`) so that the controller's unit tests and a
//! fleet simulation in the `tests` crate run the real use cases over the
//! same fake; it has no I/O, so nothing in it can outlive a test.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use verge_shared::alarms::{Alarm, AlarmId, Entity};
use verge_shared::{AgentId, ServiceName, Sha256Digest};

use super::records::{
    AlarmMeta, ApiTokenRecord, ArtifactRecord, AuditRecord, ConsumerRecord, DesiredRecord,
    Durability, IdentityRecord, NodeRecord, ReleaseRecord, ServiceRecord, Store, StoreError,
    TokenRecord, UserRecord,
};

/// A panic in another test thread must not poison every later read.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct Tables {
    services: BTreeMap<ServiceName, ServiceRecord>,
    nodes: BTreeMap<AgentId, NodeRecord>,
    artifacts: BTreeMap<Sha256Digest, ArtifactRecord>,
    releases: BTreeMap<Sha256Digest, ReleaseRecord>,
    desired: BTreeMap<AgentId, DesiredRecord>,
    tokens: BTreeMap<String, TokenRecord>,
    identities: BTreeMap<AgentId, IdentityRecord>,
    consumers: BTreeMap<String, ConsumerRecord>,
    users: BTreeMap<String, UserRecord>,
    api_tokens: BTreeMap<String, ApiTokenRecord>,
    audit: BTreeMap<u64, AuditRecord>,
    active_alarms: BTreeMap<(AlarmId, Entity), Alarm>,
    alarm_history: BTreeMap<u64, Alarm>,
    alarm_meta: AlarmMeta,
}

/// A [`Store`] in memory. Every write is "durable" the moment it returns;
/// reads list records in key order, as the sled store does.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
    /// Trees whose writes fail (`"*"` for all).
    refused: Mutex<Vec<&'static str>>,
    n_writes: AtomicU64,
}

impl MemoryStore {
    /// An empty store that accepts writes.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on writes to the named trees (`"services"`, `"nodes"`,
    /// `"artifacts"`, `"releases"`, `"desired"`, `"tokens"`, `"identities"`,
    /// `"consumers"`, `"users"`, `"api_tokens"`, `"audit"`, `"alarms"`, `"alarm_history"`,
    /// `"alarm_meta"`, or `"*"` for every tree) fail with [`StoreError::Refused`] and change
    /// nothing; `&[]` accepts every write again. Reads keep working.
    pub fn refuse_writes_to(&self, trees: &[&'static str]) {
        *lock(&self.refused) = trees.to_vec();
    }

    /// How many writes succeeded so far.
    pub fn n_writes(&self) -> u64 {
        self.n_writes.load(Ordering::SeqCst)
    }

    /// Applies `write` to the tables unless writes are refused.
    fn write(&self, tree: &'static str, write: impl FnOnce(&mut Tables)) -> Result<(), StoreError> {
        let refused = lock(&self.refused);
        if refused.iter().any(|t| *t == tree || *t == "*") {
            return Err(StoreError::Refused { tree });
        }
        drop(refused);
        write(&mut lock(&self.tables));
        self.n_writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Store for MemoryStore {
    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        Ok(lock(&self.tables).services.values().cloned().collect())
    }

    fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>, StoreError> {
        Ok(lock(&self.tables).services.get(name).cloned())
    }

    fn put_service(&self, record: &ServiceRecord) -> Result<(), StoreError> {
        self.write("services", |t| {
            t.services.insert(record.name.clone(), record.clone());
        })
    }

    fn delete_service(&self, name: &ServiceName) -> Result<bool, StoreError> {
        let mut existed = false;
        self.write("services", |t| existed = t.services.remove(name).is_some())?;
        Ok(existed)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(lock(&self.tables).nodes.values().cloned().collect())
    }

    fn put_node(&self, record: &NodeRecord, _durability: Durability) -> Result<(), StoreError> {
        self.write("nodes", |t| {
            t.nodes.insert(record.id.clone(), record.clone());
        })
    }

    fn artifact(&self, digest: &Sha256Digest) -> Result<Option<ArtifactRecord>, StoreError> {
        Ok(lock(&self.tables).artifacts.get(digest).cloned())
    }

    fn put_artifact(&self, record: &ArtifactRecord) -> Result<(), StoreError> {
        self.write("artifacts", |t| {
            t.artifacts.insert(record.sha256, record.clone());
        })
    }

    fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        Ok(lock(&self.tables).releases.values().cloned().collect())
    }

    fn release(&self, digest: &Sha256Digest) -> Result<Option<ReleaseRecord>, StoreError> {
        Ok(lock(&self.tables).releases.get(digest).cloned())
    }

    fn put_release(&self, record: &ReleaseRecord) -> Result<(), StoreError> {
        self.write("releases", |t| {
            t.releases.insert(record.digest, record.clone());
        })
    }

    fn desired_states(&self) -> Result<Vec<DesiredRecord>, StoreError> {
        Ok(lock(&self.tables).desired.values().cloned().collect())
    }

    fn desired_state(&self, agent: &AgentId) -> Result<Option<DesiredRecord>, StoreError> {
        Ok(lock(&self.tables).desired.get(agent).cloned())
    }

    fn put_desired(&self, record: &DesiredRecord) -> Result<(), StoreError> {
        self.write("desired", |t| {
            t.desired.insert(record.agent.clone(), record.clone());
        })
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(lock(&self.tables).tokens.values().cloned().collect())
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(lock(&self.tables).tokens.get(id).cloned())
    }

    fn put_token(&self, record: &TokenRecord) -> Result<(), StoreError> {
        self.write("tokens", |t| {
            t.tokens.insert(record.id.clone(), record.clone());
        })
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn identities(&self) -> Result<Vec<IdentityRecord>, StoreError> {
        Ok(lock(&self.tables).identities.values().cloned().collect())
    }

    fn identity(&self, agent: &AgentId) -> Result<Option<IdentityRecord>, StoreError> {
        Ok(lock(&self.tables).identities.get(agent).cloned())
    }

    fn put_identity(&self, record: &IdentityRecord) -> Result<(), StoreError> {
        self.write("identities", |t| {
            t.identities.insert(record.agent.clone(), record.clone());
        })
    }

    fn consumers(&self) -> Result<Vec<ConsumerRecord>, StoreError> {
        Ok(lock(&self.tables).consumers.values().cloned().collect())
    }

    fn put_consumer(&self, record: &ConsumerRecord) -> Result<(), StoreError> {
        self.write("consumers", |t| {
            t.consumers.insert(record.name.clone(), record.clone());
        })
    }

    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        Ok(lock(&self.tables).users.values().cloned().collect())
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(lock(&self.tables).users.get(name).cloned())
    }

    fn put_user(&self, record: &UserRecord) -> Result<(), StoreError> {
        self.write("users", |t| {
            t.users.insert(record.name.clone(), record.clone());
        })
    }

    fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        let mut existed = false;
        self.write("users", |t| existed = t.users.remove(name).is_some())?;
        Ok(existed)
    }

    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        Ok(lock(&self.tables).api_tokens.values().cloned().collect())
    }

    fn api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        Ok(lock(&self.tables).api_tokens.get(id).cloned())
    }

    fn put_api_token(&self, record: &ApiTokenRecord) -> Result<(), StoreError> {
        self.write("api_tokens", |t| {
            t.api_tokens.insert(record.id.clone(), record.clone());
        })
    }

    fn delete_api_token(&self, id: &str) -> Result<(), StoreError> {
        self.write("api_tokens", |t| {
            t.api_tokens.remove(id);
        })
    }

    fn put_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.write("audit", |t| {
            t.audit.insert(record.seq, record.clone());
        })
    }

    fn audit_before(
        &self,
        before: Option<u64>,
        max: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let tables = lock(&self.tables);
        Ok(tables
            .audit
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .take(max)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn audit_oldest(&self, max: usize) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(lock(&self.tables)
            .audit
            .values()
            .take(max)
            .cloned()
            .collect())
    }

    fn audit_last_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(lock(&self.tables).audit.keys().next_back().copied())
    }

    fn delete_audit_through(&self, through: u64) -> Result<(), StoreError> {
        self.write("audit", |t| t.audit.retain(|seq, _| *seq > through))
    }

    fn active_alarms(&self) -> Result<Vec<Alarm>, StoreError> {
        Ok(lock(&self.tables).active_alarms.values().cloned().collect())
    }

    fn put_active_alarm(&self, alarm: &Alarm) -> Result<(), StoreError> {
        self.write("alarms", |t| {
            t.active_alarms
                .insert((alarm.id, alarm.entity.clone()), alarm.clone());
        })
    }

    fn delete_active_alarm(&self, id: AlarmId, entity: &Entity) -> Result<(), StoreError> {
        self.write("alarms", |t| {
            t.active_alarms.remove(&(id, entity.clone()));
        })
    }

    fn alarm_history(&self) -> Result<Vec<Alarm>, StoreError> {
        Ok(lock(&self.tables).alarm_history.values().cloned().collect())
    }

    fn put_alarm_history(&self, alarm: &Alarm) -> Result<(), StoreError> {
        self.write("alarm_history", |t| {
            t.alarm_history.insert(alarm.instance, alarm.clone());
        })
    }

    fn delete_alarm_history_through(&self, through: u64) -> Result<(), StoreError> {
        self.write("alarm_history", |t| {
            t.alarm_history.retain(|instance, _| *instance > through)
        })
    }

    fn alarm_meta(&self) -> Result<AlarmMeta, StoreError> {
        Ok(lock(&self.tables).alarm_meta.clone())
    }

    fn put_alarm_meta(&self, meta: &AlarmMeta) -> Result<(), StoreError> {
        self.write("alarm_meta", |t| t.alarm_meta = meta.clone())
    }
}
