//! One simulation run: the controller (its real use cases over the memory
//! store and a manual clock), the simulated agents and broker, the seeded
//! faults and operator actions, and the invariants checked after every
//! step and once the faults have stopped.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use central_controller::app::Clock as _;
use central_controller::store::Store as _;
use central_controller::testing::{MemoryFixture, memory_fixture_lasting, service_request};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use verge_shared::messages::{Assignment, Delivery, DesiredState, Workload, payload_type};
use verge_shared::topic::Channel;
use verge_shared::trust::TrustBundle;
use verge_shared::{AgentId, PublicKey, RegionId, ServiceName, SigningKey, Topics};

use crate::agent::{Report, SimAgent};
use crate::broker::{Broker, Counts, Faults, Peer};

/// What one run does.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub seed: u64,
    pub agents: usize,
    /// Steps with faults and operator actions; each moves the clock by
    /// up to 10 s.
    pub steps: u64,
}

/// How a run went, for the summary line.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub steps: u64,
    pub simulated: Duration,
    pub broker: Counts,
    pub desired_states_accepted: u64,
    pub desired_states_refused: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub operator_actions: u64,
}

/// A broken invariant: what, when, and how to see it again.
#[derive(Debug)]
pub struct Failure {
    pub config: Config,
    pub step: u64,
    pub what: String,
    /// The last actions before it, oldest first.
    pub recent: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} broke an invariant at step {}: {}",
            self.config.seed, self.step, self.what
        )?;
        writeln!(f, "the last actions before it:")?;
        for line in &self.recent {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay: cargo run -p verge-simulation --bin verge-simulate -- --seed {} --agents {} --steps {}",
            self.config.seed, self.config.agents, self.config.steps
        )
    }
}

/// The services the operator changes, each with releases of growing versions.
const SERVICES: [&str; 3] = ["web", "api", "cache"];
const VERSIONS: u64 = 4;
/// How long the broker takes to give up on a silent agent and publish its
/// Last Will: 1.5 x the agent's default keep-alive of 15 s.
const WILL_DELAY: Duration = Duration::from_millis(22_500);
/// The agent's default heartbeat interval.
const HEARTBEAT: Duration = Duration::from_secs(120);
const HEALTH_TICK: Duration = Duration::from_secs(1);
/// How long the world runs without faults before the final checks: the
/// heartbeat timeout (360 s), the failover grace (30 s) and a republish
/// interval (60 s), with room to spare.
const QUIET: Duration = Duration::from_secs(600);
/// Actions kept for a failure report.
const RECENT: usize = 40;

/// Something that happens at a set time.
#[derive(Clone, Copy, Debug)]
enum Timer {
    Connect(usize),
    Boot(usize),
    Will(usize),
    /// The agent answers the controller's call to announce.
    Announce(usize),
    ControllerStart,
}

struct World {
    config: Config,
    rng: ChaCha8Rng,
    mf: MemoryFixture,
    controller_key: PublicKey,
    trust: TrustBundle,
    topics: Topics,
    broker: Broker,
    agents: Vec<SimAgent>,
    controller_up: bool,
    /// Simulated time since the start.
    t: Duration,
    timers: BTreeMap<(Duration, u64), Timer>,
    n_timers: u64,
    next_health: Duration,
    next_republish: Duration,
    /// The agent's Last Will armed at its latest connect.
    wills: BTreeMap<usize, Report>,
    /// Per service, the digests of its releases in version order.
    releases: BTreeMap<&'static str, Vec<String>>,
    /// Per service, the index of the release it runs (releases only go
    /// forward while it exists).
    current: BTreeMap<&'static str, usize>,
    /// Per service, the newest release it ever ran: a service created again
    /// at an older release is marked as the operator's rollback, since an
    /// agent that missed the deletion still runs the newer one and refuses
    /// anything older without that mark (docs/security.md).
    newest: BTreeMap<&'static str, usize>,
    /// Every (agent, generation) the controller ever signed, with the
    /// assignments it named.
    issued: BTreeMap<(AgentId, u64), Vec<Assignment>>,
    /// The highest generation the controller published to each agent.
    latest_issued: BTreeMap<AgentId, u64>,
    /// Broken controller rules seen while recording its messages.
    violations: Vec<String>,
    step: u64,
    recent: Vec<String>,
    summary: Summary,
}

