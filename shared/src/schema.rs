//! JSON Schemas (draft 2020-12) of every payload a consumer can see on
//! MQTT, generated from the wire types (with the `schema` feature):
//! `docs/schemas/<name>.json` is [`schemas`]'s output (the controller's
//! `api::asyncapi_tests` fails when the copies drift), and
//! [`crate::asyncapi`] puts them into the AsyncAPI document.
//!
//! The structs and enums derive `schemars::JsonSchema` where they are
//! defined; the types whose JSON is a string in a format of their own
//! (identifiers, times, digests, keys) and the DSSE envelope implement it
//! here, stating the exact wire format. Every schema carries an example: a
//! real document built from the Rust types (signed, where it travels
//! signed, with fixed example keys) and serialised, so it is true by
//! construction. Pure functions: no I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::alarms::{Acknowledgement, Alarm, AlarmId, AlarmReport, AlarmState, Entity};
use crate::announce::{self, AnnounceRequest};
use crate::dsse::{Envelope, PublicKey, Signature, SigningKey};
use crate::fleet::{FleetEvent, FleetEventKind};
use crate::id::{AgentId, RegionId, ServiceName};
use crate::latency::{LatencyReport, LatencySample, ProbePlan, ProbeTarget};
use crate::logs::{LogRequest, LogResponse, LogStream};
use crate::messages::{
    Assignment, Delivery, DesiredState, Event, EventKind, ExitInfo, Generation, HealthCheck,
    HealthState, Heartbeat, Isolation, LimitMechanism, PortSpec, Presence, Probe, Resources,
    RestartPolicy, RunSpec, Status, WorkloadState, WorkloadStatus,
};
use crate::telemetry::{
    CacheMetrics, HostMetrics, InterfaceMetrics, OutboxMetrics, ProcessMetrics, Telemetry,
    Temperature, WorkloadMetrics,
};
use crate::time::Timestamp;
use crate::trust::{MediaType, Publisher, Release, ReleaseArtifact, RootRole, TrustBundle};
use crate::{Sha256Digest, latency, limits, logs, messages, telemetry, trust};

/// The base of every schema's `$id`: `urn:verge:schema:<name>`.
pub const ID_BASE: &str = "urn:verge:schema:";

/// What the wire format of a `Timestamp` is: RFC 3339 in UTC with
/// milliseconds, as [`Timestamp`]'s `Display` writes it.
pub const TIMESTAMP_PATTERN: &str =
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$";

/// Standard base64 with padding, as DSSE payloads and signatures are written.
pub const BASE64_PATTERN: &str =
    r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// Who signs a signed document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    /// A threshold of the root keys of the trust bundle.
    Root,
    /// A publisher key the trust bundle allows for the release's service.
    Publisher,
    /// A controller key of the trust bundle.
    Controller,
    /// The node key the controller pinned at the agent's first contact.
    Node,
}

impl Signer {
    /// As the documents say it (`the node key`).
    pub fn describe(self) -> &'static str {
        match self {
            Signer::Root => "a threshold of the trust bundle's root keys",
            Signer::Publisher => "a publisher key the trust bundle allows for the service",
            Signer::Controller => "a controller key of the trust bundle",
            Signer::Node => "the node key the controller pinned at the agent's first contact",
        }
    }
}

/// One published payload: its file, its type and, when it travels signed,
/// the envelope it travels in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The file stem under `docs/schemas/` (`status` is `status.json`).
    pub name: &'static str,
    /// The Rust type, and the schema's name in the AsyncAPI document.
    pub type_name: &'static str,
    /// The schema's `title`.
    pub title: &'static str,
    /// The DSSE `payloadType` of the envelope it travels in, when signed.
    pub payload_type: Option<&'static str>,
    /// Who signs it, when signed.
    pub signer: Option<Signer>,
    /// The largest message (the envelope, when signed) a reader accepts.
    pub max_bytes: usize,
}

impl Payload {
    const fn plain(
        name: &'static str,
        type_name: &'static str,
        title: &'static str,
        max_bytes: usize,
    ) -> Self {
        Self {
            name,
            type_name,
            title,
            payload_type: None,
            signer: None,
            max_bytes,
        }
    }

