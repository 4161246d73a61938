//! The intake task: checks each delivery on the desired-state topic with the
//! pure [`crate::intake`] rules, persists and publishes accepted desired
//! states, takes newer trust bundles, and reports every refusal.
//!
//! Deliveries come in on a watch channel from the MQTT adapter (only the
//! latest matters: the topic is retained); accepted states go out on another
//! watch channel to the reconciler. Persisting happens before publishing, so
//! a crash after acceptance replays the state at the next start.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use verge_shared::alarms::AlarmId;
use verge_shared::messages::{EventKind, RejectReason, Rejection};

use crate::alarms::Observations;
use crate::config::Config;
use crate::disk;
use crate::intake::{self, Decision, ResolvedState};
use crate::report::{Board, DiskUser, EventSink};
use crate::state::{Accepted, StateStore};
use crate::trust::{OfferError, Offered, TrustStore};

/// The first and the longest wait before persisting an accepted desired
/// state is tried again.
const SAVE_RETRY_INITIAL: Duration = Duration::from_secs(1);
const SAVE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Checks each received delivery; persists and publishes accepted desired
/// states, takes newer trust bundles, and reports every refusal.
pub struct Intake {
    pub config: Config,
    pub store: Arc<dyn StateStore>,
    pub trust: Arc<TrustStore>,
    pub board: Arc<Board>,
    pub events: EventSink,
    /// Refused and accepted desired states and trust bundles, for the
    /// `desired_state_refused` and `trust_bundle_refused` alarms.
    pub alarms: Observations,
    /// Where accepted (verified and persisted) desired states go: the
    /// reconciler applies the latest.
    pub accepted_state_tx: watch::Sender<Option<Arc<ResolvedState>>>,
}

/// What became of one delivery.
enum Handled {
    Done,
    /// Accepted but not persisted (disk full, say): try again later.
    RetrySave,
    /// The store cannot write even with space free again: stop the agent so
    /// that its service manager starts it afresh (docs/storage.md).
    StoreStuck,
}

