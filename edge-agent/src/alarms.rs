//! The agent's alarm book: for each (alarm, entity) the agent observes, the
//! catalogue's [`Debounce`] and the latest observation, turning observations
//! into the raise and clear transitions to report (docs/alarms.md).
//!
//! Pure: the caller passes the time, and the book only says what to report.
//! [`crate::tasks::alarms`] feeds it from the facts where they already are
//! (the status board, the outbox counters, the data directory's free space,
//! the trust bundle and certificate expiry, and [`Observation`]s that intake
//! and certificate renewal send), persists the raised set and queues the
//! signed events in the outbox.
//!
//! - A condition observed again while its alarm is raised reports nothing;
//!   so does one that flickers inside the catalogue's hold times.
//! - [`Book::tick`] feeds every entry its latest observation again, so that
//!   a hold time ends even when nothing new is observed (a workload that
//!   has run for 60 s clears its crash loop without a status change).
//! - A workload that is no longer desired clears its alarms at once
//!   ([`Book::retain_workloads`]): no alarm stays raised for a workload that
//!   no longer exists.
//! - Across agent restarts: the raised set is persisted and the book is
//!   [`Book::restore`]d from it, each restored alarm raised with its
//!   condition assumed to hold. The first observations after the start then
//!   clear what is gone (after the clear hold), and a condition that still
//!   holds sends nothing. Announcing everything again at start instead would
//!   leave an alarm whose condition went away during the restart raised at
//!   the controller forever, since nothing would ever clear it.
//! - Outbox drops: the alarm events travel through the outbox that may be
//!   dropping, which drops its oldest entries first. While reports are
//!   being dropped, [`Book::resync`] gives the current state again (every
//!   raised alarm, and every alarm that cleared since the drops began) so
//!   that the latest copy, the newest entries in the outbox, reaches the
//!   controller when the broker is back; the controller de-duplicates per
//!   (alarm, entity).

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use verge_shared::alarms::{AlarmId, AlarmReport, Debounce, Entity, Transition};
use verge_shared::{ServiceName, Timestamp};

/// Below this share of free space on the data directory's file system,
/// `disk_low` is raised ...
pub const DISK_LOW_PERCENT: f64 = 10.0;
/// ... and `disk_full` below this one.
pub const DISK_FULL_PERCENT: f64 = 2.0;
/// A raised disk alarm clears only once free space is this many points
/// above its threshold, so a value hovering at the threshold does not flap.
pub const DISK_MARGIN_PERCENT: f64 = 2.0;
/// `trust_bundle_expiring` is raised when the bundle expires within this long.
pub const TRUST_BUNDLE_WARNING_SECS: u64 = 30 * 24 * 3600;
/// `certificate_expiring` is raised when the certificate expires within this
/// long, or within a sixth of its lifetime if that is shorter.
pub const CERTIFICATE_WARNING_SECS: u64 = 7 * 24 * 3600;

/// One transition to report as a signed `alarm_raised` / `alarm_cleared` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub transition: Transition,
    pub alarm: AlarmReport,
    /// What was seen, for the event's `detail`.
    pub detail: String,
}

#[derive(Clone, Debug)]
struct Watched {
    debounce: Debounce,
    /// The latest observation, fed again on every [`Book::tick`].
    condition: bool,
    detail: String,
}

type Key = (AlarmId, Entity);

/// The alarms of one agent, by (alarm, entity).
#[derive(Clone, Debug, Default)]
pub struct Book {
    watched: BTreeMap<Key, Watched>,
    /// Alarms that cleared while `outbox_dropping` was raised: their clear
    /// may have been dropped, so [`Book::resync`] repeats it.
    cleared_while_dropping: BTreeMap<Key, String>,
}