/// Runs one simulation; `Err` names the first broken invariant.
pub fn run(config: Config) -> Result<Summary, Box<Failure>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async move {
        let mut world = World::new(config).await;
        world.run().await.map_err(|what| {
            Box::new(Failure {
                config,
                step: world.step,
                what,
                recent: world.recent.clone(),
            })
        })?;
        Ok(world.summary)
    })
}

impl World {
    async fn new(config: Config) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        // Runs of thousands of steps cover days of simulated time.
        let mf = memory_fixture_lasting(Duration::from_secs(365 * 24 * 3600));
        let mut releases = BTreeMap::new();
        for service in SERVICES {
            let mut digests = Vec::new();
            for v in 1..=VERSIONS {
                let artifact = format!("{service} {v}").into_bytes();
                let version = semver::Version::new(1, v, 0);
                digests.push(
                    mf.fx
                        .release_version(service, version, artifact.into(), &[])
                        .await,
                );
            }
            releases.insert(service, digests);
        }
        let regions = ["eu", "us", "ap"];
        let agents = (0..config.agents)
            .map(|i| {
                let id = AgentId::new(format!("edge-{i:03}")).expect("agent id");
                let region = RegionId::new(regions[i % regions.len()]).expect("region");
                SimAgent::new(id, region, SigningKey::generate().expect("key").0)
            })
            .collect();
        // Each seed draws its own network: from clean to quite lossy.
        let faults = Faults {
            drop: rng.gen_range(0.0..0.2),
            duplicate: rng.gen_range(0.0..0.2),
            max_delay: Duration::from_millis(rng.gen_range(0..3000)),
        };
        let broker_rng = ChaCha8Rng::seed_from_u64(rng.r#gen());
        let trust = mf.fx.app.trust_bundle();
        let controller_key = mf.fx.app.public_key();
        let mut world = World {
            config,
            rng,
            controller_key,
            trust,
            topics: Topics::default(),
            broker: Broker::new(broker_rng, faults),
            agents,
            controller_up: true,
            t: Duration::ZERO,
            timers: BTreeMap::new(),
            n_timers: 0,
            next_health: HEALTH_TICK,
            next_republish: Duration::from_secs(60),
            wills: BTreeMap::new(),
            releases,
            current: BTreeMap::new(),
            newest: BTreeMap::new(),
            issued: BTreeMap::new(),
            latest_issued: BTreeMap::new(),
            violations: Vec::new(),
            step: 0,
            recent: Vec::new(),
            summary: Summary::default(),
            mf,
        };
        world.note(format!(
            "start: {} agents, network drop {:.3} duplicate {:.3} delay up to {:?}",
            config.agents, faults.drop, faults.duplicate, faults.max_delay
        ));
        for i in 0..world.agents.len() {
            let at = Duration::from_millis(world.rng.gen_range(0..2000));
            world.schedule(at, Timer::Connect(i));
        }
        world
    }

    async fn run(&mut self) -> Result<(), String> {
        for step in 1..=self.config.steps {
            self.step = step;
            self.act().await;
            let by = Duration::from_millis(self.rng.gen_range(200..10_000));
            self.advance(by).await?;
            self.check_safety()?;
        }
        self.calm_down().await;
        self.advance(QUIET).await?;
        self.check_safety()?;
        self.check_converged()?;
        self.summary.steps = self.config.steps;
        self.summary.simulated = self.t;
        self.summary.broker = self.broker.counts;
        Ok(())
    }

    fn note(&mut self, line: String) {
        if self.recent.len() == RECENT {
            self.recent.remove(0);
        }
        self.recent.push(format!(
            "step {} t={:.1}s {line}",
            self.step,
            self.t.as_secs_f64()
        ));
    }

    fn count(&mut self, fault: &'static str) {
        *self.summary.faults.entry(fault).or_default() += 1;
    }