    const fn signed(
        name: &'static str,
        type_name: &'static str,
        title: &'static str,
        payload_type: &'static str,
        signer: Signer,
        max_bytes: usize,
    ) -> Self {
        Self {
            name,
            type_name,
            title,
            payload_type: Some(payload_type),
            signer: Some(signer),
            max_bytes,
        }
    }

    /// The schema's `$id`.
    pub fn id(&self) -> String {
        format!("{ID_BASE}{}", self.name)
    }
}

/// Every published payload, in the order of `docs/schemas/`.
pub const PAYLOADS: &[Payload] = &[
    Payload::plain(
        "envelope",
        "Envelope",
        "Signed envelope (DSSE)",
        limits::MAX_MQTT_PACKET_BYTES,
    ),
    Payload::plain(
        "delivery",
        "Delivery",
        "Delivery",
        limits::MAX_DELIVERY_BYTES,
    ),
    Payload::signed(
        "desired-state",
        "DesiredState",
        "Desired state",
        messages::payload_type::DESIRED_STATE,
        Signer::Controller,
        limits::MAX_DESIRED_STATE_BYTES,
    ),
    Payload::signed(
        "release",
        "Release",
        "Release",
        trust::payload_type::RELEASE,
        Signer::Publisher,
        limits::MAX_RELEASE_BYTES,
    ),
    Payload::signed(
        "trust-bundle",
        "TrustBundle",
        "Trust bundle",
        trust::payload_type::TRUST_BUNDLE,
        Signer::Root,
        limits::MAX_TRUST_BUNDLE_BYTES,
    ),
    Payload::signed(
        "presence",
        "Presence",
        "Presence",
        messages::payload_type::PRESENCE,
        Signer::Node,
        limits::MAX_PRESENCE_BYTES,
    ),
    Payload::signed(
        "status",
        "Status",
        "Status",
        messages::payload_type::STATUS,
        Signer::Node,
        limits::MAX_STATUS_BYTES,
    ),
    Payload::signed(
        "heartbeat",
        "Heartbeat",
        "Heartbeat",
        messages::payload_type::HEARTBEAT,
        Signer::Node,
        limits::MAX_HEARTBEAT_BYTES,
    ),
    Payload::signed(
        "event",
        "Event",
        "Node event",
        messages::payload_type::EVENT,
        Signer::Node,
        limits::MAX_EVENT_BYTES,
    ),
    Payload::signed(
        "probe-plan",
        "ProbePlan",
        "Probe plan",
        latency::PLAN_PAYLOAD_TYPE,
        Signer::Controller,
        latency::MAX_PLAN_BYTES,
    ),
    Payload::signed(
        "latency-report",
        "LatencyReport",
        "Latency report",
        latency::REPORT_PAYLOAD_TYPE,
        Signer::Node,
        latency::MAX_REPORT_BYTES,
    ),
    Payload::signed(
        "log-request",
        "LogRequest",
        "Log request",
        logs::REQUEST_PAYLOAD_TYPE,
        Signer::Controller,
        logs::MAX_LOG_REQUEST_BYTES,
    ),
    Payload::signed(
        "log-response",
        "LogResponse",
        "Log response",
        logs::RESPONSE_PAYLOAD_TYPE,
        Signer::Node,
        logs::MAX_LOG_RESPONSE_BYTES,
    ),
    Payload::signed(
        "announce-request",
        "AnnounceRequest",
        "Announce request",
        announce::PAYLOAD_TYPE,
        Signer::Controller,
        announce::MAX_REQUEST_BYTES,
    ),
    Payload::plain(
        "telemetry",
        "Telemetry",
        "Telemetry",
        telemetry::MAX_TELEMETRY_BYTES,
    ),
    Payload::plain("alarm", "Alarm", "Alarm", limits::MAX_MQTT_PACKET_BYTES),
    Payload::plain(
        "fleet-event",
        "FleetEvent",
        "Fleet event",
        limits::MAX_MQTT_PACKET_BYTES,
    ),
];

