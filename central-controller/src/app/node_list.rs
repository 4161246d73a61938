//! Listing nodes a page at a time: filtered on the registry in memory, in id
//! order, starting after a given id (keyset paging), so that a page costs
//! the nodes it passes over and shows, never the whole fleet's views, and a
//! node that exists throughout a paged walk is seen exactly once however
//! the fleet changes meanwhile.

use std::ops::Bound;
use std::str::FromStr;

use verge_shared::{AgentId, RegionId, ServiceName};

use super::composition::App;
use super::error::AppError;
use super::health::Health;
use super::views::NodeView;
use crate::store::{Cordon, NodeRecord};

/// The most nodes one page may ask for.
pub const MAX_PAGE: usize = 1000;

/// A node's state as a list filter names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Online,
    Offline,
    Healthy,
    Unhealthy,
    Cordoned,
    Drained,
    Revoked,
    /// Not heard from since the controller started: shown from stored state.
    Unconfirmed,
}

impl NodeState {
    pub const NAMES: &str =
        "online, offline, healthy, unhealthy, cordoned, drained, revoked, unconfirmed";

    /// Whether `node`, with `health` and (when `unconfirmed`) not heard
    /// from since the controller started, is in this state.
    fn holds(self, node: &NodeRecord, health: &Health, unconfirmed: bool) -> bool {
        match self {
            NodeState::Online => node.online,
            NodeState::Offline => !node.online,
            NodeState::Healthy => health.healthy,
            NodeState::Unhealthy => !health.healthy,
            NodeState::Cordoned => node.cordon == Some(Cordon::Cordoned),
            NodeState::Drained => node.cordon == Some(Cordon::Drained),
            NodeState::Revoked => node.revoked,
            NodeState::Unconfirmed => unconfirmed,
        }
    }
}

impl FromStr for NodeState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "online" => NodeState::Online,
            "offline" => NodeState::Offline,
            "healthy" => NodeState::Healthy,
            "unhealthy" => NodeState::Unhealthy,
            "cordoned" => NodeState::Cordoned,
            "drained" => NodeState::Drained,
            "revoked" => NodeState::Revoked,
            "unconfirmed" => NodeState::Unconfirmed,
            other => return Err(format!("{other:?} is not one of {}", NodeState::NAMES)),
        })
    }
}

/// Which nodes a list shows; every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct NodeFilter {
    pub region: Option<RegionId>,
    pub state: Option<NodeState>,
    /// A label the node carries with exactly this value.
    pub label: Option<(String, String)>,
    /// Nodes that report a workload of this service.
    pub service: Option<ServiceName>,
    /// Nodes whose id starts with this; a page then passes over those
    /// nodes only.
    pub prefix: Option<String>,
}

impl NodeFilter {
    /// Whether `node` passes; `state` gives its health and whether it is
    /// unconfirmed, asked only when a state filter needs them.
    fn matches(&self, node: &NodeRecord, state: impl FnOnce() -> (Health, bool)) -> bool {
        self.region.as_ref().is_none_or(|r| &node.region == r)
            && self
                .label
                .as_ref()
                .is_none_or(|(k, v)| node.labels.get(k) == Some(v))
            && self.service.as_ref().is_none_or(|s| {
                node.last_status
                    .as_ref()
                    .is_some_and(|st| st.workloads.iter().any(|w| &w.service == s))
            })
            && self
                .prefix
                .as_deref()
                .is_none_or(|p| node.id.as_str().starts_with(p))
            && self.state.is_none_or(|wanted| {
                let (health, unconfirmed) = state();
                wanted.holds(node, &health, unconfirmed)
            })
    }
}

/// One page of nodes.
#[derive(Clone, Debug)]
pub struct NodePage {
    pub nodes: Vec<NodeView>,
    /// Set when more nodes match: the id to continue after.
    pub continue_after: Option<AgentId>,
}

