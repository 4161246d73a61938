//! The AsyncAPI 3.0 document of Verge's whole MQTT surface (with the
//! `schema` feature): servers, every channel of [`crate::topic::Topics`]
//! with its parameters, the messages with the JSON Schemas of
//! [`crate::schema`], who publishes and who subscribes, and the MQTT QoS
//! and retain of each publication. `docs/asyncapi.json` is [`document`]'s
//! output; the controller serves it at `GET /api/v1/asyncapi.json`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::alarms::AlarmId;
use crate::schema::{self, Examples, PAYLOADS, Payload};
use crate::topic::{DEFAULT_PREFIX, FLEET_SEGMENT};

/// The version of the AsyncAPI specification the document follows.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// The MQTT binding version the bindings follow.
const MQTT_BINDING: &str = "0.2.0";

/// A part of Verge (or anyone else) on the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Controller,
    Agent,
    /// Third-party readers: Telegraf, Node-RED, scripts.
    Consumers,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Controller => "controller",
            Side::Agent => "agent",
            Side::Consumers => "consumers",
        }
    }
}

/// One publication on a channel: who sends which message, how.
#[derive(Clone, Copy, Debug)]
pub struct Publication {
    /// The operation's id in the document.
    pub operation: &'static str,
    pub sender: Side,
    /// The message's key in the channel (and in `components/messages`).
    pub message: &'static str,
    pub qos: u8,
    pub retain: bool,
    pub summary: &'static str,
}

/// One channel: a topic pattern under the prefix and what travels on it.
#[derive(Clone, Copy, Debug)]
pub struct ChannelSpec {
    /// The channel's id in the document.
    pub id: &'static str,
    /// The address after `{prefix}/`, with `{parameters}`.
    pub address: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub publications: &'static [Publication],
    /// Who subscribes, and with which QoS.
    pub receivers: &'static [(Side, u8)],
}

const fn publish(
    operation: &'static str,
    sender: Side,
    message: &'static str,
    qos: u8,
    retain: bool,
    summary: &'static str,
) -> Publication {
    Publication {
        operation,
        sender,
        message,
        qos,
        retain,
        summary,
    }
}

