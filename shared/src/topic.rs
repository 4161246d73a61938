//! The MQTT topic tree, built only by constructors and inverted by
//! [`Topics::route`] (per-agent channels) and [`Topics::telemetry_route`].
//!
//! All topics live under a configurable prefix (default `verge/v1`):
//!
//! | topic | direction | QoS | retained |
//! |---|---|---|---|
//! | `{prefix}/agents/{id}/desired` | controller → agent | 1 | yes |
//! | `{prefix}/agents/{id}/status` | agent → controller | 1 | no |
//! | `{prefix}/agents/{id}/presence` | agent → controller (Last Will: offline) | 1 | yes |
//! | `{prefix}/agents/{id}/heartbeat` | agent → controller | 0 | no |
//! | `{prefix}/telemetry/{region}/{id}` | agent → controller and consumers (through the outbox) | 1 | no |
//! | `{prefix}/events/{region}/{id}` | agent → controller and consumers (through the outbox) | 1 | no |
//! | `{prefix}/agents/{id}/logs/request` | controller → agent | 1 | no |
//! | `{prefix}/agents/{id}/logs/response` | agent → controller | 1 | no |
//! | `{prefix}/agents/{id}/latency` | agent → controller (through the outbox) | 1 | no |
//! | `{prefix}/agents/{id}/probes` | controller → agent | 1 | yes |
//! | `{prefix}/alarms/{region}/{alarm}/{entity}` | controller → consumers | 1 | yes, while raised |
//! | `{prefix}/fleet/events/{region}` | controller → consumers | 1 | no |
//! | `{prefix}/announce` | controller → every agent | 1 | no |
//!
//! `{region}` in the last two is [`FLEET_SEGMENT`] for what belongs to no
//! one region (services, releases, the controller itself).

use std::fmt;

use crate::alarms::{AlarmId, Entity};
use crate::id::{AgentId, RegionId};

/// The region segment of fleet-wide alarms and events: it starts with `_`,
/// so no region can be named so.
pub const FLEET_SEGMENT: &str = "_fleet";

/// The default topic prefix.
pub const DEFAULT_PREFIX: &str = "verge/v1";

/// Which per-agent channel a topic names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Channel {
    Desired,
    Status,
    Presence,
    Heartbeat,
    /// A signed request for the tail of a workload's log.
    LogRequest,
    /// The agent's signed answer to a [`Channel::LogRequest`].
    LogResponse,
    /// The agent's signed round-trip measurements to its probe targets.
    Latency,
    /// The controller's signed choice of an agent's probe targets.
    Probes,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Channel::Desired,
        Channel::Status,
        Channel::Presence,
        Channel::Heartbeat,
        Channel::LogRequest,
        Channel::LogResponse,
        Channel::Latency,
        Channel::Probes,
    ];

    /// The channel's topic segment (`status`, `logs/request`, …).
    pub fn segment(self) -> &'static str {
        match self {
            Channel::Desired => "desired",
            Channel::Status => "status",
            Channel::Presence => "presence",
            Channel::Heartbeat => "heartbeat",
            Channel::LogRequest => "logs/request",
            Channel::LogResponse => "logs/response",
            Channel::Latency => "latency",
            Channel::Probes => "probes",
        }
    }

    fn from_segment(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.segment() == s)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.segment())
    }
}

/// A topic, understood: which agent and which channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub agent: AgentId,
    pub channel: Channel,
}

/// A telemetry or events topic, understood: the region and agent it
/// names. The region is only what the publisher put in the topic; trust
/// the agent id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelemetryRoute {
    pub region: RegionId,
    pub agent: AgentId,
}

/// Why a topic prefix is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic prefix {0:?}: segments must be non-empty and free of '+', '#' and NUL")]
pub struct PrefixError(pub String);