/// The payload named `name` (`status`), if there is one.
pub fn payload(name: &str) -> Option<&'static Payload> {
    PAYLOADS.iter().find(|p| p.name == name)
}

// ---- The types whose JSON is a string in a format of their own ----------

/// A string schema for an identifier kind, from the rules `id` checks.
fn identifier(rules: &crate::id::Rules, description: &str, example: &str) -> Schema {
    let pattern = if rules.relaxed {
        "^[A-Za-z0-9][A-Za-z0-9._-]*$"
    } else {
        "^[a-z0-9][a-z0-9-]*$"
    };
    json_schema!({
        "type": "string",
        "description": description,
        "minLength": 1,
        "maxLength": rules.max_len,
        "pattern": pattern,
        "examples": [example],
    })
}

macro_rules! string_schema {
    ($ty:ty, $name:literal, $build:expr) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn schema_id() -> Cow<'static, str> {
                concat!("verge_shared::", $name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $build
            }
        }
    };
}

string_schema!(
    AgentId,
    "AgentId",
    identifier(
        &AgentId::RULES,
        "A node (edge agent) id: ASCII letters, digits, '-', '_' and '.', starting with a letter or digit.",
        "edge-1",
    )
);
string_schema!(
    RegionId,
    "RegionId",
    identifier(
        &RegionId::RULES,
        "A region: lower-case ASCII letters, digits and '-', starting with a letter or digit.",
        "eu-west",
    )
);
string_schema!(
    ServiceName,
    "ServiceName",
    identifier(
        &ServiceName::RULES,
        "A service name: a DNS label (lower-case ASCII letters, digits and '-').",
        "hello",
    )
);
string_schema!(
    Timestamp,
    "Timestamp",
    json_schema!({
        "type": "string",
        "format": "date-time",
        "pattern": TIMESTAMP_PATTERN,
        "description": "A time in RFC 3339, UTC, with milliseconds.",
        "examples": ["2026-12-03T14:00:00.000Z"],
    })
);
string_schema!(
    Sha256Digest,
    "Sha256Digest",
    json_schema!({
        "type": "string",
        "pattern": "^[0-9a-f]{64}$",
        "description": "A SHA-256 digest in lower-case hex.",
    })
);
string_schema!(
    PublicKey,
    "PublicKey",
    json_schema!({
        "type": "string",
        "contentEncoding": "base64",
        "pattern": "^[A-Za-z0-9+/]{43}=$",
        "description": "An Ed25519 public key: base64 of its 32 raw bytes.",
    })
);

impl JsonSchema for Signature {
    fn schema_name() -> Cow<'static, str> {
        "Signature".into()
    }
    fn schema_id() -> Cow<'static, str> {
        "verge_shared::Signature".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "One signature of an envelope: Ed25519 over PAE(payloadType, payload).",
            "required": ["keyid", "sig"],
            "properties": {
                "keyid": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{64}$",
                    "description": "The signing key's id: lower-case hex SHA-256 of its 32 raw bytes.",
                },
                "sig": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "pattern": "^[A-Za-z0-9+/]{86}==$",
                    "description": "Base64 of the 64-byte Ed25519 signature.",
                },
            },
        })
    }
}

impl JsonSchema for Envelope {
    fn schema_name() -> Cow<'static, str> {
        "Envelope".into()
    }
    fn schema_id() -> Cow<'static, str> {
        "verge_shared::Envelope".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let types: Vec<&str> = PAYLOADS.iter().filter_map(|p| p.payload_type).collect();
        let signature = generator.subschema_for::<Signature>();
        json_schema!({
            "type": "object",
            "description": "A DSSE envelope (https://github.com/secure-systems-lab/dsse): a document's \
                JSON bytes in base64, with Ed25519 signatures over PAE(payloadType, payload). \
                Readers check the size bound, then a signature over the exact payload bytes, and \
                only then parse the payload; `payloadType` says which document it holds.",
            "required": ["payloadType", "payload", "signatures"],
            "properties": {
                "payloadType": {
                    "type": "string",
                    "enum": types,
                    "description": "Which document the payload holds; signed with it.",
                },
                "payload": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "contentMediaType": "application/json",
                    "pattern": BASE64_PATTERN,
                    "description": "Base64 (standard alphabet, padded) of the signed document's JSON bytes.",
                },
                "signatures": {
                    "type": "array",
                    "minItems": 1,
                    "items": signature,
                },
            },
        })
    }
}

