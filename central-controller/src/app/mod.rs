//! Use cases: services, artifacts, nodes and the deployment loop.
//!
//! The app owns the invariant "an agent's generation grows exactly when its
//! workloads change": every plan → sign → store → publish step runs under one
//! async mutex, and a desired state is stored before it is published.
//!
//! # Shape
//!
//! [`App`] composes parts, each a file with its own state and lock:
//!
//! | part | file | state |
//! |---|---|---|
//! | node registry | `nodes.rs` | node records, health by the clock |
//! | latency | `probes.rs` | latency samples, published probe plans |
//! | identity | `identity.rs` | the CA, the enrollment lock |
//! | log requests | `waiting.rs` | requests waiting for an agent's answer |
//! | deployment | `deployment.rs` | the deployment lock, the plan, loop wake-ups |
//! | access | `access.rs` | sign-in throttling per source, the audit sequence, the hashing bound |
//! | metrics | `metrics.rs` | counters and histograms, the OpenMetrics registry |
//! | change feed | `changes.rs` | recent changes with their ids, connected watchers |
//! | console sessions | `sessions.rs` | when each console session was last used |
//! | telemetry | `telemetry.rs` | each node's latest telemetry samples (informational only) |
//! | events | `events.rs` | the latest agents' and fleet events, one id sequence |
//! | alarms | `alarms.rs` | active alarms, their history, instance counter, suppressions, hysteresis |
//! | held messages | `held.rs` | agents' messages that came before their presence, until it is in |
//!
//! `composition.rs` holds [`App`] itself: the parts plus the store, the
//! signing key, the clock and the outbox that every use case shares.
//!
//! Leaves every file may use: `types.rs` (settings, messages, `lock`),
//! `error.rs`, `clock.rs`, and the pure steps `health.rs` and `deployer.rs`.
//! A part imports leaves only, never another part or this file. The use
//! cases each add an `impl App` block that combines parts: `catalog.rs`
//! (services, artifacts, releases, trust), `reconcile.rs` (the deployment
//! loop), `ingest.rs`, `enroll.rs`, `placement.rs`, `logs.rs`,
//! `node_list.rs`, `views.rs`, `accounts.rs` (users, API tokens, sign-in,
//! authentication), `audit.rs` (the audit log), `monitoring.rs` (what
//! `GET /metrics` shows), `watch.rs` (changes to the watch stream),
//! `console.rs` (console sign-in and sessions), `consumers.rs` (read-only
//! consumer identities and the broker's access files), `telemetry_ingest.rs`
//! (agents' telemetry into its part, and a node's history read back),
//! `events_ingest.rs` (agents' signed events), `liveness.rs` (the call to
//! every agent to announce itself on each connection to the broker), `fleet_events.rs` (the
//! controller's lifecycle events) and `alarm_cases.rs` (raise, clear,
//! observe, publish, list, acknowledge and suppress alarms).
//! They import `App` from `composition.rs` and what else they
//! need from the file that defines it, never from this file, which only
//! declares and re-exports. A new capability (accounts and audit, a watch
//! stream, alarms, rollouts) adds a part and a use-case file.
//!
//! # Lock order
//!
//! Where two parts meet, locks are taken in this order and released in
//! reverse; a lock further down is never held while taking one above it:
//!
//! 1. `deployment.state` (async): held from planning to publishing, across
//!    store writes; the only lock held across an `await`.
//! 2. `identity.enrolling`: never held while waiting for 1; enrollment and
//!    revocation release it before they re-plan.
//! 3. `nodes.records`: held for a lookup or an edit only, never across a
//!    store write or another part's lock, except under 2 (pinning a key).
//! 4. `deployment.planned_from`, then `deployment.plan`;
//!    `deployment.generations` is a leaf, held with nothing else.
//! 5. `probes.book`, then (released first) `probes.published`; the node
//!    registry is read and released before either.
//! 6. `logs.waiting`: a leaf, held with nothing else.
//! 7. `access.throttle`: a leaf, held with nothing else.
//! 8. `access.audit_seq`: held across one audit append and its pruning
//!    (store writes that are not flushed), with no other lock.
//! 9. The metrics' own locks (inside `prometheus-client`): leaves, taken
//!    with nothing else held except the node registry's, which a scrape
//!    releases before it touches them.
//! 10. `changes.state`: a leaf, held with no other std lock (it may be
//!     taken under 1, which it never waits for) to number a change and
//!     queue it without waiting, or to register a watcher. A change's view
//!     is built before it is taken.
//! 11. `sessions.last_used`: a leaf, held with nothing else; an idle
//!     session's token is revoked after it is released.
//! 12. `telemetry.rings`: a leaf, held for one push, copy or removal; the
//!     node registry is read and released before it. Enrollment and
//!     revocation forget a node's history under 2.
//! 13. `events.ring`: a leaf, held for one push or copy.
//! 14. `alarms.book`: a leaf, held for one raise, clear, acknowledgement
//!     or suppression together with the store writes that make it
//!     durable (so that instance numbers and the stored active set
//!     agree), with no other lock taken inside it; the node registry and
//!     the deployment plan are read and released before it. It may be
//!     taken under 1 (a plan observes node health). Publishing, events and
//!     watch changes follow after it is released.
//! 15. `held.inner`: a leaf, held for one hold, take or expiry with
//!     nothing else; held messages are replayed after it is released.
//! 16. `nodes.asked_at`: a leaf, held to set or read when every agent
//!     was last called to announce itself (it may be read under 3).

