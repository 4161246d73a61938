//! The change-feed part: every change the watch stream shows gets the next
//! id, is kept in a bounded ring for watchers that reconnect, and is handed
//! to each connected watcher through a bounded queue of its own.
//!
//! A part of the app: it knows nothing of nodes, services or tokens; the
//! use cases describe a change and this part numbers, keeps and fans it out.
//! Its one lock is a leaf: held to number a change and push it, or to
//! register a watcher, with no other lock taken inside it and no `await`.
//!
//! Ids continue from `base`, the controller's start time in microseconds:
//! a restarted controller starts above every id the previous run gave out
//! (unless it issued more than a million changes a second, or the clock
//! was set back by more than the previous run lasted), so an id is never
//! reused; one from before the start is told to re-list.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use verge_shared::{RegionId, ServiceName, Timestamp};

use super::types::lock;
use crate::config::WatchConfig;
use crate::store::Role;

/// What changed. A new kind is a variant here, its name in
/// [`ChangeKind::as_str`], and a call to `App::record_change` where it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Node,
    Service,
    Replica,
    Release,
    Token,
    ApiToken,
    User,
    /// A security event an agent signed and sent, or a fleet event.
    Event,
    /// An alarm raised, cleared, acknowledged, suppressed or unsuppressed.
    Alarm,
}

impl ChangeKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [ChangeKind; 9] = [
        ChangeKind::Node,
        ChangeKind::Service,
        ChangeKind::Replica,
        ChangeKind::Release,
        ChangeKind::Token,
        ChangeKind::ApiToken,
        ChangeKind::User,
        ChangeKind::Event,
        ChangeKind::Alarm,
    ];

    /// The role a watcher needs to see this kind: what listing it needs.
    pub fn role(self) -> Role {
        match self {
            ChangeKind::Node
            | ChangeKind::Service
            | ChangeKind::Replica
            | ChangeKind::Release
            | ChangeKind::Event
            | ChangeKind::Alarm => Role::Viewer,
            ChangeKind::Token => Role::Operator,
            ChangeKind::ApiToken | ChangeKind::User => Role::Admin,
        }
    }

    /// The SSE event name and the `kind` of the event's data.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Node => "node",
            ChangeKind::Service => "service",
            ChangeKind::Replica => "replica",
            ChangeKind::Release => "release",
            ChangeKind::Token => "token",
            ChangeKind::ApiToken => "api_token",
            ChangeKind::User => "user",
            ChangeKind::Event => "event",
            ChangeKind::Alarm => "alarm",
        }
    }

    /// The kind named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Which regions (or services) a change concerns, for the watch filters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope<T> {
    /// All of them: a service that may run in any region.
    All,
    /// These.
    Of(Vec<T>),
    /// None: a filter on this dimension leaves the change out (a release
    /// has no region).
    Nothing,
}

impl<T: PartialEq> Scope<T> {
    fn contains(&self, wanted: &T) -> bool {
        match self {
            Scope::All => true,
            Scope::Of(items) => items.contains(wanted),
            Scope::Nothing => false,
        }
    }
}

/// A change as a use case describes it.
#[derive(Clone, Debug)]
pub struct Change {
    pub kind: ChangeKind,
    /// What happened: `online`, `created`, `placed`, ... (docs/api.md).
    pub action: &'static str,
    pub regions: Scope<RegionId>,
    pub services: Scope<ServiceName>,
    /// The object's current view as JSON, or its key when it was deleted.
    pub object: String,
}

/// A numbered change: its data rendered once, for every watcher.
#[derive(Debug)]
pub struct Recorded {
    pub id: u64,
    pub kind: ChangeKind,
    regions: Scope<RegionId>,
    services: Scope<ServiceName>,
    /// `{"id", "kind", "action", "at", "object"}`.
    pub data: String,
}

/// What a watcher wants to see; `None` is everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchFilter {
    pub kinds: Option<Vec<ChangeKind>>,
    pub region: Option<RegionId>,
    pub service: Option<ServiceName>,
}

impl WatchFilter {
    /// Whether `change` passes every filter given.
    pub fn matches(&self, change: &Recorded) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&change.kind))
            && self
                .region
                .as_ref()
                .is_none_or(|r| change.regions.contains(r))
            && self
                .service
                .as_ref()
                .is_none_or(|s| change.services.contains(s))
    }
}