// ---- Examples: real documents, signed with fixed keys -------------------

fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed(&[seed; 32]).expect("any 32 bytes are an Ed25519 seed")
}

fn at(text: &str) -> Timestamp {
    let parsed: Result<Timestamp, _> = serde_json::from_value(Value::String(text.to_owned()));
    parsed.expect("example times are RFC 3339")
}

fn agent(id: &str) -> AgentId {
    AgentId::new(id).expect("example ids are valid")
}

fn region(id: &str) -> RegionId {
    RegionId::new(id).expect("example regions are valid")
}

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).expect("example names are valid")
}

fn envelope<T: Serialize>(key: &SigningKey, payload_type: &str, document: &T) -> Envelope {
    let payload = serde_json::to_vec(document).unwrap_or_default();
    key.sign(payload_type, &payload)
}

/// The example documents of the published schemas, built from the wire
/// types. Tests build more (every variant, optional fields absent) from
/// the same pieces.
#[derive(Clone, Debug)]
pub struct Examples {
    pub trust_bundle: TrustBundle,
    pub release: Release,
    pub desired_state: DesiredState,
    pub delivery: Delivery,
    pub presence: Presence,
    pub status: Status,
    pub heartbeat: Heartbeat,
    pub event: Event,
    pub probe_plan: ProbePlan,
    pub latency_report: LatencyReport,
    pub log_request: LogRequest,
    pub log_response: LogResponse,
    pub announce_request: AnnounceRequest,
    pub telemetry: Telemetry,
    pub alarm: Alarm,
    pub fleet_event: FleetEvent,
    /// The signed envelope of each signed document, by payload name.
    pub envelopes: BTreeMap<&'static str, Envelope>,
}

