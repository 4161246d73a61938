//! The cluster harness: runs the real `central-controller` and `edge-agent`
//! binaries (and, when asked, a real Mosquitto) on free loopback ports with
//! temporary data directories, and gives tests an API client, an MQTT
//! client and condition waits with deadlines.
//!
//! Everything it starts is stopped when the [`Cluster`] is dropped, including
//! workload processes left behind by agents that a test killed.

pub mod api;
pub mod bench;
pub mod browser;
pub mod cluster;
pub mod faults;
pub mod fixture;
pub mod mqtt;
pub mod node;
pub mod proxy;
pub mod require;
pub mod sim;
pub mod sse;
pub mod tls;
pub mod trust;
pub mod verge;
pub mod wait;

pub use api::Api;
pub use cluster::{AgentHandle, BrokerKind, Cluster, ClusterOptions};
pub use wait::wait_for;

pub mod workload;
