//! Alarms' use cases (docs/alarms.md): raise and clear with
//! de-duplication, the conditions the controller observes itself (through
//! the hysteresis of the alarms part), the alarms agents report in signed
//! events, publishing on MQTT, and the API's list, catalogue,
//! acknowledgement and suppression.
//!
//! A raised alarm is stored, then published retained on its topic; a
//! cleared one is stored in the history, then published once not retained,
//! then its retained copy is removed with an empty retained payload. A
//! suppressed alarm id is kept and listed but never published. Every
//! raise, clear, acknowledgement and suppression is also a fleet event and
//! an `alarm` change on the watch stream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use tracing::{error, info, warn};
use verge_scheduler::Percentile;
use verge_shared::alarms::{
    Alarm, AlarmId, AlarmReport, AlarmState, Entity, EntityType, Observer, Severity, Transition,
};
use verge_shared::fleet::FleetEventKind;
use verge_shared::messages::{Event, EventKind};
use verge_shared::{AgentId, RegionId, ServiceName, Timestamp};

use super::accounts::Principal;
use super::alarms::{AlarmBook, Raised};
use super::changes::{Change, ChangeKind, Scope};
use super::composition::App;
use super::error::AppError;
use super::fleet_events::FleetNote;
use super::health::Health;
use super::ingest::IngestError;
use super::types::Outgoing;
use crate::store::{StoreError, Suppression};

/// Most alarms one page of `GET /api/v1/alarms` holds.
pub const MAX_ALARM_PAGE: usize = 500;

/// A node whose heartbeat's time differs from the controller's by more
/// than this has a skewed clock.
pub const CLOCK_SKEW_LIMIT: Duration = Duration::from_secs(30);

/// A controller certificate expiring within this is alarmed.
pub const CERTIFICATE_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Which alarms a list holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlarmStates {
    /// The raised ones, most severe first.
    #[default]
    Active,
    /// The history, oldest first.
    Cleared,
    /// Both, by instance.
    All,
}

/// The filters of `GET /api/v1/alarms`.
#[derive(Clone, Debug, Default)]
pub struct AlarmFilter {
    pub state: AlarmStates,
    pub severity: Option<Severity>,
    pub alarm: Option<AlarmId>,
    pub node: Option<AgentId>,
    pub region: Option<RegionId>,
    pub service: Option<ServiceName>,
    /// Only alarms with a higher instance.
    pub after: u64,
}

impl AlarmFilter {
    fn keeps(&self, a: &Alarm) -> bool {
        a.instance > self.after
            && self.severity.is_none_or(|s| s == a.severity)
            && self.alarm.is_none_or(|id| id == a.id)
            && self
                .node
                .as_ref()
                .is_none_or(|n| a.entity.node.as_ref() == Some(n))
            && self
                .region
                .as_ref()
                .is_none_or(|r| a.region.as_ref() == Some(r))
            && self
                .service
                .as_ref()
                .is_none_or(|s| a.entity.service.as_ref() == Some(s))
    }
}

/// One page of alarms.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AlarmPage {
    pub alarms: Vec<Alarm>,
    /// Pass as `after` for the next page; `null` when this one is the last.
    pub next_after: Option<u64>,
}

/// One alarm of the catalogue, with its suppression.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CatalogueEntry {
    pub id: AlarmId,
    pub code: &'static str,
    pub title: &'static str,
    pub severity: Severity,
    pub entity_type: EntityType,
    pub observer: Observer,
    pub probable_cause: &'static str,
    pub repair: &'static str,
    pub raise_after_secs: u64,
    pub clear_after_secs: u64,
    /// Who suppressed it and when; `null` when it is published.
    pub suppressed: Option<Suppression>,
}

/// The whole catalogue.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Catalogue {
    pub alarms: Vec<CatalogueEntry>,
}

fn catalogue_entry(id: AlarmId, suppressed: Option<Suppression>) -> CatalogueEntry {
    let d = id.definition();
    CatalogueEntry {
        id,
        code: d.code,
        title: d.title,
        severity: d.severity,
        entity_type: d.entity_type,
        observer: d.observer,
        probable_cause: d.probable_cause,
        repair: d.repair,
        raise_after_secs: d.raise_after_secs,
        clear_after_secs: d.clear_after_secs,
        suppressed,
    }
}