impl Book {
    /// A book in which `raised` (persisted by a previous run) are raised,
    /// their conditions assumed to hold until observed otherwise.
    pub fn restore(
        raised: impl IntoIterator<Item = (AlarmReport, String)>,
        now: Timestamp,
    ) -> Self {
        let mut book = Self::default();
        for (alarm, detail) in raised {
            // `Debounce` starts cleared; a hold-free copy of the definition
            // raises it at once.
            let definition = verge_shared::alarms::Definition {
                raise_after_secs: 0,
                ..*alarm.id.definition()
            };
            let mut debounce = Debounce::default();
            debounce.observe(&definition, true, now);
            book.watched.insert(
                (alarm.id, alarm.entity),
                Watched {
                    debounce,
                    condition: true,
                    detail,
                },
            );
        }
        book
    }

    /// Feeds one observation; returns the transition to report, if one is due.
    pub fn observe(
        &mut self,
        id: AlarmId,
        entity: Entity,
        condition: bool,
        detail: impl Into<String>,
        now: Timestamp,
    ) -> Option<Report> {
        let key = (id, entity);
        let watched = self.watched.entry(key.clone()).or_insert_with(|| Watched {
            debounce: Debounce::default(),
            condition,
            detail: String::new(),
        });
        watched.condition = condition;
        watched.detail = detail.into();
        let transition = watched.debounce.observe(id.definition(), condition, now)?;
        let report = Report {
            transition,
            alarm: AlarmReport {
                id,
                entity: key.1.clone(),
            },
            detail: watched.detail.clone(),
        };
        self.note(&report);
        Some(report)
    }

    /// Feeds every entry its latest observation again: hold times that have
    /// passed by `now` turn into transitions.
    pub fn tick(&mut self, now: Timestamp) -> Vec<Report> {
        let due: Vec<(Key, bool, String)> = self
            .watched
            .iter()
            .map(|(k, w)| (k.clone(), w.condition, w.detail.clone()))
            .collect();
        let reports: Vec<Report> = due
            .into_iter()
            .filter_map(|((id, entity), condition, detail)| {
                self.observe(id, entity, condition, detail, now)
            })
            .collect();
        // Nothing raised, nothing pending: nothing to remember.
        self.watched
            .retain(|_, w| w.debounce.is_raised() || w.condition);
        reports
    }

    /// Whether `id` is raised for `entity`.
    pub fn is_raised(&self, id: AlarmId, entity: &Entity) -> bool {
        self.watched
            .get(&(id, entity.clone()))
            .is_some_and(|w| w.debounce.is_raised())
    }

    /// Forgets the workloads whose service `keep` refuses (no longer desired
    /// on this node); their raised alarms clear at once.
    pub fn retain_workloads(&mut self, keep: impl Fn(&ServiceName) -> bool) -> Vec<Report> {
        let gone: Vec<Key> = self
            .watched
            .keys()
            .filter(|(_, e)| e.service.as_ref().is_some_and(|s| !keep(s)))
            .cloned()
            .collect();
        let mut reports = Vec::new();
        for key in gone {
            let Some(watched) = self.watched.remove(&key) else {
                continue;
            };
            if watched.debounce.is_raised() {
                let report = Report {
                    transition: Transition::Clear,
                    detail: format!(
                        "the workload was removed from this node (last seen: {})",
                        watched.detail
                    ),
                    alarm: AlarmReport {
                        id: key.0,
                        entity: key.1,
                    },
                };
                self.note(&report);
                reports.push(report);
            }
        }
        reports
    }

    /// The raised alarms with the detail of their latest observation.
    pub fn raised(&self) -> Vec<(AlarmReport, String)> {
        self.watched
            .iter()
            .filter(|(_, w)| w.debounce.is_raised())
            .map(|((id, entity), w)| {
                (
                    AlarmReport {
                        id: *id,
                        entity: entity.clone(),
                    },
                    w.detail.clone(),
                )
            })
            .collect()
    }