/// Why a watcher must list everything again instead of resuming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relist {
    /// Its last id is from before this controller started.
    Restarted,
    /// The changes after its last id are no longer in the buffer.
    TooOld,
    /// Its last id was never given out (another controller's, or made up).
    Unknown,
}

impl Relist {
    pub fn as_str(self) -> &'static str {
        match self {
            Relist::Restarted => "restarted",
            Relist::TooOld => "too_old",
            Relist::Unknown => "unknown_id",
        }
    }
}

/// How a new watcher's stream begins.
#[derive(Debug)]
pub enum Start {
    /// No id given: live from `head`, the last id given out.
    Live { head: u64 },
    /// Every buffered change after the given id that passes the filter,
    /// then live.
    Resume { replay: Vec<Arc<Recorded>> },
    /// The given id cannot be resumed from: list again, then live from `head`.
    Relist { head: u64, reason: Relist },
}

/// A connected watcher's end: its live queue.
pub struct Subscription {
    pub live: mpsc::Receiver<Arc<Recorded>>,
    /// Set when the watcher fell a whole queue behind and was dropped.
    pub overflowed: Arc<AtomicBool>,
    _registered: Registered,
}

/// The watcher cap was reached.
#[derive(Debug)]
pub struct Full {
    pub max: usize,
}

struct Watcher {
    filter: WatchFilter,
    tx: mpsc::Sender<Arc<Recorded>>,
    overflowed: Arc<AtomicBool>,
}

struct State {
    /// Ids of this run are above `base`.
    base: u64,
    /// The last id given out (`base` before the first change).
    head: u64,
    ring: VecDeque<Arc<Recorded>>,
    watchers: BTreeMap<u64, Watcher>,
    next_watcher: u64,
    /// The controller is shutting down: streams end, none start.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    bounds: WatchConfig,
}

/// The recent changes and the watchers they go to.
pub(crate) struct Changes {
    shared: Arc<Shared>,
}