/// Every channel, as the table in [`crate::topic`] lists them.
pub const CHANNELS: &[ChannelSpec] = &[
    ChannelSpec {
        id: "desired",
        address: "agents/{agent}/desired",
        title: "Desired state",
        description: "What one agent must run: a Delivery holding the desired state signed by a \
            controller key, the publisher-signed releases it names and the root-signed trust \
            bundle. Retained, so an agent that connects later gets it; the controller republishes \
            it on every (re)connect and on a rare periodic pass.",
        publications: &[publish(
            "publishDesired",
            Side::Controller,
            "delivery",
            1,
            true,
            "The controller publishes an agent's desired state (retained).",
        )],
        receivers: &[(Side::Agent, 1)],
    },
    ChannelSpec {
        id: "presence",
        address: "agents/{agent}/presence",
        title: "Presence",
        description: "An agent's announcement at connect (retained), signed by its node key; \
            its Last Will, which the broker publishes when the connection drops, is the same \
            document with `online: false`, signed at connect time.",
        publications: &[publish(
            "publishPresence",
            Side::Agent,
            "presence",
            1,
            true,
            "An agent announces itself (and its Last Will says it is gone).",
        )],
        receivers: &[(Side::Controller, 1), (Side::Consumers, 1)],
    },
    ChannelSpec {
        id: "status",
        address: "agents/{agent}/status",
        title: "Status",
        description: "What an agent runs, sent through its disk outbox on every change (200 ms \
            after the first of a burst) and on every (re)connect.",
        publications: &[publish(
            "publishStatus",
            Side::Agent,
            "status",
            1,
            false,
            "An agent reports what it runs.",
        )],
        receivers: &[(Side::Controller, 1)],
    },
    ChannelSpec {
        id: "heartbeat",
        address: "agents/{agent}/heartbeat",
        title: "Heartbeat",
        description: "A small sign of life every `heartbeat_interval_secs`, skipped when a \
            status went out within the interval. QoS 0: a lost one is replaced by the next.",
        publications: &[publish(
            "publishHeartbeat",
            Side::Agent,
            "heartbeat",
            0,
            false,
            "An agent says it is alive.",
        )],
        receivers: &[(Side::Controller, 1)],
    },
    ChannelSpec {
        id: "logRequest",
        address: "agents/{agent}/logs/request",
        title: "Log request",
        description: "The controller asks an agent for a workload's log tail. Not retained: a \
            reconnecting agent must not answer long after the operator gave up.",
        publications: &[publish(
            "publishLogRequest",
            Side::Controller,
            "logRequest",
            1,
            false,
            "The controller asks for a log tail.",
        )],
        receivers: &[(Side::Agent, 1)],
    },
    ChannelSpec {
        id: "logResponse",
        address: "agents/{agent}/logs/response",
        title: "Log response",
        description: "An agent's answer to a log request, matched by `request_id`.",
        publications: &[publish(
            "publishLogResponse",
            Side::Agent,
            "logResponse",
            1,
            false,
            "An agent answers a log request.",
        )],
        receivers: &[(Side::Controller, 1)],
    },
    ChannelSpec {
        id: "latency",
        address: "agents/{agent}/latency",
        title: "Latency report",
        description: "An agent's round-trip measurements to its probe targets after each \
            probing round, sent through its disk outbox.",
        publications: &[publish(
            "publishLatency",
            Side::Agent,
            "latencyReport",
            1,
            false,
            "An agent reports its latency measurements.",
        )],
        receivers: &[(Side::Controller, 1)],
    },
    ChannelSpec {
        id: "probes",
        address: "agents/{agent}/probes",
        title: "Probe plan",
        description: "Which peers an agent measures, and how often; retained.",
        publications: &[publish(
            "publishProbePlan",
            Side::Controller,
            "probePlan",
            1,
            true,
            "The controller gives an agent its probe targets (retained).",
        )],
        receivers: &[(Side::Agent, 1)],
    },
    ChannelSpec {
        id: "announce",
        address: "announce",
        title: "Announce request",
        description: "The controller asks every agent to announce itself, whenever it \
            connects to the broker (at start and after every reconnect), to learn at once which \
            nodes are alive. Signed by a controller key; not retained. An agent answers a \
            request once (only one issued after the last it answered, before `expires_at`) \
            with its presence, a status and a heartbeat after a random delay below \
            `spread_ms`; a node that does not answer within the controller's \
            `announce_timeout_secs` is treated as not responding.",
        publications: &[publish(
            "publishAnnounceRequest",
            Side::Controller,
            "announceRequest",
            1,
            false,
            "The controller asks every agent to announce itself.",
        )],
        receivers: &[(Side::Agent, 1)],
    },
    ChannelSpec {
        id: "telemetry",
        address: "telemetry/{region}/{agent}",
        title: "Telemetry",
        description: "One sample of the host, each workload and the agent every \
            `telemetry_interval_secs`, sent through the agent's disk outbox: at least once and \
            in order per node; `seq` shows gaps and duplicates. Not signed. Subscribe to \
            `verge/v1/telemetry/+/+` for the whole fleet.",
        publications: &[publish(
            "publishTelemetry",
            Side::Agent,
            "telemetry",
            1,
            false,
            "An agent publishes a telemetry sample.",
        )],
        receivers: &[(Side::Controller, 0), (Side::Consumers, 1)],
    },
    ChannelSpec {
        id: "events",
        address: "events/{region}/{agent}",
        title: "Node events",
        description: "A node's security events and its own alarms being raised and cleared \
            (`alarm_raised`, `alarm_cleared`), signed by its node key and sent through its disk \
            outbox.",
        publications: &[publish(
            "publishEvent",
            Side::Agent,
            "event",
            1,
            false,
            "An agent reports an event.",
        )],
        receivers: &[(Side::Controller, 1), (Side::Consumers, 1)],
    },
    ChannelSpec {
        id: "alarms",
        address: "alarms/{region}/{alarm}/{entity}",
        title: "Alarms",
        description: "One alarm per (alarm id, entity), published by the controller only. While \
            it is raised the Alarm is retained here, so a new subscriber sees every active alarm \
            at once; when it clears the controller publishes the cleared Alarm (not retained), \
            then an empty retained message that removes the retained copy. Subscribe to \
            `verge/v1/alarms/#`; ignore empty messages.",
        publications: &[
            publish(
                "publishAlarmRaised",
                Side::Controller,
                "alarm",
                1,
                true,
                "The controller publishes a raised alarm (retained while raised).",
            ),
            publish(
                "publishAlarmCleared",
                Side::Controller,
                "alarm",
                1,
                false,
                "The controller publishes the alarm, now cleared (not retained).",
            ),
            publish(
                "removeRetainedAlarm",
                Side::Controller,
                "alarmRemoved",
                1,
                true,
                "The controller removes the retained copy of a cleared alarm.",
            ),
        ],
        receivers: &[(Side::Consumers, 1)],
    },
    ChannelSpec {
        id: "fleetEvents",
        address: "fleet/events/{region}",
        title: "Fleet events",
        description: "The controller's fleet lifecycle events (services, replicas, nodes, \
            releases, the trust bundle, alarms), under the region they concern or `_fleet`. Not \
            retained; `GET /api/v1/events` lists them with a cursor.",
        publications: &[publish(
            "publishFleetEvent",
            Side::Controller,
            "fleetEvent",
            1,
            false,
            "The controller publishes a fleet event.",
        )],
        receivers: &[(Side::Consumers, 1)],
    },
];