    /// The current state again, for when reports may have been dropped:
    /// every raised alarm, and every alarm that cleared since
    /// `outbox_dropping` was raised.
    pub fn resync(&self) -> Vec<Report> {
        let cleared = self
            .cleared_while_dropping
            .iter()
            .filter(|(key, _)| !self.is_raised(key.0, &key.1))
            .map(|((id, entity), detail)| Report {
                transition: Transition::Clear,
                alarm: AlarmReport {
                    id: *id,
                    entity: entity.clone(),
                },
                detail: detail.clone(),
            });
        let raised = self.raised().into_iter().map(|(alarm, detail)| Report {
            transition: Transition::Raise,
            alarm,
            detail,
        });
        cleared.chain(raised).collect()
    }

    /// Keeps the clears that [`Book::resync`] must repeat.
    fn note(&mut self, report: &Report) {
        match (report.alarm.id, report.transition) {
            (AlarmId::OutboxDropping, Transition::Clear) => self.cleared_while_dropping.clear(),
            (_, Transition::Clear) if self.is_dropping() => {
                let key = (report.alarm.id, report.alarm.entity.clone());
                self.cleared_while_dropping
                    .insert(key, report.detail.clone());
            }
            _ => {}
        }
    }

    fn is_dropping(&self) -> bool {
        self.watched
            .iter()
            .any(|((id, _), w)| *id == AlarmId::OutboxDropping && w.debounce.is_raised())
    }
}

/// A threshold with a margin: below `threshold` raises; once `raised`, the
/// value must climb above `threshold + margin` to count as clear.
pub fn below_with_margin(value: f64, threshold: f64, margin: f64, raised: bool) -> bool {
    if raised {
        value < threshold + margin
    } else {
        value < threshold
    }
}

/// What intake and certificate renewal saw about one of the node's alarms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub id: AlarmId,
    pub condition: bool,
    pub detail: String,
}

/// Where intake and certificate renewal send their [`Observation`]s (to
/// the alarm task); sending never blocks and never fails the sender.
#[derive(Clone, Debug)]
pub struct Observations(mpsc::UnboundedSender<Observation>);

