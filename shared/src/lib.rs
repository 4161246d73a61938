//! Verge's wire protocol: the one crate that defines what travels between the
//! controller, the agents and third-party consumers.
//!
//! It has no Tokio and no I/O. Everything here is plain data plus the pure
//! functions that build, check and sign it:
//!
//! - [`id`]: validated identifiers that can never contain MQTT wildcards or `/`;
//! - [`topic`]: the MQTT topic tree, built only by constructors and inverted by a router;
//! - [`messages`]: desired state, status, heartbeat and presence documents;
//! - [`digest`]: the SHA-256 digest that names artifacts and signed documents;
//! - [`dsse`]: signed envelopes (DSSE over Ed25519) — verify the bytes, then parse;
//! - [`enroll`]: enrollment and signed certificate renewal requests;
//! - [`limits`]: every size bound as a named constant;
//! - [`telemetry`]: telemetry and events for consumers, with sequence numbers;
//! - [`announce`]: the controller's signed call to every agent to announce itself;
//! - [`alarms`]: the alarm catalogue, alarm documents and the debounce rule;
//! - [`fleet`]: the controller's fleet lifecycle events;
//! - [`latency`]: the probe datagram, probe targets and signed latency reports;
//! - [`trust`]: the root-signed trust bundle and publisher-signed releases;
//! - [`log_format`]: `VERGE_LOG_FORMAT`, the one rule both binaries log by;
//! - `schema` and `asyncapi` (feature `schema`): the JSON Schemas of every
//!   MQTT payload (`docs/schemas/`) and the AsyncAPI document of the whole
//!   MQTT surface (`docs/asyncapi.json`), generated from these types.

pub mod alarms;
pub mod announce;
#[cfg(feature = "schema")]
pub mod asyncapi;
pub mod digest;
pub mod dsse;
pub mod enroll;
pub mod fleet;
pub mod id;
pub mod latency;
pub mod limits;
pub mod log_format;
pub mod logs;
pub mod messages;
#[cfg(feature = "openapi")]
mod openapi;
#[cfg(feature = "schema")]
pub mod schema;
#[cfg(all(test, feature = "schema"))]
mod schema_tests;
pub mod telemetry;
pub mod time;
pub mod topic;
pub mod trust;

pub use digest::Sha256Digest;
pub use dsse::{Envelope, KeyId, PublicKey, SigningKey, VerifyError};
pub use id::{AgentId, IdError, RegionId, ServiceName};
pub use messages::Generation;
pub use time::Timestamp;
pub use topic::{Route, Topics};
