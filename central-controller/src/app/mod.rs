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
//! | log requests | `logs.rs` | requests waiting for an agent's answer |
//! | deployment | `deployment.rs` | the deployment lock, the plan, loop wake-ups |
//!
//! Leaves every file may use: `types.rs` (settings, messages, `lock`),
//! `error.rs`, `clock.rs`, and the pure steps `health.rs` and `deployer.rs`.
//! A part imports leaves only, never another part or this file; the use
//! cases (`ingest.rs`, `enroll.rs`, `placement.rs`, `logs.rs`, `views.rs`
//! and this file) combine parts. A new capability (accounts and audit, a
//! watch stream, alarms, rollouts) adds a part and a use-case file.
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
//! 4. `deployment.planned_from`, then `deployment.plan`.
//! 5. `probes.book`, then (released first) `probes.published`; the node
//!    registry is read and released before either.
//! 6. `logs.waiting`: a leaf, held with nothing else.

// Leaves: shared types, the error, the clock, pure steps.
mod clock;
mod deployer;
mod error;
mod health;
mod types;
// Parts, each with its own state and lock.
mod deployment;
mod identity;
mod nodes;
mod probes;
// Use cases over the parts.
mod enroll;
mod ingest;
mod logs;
mod placement;
mod views;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use verge_shared::messages::validate_config;
use verge_shared::trust::TrustError;
use verge_shared::{
    AgentId, Envelope, PublicKey, RegionId, ServiceName, Sha256Digest, SigningKey, Timestamp,
    limits,
};

use crate::artifacts::ArtifactFiles;
use crate::scheduler::{self, NodeInput, Placement, Plan, ServiceInput};
use crate::store::{
    ArtifactRecord, DesiredRecord, NodeRecord, ServiceRecord, ServiceSpec, Store, StoreError,
};
use crate::trust::TrustState;

pub use clock::{Clock, ManualClock, SystemClock};
use deployment::{DeployState, Deployment, PlanInputs};
pub use enroll::{TokenRequest, TokenView};
pub use error::{AppError, InstallError, UploadError};
use identity::Identity;
pub use identity::Pki;
use nodes::Nodes;
pub use placement::{LatencyRequest, PlacementRequest};
use probes::Probes;
use types::lock;
pub use types::{Incoming, MAX_REPLICAS, Outgoing, Settings};

/// Lower-layer types that cross the api boundary, so that `api` imports
/// from `app` alone.
pub use crate::keys::TokenCheck;
pub use crate::store::{Cordon, ReleaseRecord};
pub use health::Health;
pub use logs::{LOG_TIMEOUT, LogTail};
pub use views::{NodeView, ReplicaView, ServiceView};

/// How often node health is re-evaluated against the clock.
const HEALTH_TICK: Duration = Duration::from_secs(1);

/// `PUT /api/v1/services/{name}` body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    /// The signed digest of an uploaded release of this service.
    pub release: String,
    /// Required unless `placement.replicas_per_region` is given.
    #[serde(default)]
    pub replicas: Option<i64>,
    #[serde(default)]
    pub regions: Vec<String>,
    /// Allows a release older than the one replicas run (an operator rollback).
    #[serde(default)]
    pub rollback: bool,
    /// Per-agent settings, given to the workload as `VERGE_CONFIG_<KEY>`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Latency target, replicas per target region, spread and priority.
    #[serde(default)]
    pub placement: PlacementRequest,
}

/// The controller's use cases over one store and one signing key.
pub struct App {
    store: Arc<dyn Store>,
    files: ArtifactFiles,
    key: SigningKey,
    trust: Arc<TrustState>,
    settings: Settings,
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Every time-based decision reads this clock.
    clock: Arc<dyn Clock>,
    n_rejected: AtomicU64,
    /// The parts, each with its own state and lock (lower parts first).
    nodes: Nodes,
    probes: Probes,
    identity: Identity,
    logs: logs::Pending,
    deployment: Deployment,
}

