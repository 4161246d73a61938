//! Node health from the controller's clock: healthy, schedulable, or why not.
//!
//! Healthy = online AND heard from within the heartbeat timeout AND, when
//! the controller asked every agent to announce itself and this node has
//! not answered yet, before the answer's deadline. Schedulable = healthy, or
//! unhealthy for less than the failover grace, so that a quick agent
//! restart does not move its replicas.

use std::time::Duration;

use verge_shared::Timestamp;

use crate::store::NodeRecord;
use verge_scheduler::Unschedulable;

/// One evaluation of a node's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub schedulable: Result<(), Unschedulable>,
}

/// Evaluates `node` at `now`. `heard_from` is when the controller last heard
/// from it (never earlier than the controller's own start, so that a
/// controller restart gives every node a fresh timeout); `answer_by`, when
/// the node owes an answer to a call to announce, is when that answer is due.
pub fn evaluate(
    node: &NodeRecord,
    heard_from: Timestamp,
    answer_by: Option<Timestamp>,
    now: Timestamp,
    heartbeat_timeout: Duration,
    failover_grace: Duration,
) -> Health {
    let timed_out_at = heard_from.saturating_add(heartbeat_timeout);
    let stale_at = answer_by.map_or(timed_out_at, |due| due.min(timed_out_at));
    let healthy = node.online && now < stale_at;
    if healthy {
        return Health {
            healthy,
            schedulable: Ok(()),
        };
    }
    let (since, why) = if node.online {
        (stale_at, Unschedulable::NotResponding)
    } else {
        (
            node.offline_since.unwrap_or(heard_from),
            Unschedulable::Offline,
        )
    };
    let in_grace = now < since.saturating_add(failover_grace);
    Health {
        healthy,
        schedulable: if in_grace { Ok(()) } else { Err(why) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use verge_shared::messages::Resources;
    use verge_shared::{AgentId, RegionId, SigningKey};

    fn node(online: bool, offline_since: Option<u64>) -> NodeRecord {
        NodeRecord {
            id: AgentId::new("n").expect("id"),
            region: RegionId::new("r").expect("region"),
            labels: BTreeMap::new(),
            capacity: Resources::default(),
            public_key: SigningKey::generate().expect("key").0.public_key(),
            version: "t".into(),
            online,
            offline_since: offline_since.map(Timestamp::from_unix_millis),
            last_seen: None,
            applied_generation: None,
            last_status: None,
            cordon: None,
            probe_addr: None,
            limits: None,
            revoked: false,
        }
    }

    const SEC: u64 = 1_000;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    #[test]
    fn silence_then_grace_then_unschedulable() {
        let timeout = Duration::from_secs(30);
        let grace = Duration::from_secs(30);
        let n = node(true, None);
        let h = evaluate(&n, at(0), None, at(10 * SEC), timeout, grace);
        assert_eq!(
            h,
            Health {
                healthy: true,
                schedulable: Ok(())
            }
        );
        let h = evaluate(&n, at(0), None, at(40 * SEC), timeout, grace);
        assert_eq!(
            h,
            Health {
                healthy: false,
                schedulable: Ok(())
            }
        );
        let h = evaluate(&n, at(0), None, at(61 * SEC), timeout, grace);
        assert_eq!(h.schedulable, Err(Unschedulable::NotResponding));
    }

    #[test]
    fn an_unanswered_call_to_announce_ends_health_at_its_deadline() {
        let timeout = Duration::from_secs(360);
        let grace = Duration::from_secs(30);
        let n = node(true, None);
        let due = Some(at(30 * SEC));
        assert!(evaluate(&n, at(0), due, at(30 * SEC - 1), timeout, grace).healthy);
        let h = evaluate(&n, at(0), due, at(30 * SEC), timeout, grace);
        assert_eq!(
            h,
            Health {
                healthy: false,
                schedulable: Ok(())
            },
            "not responding from the deadline, in grace"
        );
        assert_eq!(
            evaluate(&n, at(0), due, at(60 * SEC), timeout, grace).schedulable,
            Err(Unschedulable::NotResponding),
            "replicas move at the deadline plus the grace"
        );
        let later = evaluate(
            &n,
            at(0),
            Some(at(400 * SEC)),
            at(361 * SEC),
            timeout,
            grace,
        );
        assert!(
            !later.healthy,
            "a later deadline never extends the heartbeat timeout"
        );
    }

    #[test]
    fn offline_counts_from_the_offline_report() {
        let timeout = Duration::from_secs(30);
        let grace = Duration::from_secs(10);
        let n = node(false, Some(100 * SEC));
        assert_eq!(
            evaluate(&n, at(100 * SEC), None, at(105 * SEC), timeout, grace).schedulable,
            Ok(())
        );
        assert_eq!(
            evaluate(&n, at(100 * SEC), None, at(111 * SEC), timeout, grace).schedulable,
            Err(Unschedulable::Offline)
        );
        // Never seen online: no grace at all.
        let n = node(false, Some(0));
        assert_eq!(
            evaluate(&n, at(100 * SEC), None, at(100 * SEC), timeout, grace).schedulable,
            Err(Unschedulable::Offline)
        );
    }

    #[test]
    fn the_timeout_and_the_grace_end_exactly_when_they_run_out() {
        let timeout = Duration::from_secs(30);
        let grace = Duration::from_secs(20);
        let n = node(true, None);
        assert!(evaluate(&n, at(0), None, at(30 * SEC - 1), timeout, grace).healthy);
        let h = evaluate(&n, at(0), None, at(30 * SEC), timeout, grace);
        assert_eq!(
            h,
            Health {
                healthy: false,
                schedulable: Ok(())
            },
            "silent for the whole timeout: unhealthy, in grace"
        );
        assert_eq!(
            evaluate(&n, at(0), None, at(50 * SEC - 1), timeout, grace).schedulable,
            Ok(())
        );
        assert_eq!(
            evaluate(&n, at(0), None, at(50 * SEC), timeout, grace).schedulable,
            Err(Unschedulable::NotResponding)
        );
    }

    #[test]
    fn an_offline_node_is_never_healthy_and_its_grace_runs_from_going_offline() {
        let timeout = Duration::from_secs(30);
        let grace = Duration::from_secs(10);
        let n = node(false, Some(100 * SEC));
        let h = evaluate(&n, at(100 * SEC), None, at(100 * SEC), timeout, grace);
        assert_eq!(
            h,
            Health {
                healthy: false,
                schedulable: Ok(())
            }
        );
        assert_eq!(
            evaluate(&n, at(100 * SEC), None, at(110 * SEC - 1), timeout, grace).schedulable,
            Ok(())
        );
        assert_eq!(
            evaluate(&n, at(100 * SEC), None, at(110 * SEC), timeout, grace).schedulable,
            Err(Unschedulable::Offline)
        );
        // Offline without a recorded time: the grace runs from the last contact.
        let n = node(false, None);
        assert_eq!(
            evaluate(&n, at(50 * SEC), None, at(59 * SEC), timeout, grace).schedulable,
            Ok(())
        );
        assert_eq!(
            evaluate(&n, at(50 * SEC), None, at(60 * SEC), timeout, grace).schedulable,
            Err(Unschedulable::Offline)
        );
    }
}