/// The components/messages key of each payload that is a message.
fn message_key(payload: &Payload) -> Option<&'static str> {
    Some(match payload.name {
        "delivery" => "delivery",
        "presence" => "presence",
        "status" => "status",
        "heartbeat" => "heartbeat",
        "event" => "event",
        "probe-plan" => "probePlan",
        "latency-report" => "latencyReport",
        "log-request" => "logRequest",
        "log-response" => "logResponse",
        "announce-request" => "announceRequest",
        "telemetry" => "telemetry",
        "alarm" => "alarm",
        "fleet-event" => "fleetEvent",
        _ => return None,
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Moves each schema's `$defs` into `components/schemas` and points its
/// references there; the schema itself goes in under `name`.
fn hoist(name: &str, mut schema: Value, into: &mut BTreeMap<String, Value>) {
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("$id");
        if let Some(Value::Object(defs)) = object.remove("$defs") {
            for (def, value) in defs {
                into.entry(def).or_insert_with(|| repointed(value));
            }
        }
    }
    into.insert(name.to_owned(), repointed(schema));
}

/// `#/$defs/X` becomes `#/components/schemas/X` everywhere in `value`.
fn repointed(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(target)) => (
                        k,
                        Value::String(target.replace("#/$defs/", "#/components/schemas/")),
                    ),
                    (_, v) => (k, repointed(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(repointed).collect()),
        other => other,
    }
}

/// The message of one payload.
fn message(payload: &Payload, examples: &Examples) -> Value {
    let example = examples.message(payload.name).unwrap_or(Value::Null);
    let mut message = json!({
        "name": payload.type_name,
        "title": payload.title,
        "contentType": "application/json",
        "examples": [{ "name": payload.name, "payload": example }],
    });
    let object = message.as_object_mut().expect("a JSON object");
    match (payload.payload_type, payload.signer) {
        (Some(payload_type), Some(signer)) => {
            object.insert(
                "summary".into(),
                json!(format!(
                    "A {} signed by {}, in a DSSE envelope.",
                    payload.type_name,
                    signer.describe()
                )),
            );
            object.insert(
                "description".into(),
                json!(format!(
                    "The payload is a DSSE envelope (`Envelope`) with payloadType \
                     `{payload_type}`; its base64 `payload` holds a `{}` document \
                     (`x-verge-signed-payload`). Verify the signature over the exact decoded \
                     bytes before parsing them. At most {} KiB.",
                    payload.type_name,
                    payload.max_bytes / 1024
                )),
            );
            object.insert(
                "payload".into(),
                json!({
                    "allOf": [
                        schema_ref("Envelope"),
                        {
                            "type": "object",
                            "properties": { "payloadType": { "const": payload_type } },
                        },
                    ],
                }),
            );
            object.insert("x-verge-payload-type".into(), json!(payload_type));
            object.insert(
                "x-verge-signed-payload".into(),
                schema_ref(payload.type_name),
            );
        }
        _ => {
            object.insert(
                "summary".into(),
                json!(format!("A {}, plain JSON (not signed).", payload.type_name)),
            );
            object.insert("payload".into(), schema_ref(payload.type_name));
        }
    }
    message
}