/// A plan plus what it was computed from.
struct Planned {
    plan: Plan,
    inputs: PlanInputs,
    desired: BTreeMap<AgentId, DesiredRecord>,
    health: BTreeMap<AgentId, Health>,
}

impl App {
    /// Loads the node registry; publishing goes to `outbox`, and every
    /// time-based decision (health, grace, expiry) reads `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        files: ArtifactFiles,
        key: SigningKey,
        trust: Arc<TrustState>,
        settings: Settings,
        outbox: mpsc::UnboundedSender<Outgoing>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let nodes = Nodes::new(store.nodes()?, clock.now(), settings.nodes);
        Ok(Arc::new(Self {
            store,
            files,
            key,
            trust,
            settings,
            outbox,
            clock,
            n_rejected: AtomicU64::new(0),
            nodes,
            probes: Probes::default(),
            identity: Identity::default(),
            logs: logs::Pending::default(),
            deployment: Deployment::default(),
        }))
    }

    /// The time by the app's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// How many agent messages were ignored (unsigned, oversize, malformed, ...).
    pub fn rejected_messages(&self) -> u64 {
        self.n_rejected.load(Ordering::Relaxed)
    }

    /// Asks the background loop to republish every desired state (on ConnAck).
    pub fn request_republish(&self) {
        self.deployment.request_republish();
    }

    /// The background loop: re-plans on node and health changes and
    /// republishes on an interval, until `cancel`.
    pub async fn run_background(self: Arc<Self>, cancel: CancellationToken) {
        let mut health_tick = tokio::time::interval(HEALTH_TICK);
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: publish whatever is stored at start.
        let mut republish_tick = tokio::time::interval(self.settings.deploy.republish_interval);
        republish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.log_failure("plan", self.reconcile(self.now(), true).await);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = self.deployment.replan_requested() => {
                    self.log_failure("plan", self.reconcile(self.now(), true).await);
                }
                () = self.deployment.republish_requested() => {
                    self.log_failure("republish", self.republish_all(self.now()).await);
                }
                _ = health_tick.tick() => {
                    self.log_failure("plan", self.reconcile(self.now(), false).await);
                }
                _ = republish_tick.tick() => {
                    self.log_failure("republish", self.republish_all(self.now()).await);
                }
            }
        }
    }

    fn log_failure(&self, step: &'static str, result: Result<(), AppError>) {
        if let Err(e) = result {
            error!(step, error = %e, "A deployment step failed; it is retried on the next trigger.");
        }
    }

    /// Whether messages from this node are to be ignored.
    fn is_revoked(&self, agent: &AgentId) -> bool {
        self.nodes.is_revoked(agent)
    }

    fn plan_with(&self, services: &[ServiceRecord], now: Timestamp) -> Result<Planned, AppError> {
        let desired: BTreeMap<AgentId, DesiredRecord> = self
            .store
            .desired_states()?
            .into_iter()
            .map(|d| (d.agent.clone(), d))
            .collect();
        // What agents were last told to run is the previous placement.
        let previous: Placement = desired
            .values()
            .flat_map(|d| {
                d.workloads
                    .iter()
                    .map(|w| ((w.service.clone(), w.replica), d.agent.clone()))
            })
            .collect();
        let mut health = BTreeMap::new();
        let records: Vec<NodeRecord> = self.nodes.snapshot();
        let mut figures = self.latency_figures(&records, now);
        let nodes: Vec<NodeInput> = records
            .iter()
            .map(|n| {
                let h = self.nodes.health(n, now);
                health.insert(n.id.clone(), h);
                placement::node_input(n, h, &self.settings.regions, figures.remove(&n.id))
            })
            .collect();
        let inputs: Vec<ServiceInput> = services.iter().map(placement::service_input).collect();
        // When nodes were only lost since the last plan, re-place just their
        // replicas: the same outcome as a full plan (scheduler::replan_displaced).
        let last_plan = self
            .deployment
            .plan_if(|last| {
                last.services == inputs && scheduler::only_nodes_lost(&last.nodes, &nodes)
            })
            .filter(|last| last.placement() == previous);
        let plan = match last_plan {
            Some(last) => scheduler::replan_displaced(&nodes, &inputs, last),
            None => scheduler::plan(&nodes, &inputs, &previous),
        };
        Ok(Planned {
            plan,
            inputs: PlanInputs {
                nodes,
                services: inputs,
            },
            desired,
            health,
        })
    }

    /// Issues a new desired state to every agent whose workloads changed.
    fn apply(
        &self,
        state: &mut DeployState,
        services: &[ServiceRecord],
        planned: Planned,
        now: Timestamp,
    ) -> Result<(), AppError> {
        let mut lists = deployer::work_by_agent(&planned.plan, services);
        let agents: BTreeSet<AgentId> = planned
            .desired
            .keys()
            .chain(lists.keys())
            .cloned()
            .collect();
        for agent in agents {
            let work = lists.remove(&agent).unwrap_or_default();
            let stored = planned.desired.get(&agent);
            let Some(generation) = deployer::next_generation(stored, &work.assignments) else {
                continue;
            };
            let n_workloads = work.assignments.len();
            let record = deployer::sign(
                &self.key,
                &agent,
                generation,
                work,
                now,
                self.settings.deploy.desired_state_ttl,
            )?;
            self.store.put_desired(&record)?;
            info!(agent = %agent, generation = %generation, workloads = n_workloads, "Issued a new desired state.");
            self.publish(&record);
        }
        state.last_health = planned.health;
        self.deployment.set_plan(planned.plan, planned.inputs);
        self.update_probe_plans(now);
        Ok(())
    }

    /// Publishes `record` (retained) with the releases it names and the
    /// trust bundle.
    fn publish(&self, record: &DesiredRecord) {
        let payload = match self.delivery(record) {
            Ok(payload) => payload,
            Err(e) => {
                error!(agent = %record.agent, error = %e, "Cannot build the delivery; the agent keeps its last desired state.");
                return;
            }
        };
        let message = Outgoing {
            topic: self.settings.topics.desired(&record.agent),
            payload,
        };
        if self.outbox.send(message).is_err() {
            warn!(agent = %record.agent, "The MQTT client is gone; the desired state will be republished later.");
        }
    }

    fn delivery(&self, record: &DesiredRecord) -> Result<Vec<u8>, AppError> {
        let digests: BTreeSet<Sha256Digest> =
            record.assignments.iter().map(|a| a.release).collect();
        let mut releases = Vec::with_capacity(digests.len());
        for digest in digests {
            let release = self
                .store
                .release(&digest)?
                .ok_or_else(|| AppError::NotFound {
                    what: "release",
                    name: digest.to_string(),
                })?;
            releases.push(release.envelope);
        }
        Ok(deployer::delivery(record, releases, self.trust.envelope())?)
    }

    /// Re-plans and deploys. Without `force`, only when node health changed.
    async fn reconcile(&self, now: Timestamp, force: bool) -> Result<(), AppError> {
        let mut state = self.deployment.state().await;
        let services = self.store.services()?;
        let planned = self.plan_with(&services, now)?;
        // Latency figures change without any health change, so a changed
        // plan counts too; hysteresis in the scheduler keeps this calm.
        let unchanged =
            planned.health == state.last_health && self.deployment.is_current(&planned.plan);
        if !force && unchanged {
            return Ok(());
        }
        self.apply(&mut state, &services, planned, now)
    }

    /// Publishes every stored desired state again (retained), re-signing with
    /// the same generation and fresh times when less than half the TTL
    /// remains or another key signed it.
    async fn republish_all(&self, now: Timestamp) -> Result<(), AppError> {
        let _state = self.deployment.state().await;
        let ttl = self.settings.deploy.desired_state_ttl;
        for record in self.store.desired_states()? {
            // A revoked node's retained desired state stays cleared.
            if self.is_revoked(&record.agent) {
                continue;
            }
            let record = if deployer::needs_resign(&record, &self.key.public_key(), now, ttl) {
                let fresh = deployer::sign(
                    &self.key,
                    &record.agent,
                    record.generation,
                    deployer::AgentWork {
                        assignments: record.assignments,
                        workloads: record.workloads,
                    },
                    now,
                    ttl,
                )?;
                self.store.put_desired(&fresh)?;
                info!(agent = %fresh.agent, generation = %fresh.generation, "Re-signed a desired state with fresh times.");
                fresh
            } else {
                record
            };
            self.publish(&record);
        }
        self.republish_probe_plans();
        Ok(())
    }

    fn validate(
        &self,
        name: &str,
        request: ServiceRequest,
    ) -> Result<(ServiceName, ServiceSpec, ReleaseRecord), AppError> {
        let name = ServiceName::new(name).map_err(|e| AppError::invalid("name", e.to_string()))?;
        let digest: Sha256Digest = request
            .release
            .parse()
            .map_err(|e: String| AppError::invalid("release", e))?;
        let release = self.store.release(&digest)?.ok_or_else(|| {
            AppError::invalid(
                "release",
                format!("no release {digest} has been uploaded (POST /api/v1/releases)"),
            )
        })?;
        if release.release.service != name {
            return Err(AppError::invalid(
                "release",
                format!(
                    "release {digest} is of service {}, not {name}",
                    release.release.service
                ),
            ));
        }
        validate_config(&request.config).map_err(|e| match e.split_once(": ") {
            Some((field, message)) => AppError::invalid(field, message),
            None => AppError::invalid("config", e),
        })?;
        let (placement, replicas) = placement::validate(&request.placement, request.replicas)?;
        let regions = request
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                RegionId::new(r.as_str())
                    .map_err(|e| AppError::invalid(format!("regions[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = ServiceSpec {
            release: digest,
            replicas,
            regions,
            rollback: request.rollback,
            config: request.config,
            placement,
        };
        Ok((name, spec, release))
    }

    /// Creates or replaces a service: validated, placed, stored, deployed.
    /// Returns the view and whether it was created.
    pub async fn put_service(
        &self,
        name: &str,
        request: ServiceRequest,
    ) -> Result<(ServiceView, bool), AppError> {
        let (name, spec, release) = self.validate(name, request)?;
        let now = self.now();
        let mut state = self.deployment.state().await;
        let existing = self.store.service(&name)?;
        let created = existing.is_none();
        let record = match existing {
            Some(old) if old.spec == spec => old,
            Some(old) => ServiceRecord {
                name: name.clone(),
                spec,
                release: release.release,
                revision: old.revision + 1,
                created_at: old.created_at,
                updated_at: now,
            },
            None => ServiceRecord {
                name: name.clone(),
                spec,
                release: release.release,
                revision: 1,
                created_at: now,
                updated_at: now,
            },
        };
        let mut services: Vec<ServiceRecord> = self
            .store
            .services()?
            .into_iter()
            .filter(|s| s.name != name)
            .collect();
        services.push(record.clone());
        // Placed before stored: a failure here leaves everything as it was.
        let planned = self.plan_with(&services, now)?;
        self.store.put_service(&record)?;
        info!(service = %name, revision = record.revision, "Stored a service.");
        self.apply(&mut state, &services, planned, now)?;
        drop(state);
        Ok((self.view_of(&record)?, created))
    }

    /// Deletes a service; its agents get desired states without it.
    pub async fn delete_service(&self, name: &str) -> Result<(), AppError> {
        let not_found = || AppError::NotFound {
            what: "service",
            name: name.to_owned(),
        };
        let name = ServiceName::new(name).map_err(|_| not_found())?;
        let now = self.now();
        let mut state = self.deployment.state().await;
        if !self.store.delete_service(&name)? {
            return Err(not_found());
        }
        info!(service = %name, "Deleted a service.");
        let services = self.store.services()?;
        let planned = self.plan_with(&services, now)?;
        self.apply(&mut state, &services, planned, now)
    }

    /// Streams an upload into the content-addressed store.
    /// Returns the record and whether it was new.
    pub async fn upload_artifact<S, E>(&self, body: S) -> Result<(ArtifactRecord, bool), AppError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let stored = self
            .files
            .store(body, self.settings.max_artifact_bytes)
            .await?;
        if let Some(existing) = self.store.artifact(&stored.sha256)? {
            return Ok((existing, false));
        }
        let record = ArtifactRecord {
            sha256: stored.sha256,
            size: stored.size,
            created_at: self.now(),
        };
        self.store.put_artifact(&record)?;
        info!(sha256 = %record.sha256, size = record.size, "Stored an artifact.");
        Ok((record, true))
    }

    /// Accepts a publisher-signed release: signed by a publisher of the
    /// trust bundle allowed its service, consistent, and naming an uploaded
    /// artifact of the declared size. Returns the record and whether it was new.
    pub fn upload_release(&self, bytes: &[u8]) -> Result<(ReleaseRecord, bool), AppError> {
        let envelope = Envelope::parse(bytes, limits::MAX_RELEASE_BYTES)
            .map_err(|e| AppError::invalid("release", e.to_string()))?;
        let digest = envelope
            .signed_digest()
            .map_err(|e| AppError::invalid("release", e.to_string()))?;
        if let Some(existing) = self.store.release(&digest)? {
            return Ok((existing, false));
        }
        let bundle = self.trust.bundle();
        let (release, publisher) = bundle.verify_release(&envelope).map_err(|e| match e {
            // "run.health.probe.port: ..." names the field inside the release.
            TrustError::Invalid(message) => match message.split_once(": ") {
                Some((field, detail)) => AppError::invalid(field, detail),
                None => AppError::invalid("release", message),
            },
            other => AppError::invalid("release", other.to_string()),
        })?;
        for (i, artifact) in release.artifacts.iter().enumerate() {
            let field = format!("artifacts[{i}]");
            let stored = self.store.artifact(&artifact.sha256)?.ok_or_else(|| {
                AppError::invalid(
                    &field,
                    format!(
                        "no artifact {} has been uploaded (POST /api/v1/artifacts)",
                        artifact.sha256
                    ),
                )
            })?;
            if stored.size != artifact.size {
                return Err(AppError::invalid(
                    field,
                    format!(
                        "the release declares {} bytes, the uploaded artifact has {}",
                        artifact.size, stored.size
                    ),
                ));
            }
        }
        let record = ReleaseRecord {
            digest,
            publisher: publisher.name.clone(),
            envelope,
            release,
            created_at: self.now(),
        };
        self.store.put_release(&record)?;
        info!(digest = %digest, service = %record.release.service, version = %record.release.version, publisher = %record.publisher, "Stored a release.");
        Ok((record, true))
    }

    pub fn releases(&self) -> Result<Vec<ReleaseRecord>, AppError> {
        Ok(self.store.releases()?)
    }

    pub fn release(&self, digest: &str) -> Result<ReleaseRecord, AppError> {
        let not_found = || AppError::NotFound {
            what: "release",
            name: digest.to_owned(),
        };
        let digest: Sha256Digest = digest.parse().map_err(|_| not_found())?;
        self.store.release(&digest)?.ok_or_else(not_found)
    }

    /// The trust bundle agents receive with every desired state.
    pub fn trust_bundle(&self) -> verge_shared::trust::TrustBundle {
        self.trust.bundle()
    }

    /// Installs a newer trust bundle and sends it to every agent.
    pub async fn install_trust(&self, bytes: &[u8]) -> Result<Option<u64>, AppError> {
        let installed = self.trust.install(bytes, self.now())?;
        if let Some(version) = installed {
            info!(
                version,
                "Installed a newer trust bundle; republishing every desired state."
            );
            self.republish_all(self.now()).await?;
        }
        Ok(installed)
    }

    /// The file holding a known artifact.
    pub fn artifact_path(&self, digest: &Sha256Digest) -> Result<PathBuf, AppError> {
        match self.store.artifact(digest)? {
            Some(_) => Ok(self.files.path_of(digest)),
            None => Err(AppError::NotFound {
                what: "artifact",
                name: digest.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod use_case_tests;