/// `user (token name)`, as acknowledgements and suppressions record it.
fn actor(principal: &Principal) -> String {
    format!("{} (token {})", principal.user, principal.token)
}

impl App {
    /// The region of `entity`'s node, if it names a known one.
    fn alarm_region(&self, entity: &Entity) -> Option<RegionId> {
        let node = entity.node.as_ref()?;
        self.nodes.records().get(node).map(|n| n.region.clone())
    }

    /// Raises `id` for `entity` with `reason`: stored, published retained
    /// (unless suppressed), recorded. A raise of an active alarm only
    /// updates its stored reason.
    pub(super) fn raise_alarm(
        &self,
        id: AlarmId,
        entity: &Entity,
        region: Option<RegionId>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let raised = {
            let mut book = self.alarms.book();
            let raised = book.raise(id, entity, region, reason, now);
            match &raised {
                Raised::New(alarm) => {
                    // The counter first: an instance is never given out twice.
                    self.store.put_alarm_meta(&book.meta)?;
                    self.store.put_active_alarm(alarm)?;
                }
                Raised::Reason(alarm) => self.store.put_active_alarm(alarm)?,
                Raised::Unchanged => {}
            }
            raised
        };
        if let Raised::New(alarm) = raised {
            warn!(alarm = %alarm.id, entity = %alarm.entity_instance, instance = alarm.instance,
                severity = alarm.severity.as_str(), reason = %alarm.reason, "Alarm raised.");
            if !alarm.suppressed {
                self.publish_raised(&alarm);
            }
            self.alarm_changed(&alarm, FleetEventKind::AlarmRaised, None);
        }
        Ok(())
    }

    /// Clears the active `id` for `entity`, if it is: into the history,
    /// published once not retained and its retained copy removed (unless
    /// suppressed), recorded.
    pub(super) fn clear_alarm(&self, id: AlarmId, entity: &Entity) -> Result<(), StoreError> {
        let now = self.now();
        let cleared = {
            let mut book = self.alarms.book();
            let Some((alarm, pruned)) = book.clear(id, entity, now) else {
                return Ok(());
            };
            self.store.delete_active_alarm(id, entity)?;
            self.store.put_alarm_history(&alarm)?;
            if let Some(through) = pruned {
                self.store.delete_alarm_history_through(through)?;
            }
            alarm
        };
        info!(alarm = %cleared.id, entity = %cleared.entity_instance, instance = cleared.instance, "Alarm cleared.");
        if !cleared.suppressed {
            self.publish_cleared(&cleared);
        }
        self.alarm_changed(&cleared, FleetEventKind::AlarmCleared, None);
        Ok(())
    }

    /// Logs a failed alarm step; the next observation tries again.
    fn log_alarm_failure(&self, id: AlarmId, result: Result<(), StoreError>) {
        if let Err(e) = result {
            error!(alarm = %id, error = %e, "Cannot store an alarm change.");
        }
    }

    /// Feeds one observation of a controller-observed condition through
    /// its hysteresis, raising or clearing when due.
    fn observe_alarm(
        &self,
        id: AlarmId,
        entity: &Entity,
        condition: bool,
        reason: &str,
        now: Timestamp,
    ) {
        let transition = self.alarms.book().observe(id, entity, condition, now);
        let result = match transition {
            Some(Transition::Raise) => {
                self.raise_alarm(id, entity, self.alarm_region(entity), reason)
            }
            Some(Transition::Clear) => self.clear_alarm(id, entity),
            // A raised condition whose reason changed (a new scheduler reason).
            None if condition
                && self
                    .alarms
                    .book()
                    .active
                    .contains_key(&(id, entity.clone())) =>
            {
                self.raise_alarm(id, entity, self.alarm_region(entity), reason)
            }
            None => Ok(()),
        };
        self.log_alarm_failure(id, result);
    }

    fn publish_raised(&self, alarm: &Alarm) {
        let topic = self
            .settings
            .topics
            .alarm(alarm.region.as_ref(), alarm.id, &alarm.entity);
        let payload = serde_json::to_vec(alarm).unwrap_or_default();
        self.send(
            "alarm",
            Outgoing {
                topic,
                payload,
                retain: true,
            },
        );
    }