// Leaves: shared types, the error, the clock, pure steps.
mod clock;
mod deployer;
mod error;
mod health;
mod types;
// Parts, each with its own state and lock.
mod access;
mod alarms;
mod changes;
mod deployment;
mod events;
mod held;
mod identity;
mod metrics;
mod nodes;
mod probes;
mod sessions;
mod telemetry;
mod waiting;
// The composition of the parts.
mod composition;
// Use cases over the parts.
mod accounts;
mod alarm_cases;
mod audit;
mod catalog;
mod console;
mod consumers;
mod enroll;
mod events_ingest;
mod fleet_events;
mod ingest;
mod liveness;
mod logs;
mod monitoring;
mod node_list;
mod placement;
mod reconcile;
mod telemetry_ingest;
mod views;
mod watch;

pub use access::{FREE_FAILURES, MAX_WAIT, Source};
pub use accounts::{
    ADMIN_TOKEN_ID, ApiTokenRequest, ApiTokenView, BOOTSTRAP_USER, LoginRequest, MIN_PASSWORD,
    Principal, UserRequest, UserView, forbidden, new_user, role_name,
};
pub use alarm_cases::{
    AlarmFilter, AlarmPage, AlarmStates, CERTIFICATE_WARNING, CLOCK_SKEW_LIMIT, Catalogue,
    CatalogueEntry, MAX_ALARM_PAGE,
};
pub use audit::{AuditFilter, AuditPage, MAX_AUDIT_PAGE};
pub use catalog::{Expect, ServiceRequest};
pub use changes::{ChangeKind, Recorded, WatchFilter};
pub use clock::{Clock, ManualClock, SystemClock};
pub use composition::App;
pub use console::{CONSOLE_TOKEN_NAME, Credentials, SESSION_TTL, Session};
pub use consumers::{
    ACL_TEMPLATE, ConsumerRequest, ConsumerView, CredentialKind, access_list, mosquitto_hash,
    password_file,
};
pub use enroll::{TokenRequest, TokenView};
pub use error::{AppError, InstallError, UploadError};
pub use events::{EventRecord, EventSource, RecordKind};
pub use events_ingest::{EventFilter, EventPage, MAX_EVENT_PAGE};
pub use identity::Pki;
pub use metrics::RequestLabels;
pub use monitoring::NODE_STATES;
pub use node_list::{MAX_PAGE, NodeFilter, NodePage, NodeState};
pub use placement::{LatencyRequest, LatencyView, PlacementRequest, RegionView};
pub use telemetry::{TelemetryPoint, TelemetryView};
pub use types::{HttpsClient, Incoming, MAX_REPLICAS, Outgoing, Settings};

/// Lower-layer types that cross the api boundary, so that `api` imports
/// from `app` alone.
pub use crate::store::{
    AuditEntry, AuditRecord, Cordon, LatencySpec, ReleaseRecord, Role, ServiceSpec, Suppression,
};
pub use health::Health;
pub use logs::{LOG_TIMEOUT, LogTail};
pub use views::{NodeView, ReplicaState, ReplicaView, ServiceView};
pub use watch::{Frame, Watch, release_summary};

#[cfg(test)]
mod alarm_tests;
#[cfg(test)]
mod events_tests;
#[cfg(test)]
mod telemetry_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod use_case_tests;
#[cfg(test)]
mod watch_tests;
