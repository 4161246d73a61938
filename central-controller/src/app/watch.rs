//! The watch stream's use cases: recording a change where it happens, and
//! a watcher's stream of them (`GET /api/v1/watch`).
//!
//! Every change goes through [`App::record_change`]; the methods here
//! describe one of each kind (its current view, the regions and services
//! it concerns) so that the use cases only say what happened.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde_json::json;
use tracing::{debug, warn};
use verge_scheduler::{Plan, ReplicaPlan};
use verge_shared::{AgentId, RegionId, ServiceName};

use super::accounts::{ApiTokenView, UserView};
use super::changes::{Change, ChangeKind, Full, Recorded, Scope, Start, Subscription, WatchFilter};
use super::composition::App;
use super::enroll::TokenView;
use super::error::AppError;
use super::fleet_events::FleetNote;
use super::views::ServiceView;
use crate::store::{ReleaseRecord, Role, ServiceRecord};
use verge_shared::fleet::FleetEventKind;

/// One SSE event of a watch stream.
#[derive(Debug)]
pub struct Frame {
    /// The SSE `id:`; control events that move no position carry none.
    pub id: Option<u64>,
    /// The SSE `event:`: a kind (`node`, ...) or `sync`, `relist`, `dropped`.
    pub event: &'static str,
    data: FrameData,
}

#[derive(Debug)]
enum FrameData {
    Change(Arc<Recorded>),
    Control(String),
}

impl Frame {
    /// The SSE `data:`, one line of JSON.
    pub fn data(&self) -> &str {
        match &self.data {
            FrameData::Change(recorded) => &recorded.data,
            FrameData::Control(text) => text,
        }
    }

    fn change(recorded: Arc<Recorded>) -> Self {
        Self {
            id: Some(recorded.id),
            event: recorded.kind.as_str(),
            data: FrameData::Change(recorded),
        }
    }

    fn control(id: Option<u64>, event: &'static str, data: serde_json::Value) -> Self {
        Self {
            id,
            event,
            data: FrameData::Control(data.to_string()),
        }
    }
}

/// A connected watcher: its opening events, then its live changes, then,
/// if it fell a whole queue behind, one `dropped` event. Dropping it
/// unregisters the watcher.
pub struct Watch {
    opening: VecDeque<Frame>,
    subscription: Subscription,
    /// The last id this watcher was given, for the `dropped` event.
    last_id: Option<u64>,
    queue: usize,
    ended: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("last_id", &self.last_id)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The next event; `None` when the stream is over (only after a
    /// `dropped` event, or when the controller shuts down).
    pub async fn next(&mut self) -> Option<Frame> {
        if self.ended {
            return None;
        }
        let frame = match self.opening.pop_front() {
            Some(frame) => frame,
            None => match self.subscription.live.recv().await {
                Some(recorded) => Frame::change(recorded),
                None => {
                    self.ended = true;
                    if !self.subscription.overflowed.load(Ordering::Acquire) {
                        return None;
                    }
                    warn!(last_id = ?self.last_id, queue = self.queue, "Dropped a watcher that fell a whole queue behind.");
                    return Some(Frame::control(
                        None,
                        "dropped",
                        json!({
                            "kind": "dropped",
                            "reason": "slow_consumer",
                            "last_id": self.last_id,
                            "message": format!(
                                "this watcher fell {} changes behind and was disconnected; \
                                 reconnect with Last-Event-ID to resume",
                                self.queue
                            ),
                        }),
                    ));
                }
            },
        };
        if frame.id.is_some() {
            self.last_id = frame.id;
        }
        Some(frame)
    }
}

fn to_json(value: &impl Serialize) -> String {
    // The views are plain structs with string keys; this cannot fail, but
    // a change must go out even if it did.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn regions_of(spec_regions: &[RegionId]) -> Scope<RegionId> {
    if spec_regions.is_empty() {
        Scope::All
    } else {
        Scope::Of(spec_regions.to_vec())
    }
}

/// A release as lists and the watch stream show it: no envelope, no run spec.
pub fn release_summary(record: &ReleaseRecord) -> serde_json::Value {
    json!({
        "digest": record.digest,
        "service": record.release.service,
        "version": record.release.version.to_string(),
        "publisher": record.publisher,
        "artifacts": record.release.artifacts,
        "created_at": record.created_at,
    })
}

impl App {
    /// Numbers `change` and hands it to every watcher it concerns. The one
    /// way a change reaches the watch stream; call it after the change is
    /// stored, so a client that lists on seeing it sees the change.
    pub(super) fn record_change(&self, change: Change) {
        self.changes.record(change, self.now());
    }

    /// The last `n` changes of the kinds `role` may see, newest first (what
    /// the watch buffer still holds).
    pub fn recent_changes(&self, role: Role, n: usize) -> Vec<Arc<Recorded>> {
        let kinds = ChangeKind::ALL
            .into_iter()
            .filter(|k| k.role() <= role)
            .collect();
        let filter = WatchFilter {
            kinds: Some(kinds),
            ..WatchFilter::default()
        };
        self.changes.recent(&filter, n)
    }