    fn publish_cleared(&self, alarm: &Alarm) {
        let topic = self
            .settings
            .topics
            .alarm(alarm.region.as_ref(), alarm.id, &alarm.entity);
        let payload = serde_json::to_vec(alarm).unwrap_or_default();
        self.send(
            "alarm",
            Outgoing {
                topic: topic.clone(),
                payload,
                retain: false,
            },
        );
        self.remove_retained(topic);
    }

    fn remove_retained(&self, topic: String) {
        self.send(
            "alarm_clear",
            Outgoing {
                topic,
                payload: Vec::new(),
                retain: true,
            },
        );
    }

    /// An alarm changed: a fleet event and an `alarm` change on the watch stream.
    fn alarm_changed(&self, alarm: &Alarm, kind: FleetEventKind, actor: Option<String>) {
        let detail = match kind {
            FleetEventKind::AlarmRaised => format!("{}: {}", alarm.title, alarm.reason),
            FleetEventKind::AlarmCleared => format!("{} cleared", alarm.title),
            _ => format!("{} ({})", alarm.title, kind.as_str()),
        };
        self.fleet_event(FleetNote {
            region: alarm.region.clone(),
            node: alarm.entity.node.clone(),
            service: alarm.entity.service.clone(),
            replica: alarm.entity.replica,
            alarm: Some(AlarmReport {
                id: alarm.id,
                entity: alarm.entity.clone(),
            }),
            actor,
            ..FleetNote::new(kind, detail)
        });
        let action = match kind {
            FleetEventKind::AlarmRaised => "raised",
            FleetEventKind::AlarmCleared => "cleared",
            FleetEventKind::AlarmAcknowledged => "acknowledged",
            FleetEventKind::AlarmSuppressed => "suppressed",
            _ => "unsuppressed",
        };
        self.record_change(Change {
            kind: ChangeKind::Alarm,
            action,
            regions: alarm
                .region
                .clone()
                .map_or(Scope::Nothing, |r| Scope::Of(vec![r])),
            services: alarm
                .entity
                .service
                .clone()
                .map_or(Scope::Nothing, |s| Scope::Of(vec![s])),
            object: serde_json::to_string(alarm).unwrap_or_else(|_| "null".to_owned()),
        });
    }

    /// Publishes every active, unsuppressed alarm again, retained: the
    /// broker may have lost them (on every connect, and with the periodic
    /// republish of desired states).
    pub(super) fn republish_alarms(&self) {
        let active: Vec<Alarm> = self
            .alarms
            .book()
            .active
            .values()
            .filter(|a| !a.suppressed)
            .cloned()
            .collect();
        for alarm in &active {
            self.publish_raised(alarm);
        }
    }

    /// `node_offline` for each node by its health at the latest plan:
    /// raised when it stops being healthy (Last Will, or heartbeats
    /// missing), cleared when it is healthy again; with the fleet events
    /// `node_offline` and `node_online`. Revoked nodes have none.
    pub(super) fn observe_node_health(&self, health: &BTreeMap<AgentId, Health>, now: Timestamp) {
        let nodes: Vec<(AgentId, RegionId, bool)> = {
            let records = self.nodes.records();
            health
                .keys()
                .filter_map(|id| records.get(id))
                .filter(|n| !n.revoked)
                .map(|n| (n.id.clone(), n.region.clone(), n.online))
                .collect()
        };
        for (agent, region, online) in nodes {
            let healthy = health.get(&agent).is_some_and(|h| h.healthy);
            let entity = Entity::node(agent.clone());
            let was_raised = self
                .alarms
                .book()
                .active
                .contains_key(&(AlarmId::NodeOffline, entity.clone()));
            // Raised exactly while unhealthy: nothing to do.
            if was_raised != healthy {
                continue;
            }
            let reason = if online {
                "no heartbeat within the heartbeat timeout"
            } else {
                "the node's presence says offline (Last Will or shutdown)"
            };
            self.observe_alarm(AlarmId::NodeOffline, &entity, !healthy, reason, now);
            let (kind, detail) = if healthy {
                (
                    FleetEventKind::NodeOnline,
                    "the node is online again".to_owned(),
                )
            } else {
                (FleetEventKind::NodeOffline, reason.to_owned())
            };
            self.fleet_event(FleetNote {
                region: Some(region),
                node: Some(agent),
                ..FleetNote::new(kind, detail)
            });
        }
    }