impl Changes {
    /// An empty feed whose ids start above `started_at` in microseconds.
    pub(crate) fn new(started_at: Timestamp, bounds: WatchConfig) -> Self {
        let base = started_at.unix_millis().saturating_mul(1000);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    base,
                    head: base,
                    ring: VecDeque::with_capacity(bounds.buffer.min(4096)),
                    watchers: BTreeMap::new(),
                    next_watcher: 0,
                    closed: false,
                }),
                bounds,
            }),
        }
    }

    /// Numbers `change`, keeps it in the ring (dropping the oldest beyond
    /// the buffer) and queues it for every watcher whose filter it passes.
    /// A watcher whose queue is full is dropped, never waited for.
    /// Returns the id.
    pub(crate) fn record(&self, change: Change, at: Timestamp) -> u64 {
        let mut state = lock(&self.shared.state);
        state.head += 1;
        let id = state.head;
        let recorded = Arc::new(Recorded {
            id,
            kind: change.kind,
            regions: change.regions,
            services: change.services,
            data: format!(
                r#"{{"id":{id},"kind":"{}","action":"{}","at":"{at}","object":{}}}"#,
                change.kind.as_str(),
                change.action,
                change.object
            ),
        });
        if state.ring.len() >= self.shared.bounds.buffer {
            state.ring.pop_front();
        }
        state.ring.push_back(Arc::clone(&recorded));
        state.watchers.retain(|_, watcher| {
            if !watcher.filter.matches(&recorded) {
                return true;
            }
            match watcher.tx.try_send(Arc::clone(&recorded)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    watcher.overflowed.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        id
    }

    /// The last `n` changes still in the ring that `filter` passes, newest
    /// first.
    pub(crate) fn recent(&self, filter: &WatchFilter, n: usize) -> Vec<Arc<Recorded>> {
        let state = lock(&self.shared.state);
        state
            .ring
            .iter()
            .rev()
            .filter(|r| filter.matches(r))
            .take(n)
            .cloned()
            .collect()
    }

    /// Registers a watcher. With `since` (its last id), it resumes from the
    /// ring or is told to re-list; either way it misses nothing after the
    /// point it is given, and sees nothing twice.
    pub(crate) fn subscribe(
        &self,
        filter: WatchFilter,
        since: Option<u64>,
    ) -> Result<(Start, Subscription), Full> {
        let bounds = self.shared.bounds;
        let mut state = lock(&self.shared.state);
        if state.watchers.len() >= bounds.max_watchers {
            return Err(Full {
                max: bounds.max_watchers,
            });
        }
        let head = state.head;
        let oldest = state.ring.front().map_or(head + 1, |r| r.id);
        let start = match since {
            None => Start::Live { head },
            Some(id) if id > head => Start::Relist {
                head,
                reason: Relist::Unknown,
            },
            Some(id) if id < state.base => Start::Relist {
                head,
                reason: Relist::Restarted,
            },
            // The change right after `id` was dropped from the ring.
            Some(id) if id + 1 < oldest => Start::Relist {
                head,
                reason: Relist::TooOld,
            },
            Some(id) => Start::Resume {
                replay: state
                    .ring
                    .iter()
                    .filter(|r| r.id > id && filter.matches(r))
                    .cloned()
                    .collect(),
            },
        };
        let (tx, live) = mpsc::channel(bounds.queue);
        let overflowed = Arc::new(AtomicBool::new(false));
        let key = state.next_watcher;
        state.next_watcher += 1;
        // After shutdown began the sender is dropped: the stream ends at once.
        if !state.closed {
            state.watchers.insert(
                key,
                Watcher {
                    filter,
                    tx,
                    overflowed: Arc::clone(&overflowed),
                },
            );
        }
        let subscription = Subscription {
            live,
            overflowed,
            _registered: Registered {
                shared: Arc::clone(&self.shared),
                key,
            },
        };
        Ok((start, subscription))
    }

    /// Ends every watcher's stream after what is queued for it, and every
    /// later one at once: the HTTP server's graceful shutdown waits for
    /// responses to finish, and a watch never would.
    pub(crate) fn close(&self) {
        let mut state = lock(&self.shared.state);
        state.closed = true;
        state.watchers.clear();
    }

    /// How many watchers are connected.
    pub(crate) fn n_watchers(&self) -> usize {
        lock(&self.shared.state).watchers.len()
    }
}

/// Removes its watcher when the stream ends, however it ends.
struct Registered {
    shared: Arc<Shared>,
    key: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.shared.state).watchers.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(buffer: usize, queue: usize, max_watchers: usize) -> WatchConfig {
        WatchConfig {
            buffer,
            queue,
            max_watchers,
            ..WatchConfig::default()
        }
    }

    fn change(kind: ChangeKind, region: &str) -> Change {
        Change {
            kind,
            action: "updated",
            regions: Scope::Of(vec![RegionId::new(region).expect("region")]),
            services: Scope::Nothing,
            object: "{}".into(),
        }
    }

    #[test]
    fn the_data_is_json_with_the_id_and_the_object() {
        let feed = Changes::new(Timestamp::from_unix_millis(5), bounds(4, 4, 4));
        let mut c = change(ChangeKind::Node, "eu");
        c.object = r#"{"id":"edge-1"}"#.into();
        let id = feed.record(c, Timestamp::from_unix_millis(6));
        assert_eq!(id, 5001);
        let (start, _sub) = feed
            .subscribe(WatchFilter::default(), Some(5000))
            .expect("room");
        let replay = match start {
            Start::Resume { replay } => replay,
            other => panic!("{other:?}"),
        };
        let data: serde_json::Value = serde_json::from_str(&replay[0].data).expect("json");
        assert_eq!(data["id"], 5001);
        assert_eq!(data["kind"], "node");
        assert_eq!(data["action"], "updated");
        assert_eq!(data["object"]["id"], "edge-1");
        assert!(data["at"].as_str().is_some_and(|t| t.starts_with("1970")));
    }

    #[test]
    fn scopes_match_filters_as_documented() {
        let eu = RegionId::new("eu").expect("region");
        let web = ServiceName::new("web").expect("name");
        let filter = |region: Option<&RegionId>, service: Option<&ServiceName>| WatchFilter {
            kinds: None,
            region: region.cloned(),
            service: service.cloned(),
        };
        let recorded = |regions, services| Recorded {
            id: 1,
            kind: ChangeKind::Service,
            regions,
            services,
            data: String::new(),
        };
        let everywhere = recorded(Scope::All, Scope::Of(vec![web.clone()]));
        assert!(filter(Some(&eu), Some(&web)).matches(&everywhere));
        let unregioned = recorded(Scope::Nothing, Scope::All);
        assert!(!filter(Some(&eu), None).matches(&unregioned));
        assert!(filter(None, Some(&web)).matches(&unregioned));
        let kinds = WatchFilter {
            kinds: Some(vec![ChangeKind::Node]),
            ..WatchFilter::default()
        };
        assert!(!kinds.matches(&everywhere));
    }
}