    fn schedule(&mut self, at: Duration, timer: Timer) {
        self.n_timers += 1;
        self.timers.insert((at, self.n_timers), timer);
    }

    /// One random fault or operator action, or nothing.
    async fn act(&mut self) {
        let n = self.agents.len();
        let i = self.rng.gen_range(0..n);
        match self.rng.gen_range(0..100) {
            0..=14 => self.operator().await,
            15..=22 if !self.agents[i].partitioned && self.agents[i].powered => {
                self.note(format!("partition {}", self.agents[i].id));
                self.count("partition");
                self.agents[i].partitioned = true;
                self.disconnect(i);
            }
            23..=30 if self.agents[i].partitioned => {
                self.note(format!("heal {}", self.agents[i].id));
                self.agents[i].partitioned = false;
                self.reconnect_later(i);
            }
            31..=35 if self.agents[i].up => {
                self.note(format!("agent crash {}", self.agents[i].id));
                self.count("agent crash");
                self.agents[i].up = false;
                self.disconnect(i);
                let at = self.t + Duration::from_millis(self.rng.gen_range(1000..60_000));
                self.schedule(at, Timer::Boot(i));
            }
            36..=38 if self.agents[i].powered => {
                self.note(format!("power off {}", self.agents[i].id));
                self.count("node power loss");
                let agent = &mut self.agents[i];
                agent.powered = false;
                agent.up = false;
                agent.running.clear();
                self.disconnect(i);
                let at = self.t + Duration::from_millis(self.rng.gen_range(5000..300_000));
                self.schedule(at, Timer::Boot(i));
            }
            39..=41 if self.controller_up => {
                self.note("controller crash".into());
                self.count("controller crash");
                self.controller_up = false;
                self.broker.drop_in_flight(Peer::Controller);
                let at = self.t + Duration::from_millis(self.rng.gen_range(1000..120_000));
                self.schedule(at, Timer::ControllerStart);
            }
            _ => {}
        }
    }

    /// Creates, changes or deletes a service through the controller's use
    /// cases, as the API would.
    async fn operator(&mut self) {
        if !self.controller_up {
            return;
        }
        self.summary.operator_actions += 1;
        let service = SERVICES[self.rng.gen_range(0..SERVICES.len())];
        let now = self.mf.clock.now();
        if self.rng.gen_bool(0.2) {
            self.note(format!("delete {service}"));
            self.current.remove(service);
            // Deleting a service that does not exist is refused: fine.
            let _ = self.mf.fx.app.delete_service(service).await;
        } else {
            let index = match self.current.get(service) {
                Some(&i) if self.rng.gen_bool(0.5) => (i + 1).min(VERSIONS as usize - 1),
                Some(&i) => i,
                None => 0,
            };
            let replicas = self.rng.gen_range(1..=self.agents.len() as i64);
            self.note(format!("put {service} release {} x{replicas}", index + 1));
            let release = self.releases[service][index].clone();
            let newest = self.newest.get(service).copied().unwrap_or_default();
            let mut request = service_request(&release, replicas);
            request.rollback = index < newest;
            match self.mf.fx.app.put_service(service, request).await {
                Ok(_) => {
                    self.current.insert(service, index);
                    self.newest.insert(service, newest.max(index));
                }
                Err(e) => self.note(format!("put {service} refused: {e}")),
            }
        }
        self.mf.fx.app.run_requested(now).await;
        self.drain_controller();
    }

    /// The broker loses the agent's connection: what was on its way to it
    /// is gone, and its Last Will follows unless it is back first.
    fn disconnect(&mut self, i: usize) {
        if !self.agents[i].connected {
            return;
        }
        self.agents[i].connected = false;
        self.broker.drop_in_flight(Peer::Agent(i));
        self.schedule(self.t + WILL_DELAY, Timer::Will(i));
    }

    /// The agent tries again after its jittered backoff.
    fn reconnect_later(&mut self, i: usize) {
        let at = self.t + Duration::from_millis(self.rng.gen_range(500..10_000));
        self.schedule(at, Timer::Connect(i));
    }