    /// Registers a watcher, resuming after `since` (its `Last-Event-ID`)
    /// when the buffer still holds what followed, and otherwise starting
    /// with a `relist` event. Without `since`, it starts with a `sync`
    /// event carrying the current id.
    pub fn watch(&self, filter: WatchFilter, since: Option<u64>) -> Result<Watch, AppError> {
        let (start, subscription) = self
            .changes
            .subscribe(filter, since)
            .map_err(|Full { max }| AppError::TooManyWatchers { max })?;
        let opening: VecDeque<Frame> = match start {
            Start::Live { head } => [Frame::control(
                Some(head),
                "sync",
                json!({
                    "id": head,
                    "kind": "sync",
                    "message": "live from here: list what you need now, then apply the changes that follow",
                }),
            )]
            .into(),
            Start::Resume { replay } => replay.into_iter().map(Frame::change).collect(),
            Start::Relist { head, reason } => {
                debug!(since = ?since, head, reason = reason.as_str(), "A watcher must re-list.");
                [Frame::control(
                    Some(head),
                    "relist",
                    json!({
                        "id": head,
                        "kind": "relist",
                        "reason": reason.as_str(),
                        "message": "the changes after your Last-Event-ID are not available: \
                                    list everything again, then apply the changes that follow",
                    }),
                )]
                .into()
            }
        };
        Ok(Watch {
            opening,
            subscription,
            last_id: since,
            queue: self.settings.watch.queue,
            ended: false,
        })
    }

    /// A node changed (`action`): its current view goes out.
    pub(super) fn node_changed(&self, agent: &AgentId, action: &'static str) {
        let Some(record) = self.nodes.records().get(agent).cloned() else {
            return;
        };
        let fleet = match action {
            "cordoned" => Some(FleetEventKind::NodeCordoned),
            "drained" => Some(FleetEventKind::NodeDrained),
            "uncordoned" => Some(FleetEventKind::NodeUncordoned),
            "revoked" => Some(FleetEventKind::NodeRevoked),
            _ => None,
        };
        if let Some(kind) = fleet {
            self.fleet_event(FleetNote {
                region: Some(record.region.clone()),
                node: Some(agent.clone()),
                ..FleetNote::new(kind, format!("node {agent} {action}"))
            });
        }
        let now = self.now();
        let object = match self.node_view(&record, now, self.node_latency(&record, now)) {
            Ok(view) => to_json(&view),
            Err(e) => {
                // The change still goes out, with the node's key only.
                warn!(agent = %agent, error = %e, "Cannot build a node's view for the watch stream.");
                json!({ "id": agent }).to_string()
            }
        };
        let services = record
            .last_status
            .as_ref()
            .map(|s| s.workloads.iter().map(|w| w.service.clone()).collect())
            .unwrap_or_default();
        self.record_change(Change {
            kind: ChangeKind::Node,
            action,
            regions: Scope::Of(vec![record.region]),
            services: Scope::Of(services),
            object,
        });
    }

    /// A service was created or updated: its view goes out.
    pub(super) fn service_changed(&self, view: &ServiceView, action: &'static str) {
        let kind = if action == "created" {
            FleetEventKind::ServiceCreated
        } else {
            FleetEventKind::ServiceUpdated
        };
        self.fleet_event(FleetNote {
            service: Some(view.name.clone()),
            release: Some(view.spec.release),
            ..FleetNote::new(
                kind,
                format!(
                    "service {} {action}: {} replicas",
                    view.name, view.spec.replicas
                ),
            )
        });
        self.record_change(Change {
            kind: ChangeKind::Service,
            action,
            regions: regions_of(&view.spec.regions),
            services: Scope::Of(vec![view.name.clone()]),
            object: to_json(view),
        });
    }

    /// A service was deleted: its name goes out.
    pub(super) fn service_deleted(&self, record: &ServiceRecord) {
        self.fleet_event(FleetNote {
            service: Some(record.name.clone()),
            ..FleetNote::new(
                FleetEventKind::ServiceDeleted,
                format!("service {} deleted", record.name),
            )
        });
        self.record_change(Change {
            kind: ChangeKind::Service,
            action: "deleted",
            regions: regions_of(&record.spec.regions),
            services: Scope::Of(vec![record.name.clone()]),
            object: json!({ "name": record.name }).to_string(),
        });
    }