    /// `node_clock_skewed` from one heartbeat's time against the
    /// controller's receive time.
    pub(super) fn observe_clock(&self, agent: &AgentId, at: Timestamp, now: Timestamp) {
        let skew_ms = at.unix_millis().abs_diff(now.unix_millis());
        let skewed = skew_ms > CLOCK_SKEW_LIMIT.as_millis() as u64;
        let reason = format!(
            "the node's clock is {:.1} s {} the controller's",
            skew_ms as f64 / 1000.0,
            if at > now { "ahead of" } else { "behind" }
        );
        self.observe_alarm(
            AlarmId::NodeClockSkewed,
            &Entity::node(agent.clone()),
            skewed,
            &reason,
            now,
        );
    }

    /// `replica_unplaced` and `latency_target_violated` from the current
    /// plan and the figures it was made from; conditions of replicas that
    /// are gone are absent.
    pub(super) fn observe_placement(&self, now: Timestamp) {
        let (unplaced, violated) = self.deployment.inspect(|plan, inputs| {
            let mut unplaced = Vec::new();
            let mut violated = Vec::new();
            for (service, replicas) in &plan.services {
                let input = inputs.and_then(|i| i.services.iter().find(|s| &s.name == service));
                for replica in replicas {
                    let entity = Entity::replica(service.clone(), replica.index);
                    let Some(node) = &replica.node else {
                        let reason = replica.reason.clone().unwrap_or_default();
                        unplaced.push((entity, reason));
                        continue;
                    };
                    let Some(target) = input.and_then(|s| s.latency.as_ref()) else {
                        continue;
                    };
                    let per_region = input.is_some_and(|s| s.per_target_region);
                    let regions: Vec<&RegionId> = if per_region && !target.to.is_empty() {
                        vec![&target.to[replica.index as usize % target.to.len()]]
                    } else {
                        target.to.iter().collect()
                    };
                    let figures = inputs
                        .and_then(|i| i.nodes.iter().find(|n| &n.id == node))
                        .map(|n| &n.latency);
                    let worst = regions
                        .iter()
                        .filter_map(|r| {
                            figures
                                .and_then(|f| f.get(*r))
                                .map(|f| (*r, f.at(target.percentile)))
                        })
                        .filter(|(_, ms)| *ms > target.max_ms)
                        .max_by(|a, b| a.1.total_cmp(&b.1));
                    if let Some((region, ms)) = worst {
                        let p = match target.percentile {
                            Percentile::P50 => 50,
                            Percentile::P90 => 90,
                            Percentile::P99 => 99,
                        };
                        let reason = format!(
                            "node {node} measures {ms:.1} ms to {region} at p{p}, above the target of {} ms",
                            target.max_ms
                        );
                        violated.push((entity, reason));
                    }
                }
            }
            (unplaced, violated)
        });
        for (id, conditions) in [
            (AlarmId::ReplicaUnplaced, unplaced),
            (AlarmId::LatencyTargetViolated, violated),
        ] {
            let holding: BTreeSet<Entity> = conditions.iter().map(|(e, _)| e.clone()).collect();
            for (entity, reason) in &conditions {
                self.observe_alarm(id, entity, true, reason, now);
            }
            let tracked = self.alarms.book().tracked(id);
            for entity in tracked.iter().filter(|e| !holding.contains(*e)) {
                self.observe_alarm(id, entity, false, "", now);
            }
        }
    }

    /// The controller's own alarms: its broker connection and its
    /// certificates. Called on every health tick.
    pub(super) fn observe_controller(&self, now: Timestamp) {
        let (lost_for, expiring) = {
            let book = self.alarms.book();
            let expiring: Vec<String> = book
                .certificates
                .iter()
                .filter(|(_, not_after)| {
                    not_after.unix_millis() < now.saturating_add(CERTIFICATE_WARNING).unix_millis()
                })
                .map(|(name, not_after)| format!("the {name} certificate expires at {not_after}"))
                .collect();
            (
                book.broker_lost_since
                    .map(|since| (since, now.saturating_since(since))),
                expiring,
            )
        };
        let controller = Entity::controller();
        // The part counts how long the broker is lost: its hold time is
        // measured from the disconnection, not from the first tick that saw it.
        let hold = Duration::from_secs(AlarmId::ControllerBrokerLost.definition().raise_after_secs);
        let result = match lost_for {
            Some((since, d)) if d >= hold => self.raise_alarm(
                AlarmId::ControllerBrokerLost,
                &controller,
                None,
                &format!("not connected to the MQTT broker since {since}"),
            ),
            Some(_) => Ok(()),
            None => self.clear_alarm(AlarmId::ControllerBrokerLost, &controller),
        };
        self.log_alarm_failure(AlarmId::ControllerBrokerLost, result);
        self.observe_alarm(
            AlarmId::ControllerCertificateExpiring,
            &controller,
            !expiring.is_empty(),
            &expiring.join("; "),
            now,
        );
    }