/// The channel's parameters, from the `{names}` in its address.
fn parameters(address: &str) -> Value {
    let mut out = Map::new();
    for part in address.split('/') {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let component = match (
                name,
                address.starts_with("telemetry/") || address.starts_with("events/"),
            ) {
                ("region", true) => "region",
                ("region", false) => "regionOrFleet",
                (other, _) => other,
            };
            out.insert(
                name.to_owned(),
                json!({ "$ref": format!("#/components/parameters/{component}") }),
            );
        }
    }
    Value::Object(out)
}

fn components_parameters() -> Value {
    let alarms: Vec<&str> = AlarmId::ALL.iter().map(|a| a.as_str()).collect();
    json!({
        "agent": {
            "description": "A node (agent) id: 1-64 ASCII letters, digits, '-', '_' and '.', starting with a letter or digit.",
            "examples": ["edge-1"],
        },
        "region": {
            "description": "The node's region as the agent put it in the topic (1-63 lower-case letters, digits and '-'); trust the agent id, which the broker's access control ties to the node.",
            "examples": ["eu-west"],
        },
        "regionOrFleet": {
            "description": format!("The region the alarm or event concerns, or `{FLEET_SEGMENT}` for what belongs to no one region (services, releases, the controller itself)."),
            "examples": ["eu-west", FLEET_SEGMENT],
        },
        "alarm": {
            "description": "The alarm id, from the catalogue (docs/alarms.md).",
            "enum": alarms,
        },
        "entity": {
            "description": "The entity the alarm is about, as one segment: `node=<agent>`, `node=<agent>,service=<service>`, `service=<service>,replica=<n>`, or `controller`.",
            "examples": ["node=edge-1", "node=edge-1,service=web", "service=web,replica=2", "controller"],
        },
    })
}

fn servers() -> Value {
    json!({
        "dev": {
            "host": "127.0.0.1:7883",
            "protocol": "mqtt",
            "title": "Development",
            "description": "The embedded broker of `central-controller dev`: plain MQTT on loopback, no credentials.",
        },
        "production": {
            "host": "{host}:{port}",
            "protocol": "mqtts",
            "title": "Production",
            "description": "MQTT over TLS: the controller's embedded broker (`[broker] listen`, port 7883 by default) or an external broker such as Mosquitto with the shipped configuration (configs/mosquitto/, usually port 8883). Clients verify the broker's certificate against the controller's CA (`<data_dir>/ca/ca.pem`) and present a client certificate from that CA: agents their node certificate, consumers a read-only consumer certificate.",
            "variables": {
                "host": { "description": "The broker's host name.", "examples": ["mqtt.example.net"] },
                "port": { "default": "7883", "enum": ["7883", "8883"], "description": "7883 for the embedded broker, 8883 for a usual external one." },
            },
            "security": [{ "$ref": "#/components/securitySchemes/clientCertificate" }],
        },
    })
}

const DESCRIPTION: &str = "Every topic Verge uses on its MQTT broker: what the controller and the \
agents say to each other, and what third-party consumers (Telegraf, Node-RED, scripts) may read.\n\n\
Addresses are shown under the default topic prefix `verge/v1`; an installation may choose \
another (`broker.topic_prefix` in controller.toml, `topic_prefix` in agent.toml), and every \
address then starts with it instead.\n\n\
**Convention.** This document describes Verge, the controller and its agents together, as \
one application. An operation with action `send` is a publication by a part of Verge, and its \
`x-verge-sender` (and tag) says which: `controller` or `agent`. An operation with action \
`receive` is a subscription, and its `x-verge-receiver` (and tag) says who subscribes: \
`controller`, `agent`, or `consumers` (third parties). The MQTT operation bindings give the QoS \
and retain flag of each publication, and the QoS of each subscription.\n\n\
**Signed messages.** Most payloads are DSSE envelopes (`Envelope`): the message's \
`x-verge-payload-type` is the envelope's `payloadType`, and `x-verge-signed-payload` the \
schema of the document inside its base64 `payload`. Verify the signature over the exact \
decoded bytes before parsing them. Telemetry, alarms and fleet events are plain JSON.\n\n\
Every document has a `schema_version`; readers ignore fields they do not know. The same \
schemas are published one by one under docs/schemas/ and at `GET /api/v1/schemas/{file}`.";

