//! The deployment part: the lock every plan → sign → store → publish step
//! runs under, the current plan and what it was made from, and the signals
//! that wake the deployment loop.
//!
//! A part of the app: it holds state only; the steps themselves are in
//! `app/mod.rs`, which takes [`Deployment::state`] first (see the lock
//! order there).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError, RwLock};

use futures_util::FutureExt as _;
use tokio::sync::{Mutex as AsyncMutex, MutexGuard as AsyncMutexGuard, Notify};
use verge_shared::{AgentId, Generation, ServiceName};

use super::health::Health;
use super::types::lock;
use verge_scheduler::{NodeInput, Plan, ReplicaPlan, ServiceInput};

/// State that only the deployment step touches, guarded by its mutex.
#[derive(Default)]
pub(crate) struct DeployState {
    /// Node health as of the last plan, to notice changes.
    pub(crate) last_health: BTreeMap<AgentId, Health>,
}

/// The scheduler's inputs for one plan.
pub(crate) struct PlanInputs {
    pub(crate) nodes: Vec<NodeInput>,
    pub(crate) services: Vec<ServiceInput>,
}

/// The deployment step's lock, its plan and its wake-ups.
#[derive(Default)]
pub(crate) struct Deployment {
    state: AsyncMutex<DeployState>,
    plan: RwLock<Plan>,
    /// The scheduler inputs `plan` was made from, for the incremental path.
    planned_from: Mutex<Option<PlanInputs>>,
    replan: Notify,
    republish: Notify,
    /// The generation of each agent's stored desired state, kept with every
    /// store write, so that a node's view never decodes the stored document.
    generations: RwLock<HashMap<AgentId, Generation>>,
}

impl Deployment {
    /// The deployment lock: every step that may issue a desired state holds
    /// it from planning to publishing. Taken before any other lock.
    pub(crate) async fn state(&self) -> AsyncMutexGuard<'_, DeployState> {
        self.state.lock().await
    }

    /// The current plan.
    pub(crate) fn plan(&self) -> Plan {
        self.plan
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current plan's replicas of `service`.
    pub(crate) fn service_plan(&self, service: &ServiceName) -> Option<Vec<ReplicaPlan>> {
        self.plan
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .services
            .get(service)
            .cloned()
    }

    /// Whether `plan` is the current plan.
    pub(crate) fn is_current(&self, plan: &Plan) -> bool {
        *self.plan.read().unwrap_or_else(PoisonError::into_inner) == *plan
    }

    /// The current plan, if the inputs it was made from pass `reusable`.
    pub(crate) fn plan_if(&self, reusable: impl FnOnce(&PlanInputs) -> bool) -> Option<Plan> {
        // planned_from, then plan: the one order these two are taken in.
        let from = lock(&self.planned_from);
        from.as_ref()
            .filter(|inputs| reusable(inputs))
            .map(|_| self.plan())
    }

    /// Looks at the current plan and the inputs it was made from.
    pub(crate) fn inspect<R>(&self, look: impl FnOnce(&Plan, Option<&PlanInputs>) -> R) -> R {
        // planned_from, then plan: the one order these two are taken in.
        let from = lock(&self.planned_from);
        let plan = self.plan.read().unwrap_or_else(PoisonError::into_inner);
        look(&plan, from.as_ref())
    }

    /// Records `plan` as current, made from `inputs`. Call with the
    /// deployment lock held.
    pub(crate) fn set_plan(&self, plan: Plan, inputs: PlanInputs) {
        *self.plan.write().unwrap_or_else(PoisonError::into_inner) = plan;
        *lock(&self.planned_from) = Some(inputs);
    }

    /// Records that `agent`'s stored desired state is at `generation`.
    pub(crate) fn stored(&self, agent: &AgentId, generation: Generation) {
        self.generations
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(agent.clone(), generation);
    }

    /// The generation of `agent`'s stored desired state.
    pub(crate) fn generation(&self, agent: &AgentId) -> Option<Generation> {
        self.generations
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(agent)
            .copied()
    }

    /// Wakes the loop to re-plan (a node appeared, changed or went offline).
    pub(crate) fn request_replan(&self) {
        self.replan.notify_one();
    }

    /// Wakes the loop to republish every desired state.
    pub(crate) fn request_republish(&self) {
        self.republish.notify_one();
    }

    /// Whether a re-plan was requested since the last wake-up; consumes
    /// the request.
    pub(crate) fn take_replan_request(&self) -> bool {
        self.replan.notified().now_or_never().is_some()
    }

    /// Whether a republish was requested since the last wake-up; consumes
    /// the request.
    pub(crate) fn take_republish_request(&self) -> bool {
        self.republish.notified().now_or_never().is_some()
    }

    /// Resolves when a re-plan was requested.
    pub(crate) async fn replan_requested(&self) {
        self.replan.notified().await;
    }

    /// Resolves when a republish was requested.
    pub(crate) async fn republish_requested(&self) {
        self.republish.notified().await;
    }
}