    /// The MQTT client connected (on every ConnAck).
    pub fn broker_connected(&self, now: Timestamp) {
        self.alarms.book().broker_lost_since = None;
        self.observe_controller(now);
    }

    /// The MQTT client's connection failed; the first failure since it
    /// was connected starts the clock.
    pub fn broker_disconnected(&self, now: Timestamp) {
        self.alarms.book().broker_lost_since.get_or_insert(now);
    }

    /// The controller's own certificates (CA, server) to watch for expiry.
    pub fn watch_certificates(&self, certificates: Vec<(String, Timestamp)>) {
        self.alarms.book().certificates = certificates;
        self.observe_controller(self.now());
    }

    /// Clears every alarm of `agent`'s (a revoked node).
    pub(super) fn clear_node_alarms(&self, agent: &AgentId) {
        let keys: Vec<(AlarmId, Entity)> = self
            .alarms
            .book()
            .active
            .keys()
            .filter(|(_, e)| e.node.as_ref() == Some(agent))
            .cloned()
            .collect();
        for (id, entity) in keys {
            let result = self.clear_alarm(id, &entity);
            self.log_alarm_failure(id, result);
        }
    }

    /// An agent's signed `alarm_raised` or `alarm_cleared` event from
    /// `region`: accepted only for an alarm the catalogue has agents
    /// observe, about an entity of its type on the sending node.
    pub(super) fn ingest_alarm_event(
        &self,
        region: &RegionId,
        event: &Event,
    ) -> Result<(), IngestError> {
        let report = event
            .alarm
            .as_ref()
            .ok_or_else(|| IngestError::Alarm("an alarm event without its alarm".to_owned()))?;
        let d = report.id.definition();
        if d.observer != Observer::Agent {
            return Err(IngestError::Alarm(format!(
                "{} is observed by the controller, not reported by agents",
                report.id
            )));
        }
        if !report.entity.fits(d.entity_type) {
            return Err(IngestError::Alarm(format!(
                "entity {} does not fit {}, an alarm about a {:?}",
                report.entity.instance(),
                report.id,
                d.entity_type
            )));
        }
        if report.entity.node.as_ref() != Some(&event.agent) {
            return Err(IngestError::Alarm(format!(
                "entity {} is not the sending node's",
                report.entity.instance()
            )));
        }
        match event.kind {
            EventKind::AlarmRaised => self.raise_alarm(
                report.id,
                &report.entity,
                Some(region.clone()),
                &event.detail,
            )?,
            EventKind::AlarmCleared => self.clear_alarm(report.id, &report.entity)?,
            _ => {}
        }
        Ok(())
    }

    /// A page of alarms: the active ones most severe first (then oldest
    /// raised first), or the history oldest first, or both by instance.
    pub fn alarms(&self, filter: &AlarmFilter, limit: usize) -> AlarmPage {
        let limit = limit.clamp(1, MAX_ALARM_PAGE);
        let book = self.alarms.book();
        let mut found: Vec<Alarm> = match filter.state {
            AlarmStates::Active => {
                let mut active: Vec<Alarm> = book
                    .active
                    .values()
                    .filter(|a| filter.keeps(a))
                    .cloned()
                    .collect();
                active.sort_by_key(|a| (a.severity, a.raised_at, a.instance));
                active
            }
            AlarmStates::Cleared => history(&book, filter),
            AlarmStates::All => {
                let mut all = history(&book, filter);
                all.extend(book.active.values().filter(|a| filter.keeps(a)).cloned());
                all.sort_by_key(|a| a.instance);
                all
            }
        };
        drop(book);
        let more = found.len() > limit;
        found.truncate(limit);
        let next_after = (more && filter.state != AlarmStates::Active)
            .then(|| found.last().map(|a| a.instance))
            .flatten();
        AlarmPage {
            alarms: found,
            next_after,
        }
    }