impl App {
    /// The nodes matching `filter` with an id after `after`, in id order,
    /// at most `limit` of them (all without a limit).
    pub fn node_page(
        &self,
        filter: &NodeFilter,
        after: Option<&AgentId>,
        limit: Option<usize>,
    ) -> Result<NodePage, AppError> {
        if let Some(n) = limit
            && !(1..=MAX_PAGE).contains(&n)
        {
            return Err(AppError::invalid(
                "limit",
                format!("must be 1 to {MAX_PAGE}"),
            ));
        }
        let now = self.now();
        let (records, more) = {
            let registry = self.nodes.records();
            let prefix = filter.prefix.as_deref().unwrap_or("");
            let start = match after {
                Some(id) if id.as_str() >= prefix => Bound::Excluded(id.clone()),
                _ if prefix.is_empty() => Bound::Unbounded,
                // No id is empty, so the smallest id with the prefix is
                // after `prefix` itself (or is it).
                _ => AgentId::new(prefix).map_or(Bound::Unbounded, Bound::Included),
            };
            let mut matching = registry
                .range((start, Bound::Unbounded))
                .take_while(|(id, _)| id.as_str().starts_with(prefix))
                .map(|(_, node)| node)
                .filter(|node| {
                    filter.matches(node, || {
                        (self.nodes.health(node, now), self.nodes.unconfirmed(node))
                    })
                });
            let records: Vec<NodeRecord> = matching
                .by_ref()
                .take(limit.unwrap_or(usize::MAX))
                .cloned()
                .collect();
            let more = limit.is_some() && matching.next().is_some();
            (records, more)
        };
        let continue_after = more.then(|| records.last().map(|n| n.id.clone())).flatten();
        let nodes = records
            .iter()
            .map(|node| self.node_view(node, now, self.node_latency(node, now)))
            .collect::<Result<_, _>>()?;
        Ok(NodePage {
            nodes,
            continue_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use verge_shared::SigningKey;

    use super::*;
    use crate::app::clock::Clock as _;
    use crate::testing::{MemoryFixture, memory_fixture, presence};

    fn announce(mf: &MemoryFixture, id: &str, region: &str) {
        let key = SigningKey::generate().expect("key").0;
        mf.fx.app.ingest(
            &format!("verge/v1/agents/{id}/presence"),
            &presence(&key, id, region),
            mf.clock.now(),
        );
    }

    fn ids(page: &NodePage) -> Vec<String> {
        page.nodes.iter().map(|n| n.id.to_string()).collect()
    }

    #[test]
    fn paging_over_a_changing_fleet_shows_every_lasting_node_once() {
        let mf = memory_fixture();
        let lasting: BTreeSet<String> = (0..1000).map(|i| format!("n{i:04}")).collect();
        for id in &lasting {
            announce(&mf, id, "eu");
        }
        let all = NodeFilter::default();
        let mut seen: Vec<String> = Vec::new();
        let mut after: Option<AgentId> = None;
        for round in 0..1000 {
            let page = mf
                .fx
                .app
                .node_page(&all, after.as_ref(), Some(97))
                .expect("page");
            assert!(page.nodes.len() <= 97);
            seen.extend(ids(&page));
            // Between pages, nodes join before, at and after the cursor.
            for id in [
                format!("a{round}"),
                format!("n{round:04}x"),
                format!("z{round}"),
            ] {
                announce(&mf, &id, "eu");
            }
            match page.continue_after {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "pages come in id order");
        let unique: BTreeSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "no node is shown twice");
        let missing: Vec<&String> = lasting.iter().filter(|id| !unique.contains(id)).collect();
        assert!(missing.is_empty(), "lost: {missing:?}");
    }

    #[test]
    fn filters_combine_and_a_page_stops_where_the_matches_do() {
        let mf = memory_fixture();
        for (id, region) in [("a", "eu"), ("b", "us"), ("c", "eu"), ("d", "eu")] {
            announce(&mf, id, region);
        }
        let eu = NodeFilter {
            region: Some(RegionId::new("eu").expect("region")),
            ..NodeFilter::default()
        };
        let first = mf.fx.app.node_page(&eu, None, Some(2)).expect("page");
        assert_eq!(ids(&first), ["a", "c"]);
        let last = first.continue_after.expect("d is left");
        let second = mf
            .fx
            .app
            .node_page(&eu, Some(&last), Some(2))
            .expect("page");
        assert_eq!(ids(&second), ["d"]);
        assert_eq!(second.continue_after, None, "nothing matches after d");
        // A full page with nothing after it says so too.
        let exact = mf.fx.app.node_page(&eu, None, Some(3)).expect("page");
        assert_eq!((exact.nodes.len(), exact.continue_after), (3, None));

        let offline_eu = NodeFilter {
            state: Some(NodeState::Offline),
            ..eu.clone()
        };
        assert!(
            mf.fx
                .app
                .node_page(&offline_eu, None, None)
                .expect("page")
                .nodes
                .is_empty()
        );
        let healthy = NodeFilter {
            state: Some(NodeState::Healthy),
            ..eu
        };
        assert_eq!(
            ids(&mf.fx.app.node_page(&healthy, None, None).expect("page")),
            ["a", "c", "d"]
        );
        let labelled = NodeFilter {
            label: Some(("tier".into(), "edge".into())),
            ..NodeFilter::default()
        };
        assert!(
            mf.fx
                .app
                .node_page(&labelled, None, None)
                .expect("page")
                .nodes
                .is_empty()
        );
        let err = mf
            .fx
            .app
            .node_page(&NodeFilter::default(), None, Some(0))
            .expect_err("limit 0");
        assert!(
            matches!(err, AppError::InvalidField { ref field, .. } if field == "limit"),
            "{err:?}"
        );
    }
}
