//! [`SledStore`]: the [`Store`] contract on a sled database, one tree per
//! record kind, JSON values.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use verge_shared::alarms::{Alarm, AlarmId, Entity};
use verge_shared::{AgentId, ServiceName, Sha256Digest};

use super::records::*;

/// [`Store`] on a sled database.
pub struct SledStore {
    db: sled::Db,
    services: sled::Tree,
    nodes: sled::Tree,
    artifacts: sled::Tree,
    releases: sled::Tree,
    desired: sled::Tree,
    tokens: sled::Tree,
    identities: sled::Tree,
    consumers: sled::Tree,
    users: sled::Tree,
    api_tokens: sled::Tree,
    audit: sled::Tree,
    alarms: sled::Tree,
    alarm_history: sled::Tree,
    alarm_meta: sled::Tree,
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::open(path)?;
        Ok(Self {
            services: db.open_tree("services")?,
            nodes: db.open_tree("nodes")?,
            artifacts: db.open_tree("artifacts")?,
            releases: db.open_tree("releases")?,
            desired: db.open_tree("desired")?,
            tokens: db.open_tree("tokens")?,
            identities: db.open_tree("identities")?,
            consumers: db.open_tree("consumers")?,
            users: db.open_tree("users")?,
            api_tokens: db.open_tree("api_tokens")?,
            audit: db.open_tree("audit")?,
            alarms: db.open_tree("alarms")?,
            alarm_history: db.open_tree("alarm_history")?,
            alarm_meta: db.open_tree("alarm_meta")?,
            db,
        })
    }

    fn flush(&self, durability: Durability) -> Result<(), StoreError> {
        if durability == Durability::Flush {
            self.db.flush()?;
        }
        Ok(())
    }
}

fn tree_name(tree: &sled::Tree) -> &'static str {
    match &*tree.name() {
        b"services" => "services",
        b"nodes" => "nodes",
        b"artifacts" => "artifacts",
        b"releases" => "releases",
        b"desired" => "desired",
        b"tokens" => "tokens",
        b"identities" => "identities",
        b"consumers" => "consumers",
        b"users" => "users",
        b"api_tokens" => "api_tokens",
        b"audit" => "audit",
        b"alarms" => "alarms",
        b"alarm_history" => "alarm_history",
        b"alarm_meta" => "alarm_meta",
        _ => "unknown",
    }
}

fn decode<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        tree: tree_name(tree),
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

fn get<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
    tree.get(key)?
        .map(|v| decode(tree, key.as_bytes(), &v))
        .transpose()
}

fn decode_entry<T: DeserializeOwned>(
    tree: &sled::Tree,
    entry: sled::Result<(sled::IVec, sled::IVec)>,
) -> Result<T, StoreError> {
    let (k, v) = entry?;
    decode(tree, &k, &v)
}

fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>, StoreError> {
    tree.iter().map(|entry| decode_entry(tree, entry)).collect()
}

/// Audit (and alarm history) keys: zero-padded so that key order is `seq`
/// (instance) order.
fn audit_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// Active alarm keys: `{alarm}/{entity instance}`, unique per (id, entity).
fn alarm_key(id: AlarmId, entity: &Entity) -> String {
    format!("{id}/{}", entity.instance())
}

/// The one key of the alarm meta tree.
const ALARM_META_KEY: &str = "meta";

fn put<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        tree: tree_name(tree),
        key: key.to_owned(),
        detail: e.to_string(),
    })?;
    tree.insert(key, bytes)?;
    Ok(())
}