impl Observations {
    /// A sender and the receiver the alarm task reads.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Observation>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// The condition of `id` holds (`true`) or not, with what was seen.
    pub fn observe(&self, id: AlarmId, condition: bool, detail: impl Into<String>) {
        // The alarm task ends only at shutdown.
        let _ = self.0.send(Observation {
            id,
            condition,
            detail: detail.into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_shared::AgentId;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000 + secs * 1000)
    }

    fn node() -> Entity {
        Entity::node(AgentId::new("edge-1").expect("id"))
    }

    fn workload(service: &str) -> Entity {
        Entity::workload(
            AgentId::new("edge-1").expect("id"),
            ServiceName::new(service).expect("name"),
        )
    }

    fn transitions(reports: &[Report]) -> Vec<(AlarmId, Transition)> {
        reports.iter().map(|r| (r.alarm.id, r.transition)).collect()
    }

    #[test]
    fn a_condition_observed_again_while_raised_reports_nothing() {
        let mut book = Book::default();
        let id = AlarmId::DesiredStateRefused;
        let raise = book
            .observe(id, node(), true, "bad signature", at(0))
            .expect("no hold: raised at once");
        assert_eq!(raise.transition, Transition::Raise);
        assert_eq!(raise.detail, "bad signature");
        assert_eq!(raise.alarm.entity, node());
        for n in 1..5 {
            assert_eq!(book.observe(id, node(), true, "again", at(n)), None);
            assert!(book.tick(at(n)).is_empty());
        }
        let clear = book
            .observe(id, node(), false, "generation 4 accepted", at(9))
            .expect("cleared");
        assert_eq!(clear.transition, Transition::Clear);
        assert_eq!(clear.detail, "generation 4 accepted");
        assert_eq!(book.observe(id, node(), false, "again", at(10)), None);
        assert!(book.raised().is_empty());
    }

    #[test]
    fn hold_times_end_on_ticks_without_new_observations() {
        let mut book = Book::default();
        let web = workload("web");
        let crash = AlarmId::WorkloadCrashLoop; // raise at once, clear after 60 s
        assert!(
            book.observe(crash, web.clone(), true, "5 quick exits", at(0))
                .is_some()
        );
        assert_eq!(
            book.observe(crash, web.clone(), false, "runs", at(300)),
            None
        );
        assert!(book.tick(at(330)).is_empty(), "ran for 30 s only");
        // It exits quickly again before the minute is up: still raised.
        assert_eq!(
            book.observe(crash, web.clone(), true, "again", at(340)),
            None
        );
        assert_eq!(
            book.observe(crash, web.clone(), false, "runs", at(640)),
            None
        );
        assert!(book.tick(at(699)).is_empty());
        let cleared = book.tick(at(700));
        assert_eq!(transitions(&cleared), [(crash, Transition::Clear)]);
        assert_eq!(cleared[0].detail, "runs");
        assert!(book.tick(at(800)).is_empty(), "cleared once");
    }

    #[test]
    fn unhealthy_needs_thirty_seconds_either_way() {
        let mut book = Book::default();
        let web = workload("web");
        let sick = AlarmId::WorkloadUnhealthy;
        assert_eq!(book.observe(sick, web.clone(), true, "503", at(0)), None);
        assert!(book.tick(at(29)).is_empty());
        assert_eq!(transitions(&book.tick(at(30))), [(sick, Transition::Raise)]);
        assert_eq!(book.observe(sick, web.clone(), false, "200", at(40)), None);
        assert_eq!(book.observe(sick, web.clone(), true, "503", at(50)), None);
        assert_eq!(book.observe(sick, web.clone(), false, "200", at(60)), None);
        assert!(
            book.tick(at(89)).is_empty(),
            "the flicker restarted the hold"
        );
        assert_eq!(transitions(&book.tick(at(90))), [(sick, Transition::Clear)]);
    }

    #[test]
    fn disk_thresholds_have_a_margin_so_a_hovering_value_does_not_flap() {
        let mut book = Book::default();
        let low = AlarmId::DiskLow; // raise after 60 s, clear after 300 s
        let mut reports = Vec::new();
        // Free space hovers around 10% for an hour, sampled every 5 s.
        for (n, percent) in [9.9, 10.1, 9.8, 10.4, 11.5, 9.9, 11.9]
            .into_iter()
            .cycle()
            .take(720)
            .enumerate()
        {
            let raised = book.is_raised(low, &node());
            let condition =
                below_with_margin(percent, DISK_LOW_PERCENT, DISK_MARGIN_PERCENT, raised);
            let now = at(n as u64 * 5);
            reports.extend(book.observe(low, node(), condition, format!("{percent}%"), now));
            reports.extend(book.tick(now));
        }
        assert_eq!(
            transitions(&reports),
            [],
            "never below 10% for a whole minute: nothing raised"
        );
        // Below 10% for a minute raises; back at 11% does not clear; above
        // 12% for five minutes does.
        let mut t = 4000;
        let mut feed = |book: &mut Book, percent: f64, secs: u64| {
            let mut out = Vec::new();
            for _ in 0..secs / 5 {
                let raised = book.is_raised(low, &node());
                let condition =
                    below_with_margin(percent, DISK_LOW_PERCENT, DISK_MARGIN_PERCENT, raised);
                out.extend(book.observe(low, node(), condition, format!("{percent}%"), at(t)));
                t += 5;
            }
            out
        };
        assert_eq!(
            transitions(&feed(&mut book, 9.0, 65)),
            [(low, Transition::Raise)]
        );
        assert!(feed(&mut book, 11.0, 900).is_empty(), "inside the margin");
        assert_eq!(
            transitions(&feed(&mut book, 12.5, 305)),
            [(low, Transition::Clear)]
        );
    }

    #[test]
    fn a_removed_workload_clears_its_alarms_at_once_and_is_forgotten() {
        let mut book = Book::default();
        let (web, db) = (workload("web"), workload("db"));
        book.observe(AlarmId::WorkloadCrashLoop, web.clone(), true, "loop", at(0));
        book.observe(AlarmId::WorkloadUnhealthy, web.clone(), true, "503", at(0));
        book.observe(AlarmId::WorkloadCrashLoop, db.clone(), true, "loop", at(0));
        book.observe(AlarmId::DiskFull, node(), true, "1% free", at(0));
        let cleared = book.retain_workloads(|s| s.as_str() == "db");
        assert_eq!(
            transitions(&cleared),
            [(AlarmId::WorkloadCrashLoop, Transition::Clear)],
            "unhealthy was only pending"
        );
        assert_eq!(cleared[0].alarm.entity, web);
        assert!(
            cleared[0].detail.starts_with("the workload was removed"),
            "{cleared:?}"
        );
        assert!(book.tick(at(100)).is_empty(), "nothing left of web");
        let raised: Vec<_> = book.raised().into_iter().map(|(a, _)| a.id).collect();
        assert_eq!(raised, [AlarmId::DiskFull, AlarmId::WorkloadCrashLoop]);
    }

    #[test]
    fn a_restored_alarm_clears_when_its_condition_is_gone_and_stays_quiet_when_it_holds() {
        let mut before = Book::default();
        before.observe(
            AlarmId::WorkloadCrashLoop,
            workload("web"),
            true,
            "loop",
            at(0),
        );
        before.observe(AlarmId::DesiredStateRefused, node(), true, "expired", at(0));
        before.observe(AlarmId::DiskFull, node(), true, "1% free", at(0));
        let persisted = before.raised();

        // After the restart: the disk is still full, the workload runs, and
        // nothing new is known about the refusal.
        let mut after = Book::restore(persisted, at(1000));
        assert_eq!(after.raised().len(), 3);
        assert_eq!(
            after.observe(AlarmId::DiskFull, node(), true, "1% free", at(1000)),
            None
        );
        assert_eq!(
            after.observe(
                AlarmId::WorkloadCrashLoop,
                workload("web"),
                false,
                "runs",
                at(1000)
            ),
            None
        );
        assert!(after.tick(at(1030)).is_empty());
        let cleared = after.tick(at(1060));
        assert_eq!(
            transitions(&cleared),
            [(AlarmId::WorkloadCrashLoop, Transition::Clear)]
        );
        assert!(after.is_raised(AlarmId::DesiredStateRefused, &node()));
        assert!(after.is_raised(AlarmId::DiskFull, &node()));
    }

    #[test]
    fn resync_repeats_what_was_raised_and_cleared_while_reports_were_dropped() {
        let mut book = Book::default();
        book.observe(AlarmId::DesiredStateRefused, node(), true, "expired", at(0));
        book.observe(
            AlarmId::WorkloadCrashLoop,
            workload("web"),
            true,
            "loop",
            at(0),
        );
        book.observe(AlarmId::DiskFull, node(), true, "1% free", at(0));
        // Cleared (after its 60 s hold) before any drop: not repeated.
        book.observe(AlarmId::DiskFull, node(), false, "20% free", at(10));
        assert!(
            book.observe(AlarmId::DiskFull, node(), false, "20% free", at(70))
                .is_some()
        );
        book.observe(AlarmId::OutboxDropping, node(), true, "3 dropped", at(100));
        book.retain_workloads(|_| false);
        book.observe(
            AlarmId::DesiredStateRefused,
            node(),
            false,
            "accepted",
            at(200),
        );
        let again = book.resync();
        let mut seen: Vec<_> = again
            .iter()
            .map(|r| (r.alarm.id, r.transition, r.alarm.entity.service.is_some()))
            .collect();
        seen.sort_by_key(|(id, _, _)| *id);
        assert_eq!(
            seen,
            [
                (AlarmId::OutboxDropping, Transition::Raise, false),
                (AlarmId::WorkloadCrashLoop, Transition::Clear, true),
                (AlarmId::DesiredStateRefused, Transition::Clear, false),
            ]
        );
        // Once the drops are over, there is nothing to repeat but what is raised.
        book.observe(AlarmId::OutboxDropping, node(), false, "none", at(300));
        assert!(
            book.tick(at(900))
                .iter()
                .any(|r| r.transition == Transition::Clear)
        );
        assert!(book.resync().is_empty());
    }
}