impl Examples {
    /// The documents, and the envelopes of the signed ones.
    pub fn new() -> Self {
        let root = key(1);
        let controller = key(2);
        let publisher = key(3);
        let node = key(4);
        let edge = agent("edge-1");
        let hello = service("hello");
        let issued = at("2026-12-03T14:00:00.000Z");
        let trust_bundle = TrustBundle {
            schema_version: messages::SCHEMA_VERSION,
            version: 3,
            issued_at: issued,
            expires_at: at("2027-12-03T14:00:00.000Z"),
            root: RootRole {
                keys: vec![root.public_key()],
                threshold: 1,
            },
            controllers: vec![controller.public_key()],
            publishers: vec![Publisher {
                name: "ci".into(),
                key: publisher.public_key(),
                services: vec!["hello".into(), "web-*".into()],
            }],
            reset_generations: false,
        };
        let release = Release {
            schema_version: messages::SCHEMA_VERSION,
            service: hello.clone(),
            version: semver::Version::new(1, 2, 0),
            issued_at: issued,
            artifacts: vec![ReleaseArtifact {
                sha256: Sha256Digest::of(b"hello-edge"),
                size: 1_048_576,
                media_type: MediaType::Executable,
            }],
            run: RunSpec {
                args: vec!["--greeting".into(), "hi".into()],
                env: BTreeMap::from([("LOG".into(), "1".into())]),
                ports: vec![PortSpec {
                    name: "http".into(),
                    port: None,
                }],
                restart: RestartPolicy::OnFailure,
                stop_grace_secs: Some(10),
                health: Some(HealthCheck {
                    probe: Probe::Http {
                        port: "http".into(),
                        path: "/healthz".into(),
                        status_min: 200,
                        status_max: 399,
                    },
                    interval_secs: 10,
                    timeout_secs: 2,
                    healthy_threshold: 1,
                    unhealthy_threshold: 3,
                }),
                entrypoint: None,
            },
            resources: Resources {
                cpu_millis: 100,
                memory_mb: 32,
            },
        };
        let trust_envelope = envelope(&root, trust::payload_type::TRUST_BUNDLE, &trust_bundle);
        let release_envelope = envelope(&publisher, trust::payload_type::RELEASE, &release);
        let release_digest = release_envelope
            .signed_digest()
            .expect("a fresh envelope's payload is base64");
        let desired_state = DesiredState {
            schema_version: messages::SCHEMA_VERSION,
            agent: edge.clone(),
            generation: Generation::new(7),
            issued_at: issued,
            expires_at: at("2026-12-10T14:00:00.000Z"),
            workloads: vec![Assignment {
                service: hello.clone(),
                replica: 0,
                release: release_digest,
                rollback: false,
                config: BTreeMap::from([("MODE".into(), "edge".into())]),
            }],
        };
        let desired_envelope = envelope(
            &controller,
            messages::payload_type::DESIRED_STATE,
            &desired_state,
        );
        let delivery = Delivery {
            schema_version: messages::SCHEMA_VERSION,
            trust: Some(trust_envelope.clone()),
            desired: desired_envelope.clone(),
            releases: vec![release_envelope.clone()],
        };
        let presence = Presence {
            schema_version: messages::SCHEMA_VERSION,
            agent: edge.clone(),
            online: true,
            at: issued,
            region: region("eu-west"),
            labels: BTreeMap::from([("zone".into(), "eu-west-1a".into())]),
            capacity: Resources {
                cpu_millis: 4000,
                memory_mb: 3900,
            },
            public_key: node.public_key(),
            version: "0.1.0".into(),
            probe_addr: Some(SocketAddr::from(([192, 0, 2, 10], 7790))),
            limits: Some(LimitMechanism::CgroupV2),
        };
        let exit = ExitInfo {
            code: Some(1),
            signal: None,
            at: at("2026-12-03T13:58:12.250Z"),
        };
        let status = Status {
            schema_version: messages::SCHEMA_VERSION,
            agent: edge.clone(),
            at: issued,
            applied_generation: Some(Generation::new(7)),
            workloads: vec![WorkloadStatus {
                service: hello.clone(),
                replica: 0,
                artifact: Sha256Digest::of(b"hello-edge"),
                state: WorkloadState::Running,
                pid: Some(4242),
                restarts: 1,
                ports: BTreeMap::from([("http".into(), 40123)]),
                message: None,
                health: Some(HealthState::Healthy),
                last_exit: Some(exit.clone()),
                isolation: Some(Isolation {
                    limits: LimitMechanism::CgroupV2,
                    user: "verge-hello".into(),
                }),
            }],
            last_rejection: None,
            storage_problem: None,
        };
        let heartbeat = Heartbeat {
            schema_version: messages::SCHEMA_VERSION,
            agent: edge.clone(),
            at: issued,
            uptime_secs: 86_400,
            applied_generation: Some(Generation::new(7)),
        };
        let crash_loop = AlarmReport {
            id: AlarmId::WorkloadCrashLoop,
            entity: Entity::workload(edge.clone(), hello.clone()),
        };
        let event = Event {
            schema_version: messages::SCHEMA_VERSION,
            agent: edge.clone(),
            at: issued,
            kind: EventKind::AlarmRaised,
            reason: None,
            generation: None,
            alarm: Some(crash_loop.clone()),
            detail: "hello exited 5 times within 60 s".into(),
        };
        let probe_plan = ProbePlan {
            schema_version: messages::SCHEMA_VERSION,
            agent: edge.clone(),
            issued_at: issued,
            interval_secs: 60,
            targets: vec![ProbeTarget {
                agent: agent("edge-2"),
                addr: SocketAddr::from(([192, 0, 2, 11], 7790)),
            }],
        };
        let latency_report = LatencyReport {
            schema_version: messages::SCHEMA_VERSION,
            agent: edge.clone(),
            at: issued,
            samples: vec![LatencySample {
                target: agent("edge-2"),
                rtt_micros: vec![812, 790, 1034],
                lost: 1,
            }],
        };
        let log_request = LogRequest {
            schema_version: messages::SCHEMA_VERSION,
            agent: edge.clone(),
            request_id: "r-1f3a".into(),
            service: hello.clone(),
            stream: LogStream::Stderr,
            lines: 100,
            issued_at: issued,
            expires_at: at("2026-12-03T14:00:10.000Z"),
        };
        let log_response = LogResponse {
            schema_version: messages::SCHEMA_VERSION,
            agent: edge.clone(),
            request_id: "r-1f3a".into(),
            service: hello.clone(),
            stream: LogStream::Stderr,
            lines: vec!["listening on 127.0.0.1:40123".into()],
            truncated: false,
            error: None,
        };
        let announce_request = AnnounceRequest {
            schema_version: messages::SCHEMA_VERSION,
            issued_at: issued,
            expires_at: at("2026-12-03T14:10:00.000Z"),
            spread_ms: 5000,
        };
        let telemetry = Telemetry {
            schema_version: telemetry::TELEMETRY_SCHEMA_VERSION,
            agent: edge.clone(),
            region: region("eu-west"),
            seq: 812,
            at: issued,
            interval_seconds: 900,
            host: HostMetrics {
                boot_id: "4f6c1d2e-8b7a-4c3d-9e0f-1a2b3c4d5e6f".into(),
                uptime_seconds: 86_400,
                cpus: 4,
                cpu_percent: Some(12.5),
                load_1: 0.5,
                load_5: 0.25,
                load_15: 0.25,
                memory_total_bytes: 4_102_029_312,
                memory_available_bytes: 2_831_155_200,
                disk_total_bytes: 31_138_512_896,
                disk_free_bytes: 20_401_094_656,
                network: vec![InterfaceMetrics {
                    name: "eth0".into(),
                    received_bytes: 918_273_645,
                    sent_bytes: 123_456_789,
                }],
                temperatures: vec![Temperature {
                    sensor: "cpu-thermal".into(),
                    celsius: 48.5,
                }],
            },
            agent_process: ProcessMetrics {
                uptime_seconds: 86_000,
                rss_bytes: 7_208_960,
                cpu_seconds: 41.25,
            },
            workloads: vec![WorkloadMetrics {
                service: hello.clone(),
                replica: 0,
                state: WorkloadState::Running,
                health: Some(HealthState::Healthy),
                restarts: 1,
                process: Some(ProcessMetrics {
                    uptime_seconds: 85_990,
                    rss_bytes: 2_162_688,
                    cpu_seconds: 3.5,
                }),
                last_exit: Some(exit),
            }],
            cache: CacheMetrics {
                hits: 3,
                misses: 1,
                fetched_bytes: 1_048_576,
                evictions: 0,
                corrupt_removed: 0,
                cached_bytes: 1_048_576,
            },
            outbox: OutboxMetrics {
                queued: 0,
                queued_bytes: 0,
                dropped: 0,
            },
        };
        let definition = AlarmId::WorkloadCrashLoop.definition();
        let alarm = Alarm {
            schema_version: crate::alarms::ALARM_SCHEMA_VERSION,
            instance: 17,
            id: definition.id,
            code: definition.code.into(),
            title: definition.title.into(),
            severity: definition.severity,
            entity_type: definition.entity_type,
            entity: crash_loop.entity.clone(),
            entity_instance: crash_loop.entity.instance(),
            region: Some(region("eu-west")),
            state: AlarmState::Raised,
            observer: definition.observer,
            raised_at: issued,
            cleared_at: None,
            reason: "hello exited 5 times within 60 s".into(),
            probable_cause: definition.probable_cause.into(),
            repair: definition.repair.into(),
            acknowledged: Some(Acknowledgement {
                by: "alice (token ci)".into(),
                at: at("2026-12-03T14:05:00.000Z"),
            }),
            suppressed: false,
        };
        let fleet_event = FleetEvent {
            schema_version: crate::fleet::FLEET_EVENT_SCHEMA_VERSION,
            id: 1_796_306_400_000_001,
            at: issued,
            kind: FleetEventKind::ReplicaPlaced,
            region: Some(region("eu-west")),
            node: Some(edge.clone()),
            service: Some(hello),
            replica: Some(0),
            release: Some(release_digest),
            alarm: None,
            actor: None,
            detail: "placed on edge-1 (eu-west)".into(),
        };
        let envelopes = BTreeMap::from([
            ("trust-bundle", trust_envelope),
            ("release", release_envelope),
            ("desired-state", desired_envelope),
            (
                "presence",
                envelope(&node, messages::payload_type::PRESENCE, &presence),
            ),
            (
                "status",
                envelope(&node, messages::payload_type::STATUS, &status),
            ),
            (
                "heartbeat",
                envelope(&node, messages::payload_type::HEARTBEAT, &heartbeat),
            ),
            (
                "event",
                envelope(&node, messages::payload_type::EVENT, &event),
            ),
            (
                "probe-plan",
                envelope(&controller, latency::PLAN_PAYLOAD_TYPE, &probe_plan),
            ),
            (
                "latency-report",
                envelope(&node, latency::REPORT_PAYLOAD_TYPE, &latency_report),
            ),
            (
                "log-request",
                envelope(&controller, logs::REQUEST_PAYLOAD_TYPE, &log_request),
            ),
            (
                "log-response",
                envelope(&node, logs::RESPONSE_PAYLOAD_TYPE, &log_response),
            ),
            (
                "announce-request",
                envelope(&controller, announce::PAYLOAD_TYPE, &announce_request),
            ),
        ]);
        Self {
            trust_bundle,
            release,
            desired_state,
            delivery,
            presence,
            status,
            heartbeat,
            event,
            probe_plan,
            latency_report,
            log_request,
            log_response,
            announce_request,
            telemetry,
            alarm,
            fleet_event,
            envelopes,
        }
    }