/// Builds and parses topics under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Topics {
    /// A topic tree under `prefix`, which must be one or more non-empty
    /// segments without wildcards (for example `verge/v1` or `site-7/verge/v1`).
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let ok = !prefix.is_empty()
            && prefix
                .split('/')
                .all(|s| !s.is_empty() && !s.contains(['+', '#', '\0']));
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(PrefixError(prefix.to_owned()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic of one agent's channel.
    pub fn agent(&self, agent: &AgentId, channel: Channel) -> String {
        format!("{}/agents/{}/{}", self.prefix, agent, channel)
    }

    pub fn desired(&self, agent: &AgentId) -> String {
        self.agent(agent, Channel::Desired)
    }

    pub fn status(&self, agent: &AgentId) -> String {
        self.agent(agent, Channel::Status)
    }

    pub fn presence(&self, agent: &AgentId) -> String {
        self.agent(agent, Channel::Presence)
    }

    pub fn heartbeat(&self, agent: &AgentId) -> String {
        self.agent(agent, Channel::Heartbeat)
    }

    /// Where an agent publishes its periodic telemetry, for consumers.
    pub fn telemetry(&self, region: &RegionId, agent: &AgentId) -> String {
        format!("{}/telemetry/{region}/{agent}", self.prefix)
    }

    /// The subscription filter matching every agent's telemetry.
    pub fn all_telemetry(&self) -> String {
        format!("{}/telemetry/+/+", self.prefix)
    }

    /// Inverts [`Topics::telemetry`]: `None` for any topic it cannot have built.
    pub fn telemetry_route(&self, topic: &str) -> Option<TelemetryRoute> {
        let rest = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("/telemetry/")?;
        let (region, agent) = rest.split_once('/')?;
        Some(TelemetryRoute {
            region: RegionId::new(region).ok()?,
            agent: AgentId::new(agent).ok()?,
        })
    }

    /// Where an agent publishes its security events, for the controller and consumers.
    pub fn events(&self, region: &RegionId, agent: &AgentId) -> String {
        format!("{}/events/{region}/{agent}", self.prefix)
    }

    /// The subscription filter matching every agent's events.
    pub fn all_events(&self) -> String {
        format!("{}/events/+/+", self.prefix)
    }

    /// Inverts [`Topics::events`]: `None` for any topic it cannot have built.
    pub fn events_route(&self, topic: &str) -> Option<TelemetryRoute> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/events/")?;
        let (region, agent) = rest.split_once('/')?;
        Some(TelemetryRoute {
            region: RegionId::new(region).ok()?,
            agent: AgentId::new(agent).ok()?,
        })
    }

    /// Where the controller keeps an alarm while it is raised (retained).
    pub fn alarm(&self, region: Option<&RegionId>, alarm: AlarmId, entity: &Entity) -> String {
        format!(
            "{}/alarms/{}/{alarm}/{}",
            self.prefix,
            region.map_or(FLEET_SEGMENT, RegionId::as_str),
            entity.instance()
        )
    }

    /// Where the controller publishes fleet lifecycle events.
    pub fn fleet_events(&self, region: Option<&RegionId>) -> String {
        format!(
            "{}/fleet/events/{}",
            self.prefix,
            region.map_or(FLEET_SEGMENT, RegionId::as_str)
        )
    }

    /// Where the controller asks every agent to announce itself
    /// ([`crate::announce`]).
    pub fn announce(&self) -> String {
        format!("{}/announce", self.prefix)
    }

    pub fn log_request(&self, agent: &AgentId) -> String {
        self.agent(agent, Channel::LogRequest)
    }

    pub fn log_response(&self, agent: &AgentId) -> String {
        self.agent(agent, Channel::LogResponse)
    }

    /// The subscription filter matching one channel of every agent.
    pub fn all_agents(&self, channel: Channel) -> String {
        format!("{}/agents/+/{}", self.prefix, channel)
    }

    /// Inverts the constructors: `None` for any topic they cannot have built.
    pub fn route(&self, topic: &str) -> Option<Route> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix("/agents/")?;
        let (agent, channel) = rest.split_once('/')?;
        Some(Route {
            agent: AgentId::new(agent).ok()?,
            channel: Channel::from_segment(channel)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn builds_documented_topics() {
        let t = Topics::default();
        let a = AgentId::new("edge-1").expect("valid");
        assert_eq!(t.desired(&a), "verge/v1/agents/edge-1/desired");
        assert_eq!(t.all_agents(Channel::Status), "verge/v1/agents/+/status");
        assert_eq!(t.log_request(&a), "verge/v1/agents/edge-1/logs/request");
        assert_eq!(
            t.route("verge/v1/agents/edge-1/logs/response"),
            Some(Route {
                agent: a.clone(),
                channel: Channel::LogResponse
            })
        );
        let r = RegionId::new("eu-west").expect("valid");
        assert_eq!(t.telemetry(&r, &a), "verge/v1/telemetry/eu-west/edge-1");
        assert_eq!(t.events(&r, &a), "verge/v1/events/eu-west/edge-1");
        assert_eq!(t.all_telemetry(), "verge/v1/telemetry/+/+");
        assert_eq!(t.announce(), "verge/v1/announce");
        assert_eq!(t.route(&t.announce()), None, "not an agent's topic");
        let web = crate::ServiceName::new("web").expect("name");
        assert_eq!(
            t.alarm(
                Some(&r),
                AlarmId::WorkloadCrashLoop,
                &Entity::workload(a.clone(), web.clone())
            ),
            "verge/v1/alarms/eu-west/workload_crash_loop/node=edge-1,service=web"
        );
        assert_eq!(
            t.alarm(None, AlarmId::ReplicaUnplaced, &Entity::replica(web, 0)),
            "verge/v1/alarms/_fleet/replica_unplaced/service=web,replica=0"
        );
        assert_eq!(t.fleet_events(Some(&r)), "verge/v1/fleet/events/eu-west");
        assert_eq!(t.fleet_events(None), "verge/v1/fleet/events/_fleet");
        assert_eq!(
            t.telemetry_route("verge/v1/telemetry/eu-west/edge-1"),
            Some(TelemetryRoute {
                region: r,
                agent: a
            })
        );
    }

    #[test]
    fn rejects_foreign_and_malformed_topics() {
        let t = Topics::default();
        for bad in [
            "verge/v1/agents/edge-1/desired/extra",
            "verge/v1/agents/edge-1/unknown",
            "verge/v1/agents//status",
            "verge/v2/agents/edge-1/status",
            "verge/v1/nodes/edge-1/status",
            "verge/v1/agents/a+b/status",
        ] {
            assert_eq!(t.route(bad), None, "{bad}");
        }
        for bad in [
            "verge/v1/telemetry/eu-west/edge-1/extra",
            "verge/v1/telemetry/eu-west",
            "verge/v1/telemetry//edge-1",
            "verge/v1/telemetry/eu-west/",
            "verge/v2/telemetry/eu-west/edge-1",
            "verge/v1/events/eu-west/edge-1",
            "verge/v1/telemetry/eu+west/edge-1",
            "verge/v1/telemetry/eu-west/a#b",
            "verge/v1/agents/edge-1/status",
        ] {
            assert_eq!(t.telemetry_route(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefix_is_validated() {
        assert!(Topics::new("site-7/verge/v1").is_ok());
        for bad in ["", "a//b", "a/+/b", "#", "/lead"] {
            assert!(Topics::new(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn route_inverts_every_constructor(
            agent in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}",
            prefix in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}",
            channel in prop::sample::select(Channel::ALL.to_vec()),
        ) {
            let topics = Topics::new(&prefix).expect("valid prefix");
            let agent = AgentId::new(agent).expect("valid agent");
            let topic = topics.agent(&agent, channel);
            prop_assert_eq!(topics.telemetry_route(&topic), None);
            prop_assert_eq!(topics.route(&topic), Some(Route { agent, channel }));
        }

        #[test]
        fn telemetry_route_inverts_the_telemetry_topic(
            agent in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}",
            region in "[a-z0-9][a-z0-9-]{0,31}",
            prefix in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}",
        ) {
            let topics = Topics::new(&prefix).expect("valid prefix");
            let agent = AgentId::new(agent).expect("valid agent");
            let region = RegionId::new(region).expect("valid region");
            let events = topics.events(&region, &agent);
            prop_assert_eq!(topics.route(&events), None);
            prop_assert_eq!(topics.telemetry_route(&events), None);
            prop_assert_eq!(
                topics.events_route(&events),
                Some(TelemetryRoute { region: region.clone(), agent: agent.clone() })
            );
            let topic = topics.telemetry(&region, &agent);
            prop_assert_eq!(topics.events_route(&topic), None);
            // Never mistaken for a per-agent channel, whatever the ids.
            prop_assert_eq!(topics.route(&topic), None);
            prop_assert_eq!(
                topics.telemetry_route(&topic),
                Some(TelemetryRoute { region, agent })
            );
        }
    }
}