/// The AsyncAPI 3.0 document.
pub fn document() -> Value {
    let examples = Examples::new();
    let mut schemas = BTreeMap::new();
    for (name, schema) in schema::schemas() {
        let Some(payload) = schema::payload(name) else {
            continue;
        };
        hoist(payload.type_name, schema, &mut schemas);
    }
    let mut messages = Map::new();
    for payload in PAYLOADS {
        if let Some(key) = message_key(payload) {
            messages.insert(key.to_owned(), message(payload, &examples));
        }
    }
    messages.insert(
        "alarmRemoved".into(),
        json!({
            "name": "AlarmRemoved",
            "title": "Retained alarm removed",
            "summary": "An empty message: the alarm on this topic has cleared.",
            "description": "Zero bytes, published retained after a cleared Alarm so that the broker forgets the retained copy. Not JSON: skip empty messages.",
            "contentType": "application/octet-stream",
            "payload": { "type": "string", "maxLength": 0 },
        }),
    );
    let mut channels = Map::new();
    let mut operations = Map::new();
    for channel in CHANNELS {
        let mut channel_messages = Map::new();
        for publication in channel.publications {
            channel_messages.insert(
                publication.message.to_owned(),
                json!({ "$ref": format!("#/components/messages/{}", publication.message) }),
            );
        }
        channels.insert(
            channel.id.to_owned(),
            json!({
                "address": format!("{DEFAULT_PREFIX}/{}", channel.address),
                "title": channel.title,
                "description": channel.description,
                "messages": channel_messages,
                "parameters": parameters(channel.address),
            }),
        );
        let channel_ref = json!({ "$ref": format!("#/channels/{}", channel.id) });
        let message_ref =
            |key: &str| json!({ "$ref": format!("#/channels/{}/messages/{key}", channel.id) });
        for publication in channel.publications {
            operations.insert(
                publication.operation.to_owned(),
                json!({
                    "action": "send",
                    "channel": channel_ref,
                    "summary": publication.summary,
                    "messages": [message_ref(publication.message)],
                    "tags": [{ "name": publication.sender.name() }],
                    "x-verge-sender": publication.sender.name(),
                    "bindings": { "mqtt": {
                        "qos": publication.qos,
                        "retain": publication.retain,
                        "bindingVersion": MQTT_BINDING,
                    } },
                }),
            );
        }
        let mut keys: Vec<&str> = channel.publications.iter().map(|p| p.message).collect();
        keys.dedup();
        for (receiver, qos) in channel.receivers {
            let mut id = String::from("receive");
            id.push_str(&capitalised(channel.id));
            if channel.receivers.len() > 1 {
                id.push_str("As");
                id.push_str(&capitalised(receiver.name()));
            }
            operations.insert(
                id,
                json!({
                    "action": "receive",
                    "channel": channel_ref,
                    "summary": format!("The {} subscribes to {}.", match receiver {
                        Side::Consumers => "consumers",
                        Side::Controller => "controller",
                        Side::Agent => "agent",
                    }, channel.title.to_lowercase()),
                    "messages": keys.iter().map(|k| message_ref(k)).collect::<Vec<_>>(),
                    "tags": [{ "name": receiver.name() }],
                    "x-verge-receiver": receiver.name(),
                    "bindings": { "mqtt": { "qos": qos, "bindingVersion": MQTT_BINDING } },
                }),
            );
        }
    }
    let doc = json!({
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:verge:mqtt",
        "info": {
            "title": "Verge MQTT",
            "version": env!("CARGO_PKG_VERSION"),
            "description": DESCRIPTION,
            "license": { "name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0" },
            "tags": [
                { "name": "controller", "description": "The central controller." },
                { "name": "agent", "description": "An edge agent (node)." },
                { "name": "consumers", "description": "Third-party readers with read-only credentials." },
            ],
        },
        "defaultContentType": "application/json",
        "servers": servers(),
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "parameters": components_parameters(),
            "securitySchemes": {
                "clientCertificate": {
                    "type": "X509",
                    "description": "A client certificate issued by the controller's CA; its Common Name is the client's identity (an agent id, `controller`, or a consumer name), which the broker's access control uses.",
                },
            },
        },
    });
    schema::sorted(doc)
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// [`document`] as `docs/asyncapi.json` keeps it.
pub fn text() -> String {
    schema::render(&document())
}