    /// The example document of the payload named `name`, as JSON; `None`
    /// for a name that is not in [`PAYLOADS`].
    pub fn document(&self, name: &str) -> Option<Value> {
        let value = match name {
            "envelope" => to_value(self.envelopes.get("status")?),
            "delivery" => to_value(&self.delivery),
            "desired-state" => to_value(&self.desired_state),
            "release" => to_value(&self.release),
            "trust-bundle" => to_value(&self.trust_bundle),
            "presence" => to_value(&self.presence),
            "status" => to_value(&self.status),
            "heartbeat" => to_value(&self.heartbeat),
            "event" => to_value(&self.event),
            "probe-plan" => to_value(&self.probe_plan),
            "latency-report" => to_value(&self.latency_report),
            "log-request" => to_value(&self.log_request),
            "log-response" => to_value(&self.log_response),
            "announce-request" => to_value(&self.announce_request),
            "telemetry" => to_value(&self.telemetry),
            "alarm" => to_value(&self.alarm),
            "fleet-event" => to_value(&self.fleet_event),
            _ => return None,
        };
        Some(value)
    }

    /// What travels on the wire for the payload `name`: the signed envelope
    /// of a signed document, the document itself otherwise.
    pub fn message(&self, name: &str) -> Option<Value> {
        match self.envelopes.get(name) {
            Some(envelope) => Some(to_value(envelope)),
            None => self.document(name),
        }
    }
}

