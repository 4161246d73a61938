//! The alarms part: the active alarms by (alarm id, entity), a bounded
//! history of cleared ones, the instance counter that only grows, the
//! suppressed alarm ids, the hysteresis of the conditions the controller
//! observes itself, and whether the controller's MQTT client is connected.
//!
//! A part of the app: it decides what a raise, clear, acknowledgement or
//! suppression changes and returns it; the use case (`alarm_cases.rs`)
//! stores, publishes and records it. Its one lock is a leaf: held for one
//! such step and the store writes that make it durable, with no other
//! lock taken inside it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use verge_shared::alarms::{
    ALARM_SCHEMA_VERSION, Acknowledgement, Alarm, AlarmId, AlarmState, Debounce, Entity, Transition,
};
use verge_shared::{RegionId, Timestamp, limits};

use super::types::lock;
use crate::config::AlarmsConfig;
use crate::store::{AlarmMeta, Suppression};

/// What a raise did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Raised {
    /// A new alarm with a new instance.
    New(Alarm),
    /// It was active already; only its reason changed.
    Reason(Alarm),
    /// It was active already with the same reason.
    Unchanged,
}

/// The alarms' state, under the part's lock.
pub(crate) struct AlarmBook {
    pub(crate) active: BTreeMap<(AlarmId, Entity), Alarm>,
    /// Cleared alarms, oldest (lowest instance) first.
    pub(crate) history: VecDeque<Alarm>,
    pub(crate) meta: AlarmMeta,
    /// The hysteresis of each (alarm, entity) the controller observes.
    debounce: BTreeMap<(AlarmId, Entity), Debounce>,
    /// Since when the MQTT client is disconnected; `None` while connected.
    pub(crate) broker_lost_since: Option<Timestamp>,
    /// The controller's own certificates and when each expires.
    pub(crate) certificates: Vec<(String, Timestamp)>,
    bounds: AlarmsConfig,
}

/// The alarms part.
pub(crate) struct Alarms {
    book: Mutex<AlarmBook>,
}

impl Alarms {
    /// The part as stored: active alarms, history (oldest first) and meta.
    pub(crate) fn new(
        active: Vec<Alarm>,
        history: Vec<Alarm>,
        meta: AlarmMeta,
        bounds: AlarmsConfig,
        now: Timestamp,
    ) -> Self {
        // Never give out an instance below one already kept, whatever the meta says.
        let mut meta = meta;
        let highest = active
            .iter()
            .chain(&history)
            .map(|a| a.instance)
            .max()
            .unwrap_or(0);
        meta.last_instance = meta.last_instance.max(highest);
        let mut book = AlarmBook {
            active: active
                .into_iter()
                .map(|a| ((a.id, a.entity.clone()), a))
                .collect(),
            history: history.into(),
            meta,
            debounce: BTreeMap::new(),
            // Not connected yet: the broker counts as lost from the start.
            broker_lost_since: Some(now),
            certificates: Vec::new(),
            bounds,
        };
        book.prune(now);
        Self {
            book: Mutex::new(book),
        }
    }

    /// The part's lock: hold it for one step and its store writes only.
    pub(crate) fn book(&self) -> MutexGuard<'_, AlarmBook> {
        lock(&self.book)
    }
}