    /// Every replica whose placement differs between `before` and `after`:
    /// `placed` on a node, `unplaced` with the scheduler's reason, or
    /// `removed` with its service or a lower replica count.
    pub(super) fn replicas_changed(&self, before: &Plan, after: &Plan, services: &[ServiceRecord]) {
        let spec_regions: BTreeMap<&ServiceName, &[RegionId]> = services
            .iter()
            .map(|s| (&s.name, s.spec.regions.as_slice()))
            .collect();
        let mut changes = Vec::new();
        let none: &[ReplicaPlan] = &[];
        let names = before.services.keys().chain(after.services.keys());
        let mut seen = std::collections::BTreeSet::new();
        for name in names.filter(|n| seen.insert(*n)) {
            let old = before.services.get(name).map_or(none, Vec::as_slice);
            let new = after.services.get(name).map_or(none, Vec::as_slice);
            for replica in new {
                let previous = old.iter().find(|r| r.index == replica.index);
                if previous == Some(replica) {
                    continue;
                }
                changes.push((name, replica.index, Some(replica), previous));
            }
            for gone in old
                .iter()
                .filter(|o| !new.iter().any(|r| r.index == o.index))
            {
                changes.push((name, gone.index, None, Some(gone)));
            }
        }
        if changes.is_empty() {
            return;
        }
        // One look at the registry for every node named, then none held.
        let region_of: BTreeMap<AgentId, RegionId> = {
            let nodes = self.nodes.records();
            changes
                .iter()
                .flat_map(|(_, _, now, was)| {
                    [now, was]
                        .into_iter()
                        .filter_map(|r| r.and_then(|r| r.node.clone()))
                })
                .filter_map(|id| nodes.get(&id).map(|n| (id, n.region.clone())))
                .collect()
        };
        for (service, index, now, was) in changes {
            let node = now.and_then(|r| r.node.clone());
            let previous_node = was.and_then(|r| r.node.clone());
            let action = match (now, &node) {
                (None, _) => "removed",
                (Some(_), Some(_)) => "placed",
                (Some(_), None) => "unplaced",
            };
            let region = node.as_ref().and_then(|n| region_of.get(n)).cloned();
            let reason = now.and_then(|r| r.reason.clone());
            let fleet = match (now, &node, &previous_node) {
                (None, _, _) => None,
                (Some(_), Some(n), Some(p)) if n != p => Some((
                    FleetEventKind::ReplicaMoved,
                    format!("moved from {p} to {n}"),
                )),
                (Some(_), Some(_), Some(_)) => None,
                (Some(_), Some(n), None) => {
                    Some((FleetEventKind::ReplicaPlaced, format!("placed on {n}")))
                }
                (Some(_), None, _) => Some((
                    FleetEventKind::ReplicaUnplaced,
                    reason.clone().unwrap_or_default(),
                )),
            };
            if let Some((kind, detail)) = fleet {
                self.fleet_event(FleetNote {
                    region: region.clone(),
                    node: node.clone(),
                    service: Some(service.clone()),
                    replica: Some(index),
                    ..FleetNote::new(kind, detail)
                });
            }
            let mut regions: Vec<RegionId> = [&node, &previous_node]
                .into_iter()
                .flatten()
                .filter_map(|n| region_of.get(n).cloned())
                .collect();
            regions.dedup();
            // An unplaced replica concerns every region it may go to.
            let scope = match (&node, spec_regions.get(service)) {
                (None, Some(allowed)) if regions.is_empty() => regions_of(allowed),
                _ => Scope::Of(regions),
            };
            self.record_change(Change {
                kind: ChangeKind::Replica,
                action,
                regions: scope,
                services: Scope::Of(vec![service.clone()]),
                object: json!({
                    "service": service,
                    "index": index,
                    "node": node,
                    "region": region,
                    "reason": now.and_then(|r| r.reason.clone()),
                    "previous_node": previous_node,
                })
                .to_string(),
            });
        }
    }

    /// A release was uploaded: the summary `GET /api/v1/releases` lists.
    pub(super) fn release_uploaded(&self, record: &ReleaseRecord) {
        self.fleet_event(FleetNote {
            service: Some(record.release.service.clone()),
            release: Some(record.digest),
            ..FleetNote::new(
                FleetEventKind::ReleaseUploaded,
                format!(
                    "release {} {} by {}",
                    record.release.service, record.release.version, record.publisher
                ),
            )
        });
        self.record_change(Change {
            kind: ChangeKind::Release,
            action: "uploaded",
            regions: Scope::Nothing,
            services: Scope::Of(vec![record.release.service.clone()]),
            object: release_summary(record).to_string(),
        });
    }

    /// An API token was created or revoked: its view, never its text.
    pub(super) fn api_token_changed(&self, view: &ApiTokenView, action: &'static str) {
        self.record_change(Change {
            kind: ChangeKind::ApiToken,
            action,
            regions: Scope::Nothing,
            services: Scope::Nothing,
            object: to_json(view),
        });
    }

    /// A user was created, changed (role, password) or deleted: its view.
    pub(super) fn user_changed(&self, view: &UserView, action: &'static str) {
        self.record_change(Change {
            kind: ChangeKind::User,
            action,
            regions: Scope::Nothing,
            services: Scope::Nothing,
            object: to_json(view),
        });
    }

    /// A bootstrap token was created, used or revoked: its view, never its text.
    pub(super) fn token_changed(&self, view: &TokenView, action: &'static str) {
        self.record_change(Change {
            kind: ChangeKind::Token,
            action,
            regions: Scope::Of(vec![view.region.clone()]),
            services: Scope::Nothing,
            object: to_json(view),
        });
    }
}