impl Default for Examples {
    fn default() -> Self {
        Self::new()
    }
}

fn to_value<T: Serialize>(document: &T) -> Value {
    // Plain data structs with string keys always serialise.
    serde_json::to_value(document).unwrap_or(Value::Null)
}

// ---- The schemas ----------------------------------------------------------

/// The schema of `T` as a draft 2020-12 root schema, describing what Verge
/// writes (fields it always writes are required).
fn root_schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

fn schema_of(name: &str) -> Option<Value> {
    let schema = match name {
        "envelope" => root_schema::<Envelope>(),
        "delivery" => root_schema::<Delivery>(),
        "desired-state" => root_schema::<DesiredState>(),
        "release" => root_schema::<Release>(),
        "trust-bundle" => root_schema::<TrustBundle>(),
        "presence" => root_schema::<Presence>(),
        "status" => root_schema::<Status>(),
        "heartbeat" => root_schema::<Heartbeat>(),
        "event" => root_schema::<Event>(),
        "probe-plan" => root_schema::<ProbePlan>(),
        "latency-report" => root_schema::<LatencyReport>(),
        "log-request" => root_schema::<LogRequest>(),
        "log-response" => root_schema::<LogResponse>(),
        "announce-request" => root_schema::<AnnounceRequest>(),
        "telemetry" => root_schema::<Telemetry>(),
        "alarm" => root_schema::<Alarm>(),
        "fleet-event" => root_schema::<FleetEvent>(),
        _ => return None,
    };
    Some(schema)
}