    /// Moves the clock by `by`, handling every message and timer due on the way.
    async fn advance(&mut self, by: Duration) -> Result<(), String> {
        let until = self.t + by;
        loop {
            let agent_due = self
                .agents
                .iter()
                .filter(|a| a.connected)
                .map(|a| a.next_heartbeat)
                .min();
            let timer_due = self.timers.keys().next().map(|k| k.0);
            let mut next = self.next_health.min(self.next_republish);
            for due in [agent_due, timer_due].into_iter().flatten() {
                next = next.min(due);
            }
            if let Some((at, message)) = self.broker.next_due(next.min(until)) {
                self.move_to(at);
                self.deliver(message.to, &message.topic, &message.payload)
                    .await;
                continue;
            }
            if next > until {
                break;
            }
            self.move_to(next);
            if let Some((&key, &timer)) = self.timers.iter().next()
                && key.0 <= self.t
            {
                self.timers.remove(&key);
                self.fire(timer).await;
            } else if self.next_health <= self.t {
                self.next_health = self.t + HEALTH_TICK;
                if self.controller_up {
                    let now = self.mf.clock.now();
                    self.mf.fx.app.health_tick(now).await;
                    self.mf.fx.app.run_requested(now).await;
                    self.drain_controller();
                }
            } else if self.next_republish <= self.t {
                self.next_republish = self.t + Duration::from_secs(60);
                if self.controller_up {
                    self.mf.fx.app.republish_tick(self.mf.clock.now()).await;
                    self.drain_controller();
                }
            } else if let Some(i) = (0..self.agents.len())
                .find(|&i| self.agents[i].connected && self.agents[i].next_heartbeat <= self.t)
            {
                self.agents[i].next_heartbeat = self.t + HEARTBEAT;
                let uptime = self.t - self.agents[i].started_at;
                let report = self.agents[i].heartbeat(&self.topics, uptime, self.mf.clock.now());
                self.report_from(i, report);
            }
            self.check_controller()?;
        }
        self.move_to(until);
        Ok(())
    }

    fn move_to(&mut self, at: Duration) {
        if at > self.t {
            self.mf.clock.advance(at - self.t);
            self.t = at;
        }
    }