impl Intake {
    /// Handles deliveries from `delivery_rx` until `stop` or until the
    /// sender is gone; returns early only when the store is stuck (see
    /// [`disk::store_stuck`]), which stops the agent. `handled` is notified
    /// after each delivery, whatever became of it.
    pub async fn run(
        self,
        mut delivery_rx: watch::Receiver<Option<Bytes>>,
        handled: Arc<Notify>,
        stop: CancellationToken,
    ) {
        // An accepted document that could not be persisted is tried again
        // until it is, or until a newer one arrives: the broker delivers a
        // retained document only once per subscription.
        let mut unsaved: Option<Bytes> = None;
        let mut retry_delay = SAVE_RETRY_INITIAL;
        loop {
            let retry = async {
                match unsaved {
                    Some(_) => tokio::time::sleep(retry_delay).await,
                    None => std::future::pending().await,
                }
            };
            let bytes = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                changed = delivery_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let Some(bytes) = delivery_rx.borrow_and_update().clone() else {
                        continue;
                    };
                    // Whatever the decision, the broker has spoken: start-up may go on.
                    handled.notify_one();
                    unsaved = None;
                    retry_delay = SAVE_RETRY_INITIAL;
                    bytes
                }
                () = retry => {
                    retry_delay = (retry_delay * 2).min(SAVE_RETRY_MAX);
                    match unsaved.take() {
                        Some(bytes) => bytes,
                        None => continue,
                    }
                }
            };
            match self.handle(&bytes).await {
                Handled::Done => {}
                Handled::RetrySave => unsaved = Some(bytes),
                Handled::StoreStuck => return,
            }
        }
    }

    async fn handle(&self, bytes: &[u8]) -> Handled {
        let now = verge_shared::Timestamp::now();
        let delivery = match intake::parse_delivery(bytes) {
            Ok(delivery) => delivery,
            Err((reason, detail)) => {
                self.rejected(Rejection {
                    reason,
                    generation: None,
                    detail: verge_shared::messages::bounded_message(&detail),
                    at: now,
                })
                .await;
                return Handled::Done;
            }
        };
        if let Some(bundle) = &delivery.trust {
            self.offer_trust(bundle, now).await;
        }
        let bundle = self.trust.bundle();
        let current = self.accepted_state_tx.borrow().clone();
        let last = if self.trust.reset_pending() {
            None
        } else {
            self.board.accepted()
        };
        let decision = intake::check(
            &delivery,
            &intake::Context {
                trust: &bundle,
                me: &self.config.id,
                last,
                running: current.as_ref().map_or(&[], |c| c.workloads.as_slice()),
                now,
            },
        );
        match decision {
            Ok(Decision::Accept(desired)) => return self.accept(bytes, desired).await,
            Ok(Decision::IgnoreSame) => {
                debug!(agent = %self.config.id, "Ignored a republished desired state of the applied generation.");
            }
            Err(rejection) => self.rejected(rejection).await,
        }
        Handled::Done
    }

    async fn accept(&self, bytes: &[u8], desired: ResolvedState) -> Handled {
        let generation = desired.generation;
        let accepted = Accepted {
            envelope: bytes.to_vec(),
            desired,
        };
        // Persist before acting: a crash after this point replays it.
        let store = self.store.clone();
        let saved =
            tokio::task::spawn_blocking(move || store.save(&accepted).map(|()| accepted)).await;
        match saved {
            Ok(Ok(accepted)) => {
                info!(agent = %self.config.id, generation = %generation, "Accepted desired state.");
                if self.trust.reset_pending()
                    && let Err(e) = self.trust.clear_reset()
                {
                    warn!(error = %e, "Cannot record that the generation reset was used; it applies once more after a restart.");
                }
                self.board.clear_disk_full(DiskUser::State);
                self.board.set_accepted(generation);
                self.alarms.observe(
                    AlarmId::DesiredStateRefused,
                    false,
                    format!("desired state generation {generation} was accepted"),
                );
                self.accepted_state_tx
                    .send_replace(Some(Arc::new(accepted.desired)));
                Handled::Done
            }
            Ok(Err(e)) => {
                if e.is_disk_full() && disk::store_stuck(&self.config.data_dir) {
                    return Handled::StoreStuck;
                }
                error!(agent = %self.config.id, generation = %generation, error = %e, "Cannot persist the desired state; not applying it yet.");
                if e.is_disk_full() {
                    self.board.set_disk_full(DiskUser::State, &e.to_string());
                }
                Handled::RetrySave
            }
            Err(e) => {
                error!(agent = %self.config.id, generation = %generation, error = %e, "Persisting the desired state failed.");
                Handled::Done
            }
        }
    }

    /// Reports a refused desired state: status, a security event (once per
    /// distinct refusal, not on every republish), the
    /// `desired_state_refused` alarm and a log line.
    async fn rejected(&self, rejection: Rejection) {
        warn!(agent = %self.config.id, reason = ?rejection.reason, generation = ?rejection.generation, detail = %rejection.detail, "Rejected desired state.");
        self.alarms.observe(
            AlarmId::DesiredStateRefused,
            true,
            refusal_detail("desired state", rejection.reason, &rejection.detail),
        );
        let repeated = self.board.last_rejection().is_some_and(|last| {
            (last.reason, last.generation, &last.detail)
                == (rejection.reason, rejection.generation, &rejection.detail)
        });
        if !repeated {
            self.events
                .raise(
                    EventKind::DesiredStateRejected,
                    Some(rejection.reason),
                    rejection.generation,
                    &rejection.detail,
                )
                .await;
        }
        self.board.set_rejection(rejection);
    }

    async fn offer_trust(&self, bundle: &verge_shared::Envelope, now: verge_shared::Timestamp) {
        let bytes = serde_json::to_vec(bundle).unwrap_or_default();
        match self.trust.offer(&bytes, now) {
            Ok(Offered::Unchanged) => {
                self.alarms.observe(
                    AlarmId::TrustBundleRefused,
                    false,
                    "the delivered trust bundle is the one trusted",
                );
            }
            Ok(Offered::Updated { version, reset }) => {
                info!(agent = %self.config.id, version, reset, "Trusting a newer trust bundle.");
                self.alarms.observe(
                    AlarmId::TrustBundleRefused,
                    false,
                    format!("trust bundle version {version} was accepted"),
                );
                let detail = format!("trust bundle version {version} is trusted from now on");
                self.events
                    .raise(EventKind::TrustBundleUpdated, None, None, &detail)
                    .await;
                if reset {
                    self.events
                        .raise(
                            EventKind::GenerationsReset,
                            None,
                            self.board.accepted(),
                            "a root-signed reset cleared the highest accepted generation",
                        )
                        .await;
                }
            }
            // The controller's copy may lag one the operator installed by file.
            Err(OfferError::Refused(e @ verge_shared::trust::TrustError::Stale { .. })) => {
                debug!(agent = %self.config.id, error = %e, "Ignored an older trust bundle.");
            }
            Err(OfferError::Store(e)) => {
                error!(agent = %self.config.id, error = %e, "Cannot store a newer trust bundle; it is taken with the next delivery.");
            }
            Err(OfferError::Refused(e)) => {
                warn!(agent = %self.config.id, error = %e, "Rejected a trust bundle; keeping the trusted one.");
                let reason = RejectReason::from(&e);
                self.alarms.observe(
                    AlarmId::TrustBundleRefused,
                    true,
                    refusal_detail("trust bundle", reason, &e.to_string()),
                );
                self.events
                    .raise(
                        EventKind::TrustBundleRejected,
                        Some(reason),
                        None,
                        &e.to_string(),
                    )
                    .await;
            }
        }
    }
}

/// What an alarm says about a refusal: the reason as on the wire, then why.
fn refusal_detail(what: &str, reason: RejectReason, detail: &str) -> String {
    let reason = serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{reason:?}"));
    format!("a {what} was refused ({reason}): {detail}")
}
