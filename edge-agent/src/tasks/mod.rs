//! The agent's long-running tasks, one file each; [`crate::run`] wires them
//! together and starts them from one place.
//!
//! - [`intake`]: deliveries → verified, persisted desired states;
//! - [`status`]: board changes → one queued Status per burst;
//! - [`log_requests`]: log requests → signed answers;
//! - [`announce`]: the controller's calls to announce → presence, status, heartbeat;
//! - [`reconcile`]: the reconcile loop, after the start-up wait;
//! - [`heartbeat`]: the heartbeat timer and its skip rule;
//! - [`alarms`]: observed conditions → signed alarm raise and clear events.
//!
//! Telemetry
//! ([`crate::telemetry::telemetry_loop`]), latency probes
//! ([`crate::probe::Prober::run`]), certificate renewal
//! ([`crate::enroll::renewal_loop`]) and the MQTT adapter ([`crate::mqtt::run`])
//! live beside what they drive. A task talks to the others only through the
//! channels and shared parts it is given: no task imports another.

pub mod alarms;
pub mod announce;
pub mod heartbeat;
pub mod intake;
pub mod log_requests;
pub mod reconcile;
pub mod status;