/// `text` cut to at most [`limits::MAX_MESSAGE_BYTES`] on a character boundary.
pub(crate) fn bounded_text(text: &str) -> String {
    let mut end = text.len().min(limits::MAX_MESSAGE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl AlarmBook {
    /// Raises `id` for `entity`, or updates the reason of the active one.
    pub(crate) fn raise(
        &mut self,
        id: AlarmId,
        entity: &Entity,
        region: Option<RegionId>,
        reason: &str,
        now: Timestamp,
    ) -> Raised {
        let reason = bounded_text(reason);
        if let Some(active) = self.active.get_mut(&(id, entity.clone())) {
            if active.reason == reason {
                return Raised::Unchanged;
            }
            active.reason = reason;
            return Raised::Reason(active.clone());
        }
        self.meta.last_instance += 1;
        let d = id.definition();
        let alarm = Alarm {
            schema_version: ALARM_SCHEMA_VERSION,
            instance: self.meta.last_instance,
            id,
            code: d.code.to_owned(),
            title: d.title.to_owned(),
            severity: d.severity,
            entity_type: d.entity_type,
            entity: entity.clone(),
            entity_instance: entity.instance(),
            region,
            state: AlarmState::Raised,
            observer: d.observer,
            raised_at: now,
            cleared_at: None,
            reason,
            probable_cause: d.probable_cause.to_owned(),
            repair: d.repair.to_owned(),
            acknowledged: None,
            suppressed: self.meta.suppressed.contains_key(&id),
        };
        self.active.insert((id, entity.clone()), alarm.clone());
        Raised::New(alarm)
    }

    /// Clears the active `id` for `entity`: the cleared alarm, now the
    /// newest of the history, and the instance the history was pruned
    /// through, if it was.
    pub(crate) fn clear(
        &mut self,
        id: AlarmId,
        entity: &Entity,
        now: Timestamp,
    ) -> Option<(Alarm, Option<u64>)> {
        let key = (id, entity.clone());
        self.debounce.remove(&key);
        let mut alarm = self.active.remove(&key)?;
        alarm.state = AlarmState::Cleared;
        alarm.cleared_at = Some(now);
        self.history.push_back(alarm.clone());
        let pruned = self.prune(now);
        Some((alarm, pruned))
    }

    /// Drops the history's oldest entries beyond its bounds; the highest
    /// instance dropped.
    pub(crate) fn prune(&mut self, now: Timestamp) -> Option<u64> {
        let mut through = None;
        while let Some(oldest) = self.history.front() {
            let too_old = oldest
                .cleared_at
                .is_some_and(|at| now.saturating_since(at) > self.bounds.max_age);
            if self.history.len() <= self.bounds.history && !too_old {
                break;
            }
            through = self.history.pop_front().map(|a| a.instance);
        }
        through
    }

    /// The active alarm with this instance, acknowledged by `by` at `now`.
    pub(crate) fn acknowledge(&mut self, instance: u64, by: &str, now: Timestamp) -> Option<Alarm> {
        let alarm = self.active.values_mut().find(|a| a.instance == instance)?;
        alarm.acknowledged = Some(Acknowledgement {
            by: by.to_owned(),
            at: now,
        });
        Some(alarm.clone())
    }

    /// Suppresses `id` (or, with `None`, lifts its suppression); the
    /// active alarms of that id, marked accordingly. `None` when nothing
    /// changed.
    pub(crate) fn set_suppressed(
        &mut self,
        id: AlarmId,
        by: Option<Suppression>,
    ) -> Option<Vec<Alarm>> {
        let changed = match by {
            Some(s) if !self.meta.suppressed.contains_key(&id) => {
                self.meta.suppressed.insert(id, s);
                true
            }
            None => self.meta.suppressed.remove(&id).is_some(),
            Some(_) => false,
        };
        if !changed {
            return None;
        }
        let suppressed = self.meta.suppressed.contains_key(&id);
        Some(
            self.active
                .values_mut()
                .filter(|a| a.id == id)
                .map(|a| {
                    a.suppressed = suppressed;
                    a.clone()
                })
                .collect(),
        )
    }

    /// Feeds one observation of a condition the controller watches into
    /// its hysteresis; a transition when one is due.
    pub(crate) fn observe(
        &mut self,
        id: AlarmId,
        entity: &Entity,
        condition: bool,
        now: Timestamp,
    ) -> Option<Transition> {
        let key = (id, entity.clone());
        let active = self.active.contains_key(&key);
        let debounce = self.debounce.entry(key.clone()).or_insert_with(|| {
            if active {
                Debounce::raised()
            } else {
                Debounce::default()
            }
        });
        let transition = debounce.observe(id.definition(), condition, now);
        // Nothing pending and nothing raised: forget it, so that the map
        // holds only what is raised or on its way.
        if !condition && !debounce.is_raised() {
            self.debounce.remove(&key);
        }
        transition
    }

    /// The entities `id` is tracked for: active, or held in its hysteresis.
    pub(crate) fn tracked(&self, id: AlarmId) -> Vec<Entity> {
        let mut entities: Vec<Entity> = self
            .active
            .keys()
            .chain(self.debounce.keys())
            .filter(|(a, _)| *a == id)
            .map(|(_, e)| e.clone())
            .collect();
        entities.sort();
        entities.dedup();
        entities
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use verge_shared::AgentId;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_millis(1_000_000 + secs * 1000)
    }

    fn book(history: usize) -> AlarmBook {
        let bounds = AlarmsConfig {
            history,
            max_age: Duration::from_secs(86_400),
        };
        let part = Alarms::new(Vec::new(), Vec::new(), AlarmMeta::default(), bounds, at(0));
        part.book.into_inner().expect("not poisoned")
    }

    fn node(name: &str) -> Entity {
        Entity::node(AgentId::new(name).expect("id"))
    }

    #[test]
    fn a_second_raise_only_updates_the_reason_and_instances_grow() {
        let mut b = book(10);
        let Raised::New(first) = b.raise(AlarmId::DiskLow, &node("a"), None, "9%", at(1)) else {
            panic!("new");
        };
        assert_eq!(first.instance, 1);
        assert_eq!(
            b.raise(AlarmId::DiskLow, &node("a"), None, "9%", at(2)),
            Raised::Unchanged
        );
        let Raised::Reason(updated) = b.raise(AlarmId::DiskLow, &node("a"), None, "8%", at(3))
        else {
            panic!("reason");
        };
        assert_eq!((updated.instance, updated.raised_at), (1, at(1)));
        let (cleared, _) = b
            .clear(AlarmId::DiskLow, &node("a"), at(4))
            .expect("active");
        assert_eq!(cleared.state, AlarmState::Cleared);
        assert!(b.clear(AlarmId::DiskLow, &node("a"), at(5)).is_none());
        let Raised::New(again) = b.raise(AlarmId::DiskLow, &node("a"), None, "7%", at(6)) else {
            panic!("new");
        };
        assert_eq!(again.instance, 2);
    }

    #[test]
    fn the_history_keeps_its_bound() {
        let mut b = book(10);
        let mut pruned = None;
        for i in 0..12 {
            let e = node(&format!("n{i}"));
            b.raise(AlarmId::NodeOffline, &e, None, "x", at(i));
            pruned = b.clear(AlarmId::NodeOffline, &e, at(i)).expect("active").1;
        }
        assert_eq!(b.history.len(), 10);
        assert_eq!(pruned, Some(2));
        assert_eq!(b.history.front().map(|a| a.instance), Some(3));
        // A day later, everything is too old.
        let e = node("late");
        b.raise(AlarmId::NodeOffline, &e, None, "x", at(90_000));
        let (_, pruned) = b
            .clear(AlarmId::NodeOffline, &e, at(90_000))
            .expect("active");
        assert_eq!(pruned, Some(12));
        assert_eq!(b.history.len(), 1);
    }

    #[test]
    fn observations_go_through_the_hysteresis() {
        let mut b = book(10);
        let e = node("a");
        let id = AlarmId::NodeClockSkewed; // 60 s either way
        assert_eq!(b.observe(id, &e, true, at(0)), None);
        assert_eq!(b.observe(id, &e, true, at(59)), None);
        assert_eq!(b.observe(id, &e, true, at(60)), Some(Transition::Raise));
        b.raise(id, &e, None, "skewed", at(60));
        assert_eq!(b.tracked(id), vec![e.clone()]);
        assert_eq!(b.observe(id, &e, false, at(61)), None);
        assert_eq!(b.observe(id, &e, false, at(121)), Some(Transition::Clear));
        b.clear(id, &e, at(121));
        assert!(b.tracked(id).is_empty());
    }

    #[test]
    fn suppression_marks_the_active_alarms_once() {
        let mut b = book(10);
        b.raise(AlarmId::DiskLow, &node("a"), None, "x", at(0));
        let by = Suppression {
            by: "alice".into(),
            at: at(1),
        };
        let marked = b
            .set_suppressed(AlarmId::DiskLow, Some(by.clone()))
            .expect("changed");
        assert!(marked.iter().all(|a| a.suppressed) && marked.len() == 1);
        assert!(b.set_suppressed(AlarmId::DiskLow, Some(by)).is_none());
        let Raised::New(new) = b.raise(AlarmId::DiskLow, &node("b"), None, "x", at(2)) else {
            panic!("new");
        };
        assert!(new.suppressed, "raised while suppressed");
        let unmarked = b.set_suppressed(AlarmId::DiskLow, None).expect("changed");
        assert_eq!(unmarked.len(), 2);
        assert!(unmarked.iter().all(|a| !a.suppressed));
        assert!(b.set_suppressed(AlarmId::DiskLow, None).is_none());
    }
}