/// How a payload travels, said after its type's own description.
fn travels(payload: &Payload) -> String {
    let kib = payload.max_bytes / 1024;
    match (payload.payload_type, payload.signer) {
        (Some(payload_type), Some(signer)) => format!(
            "On MQTT it travels signed: it is the base64 `payload` of a DSSE envelope \
             (envelope.json) with payloadType `{payload_type}`, signed by {}; readers refuse \
             envelopes over {kib} KiB.",
            signer.describe()
        ),
        _ if payload.name == "envelope" => format!(
            "Readers refuse an envelope over its document's bound (each document's schema \
             says it; {} KiB at most).",
            PAYLOADS
                .iter()
                .filter(|p| p.signer.is_some())
                .map(|p| p.max_bytes)
                .max()
                .unwrap_or_default()
                / 1024
        ),
        _ => format!("Plain JSON, not signed; at most {kib} KiB."),
    }
}

/// The published schema of one payload: the type's schema with `$id`,
/// `title`, a description and its example.
fn published(payload: &Payload, examples: &Examples) -> Option<Value> {
    let mut schema = schema_of(payload.name)?;
    let example = examples.document(payload.name)?;
    let object = schema.as_object_mut()?;
    let own = object
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    object.insert("$id".into(), Value::String(payload.id()));
    object.insert("title".into(), Value::String(payload.title.into()));
    object.insert(
        "description".into(),
        Value::String(format!("{own}\n\n{}", travels(payload)).trim().to_owned()),
    );
    object.insert("examples".into(), json!([example]));
    plain_descriptions(&mut schema);
    Some(sorted(schema))
}

/// Every published schema, by payload name, in the order of [`PAYLOADS`].
pub fn schemas() -> Vec<(&'static str, Value)> {
    let examples = Examples::new();
    PAYLOADS
        .iter()
        .filter_map(|p| Some((p.name, published(p, &examples)?)))
        .collect()
}

/// The published schema of the payload `name` (`status`), if there is one.
pub fn schema(name: &str) -> Option<Value> {
    published(payload(name)?, &Examples::new())
}

/// A document as the files under `docs/` keep it: pretty-printed, every
/// object's keys sorted, a newline at the end.
pub fn render(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(value.clone())).unwrap_or_default();
    text.push('\n');
    text
}

/// `value` with every object's keys sorted, whatever map serde_json uses.
pub(crate) fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().collect::<Map<_, _>>())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Rustdoc links in the doc comments (`` [`Entity::instance`] ``,
/// `` [`x`](crate::y) ``) become plain code spans in every description.
fn plain_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(text) if key == "description" => *text = unlink(text),
                    _ => plain_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(plain_descriptions),
        _ => {}
    }
}

/// `` [`a`](b) `` and `` [`a`] `` become `` `a` ``.
fn unlink(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[`") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find("`]") else {
            out.push_str(&rest[start..]);
            return out;
        };
        out.push_str(&after[..end + 1]);
        rest = &after[end + 2..];
        if let Some(target) = rest.strip_prefix('(')
            && let Some(close) = target.find(')')
        {
            rest = &target[close + 1..];
        }
    }
    out.push_str(rest);
    out
}