    async fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Connect(i) => self.connect(i),
            Timer::Boot(i) => {
                let agent = &mut self.agents[i];
                if agent.up {
                    return;
                }
                agent.powered = true;
                agent.up = true;
                agent.started_at = self.t;
                // A restarted agent adopts what runs and converges on what it
                // persisted, before it hears from anyone.
                agent.reconcile();
                self.note(format!("boot {}", self.agents[i].id));
                self.connect(i);
            }
            Timer::Will(i) => {
                if self.agents[i].connected {
                    return;
                }
                if let Some(will) = self.wills.remove(&i) {
                    self.note(format!("last will of {}", self.agents[i].id));
                    self.publish_to_controller(&will);
                }
            }
            Timer::Announce(i) => {
                let now = self.mf.clock.now();
                let agent = &self.agents[i];
                let answer = [
                    agent.presence(&self.topics, true, now),
                    agent.status(&self.topics, now),
                    agent.heartbeat(&self.topics, self.t - agent.started_at, now),
                ];
                for report in answer {
                    self.report_from(i, report);
                }
            }
            Timer::ControllerStart => {
                self.note("controller start".into());
                self.mf = self.mf.restarted(|_| {});
                self.controller_up = true;
                // Its subscription brings every retained presence.
                let topics = self.topics.clone();
                self.broker.deliver_retained(self.t, Peer::Controller, |t| {
                    topics
                        .route(t)
                        .is_some_and(|r| r.channel == Channel::Presence)
                });
                let now = self.mf.clock.now();
                // On its connection to the broker it calls every agent to
                // announce itself, then its loop starts.
                self.mf.fx.app.ask_to_announce(now);
                self.mf.fx.app.replan(now).await;
                self.mf.fx.app.republish_tick(now).await;
                self.drain_controller();
            }
        }
    }

    /// The agent connects if it can: presence online, a status, and the
    /// broker's retained desired state.
    fn connect(&mut self, i: usize) {
        let agent = &self.agents[i];
        if agent.connected || !agent.up || agent.partitioned {
            return;
        }
        let now = self.mf.clock.now();
        self.wills
            .insert(i, agent.presence(&self.topics, false, now));
        let online = agent.presence(&self.topics, true, now);
        let status = agent.status(&self.topics, now);
        let desired = self.topics.desired(&agent.id);
        self.agents[i].connected = true;
        self.agents[i].next_heartbeat = self.t + HEARTBEAT;
        self.note(format!("connect {}", self.agents[i].id));
        self.report_from(i, online);
        self.report_from(i, status);
        self.broker
            .deliver_retained(self.t, Peer::Agent(i), |t| t == desired);
    }

    async fn deliver(&mut self, to: Peer, topic: &str, payload: &[u8]) {
        match to {
            Peer::Controller => {
                if !self.controller_up {
                    self.broker.counts.undeliverable += 1;
                    return;
                }
                let now = self.mf.clock.now();
                self.mf.fx.app.ingest(topic, payload, now);
                self.mf.fx.app.run_requested(now).await;
                self.drain_controller();
            }
            Peer::Agent(i) => {
                if !self.agents[i].connected {
                    self.broker.counts.undeliverable += 1;
                    return;
                }
                let now = self.mf.clock.now();
                if topic == self.topics.announce() {
                    if let Some(spread_ms) = self.agents[i].on_announce(payload, &self.trust, now) {
                        let delay = self.rng.gen_range(0..=u64::from(spread_ms));
                        self.schedule(self.t + Duration::from_millis(delay), Timer::Announce(i));
                    }
                    return;
                }
                let before = self.agents[i].n_rejected;
                let before_accepted = self.agents[i].accepted_log.len();
                let report = self.agents[i].on_desired(payload, &self.trust, &self.topics, now);
                if self.agents[i].accepted_log.len() > before_accepted {
                    self.summary.desired_states_accepted += 1;
                }
                if self.agents[i].n_rejected > before {
                    self.summary.desired_states_refused += 1;
                    let why = self.agents[i]
                        .last_rejection
                        .as_ref()
                        .map(|r| r.detail.clone())
                        .unwrap_or_default();
                    self.note(format!(
                        "{} refused a desired state: {why}",
                        self.agents[i].id
                    ));
                }
                if let Some(report) = report {
                    self.report_from(i, report);
                }
            }
        }
    }

    /// A report from agent `i`, if its connection is up.
    fn report_from(&mut self, i: usize, report: Report) {
        if self.agents[i].connected {
            self.publish_to_controller(&report);
        }
    }

    fn publish_to_controller(&mut self, (topic, payload, retain): &Report) {
        let to: &[Peer] = if self.controller_up {
            &[Peer::Controller]
        } else {
            &[]
        };
        self.broker.publish(self.t, to, topic, payload, *retain);
    }

    /// Hands everything the controller sent to the broker, recording each
    /// desired state it signed.
    fn drain_controller(&mut self) {
        for out in self.mf.fx.sent() {
            let mut to = Vec::new();
            if out.topic == self.topics.announce() {
                to.extend(
                    (0..self.agents.len())
                        .filter(|&i| self.agents[i].connected)
                        .map(Peer::Agent),
                );
            }
            if let Some(route) = self.topics.route(&out.topic)
                && route.channel == Channel::Desired
            {
                self.record_issued(&out.payload);
                if let Some(i) = self.agents.iter().position(|a| a.id == route.agent)
                    && self.agents[i].connected
                {
                    to.push(Peer::Agent(i));
                }
            }
            self.broker
                .publish(self.t, &to, &out.topic, &out.payload, out.retain);
        }
    }

    /// Records a desired state the controller signed, and any break of
    /// its rules: one content per (agent, generation), generations that
    /// never go back.
    fn record_issued(&mut self, payload: &[u8]) {
        let Ok(delivery) = serde_json::from_slice::<Delivery>(payload) else {
            // A cleared retained copy (empty payload) carries no document.
            return;
        };
        let desired = match delivery
            .desired
            .open::<DesiredState>(payload_type::DESIRED_STATE, &self.controller_key)
        {
            Ok(d) => d,
            Err(e) => {
                self.violations.push(format!(
                    "the controller published a desired state that does not verify: {e}"
                ));
                return;
            }
        };
        let generation = desired.generation.get();
        let latest = self.latest_issued.entry(desired.agent.clone()).or_default();
        if generation < *latest {
            self.violations.push(format!(
                "the controller published generation {generation} to {} after generation {latest}",
                desired.agent
            ));
        }
        *latest = (*latest).max(generation);
        let named = self
            .issued
            .entry((desired.agent.clone(), generation))
            .or_insert_with(|| desired.workloads.clone());
        if *named != desired.workloads {
            self.violations.push(format!(
                "the controller signed two different desired states for {} at generation {generation}",
                desired.agent
            ));
        }
    }

    /// The controller's rules, checked as its messages are recorded.
    fn check_controller(&mut self) -> Result<(), String> {
        match self.violations.first() {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }

    /// What must hold after every step, faults or not.
    fn check_safety(&mut self) -> Result<(), String> {
        self.check_controller()?;
        for agent in &self.agents {
            if let Some(w) = agent.accepted_log.windows(2).find(|w| w[0] >= w[1]) {
                return Err(format!(
                    "{} accepted generation {} after generation {}",
                    agent.id, w[1], w[0]
                ));
            }
            let accepted: BTreeMap<&ServiceName, &Workload> = agent
                .accepted
                .iter()
                .flat_map(|a| a.workloads.iter().map(|w| (&w.service, w)))
                .collect();
            let running: BTreeMap<&ServiceName, &Workload> = agent.running.iter().collect();
            if !agent.powered && !running.is_empty() {
                return Err(format!("{} runs workloads while powered off", agent.id));
            }
            if agent.powered && running != accepted {
                return Err(format!(
                    "{} runs {:?} but accepted {:?}: it acts on something it did not accept",
                    agent.id,
                    running.keys().collect::<Vec<_>>(),
                    accepted.keys().collect::<Vec<_>>()
                ));
            }
            if let Some(accepted) = &agent.accepted {
                let signed = self
                    .issued
                    .get(&(agent.id.clone(), accepted.generation.get()));
                let matches = signed.is_some_and(|assignments| {
                    assignments.len() == accepted.workloads.len()
                        && assignments.iter().zip(&accepted.workloads).all(|(a, w)| {
                            a.service == w.service
                                && a.replica == w.replica
                                && a.release == w.release
                        })
                });
                if !matches {
                    return Err(format!(
                        "{} accepted generation {} with workloads the controller never signed for it",
                        agent.id, accepted.generation
                    ));
                }
            }
        }
        Ok(())
    }

    /// Faults stop: every link heals, every node and agent comes back
    /// (except one node that stays dead in half the seeds), the controller
    /// runs, and the network is clean.
    async fn calm_down(&mut self) {
        self.note("faults stop".into());
        self.broker.faults = Faults::NONE;
        let dead = self
            .rng
            .gen_bool(0.5)
            .then(|| self.rng.gen_range(0..self.agents.len()));
        for i in 0..self.agents.len() {
            self.agents[i].partitioned = false;
            if Some(i) == dead {
                self.note(format!("{} stays powered off", self.agents[i].id));
                let agent = &mut self.agents[i];
                agent.powered = false;
                agent.up = false;
                agent.running.clear();
                self.disconnect(i);
                continue;
            }
            let boot = !self.agents[i].up;
            self.schedule(
                self.t,
                if boot {
                    Timer::Boot(i)
                } else {
                    Timer::Connect(i)
                },
            );
        }
        if !self.controller_up {
            self.schedule(self.t, Timer::ControllerStart);
        }
        // A stays-dead node must not be brought back by a boot already scheduled.
        if let Some(i) = dead {
            self.timers
                .retain(|_, t| !matches!(t, Timer::Boot(j) | Timer::Connect(j) if *j == i));
        }
    }

    /// What must hold once the faults have stopped and time has passed:
    /// every live agent on the generation the controller stored for it,
    /// exactly the placed copies running, every replica placed or with a
    /// reason.
    fn check_converged(&self) -> Result<(), String> {
        let store = &self.mf.store;
        let stored: BTreeMap<AgentId, u64> = store
            .desired_states()
            .map_err(|e| format!("store: {e}"))?
            .into_iter()
            .map(|d| (d.agent, d.generation.get()))
            .collect();
        for agent in self.agents.iter().filter(|a| a.powered) {
            if !agent.connected {
                return Err(format!(
                    "{} is not connected after the faults stopped",
                    agent.id
                ));
            }
            let have = agent.accepted.as_ref().map(|a| a.generation.get());
            let want = stored.get(&agent.id).copied();
            if have != want {
                return Err(format!(
                    "{} is on generation {have:?}, the controller stored {want:?} for it",
                    agent.id
                ));
            }
        }
        let services = store.services().map_err(|e| format!("store: {e}"))?;
        for service in &services {
            let view = self
                .mf
                .fx
                .app
                .service(service.name.as_str())
                .map_err(|e| format!("service {}: {e}", service.name))?;
            let mut placed = 0;
            for replica in &view.replicas {
                match &replica.node {
                    Some(node) => {
                        placed += 1;
                        let agent =
                            self.agents.iter().find(|a| &a.id == node).ok_or_else(|| {
                                format!("{} is placed on unknown {node}", service.name)
                            })?;
                        if !agent.powered {
                            return Err(format!(
                                "{} replica {} is placed on {node}, which is dead",
                                service.name, replica.index
                            ));
                        }
                        let runs = agent
                            .running
                            .get(&service.name)
                            .is_some_and(|w| w.replica == replica.index);
                        if !runs {
                            return Err(format!(
                                "{} replica {} is placed on {node} but does not run there",
                                service.name, replica.index
                            ));
                        }
                    }
                    None if replica.reason.as_deref().is_none_or(str::is_empty) => {
                        return Err(format!(
                            "{} replica {} is neither placed nor has a reason",
                            service.name, replica.index
                        ));
                    }
                    None => {}
                }
            }
            let copies = self
                .agents
                .iter()
                .filter(|a| a.powered && a.running.contains_key(&service.name))
                .count();
            if copies != placed {
                return Err(format!(
                    "{} runs {copies} copies for {placed} placed replicas",
                    service.name
                ));
            }
        }
        for agent in self.agents.iter().filter(|a| a.powered) {
            if let Some(stray) = agent
                .running
                .keys()
                .find(|s| !services.iter().any(|r| &r.name == *s))
            {
                return Err(format!("{} runs {stray}, which is no service", agent.id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            seed: 3,
            agents: 3,
            steps: 40,
        }
    }

    /// The checks can fail: an agent that runs what it never accepted, and
    /// a controller that signs two contents with one generation, are caught.
    #[tokio::test(flavor = "current_thread")]
    async fn the_invariants_catch_an_agent_acting_on_what_it_did_not_accept() {
        let mut world = World::new(config()).await;
        world.run().await.expect("a clean run");
        let (i, mut workload) = world
            .agents
            .iter()
            .enumerate()
            .find_map(|(i, a)| Some((i, a.running.values().next()?.clone())))
            .expect("seed 3 deploys something within 40 steps");
        workload.service = ServiceName::new("intruder").expect("name");
        world.agents[i]
            .running
            .insert(workload.service.clone(), workload);
        let err = world.check_safety().expect_err("caught");
        assert!(err.contains("did not accept"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_invariants_catch_two_documents_with_one_generation() {
        let mut world = World::new(config()).await;
        world.run().await.expect("a clean run");
        let key = world
            .latest_issued
            .iter()
            .map(|(a, g)| (a.clone(), *g))
            .find(|key| world.issued.get(key).is_some_and(|w| !w.is_empty()))
            .expect("a desired state with work was signed");
        world.issued.get_mut(&key).expect("entry").clear();
        world.mf.fx.app.republish_tick(world.mf.clock.now()).await;
        world.drain_controller();
        let err = world.check_controller().expect_err("caught");
        assert!(err.contains("two different desired states"), "{err}");
    }
}
