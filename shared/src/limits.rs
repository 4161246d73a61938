//! Size bounds for everything read from the network, as named constants.
//!
//! Both sides check these before parsing; a payload over its bound is rejected
//! without being decoded. The MQTT clients and the embedded broker are
//! configured with [`MAX_MQTT_PACKET_BYTES`], which is larger than every
//! single-message bound below, so an oversized message still reaches the
//! application and is rejected there with a reason.

/// Largest MQTT packet either side sends or accepts.
pub const MAX_MQTT_PACKET_BYTES: usize = 512 * 1024;

/// Largest desired-state delivery an agent accepts: the controller-signed
/// desired state, the publisher-signed releases it names and the current
/// trust bundle, in one retained message.
pub const MAX_DELIVERY_BYTES: usize = 480 * 1024;

/// Largest signed desired-state envelope inside a delivery.
pub const MAX_DESIRED_STATE_BYTES: usize = 128 * 1024;

/// Largest signed release envelope (publisher tool, controller and agent
/// all refuse larger ones).
pub const MAX_RELEASE_BYTES: usize = 64 * 1024;

/// Largest signed trust-bundle envelope.
pub const MAX_TRUST_BUNDLE_BYTES: usize = 64 * 1024;

/// Most entries in a desired state's per-agent `config`, and the longest value.
pub const MAX_CONFIG_ENTRIES: usize = 32;
pub const MAX_CONFIG_VALUE_BYTES: usize = 1024;

/// Largest signed status envelope the controller accepts.
pub const MAX_STATUS_BYTES: usize = 64 * 1024;

/// Largest signed heartbeat envelope the controller accepts.
pub const MAX_HEARTBEAT_BYTES: usize = 2 * 1024;

/// Largest signed presence envelope the controller accepts.
pub const MAX_PRESENCE_BYTES: usize = 8 * 1024;

/// Largest signed event envelope the controller accepts (an event's
/// detail is at most [`MAX_MESSAGE_BYTES`]).
pub const MAX_EVENT_BYTES: usize = 8 * 1024;

/// Most workloads one desired state may carry.
pub const MAX_WORKLOADS_PER_AGENT: usize = 256;

/// Most arguments one workload may have, and the longest one.
pub const MAX_ARGS: usize = 64;
pub const MAX_ARG_BYTES: usize = 4096;

/// Most environment variables one workload may have, and the longest value.
pub const MAX_ENV_VARS: usize = 64;
pub const MAX_ENV_VALUE_BYTES: usize = 4096;

/// Longest archive entrypoint path in a run spec.
pub const MAX_ENTRYPOINT_BYTES: usize = 512;

/// Most bytes a tar.gz artifact may extract to: a decompression bomb stops
/// here, whatever its compressed size.
pub const MAX_ARCHIVE_EXTRACTED_BYTES: u64 = 1024 * 1024 * 1024;

/// Most entries (files, directories, links) a tar.gz artifact may hold.
pub const MAX_ARCHIVE_ENTRIES: u64 = 10_000;

/// Most named ports one workload may have.
pub const MAX_PORTS: usize = 16;

/// Most labels a node may report, and the longest key and value.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_BYTES: usize = 128;

/// Longest free-text message (status details, rejection reasons) on the wire.
pub const MAX_MESSAGE_BYTES: usize = 1024;
