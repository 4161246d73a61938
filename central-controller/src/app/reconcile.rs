//! The deployment loop: plan, sign, store and publish desired states, on a
//! change, on health ticks and on the republish interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use verge_shared::{AgentId, Sha256Digest, Timestamp};

use super::composition::App;
use super::deployer;
use super::deployment::{DeployState, PlanInputs};
use super::error::AppError;
use super::health::Health;
use super::placement;
use super::types::Outgoing;
use crate::store::{DesiredRecord, NodeRecord, ServiceRecord};
use verge_scheduler::{self as scheduler, NodeInput, Placement, Plan, ServiceInput};

/// How often node health is re-evaluated against the clock.
const HEALTH_TICK: Duration = Duration::from_secs(1);

/// A plan plus what it was computed from.
pub(super) struct Planned {
    plan: Plan,
    inputs: PlanInputs,
    desired: BTreeMap<AgentId, DesiredRecord>,
    health: BTreeMap<AgentId, Health>,
}

impl App {
    /// The background loop: re-plans on node and health changes and
    /// republishes on an interval, until `cancel`; then ends every watch
    /// stream.
    pub async fn run_background(self: Arc<Self>, cancel: CancellationToken) {
        let mut health_tick = tokio::time::interval(HEALTH_TICK);
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: publish whatever is stored at start.
        let mut republish_tick = tokio::time::interval(self.settings.deploy.republish_interval);
        republish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.replan(self.now()).await;
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = self.deployment.replan_requested() => self.replan(self.now()).await,
                () = self.deployment.republish_requested() => self.republish_tick(self.now()).await,
                _ = health_tick.tick() => self.health_tick(self.now()).await,
                _ = republish_tick.tick() => self.republish_tick(self.now()).await,
            }
        }
        // Watch streams never end on their own; the API's drain waits for them.
        self.changes.close();
    }

    /// A full re-plan and deployment: at start and whenever one is
    /// requested (a node appeared, changed or went offline).
    pub async fn replan(&self, now: Timestamp) {
        self.log_failure("plan", self.reconcile(now, true).await);
    }

    /// What the loop does on each health tick: re-plan if node health or
    /// the plan changed, then look at the placement and the controller's
    /// own alarm conditions.
    pub async fn health_tick(&self, now: Timestamp) {
        self.log_failure("plan", self.reconcile(now, false).await);
        self.observe_placement(now);
        self.observe_controller(now);
        self.count_expired(self.held.expire(now));
    }

    /// What the loop does on each republish tick: every stored desired
    /// state published again.
    pub async fn republish_tick(&self, now: Timestamp) {
        self.log_failure("republish", self.republish_all(now).await);
    }

    /// Runs a re-plan and a republish if either was requested since the
    /// last turn, without waiting for one: the loop's wake-ups for a caller
    /// that drives time itself (a deterministic simulation).
    pub async fn run_requested(&self, now: Timestamp) {
        if self.deployment.take_replan_request() {
            self.replan(now).await;
        }
        if self.deployment.take_republish_request() {
            self.republish_tick(now).await;
        }
    }

    fn log_failure(&self, step: &'static str, result: Result<(), AppError>) {
        if let Err(e) = result {
            error!(step, error = %e, "A deployment step failed; it is retried on the next trigger.");
        }
    }

    pub(super) fn plan_with(
        &self,
        services: &[ServiceRecord],
        now: Timestamp,
    ) -> Result<Planned, AppError> {
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
        let started = std::time::Instant::now();
        let plan = match last_plan {
            Some(last) => scheduler::replan_displaced(&nodes, &inputs, last),
            None => scheduler::plan(&nodes, &inputs, &previous),
        };
        self.metrics
            .placement_seconds
            .observe(started.elapsed().as_secs_f64());
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
    pub(super) fn apply(
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
            self.deployment.stored(&agent, generation);
            info!(agent = %agent, generation = %generation, workloads = n_workloads, "Issued a new desired state.");
            self.publish(&record);
        }
        // A node known at the last plan whose health changed; new ones
        // were announced when they registered.
        let health_changed: Vec<AgentId> = planned
            .health
            .iter()
            .filter(|(id, h)| state.last_health.get(*id).is_some_and(|old| old != *h))
            .map(|(id, _)| id.clone())
            .collect();
        self.observe_node_health(&planned.health, now);
        state.last_health = planned.health;
        let before = self.deployment.plan();
        let after = planned.plan.clone();
        self.deployment.set_plan(planned.plan, planned.inputs);
        self.update_probe_plans(now);
        for agent in &health_changed {
            self.node_changed(agent, "health");
        }
        self.replicas_changed(&before, &after, services);
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
            retain: true,
        };
        if !self.send("desired", message) {
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
    pub(super) async fn reconcile(&self, now: Timestamp, force: bool) -> Result<(), AppError> {
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
    pub(super) async fn republish_all(&self, now: Timestamp) -> Result<(), AppError> {
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
        self.republish_alarms();
        Ok(())
    }
}