    /// The catalogue with each alarm's suppression.
    pub fn alarm_catalogue(&self) -> Catalogue {
        let book = self.alarms.book();
        Catalogue {
            alarms: AlarmId::ALL
                .iter()
                .map(|&id| catalogue_entry(id, book.meta.suppressed.get(&id).cloned()))
                .collect(),
        }
    }

    /// Acknowledges the active alarm `instance` as `principal`.
    pub fn acknowledge_alarm(
        &self,
        instance: u64,
        principal: &Principal,
    ) -> Result<Alarm, AppError> {
        let by = actor(principal);
        let alarm = {
            let mut book = self.alarms.book();
            let alarm =
                book.acknowledge(instance, &by, self.now())
                    .ok_or_else(|| AppError::NotFound {
                        what: "active alarm",
                        name: instance.to_string(),
                    })?;
            self.store.put_active_alarm(&alarm)?;
            alarm
        };
        info!(alarm = %alarm.id, instance, by = %by, "Alarm acknowledged.");
        self.alarm_changed(&alarm, FleetEventKind::AlarmAcknowledged, Some(by));
        Ok(alarm)
    }

    /// Suppresses (or, with `suppress` false, publishes again) the alarm
    /// id: its active alarms' retained copies are removed (or published).
    pub fn set_alarm_suppressed(
        &self,
        id: AlarmId,
        suppress: bool,
        principal: &Principal,
    ) -> Result<CatalogueEntry, AppError> {
        let by = actor(principal);
        let suppression = suppress.then(|| Suppression {
            by: by.clone(),
            at: self.now(),
        });
        let (changed, entry) = {
            let mut book: std::sync::MutexGuard<'_, AlarmBook> = self.alarms.book();
            let changed = book.set_suppressed(id, suppression);
            if let Some(active) = &changed {
                self.store.put_alarm_meta(&book.meta)?;
                for alarm in active {
                    self.store.put_active_alarm(alarm)?;
                }
            }
            let entry = catalogue_entry(id, book.meta.suppressed.get(&id).cloned());
            (changed, entry)
        };
        let Some(active) = changed else {
            return Ok(entry);
        };
        info!(alarm = %id, suppress, by = %by, "Alarm suppression changed.");
        let kind = if suppress {
            FleetEventKind::AlarmSuppressed
        } else {
            FleetEventKind::AlarmUnsuppressed
        };
        for alarm in &active {
            if suppress {
                let topic =
                    self.settings
                        .topics
                        .alarm(alarm.region.as_ref(), alarm.id, &alarm.entity);
                self.remove_retained(topic);
            } else {
                self.publish_raised(alarm);
            }
        }
        // One event for the alarm id, with no entity.
        self.fleet_event(FleetNote {
            alarm: None,
            actor: Some(by),
            ..FleetNote::new(kind, format!("{} ({id})", id.definition().title))
        });
        self.record_change(Change {
            kind: ChangeKind::Alarm,
            action: if suppress {
                "suppressed"
            } else {
                "unsuppressed"
            },
            regions: Scope::Nothing,
            services: Scope::Nothing,
            object: serde_json::to_string(&entry).unwrap_or_else(|_| "null".to_owned()),
        });
        Ok(entry)
    }

    /// Active alarms by severity, for the metrics.
    pub(super) fn active_alarms_by_severity(&self) -> BTreeMap<Severity, u64> {
        let mut counts = BTreeMap::new();
        for alarm in self.alarms.book().active.values() {
            *counts.entry(alarm.severity).or_insert(0) += 1;
        }
        counts
    }
}

/// The history entries `filter` keeps, oldest first, up to one more than
/// a page.
fn history(book: &AlarmBook, filter: &AlarmFilter) -> Vec<Alarm> {
    book.history
        .iter()
        .filter(|a| a.state == AlarmState::Cleared && filter.keeps(a))
        .take(MAX_ALARM_PAGE + 1)
        .cloned()
        .collect()
}