impl Store for SledStore {
    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        all(&self.services)
    }

    fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>, StoreError> {
        get(&self.services, name.as_str())
    }

    fn put_service(&self, record: &ServiceRecord) -> Result<(), StoreError> {
        put(&self.services, record.name.as_str(), record)?;
        self.flush(Durability::Flush)
    }

    fn delete_service(&self, name: &ServiceName) -> Result<bool, StoreError> {
        let existed = self.services.remove(name.as_str())?.is_some();
        self.flush(Durability::Flush)?;
        Ok(existed)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        all(&self.nodes)
    }

    fn put_node(&self, record: &NodeRecord, durability: Durability) -> Result<(), StoreError> {
        put(&self.nodes, record.id.as_str(), record)?;
        self.flush(durability)
    }

    fn artifact(&self, digest: &Sha256Digest) -> Result<Option<ArtifactRecord>, StoreError> {
        get(&self.artifacts, &digest.to_string())
    }

    fn put_artifact(&self, record: &ArtifactRecord) -> Result<(), StoreError> {
        put(&self.artifacts, &record.sha256.to_string(), record)?;
        self.flush(Durability::Flush)
    }

    fn releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        all(&self.releases)
    }

    fn release(&self, digest: &Sha256Digest) -> Result<Option<ReleaseRecord>, StoreError> {
        get(&self.releases, &digest.to_string())
    }

    fn put_release(&self, record: &ReleaseRecord) -> Result<(), StoreError> {
        put(&self.releases, &record.digest.to_string(), record)?;
        self.flush(Durability::Flush)
    }

    fn desired_states(&self) -> Result<Vec<DesiredRecord>, StoreError> {
        all(&self.desired)
    }

    fn desired_state(&self, agent: &AgentId) -> Result<Option<DesiredRecord>, StoreError> {
        get(&self.desired, agent.as_str())
    }

    fn put_desired(&self, record: &DesiredRecord) -> Result<(), StoreError> {
        put(&self.desired, record.agent.as_str(), record)?;
        self.flush(Durability::Flush)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        all(&self.tokens)
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        get(&self.tokens, id)
    }

    fn put_token(&self, record: &TokenRecord) -> Result<(), StoreError> {
        put(&self.tokens, &record.id, record)?;
        self.flush(Durability::Flush)
    }

    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        all(&self.users)
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        get(&self.users, name)
    }

    fn put_user(&self, record: &UserRecord) -> Result<(), StoreError> {
        put(&self.users, &record.name, record)?;
        self.flush(Durability::Flush)
    }

    fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.users.remove(name)?.is_some();
        self.flush(Durability::Flush)?;
        Ok(existed)
    }

    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        all(&self.api_tokens)
    }

    fn api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        get(&self.api_tokens, id)
    }

    fn put_api_token(&self, record: &ApiTokenRecord) -> Result<(), StoreError> {
        put(&self.api_tokens, &record.id, record)?;
        self.flush(Durability::Flush)
    }

    fn delete_api_token(&self, id: &str) -> Result<(), StoreError> {
        self.api_tokens.remove(id)?;
        self.flush(Durability::Flush)
    }

    fn put_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        put(&self.audit, &audit_key(record.seq), record)
    }

    fn audit_before(
        &self,
        before: Option<u64>,
        max: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let end = before.map(audit_key).unwrap_or_else(|| audit_key(u64::MAX));
        self.audit
            .range(..end.as_bytes())
            .rev()
            .take(max)
            .map(|entry| decode_entry(&self.audit, entry))
            .collect()
    }

    fn audit_oldest(&self, max: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit
            .iter()
            .take(max)
            .map(|entry| decode_entry(&self.audit, entry))
            .collect()
    }

    fn audit_last_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .audit
            .last()?
            .map(|(k, v)| decode::<AuditRecord>(&self.audit, &k, &v))
            .transpose()?
            .map(|r| r.seq))
    }

    fn delete_audit_through(&self, through: u64) -> Result<(), StoreError> {
        let end = audit_key(through);
        let mut batch = sled::Batch::default();
        for key in self.audit.range(..=end.as_bytes()).keys() {
            batch.remove(key?);
        }
        self.audit.apply_batch(batch)?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn identities(&self) -> Result<Vec<IdentityRecord>, StoreError> {
        all(&self.identities)
    }

    fn identity(&self, agent: &AgentId) -> Result<Option<IdentityRecord>, StoreError> {
        get(&self.identities, agent.as_str())
    }

    fn put_identity(&self, record: &IdentityRecord) -> Result<(), StoreError> {
        put(&self.identities, record.agent.as_str(), record)?;
        self.flush(Durability::Flush)
    }

    fn active_alarms(&self) -> Result<Vec<Alarm>, StoreError> {
        all(&self.alarms)
    }

    fn put_active_alarm(&self, alarm: &Alarm) -> Result<(), StoreError> {
        put(&self.alarms, &alarm_key(alarm.id, &alarm.entity), alarm)?;
        self.flush(Durability::Flush)
    }

    fn delete_active_alarm(&self, id: AlarmId, entity: &Entity) -> Result<(), StoreError> {
        self.alarms.remove(alarm_key(id, entity))?;
        self.flush(Durability::Flush)
    }

    fn alarm_history(&self) -> Result<Vec<Alarm>, StoreError> {
        all(&self.alarm_history)
    }

    fn put_alarm_history(&self, alarm: &Alarm) -> Result<(), StoreError> {
        put(&self.alarm_history, &audit_key(alarm.instance), alarm)
    }

    fn delete_alarm_history_through(&self, through: u64) -> Result<(), StoreError> {
        let end = audit_key(through);
        let mut batch = sled::Batch::default();
        for key in self.alarm_history.range(..=end.as_bytes()).keys() {
            batch.remove(key?);
        }
        self.alarm_history.apply_batch(batch)?;
        Ok(())
    }

    fn alarm_meta(&self) -> Result<AlarmMeta, StoreError> {
        Ok(get(&self.alarm_meta, ALARM_META_KEY)?.unwrap_or_default())
    }

    fn put_alarm_meta(&self, meta: &AlarmMeta) -> Result<(), StoreError> {
        put(&self.alarm_meta, ALARM_META_KEY, meta)?;
        self.flush(Durability::Flush)
    }

    fn consumers(&self) -> Result<Vec<ConsumerRecord>, StoreError> {
        all(&self.consumers)
    }

    fn put_consumer(&self, record: &ConsumerRecord) -> Result<(), StoreError> {
        put(&self.consumers, &record.name, record)?;
        self.flush(Durability::Flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_shared::Timestamp;

    /// Opens the store again once the dropped one's flusher thread has let
    /// go of sled's file lock (it can take a moment on a loaded machine).
    fn reopen(path: &std::path::Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match SledStore::open(path) {
                Ok(store) => return store,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = ArtifactRecord {
            sha256: Sha256Digest::of(b"x"),
            size: 1,
            created_at: Timestamp::from_unix_millis(5),
        };
        {
            let store = SledStore::open(dir.path()).expect("open");
            store.put_artifact(&record).expect("put");
        }
        let store = reopen(dir.path());
        assert_eq!(store.artifact(&record.sha256).expect("get"), Some(record));
        assert!(store.services().expect("services").is_empty());
    }

    #[test]
    fn alarms_survive_reopening_and_the_history_is_pruned_by_instance() {
        use verge_shared::alarms::{AlarmId, AlarmState, Entity, Observer};
        let dir = tempfile::tempdir().expect("tempdir");
        let alarm = |instance: u64, state: AlarmState| {
            let d = AlarmId::NodeOffline.definition();
            let entity = Entity::node(verge_shared::AgentId::new("edge-1").expect("id"));
            Alarm {
                schema_version: verge_shared::alarms::ALARM_SCHEMA_VERSION,
                instance,
                id: d.id,
                code: d.code.into(),
                title: d.title.into(),
                severity: d.severity,
                entity_type: d.entity_type,
                entity_instance: entity.instance(),
                entity,
                region: None,
                state,
                observer: Observer::Controller,
                raised_at: Timestamp::from_unix_millis(instance),
                cleared_at: None,
                reason: String::new(),
                probable_cause: d.probable_cause.into(),
                repair: d.repair.into(),
                acknowledged: None,
                suppressed: false,
            }
        };
        {
            let store = SledStore::open(dir.path()).expect("open");
            store
                .put_active_alarm(&alarm(3, AlarmState::Raised))
                .expect("active");
            for instance in [1, 2] {
                store
                    .put_alarm_history(&alarm(instance, AlarmState::Cleared))
                    .expect("history");
            }
            store
                .put_alarm_meta(&AlarmMeta {
                    last_instance: 3,
                    ..AlarmMeta::default()
                })
                .expect("meta");
            store.flush(Durability::Flush).expect("flush");
        }
        let store = reopen(dir.path());
        assert_eq!(
            store.active_alarms().expect("active"),
            vec![alarm(3, AlarmState::Raised)]
        );
        assert_eq!(store.alarm_meta().expect("meta").last_instance, 3);
        store.delete_alarm_history_through(1).expect("prune");
        let kept: Vec<u64> = store
            .alarm_history()
            .expect("history")
            .iter()
            .map(|a| a.instance)
            .collect();
        assert_eq!(kept, vec![2], "instances up to 1 pruned, in order");
        let entity = Entity::node(verge_shared::AgentId::new("edge-1").expect("id"));
        store
            .delete_active_alarm(AlarmId::NodeOffline, &entity)
            .expect("delete");
        assert!(store.active_alarms().expect("active").is_empty());
    }
}
