//! The published JSON Schemas and the AsyncAPI document: the examples and
//! real documents (every variant, optional fields absent) validate, wrong
//! documents do not, and every topic is a channel. (That the committed
//! copies are what the code generates is checked by the controller's
//! `api::asyncapi_tests`: verge-shared does no file I/O, not even in tests.)

use crate::schema::{self, PAYLOADS};

// ---- Validation: the schemas accept what Verge writes, and nothing wrong --

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::alarms::{AlarmId, AlarmState, Entity, EntityType};
use crate::fleet::{FleetEvent, FleetEventKind};
use crate::messages::{
    EventKind, Generation, HealthState, LimitMechanism, Probe, RejectReason, Rejection,
    RestartPolicy, StorageProblem, StorageReason, WorkloadState,
};
use crate::schema::Examples;
use crate::trust::MediaType;
use crate::{AgentId, ServiceName, Timestamp};

fn validator(name: &str) -> jsonschema::Validator {
    let schema = schema::schema(name).expect("a published schema");
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name}.json is not a valid 2020-12 schema: {e}"))
}

fn json<T: Serialize>(document: &T) -> Value {
    serde_json::to_value(document).expect("wire types serialise")
}

/// Fails with every error when `document` does not validate against `name`.
fn assert_valid(name: &str, document: &Value) {
    let validator = validator(name);
    let errors: Vec<String> = validator
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\nin {document:#}");
}

fn assert_invalid(name: &str, document: &Value, what: &str) {
    assert!(
        !validator(name).is_valid(document),
        "{name} accepts a document with {what}: {document:#}"
    );
}

#[test]
fn every_schema_is_titled_described_identified_and_has_an_example() {
    for (name, schema) in schema::schemas() {
        assert_eq!(schema["$id"], format!("urn:verge:schema:{name}"));
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert!(
            schema["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}"
        );
        let description = schema["description"].as_str().unwrap_or_default();
        assert!(description.len() > 40, "{name}: {description:?}");
        assert!(
            !description.contains("[`"),
            "{name}: a rustdoc link in {description:?}"
        );
        let examples = schema["examples"].as_array().expect("examples");
        assert!(!examples.is_empty(), "{name}");
        for example in examples {
            assert_valid(name, example);
        }
    }
}

#[test]
fn every_signed_example_holds_a_document_its_schema_accepts() {
    let examples = Examples::new();
    for payload in PAYLOADS.iter().filter(|p| p.payload_type.is_some()) {
        let envelope = examples
            .envelopes
            .get(payload.name)
            .expect("signed example");
        assert_eq!(Some(envelope.payload_type.as_str()), payload.payload_type);
        assert_valid("envelope", &json(envelope));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&envelope.payload)
            .expect("base64");
        let inner: Value = serde_json::from_slice(&bytes).expect("JSON payload");
        assert_valid(payload.name, &inner);
        assert_eq!(
            Some(inner),
            examples.document(payload.name),
            "{}",
            payload.name
        );
    }
    for envelope in [examples.delivery.trust.as_ref().expect("trust")]
        .into_iter()
        .chain([&examples.delivery.desired])
        .chain(&examples.delivery.releases)
    {
        assert_valid("envelope", &json(envelope));
    }
}

fn every_reject_reason() -> Vec<RejectReason> {
    use RejectReason::*;
    vec![
        TooLarge,
        Malformed,
        WrongType,
        UnknownKey,
        BadSignature,
        UnsupportedSchema,
        Invalid,
        WrongAgent,
        StaleGeneration,
        Expired,
        Unsigned,
        ReleaseMissing,
        UnknownPublisher,
        PublisherNotAllowed,
        ReleaseInvalid,
        ReleaseMismatch,
        ReleaseRollback,
        ThresholdNotMet,
        StaleTrustBundle,
    ]
}

#[test]
fn statuses_validate_in_every_state_and_without_optional_fields() {
    let e = Examples::new();
    let mut status = e.status.clone();
    status.applied_generation = None;
    status.workloads.clear();
    assert_valid("status", &json(&status));
    let mut workload = e.status.workloads[0].clone();
    workload.pid = None;
    workload.ports.clear();
    workload.health = None;
    workload.last_exit = None;
    workload.isolation = None;
    workload.message = Some("artifact fetch failed: 503".into());
    for state in [
        WorkloadState::Pending,
        WorkloadState::Fetching,
        WorkloadState::Running,
        WorkloadState::Backoff,
        WorkloadState::Failed,
        WorkloadState::CrashLoop,
        WorkloadState::Exited,
    ] {
        let mut w = workload.clone();
        w.state = state;
        status.workloads = vec![w];
        assert_valid("status", &json(&status));
    }
    for health in [
        HealthState::Unknown,
        HealthState::Healthy,
        HealthState::Unhealthy,
    ] {
        workload.health = Some(health);
        status.workloads = vec![workload.clone()];
        assert_valid("status", &json(&status));
    }
    let mut isolated = e.status.workloads[0].clone();
    for limits in [
        LimitMechanism::CgroupV2,
        LimitMechanism::Rlimit,
        LimitMechanism::None,
    ] {
        isolated.isolation.as_mut().expect("isolation").limits = limits;
        isolated.last_exit.as_mut().expect("exit").code = None;
        isolated.last_exit.as_mut().expect("exit").signal = Some(9);
        status.workloads = vec![isolated.clone()];
        assert_valid("status", &json(&status));
    }
    status.storage_problem = Some(StorageProblem {
        reason: StorageReason::DiskFull,
        detail: "no room for the desired state (4096 bytes)".into(),
        since: e.status.at,
    });
    for reason in every_reject_reason() {
        status.last_rejection = Some(Rejection {
            reason,
            generation: Some(Generation::new(9)),
            detail: "refused".into(),
            at: e.status.at,
        });
        assert_valid("status", &json(&status));
    }
    status.last_rejection.as_mut().expect("set").generation = None;
    assert_valid("status", &json(&status));
}

#[test]
fn events_validate_in_every_kind() {
    let e = Examples::new();
    for kind in [
        EventKind::DesiredStateRejected,
        EventKind::TrustBundleRejected,
        EventKind::TrustBundleUpdated,
        EventKind::GenerationsReset,
        EventKind::CertificateRenewalFailing,
        EventKind::AlarmRaised,
        EventKind::AlarmCleared,
    ] {
        let mut event = e.event.clone();
        event.kind = kind;
        event.alarm = None;
        assert_valid("event", &json(&event));
        for reason in every_reject_reason() {
            event.reason = Some(reason);
            event.generation = Some(Generation::new(3));
            assert_valid("event", &json(&event));
        }
    }
}

#[test]
fn alarms_validate_for_every_catalogue_entry_raised_and_cleared() {
    let e = Examples::new();
    let node = AgentId::new("edge-1").expect("id");
    let web = ServiceName::new("web").expect("name");
    for &id in AlarmId::ALL {
        let d = id.definition();
        let entity = match d.entity_type {
            EntityType::Node => Entity::node(node.clone()),
            EntityType::Workload => Entity::workload(node.clone(), web.clone()),
            EntityType::Replica => Entity::replica(web.clone(), 2),
            EntityType::Controller => Entity::controller(),
        };
        let mut alarm = e.alarm.clone();
        alarm.id = id;
        alarm.code = d.code.into();
        alarm.title = d.title.into();
        alarm.severity = d.severity;
        alarm.entity_type = d.entity_type;
        alarm.observer = d.observer;
        alarm.entity_instance = entity.instance();
        alarm.entity = entity;
        alarm.region = None;
        alarm.acknowledged = None;
        assert_valid("alarm", &json(&alarm));
        alarm.state = AlarmState::Cleared;
        alarm.cleared_at = Some(Timestamp::from_unix_millis(1_796_306_500_000));
        alarm.suppressed = true;
        assert_valid("alarm", &json(&alarm));
    }
}

#[test]
fn fleet_events_validate_in_every_kind_with_and_without_optional_fields() {
    let e = Examples::new();
    for &kind in FleetEventKind::ALL {
        let minimal = FleetEvent {
            kind,
            region: None,
            node: None,
            service: None,
            replica: None,
            release: None,
            alarm: None,
            actor: None,
            ..e.fleet_event.clone()
        };
        assert_valid("fleet-event", &json(&minimal));
        let full = FleetEvent {
            kind,
            alarm: e.event.alarm.clone(),
            actor: Some("alice (token ci)".into()),
            ..e.fleet_event.clone()
        };
        assert_valid("fleet-event", &json(&full));
    }
}

#[test]
fn the_other_documents_validate_without_their_optional_parts() {
    let e = Examples::new();
    let mut presence = e.presence.clone();
    presence.online = false;
    presence.labels.clear();
    presence.probe_addr = Some("[2001:db8::1]:7790".parse().expect("address"));
    presence.limits = Some(LimitMechanism::Rlimit);
    assert_valid("presence", &json(&presence));
    presence.probe_addr = None;
    presence.limits = None;
    assert_valid("presence", &json(&presence));

    let mut heartbeat = e.heartbeat.clone();
    heartbeat.applied_generation = None;
    assert_valid("heartbeat", &json(&heartbeat));

    let mut delivery = e.delivery.clone();
    delivery.trust = None;
    delivery.releases.clear();
    assert_valid("delivery", &json(&delivery));

    let mut release = e.release.clone();
    release.run.health = None;
    release.run.stop_grace_secs = None;
    release.run.restart = RestartPolicy::Always;
    assert_valid("release", &json(&release));
    release.run.restart = RestartPolicy::Never;
    release.artifacts[0].media_type = MediaType::TarGzip;
    release.run.entrypoint = Some("bin/hello".into());
    let mut health = e.release.run.health.clone().expect("health");
    for probe in [
        Probe::Tcp {
            port: "http".into(),
        },
        Probe::Exec {
            command: vec!["/bin/true".into()],
        },
    ] {
        health.probe = probe;
        release.run.health = Some(health.clone());
        assert_valid("release", &json(&release));
    }
    let mut bundle = e.trust_bundle.clone();
    bundle.reset_generations = true;
    assert_valid("trust-bundle", &json(&bundle));

    let mut desired = e.desired_state.clone();
    desired.workloads[0].rollback = true;
    desired.workloads[0].config.clear();
    assert_valid("desired-state", &json(&desired));
    desired.workloads.clear();
    assert_valid("desired-state", &json(&desired));

    let mut plan = e.probe_plan.clone();
    plan.targets.clear();
    assert_valid("probe-plan", &json(&plan));
    let mut report = e.latency_report.clone();
    report.samples[0].rtt_micros.clear();
    assert_valid("latency-report", &json(&report));
    report.samples.clear();
    assert_valid("latency-report", &json(&report));

    let mut response = e.log_response.clone();
    response.lines.clear();
    response.truncated = true;
    response.error = Some("no such workload".into());
    assert_valid("log-response", &json(&response));
    let mut request = e.log_request.clone();
    request.stream = crate::logs::LogStream::Stdout;
    assert_valid("log-request", &json(&request));

    let mut telemetry = e.telemetry.clone();
    telemetry.host = crate::telemetry::HostMetrics::default();
    telemetry.workloads[0].health = None;
    telemetry.workloads[0].process = None;
    telemetry.workloads[0].last_exit = None;
    assert_valid("telemetry", &json(&telemetry));
    telemetry.workloads.clear();
    assert_valid("telemetry", &json(&telemetry));
}

/// `document` with the value at `path` (object keys and array indexes)
/// replaced, or removed with `None`.
fn edited(document: &Value, path: &[&str], value: Option<Value>) -> Value {
    let mut out = document.clone();
    let (last, parents) = path.split_last().expect("a path");
    let mut at = &mut out;
    for key in parents {
        at = match key.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*key],
        };
    }
    let object = at.as_object_mut().expect("an object");
    match value {
        Some(value) => {
            object.insert((*last).to_owned(), value);
        }
        None => {
            object.remove(*last);
        }
    }
    out
}

#[test]
fn documents_missing_a_required_field_are_rejected() {
    let examples = Examples::new();
    for (name, schema) in schema::schemas() {
        let example = examples.document(name).expect("example");
        let required = schema["required"].as_array().expect("required fields");
        assert!(!required.is_empty(), "{name}");
        for field in required {
            let field = field.as_str().expect("a name");
            assert_invalid(
                name,
                &edited(&example, &[field], None),
                &format!("no {field}"),
            );
        }
    }
}

#[test]
fn bad_identifiers_times_digests_and_enum_values_are_rejected() {
    let e = Examples::new();
    let status = json(&e.status);
    for bad in ["", "a/b", "a+b", "a#", "-lead", "sp ace", &"x".repeat(65)] {
        assert!(AgentId::new(bad).is_err());
        assert_invalid(
            "status",
            &edited(&status, &["agent"], Some(json!(bad))),
            bad,
        );
    }
    for good in ["edge-1", "Edge_1.lab", &"x".repeat(64)] {
        assert!(AgentId::new(good).is_ok());
        assert_valid("status", &edited(&status, &["agent"], Some(json!(good))));
    }
    let telemetry = json(&e.telemetry);
    for bad in ["EU", "eu_west", "", &"r".repeat(64)] {
        assert_invalid(
            "telemetry",
            &edited(&telemetry, &["region"], Some(json!(bad))),
            bad,
        );
    }
    fn at(field: &str) -> [&str; 3] {
        ["workloads", "0", field]
    }
    assert_invalid(
        "status",
        &edited(&status, &at("service"), Some(json!("Web"))),
        "an upper-case service",
    );
    assert_invalid(
        "status",
        &edited(&status, &at("state"), Some(json!("sleeping"))),
        "an unknown state",
    );
    assert_invalid(
        "status",
        &edited(&status, &at("artifact"), Some(json!("ABC"))),
        "a bad digest",
    );
    assert_invalid(
        "status",
        &edited(&status, &["at"], Some(json!("yesterday"))),
        "a bad time",
    );
    assert_invalid(
        "status",
        &edited(&status, &["at"], Some(json!(1_796_306_400_000u64))),
        "a number for a time",
    );
    let event = json(&e.event);
    assert_invalid(
        "event",
        &edited(&event, &["kind"], Some(json!("exploded"))),
        "an unknown kind",
    );
    assert_invalid(
        "event",
        &edited(&event, &["alarm", "id"], Some(json!("no_such_alarm"))),
        "an unknown alarm",
    );
    let alarm = json(&e.alarm);
    assert_invalid(
        "alarm",
        &edited(&alarm, &["severity"], Some(json!("fatal"))),
        "an unknown severity",
    );
    assert_invalid(
        "alarm",
        &edited(&alarm, &["state"], Some(json!("maybe"))),
        "an unknown state",
    );
    let fleet = json(&e.fleet_event);
    assert_invalid(
        "fleet-event",
        &edited(&fleet, &["kind"], Some(json!("node_exploded"))),
        "an unknown kind",
    );
    let presence = json(&e.presence);
    assert_invalid(
        "presence",
        &edited(&presence, &["public_key"], Some(json!("not a key"))),
        "a bad key",
    );
    assert_invalid(
        "presence",
        &edited(&presence, &["limits"], Some(json!("jail"))),
        "an unknown limit mechanism",
    );
    let release = json(&e.release);
    assert_invalid(
        "release",
        &edited(
            &release,
            &["artifacts", "0", "media_type"],
            Some(json!("application/zip")),
        ),
        "an unknown media type",
    );
    assert_invalid(
        "release",
        &edited(&release, &["version"], Some(json!("1.2"))),
        "a version that is not semver",
    );
    assert_invalid(
        "release",
        &edited(
            &release,
            &["run", "health", "probe", "type"],
            Some(json!("grpc")),
        ),
        "an unknown probe type",
    );
    let envelope = json(e.envelopes.get("status").expect("status envelope"));
    assert_invalid(
        "envelope",
        &edited(&envelope, &["payloadType"], Some(json!("application/json"))),
        "an unknown payload type",
    );
    assert_invalid(
        "envelope",
        &edited(&envelope, &["payload"], Some(json!("not base64!"))),
        "a payload that is not base64",
    );
    assert_invalid(
        "envelope",
        &edited(&envelope, &["signatures"], Some(json!([]))),
        "no signature",
    );
    assert_invalid(
        "envelope",
        &edited(&envelope, &["signatures", "0", "sig"], Some(json!("c2ln"))),
        "a signature of the wrong length",
    );
}

// ---- The AsyncAPI document ------------------------------------------------

use crate::alarms::AlarmReport;
use crate::topic::{Channel, Topics};

/// The topic one call of each `Topics` method builds, by method name.
fn sample_topics() -> Vec<(String, String)> {
    let t = Topics::default();
    let agent = AgentId::new("edge-1").expect("id");
    let region = crate::RegionId::new("eu-west").expect("region");
    let web = ServiceName::new("web").expect("name");
    let report = AlarmReport {
        id: AlarmId::WorkloadCrashLoop,
        entity: Entity::workload(agent.clone(), web.clone()),
    };
    let mut out = vec![
        ("desired", t.desired(&agent)),
        ("status", t.status(&agent)),
        ("presence", t.presence(&agent)),
        ("heartbeat", t.heartbeat(&agent)),
        ("telemetry", t.telemetry(&region, &agent)),
        ("all_telemetry", t.all_telemetry()),
        ("events", t.events(&region, &agent)),
        ("all_events", t.all_events()),
        ("alarm", t.alarm(Some(&region), report.id, &report.entity)),
        (
            "alarm",
            t.alarm(None, AlarmId::ReplicaUnplaced, &Entity::replica(web, 1)),
        ),
        (
            "alarm",
            t.alarm(None, AlarmId::ControllerBrokerLost, &Entity::controller()),
        ),
        ("fleet_events", t.fleet_events(Some(&region))),
        ("fleet_events", t.fleet_events(None)),
        ("announce", t.announce()),
        ("log_request", t.log_request(&agent)),
        ("log_response", t.log_response(&agent)),
    ];
    for channel in Channel::ALL {
        out.push(("agent", t.agent(&agent, channel)));
        out.push(("all_agents", t.all_agents(channel)));
    }
    out.into_iter().map(|(m, s)| (m.to_owned(), s)).collect()
}

/// Every `pub fn name(&self, ...) -> String` of `Topics`.
fn topic_constructors() -> Vec<String> {
    let source = include_str!("topic.rs");
    let source = &source[..source.find("#[cfg(test)]").expect("tests at the end")];
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("pub fn ") {
        rest = &rest[start + "pub fn ".len()..];
        let signature = &rest[..rest.find('{').expect("a body")];
        let name = &signature[..signature.find(['(', '<']).expect("arguments")];
        if signature.contains("(&self") && signature.trim_end().ends_with("-> String") {
            names.push(name.to_owned());
        }
    }
    names
}

/// Whether `topic` (possibly with `+` wildcards) falls under `address`.
fn matches(address: &str, topic: &str) -> bool {
    let a: Vec<&str> = address.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    a.len() == t.len()
        && a.iter()
            .zip(&t)
            .all(|(a, t)| (a.starts_with('{') && a.ends_with('}') && !t.is_empty()) || a == t)
}

#[test]
fn every_topic_constructor_is_a_channel_of_the_asyncapi_document() {
    let doc = crate::asyncapi::document();
    let channels = doc["channels"].as_object().expect("channels");
    let samples = sample_topics();
    let constructors = topic_constructors();
    assert!(constructors.len() >= 14, "{constructors:?}");
    for name in &constructors {
        assert!(
            samples.iter().any(|(m, _)| m == name),
            "Topics::{name} is new: add its channel to shared/src/asyncapi.rs and a sample \
             of it to sample_topics() in this test"
        );
    }
    let mut used = std::collections::BTreeSet::new();
    for (method, topic) in &samples {
        let channel = channels
            .iter()
            .find(|(_, c)| matches(c["address"].as_str().expect("address"), topic));
        let (id, _) = channel.unwrap_or_else(|| {
            panic!("{topic} (Topics::{method}) is on no channel of the AsyncAPI document")
        });
        used.insert(id.clone());
    }
    let unused: Vec<&String> = channels.keys().filter(|c| !used.contains(*c)).collect();
    assert!(
        unused.is_empty(),
        "channels no topic constructor builds: {unused:?}"
    );
}

#[test]
fn the_bindings_say_the_qos_and_retain_of_the_topic_table() {
    let doc = crate::asyncapi::document();
    let send = |channel: &str| -> Vec<(u64, bool)> {
        doc["operations"]
            .as_object()
            .expect("operations")
            .values()
            .filter(|o| {
                o["action"] == "send" && o["channel"]["$ref"] == format!("#/channels/{channel}")
            })
            .map(|o| {
                let mqtt = &o["bindings"]["mqtt"];
                (
                    mqtt["qos"].as_u64().expect("qos"),
                    mqtt["retain"].as_bool().expect("retain"),
                )
            })
            .collect()
    };
    // The table in shared/src/topic.rs.
    for (channel, qos, retain) in [
        ("desired", 1, true),
        ("status", 1, false),
        ("presence", 1, true),
        ("heartbeat", 0, false),
        ("telemetry", 1, false),
        ("events", 1, false),
        ("logRequest", 1, false),
        ("logResponse", 1, false),
        ("latency", 1, false),
        ("probes", 1, true),
        ("fleetEvents", 1, false),
    ] {
        assert_eq!(send(channel), vec![(qos, retain)], "{channel}");
    }
    let mut alarms = send("alarms");
    alarms.sort();
    assert_eq!(alarms, vec![(1, false), (1, true), (1, true)]);
}

#[test]
fn every_message_payload_and_signed_document_resolves_to_a_schema() {
    let doc = crate::asyncapi::document();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let text = doc.to_string();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("\"$ref\":\"") {
        rest = &rest[at + 8..];
        let target = &rest[..rest.find('"').expect("a string")];
        let pointer = target.strip_prefix('#').expect("a local reference");
        assert!(
            doc.pointer(pointer).is_some(),
            "{target} resolves to nothing"
        );
    }
    for payload in PAYLOADS {
        assert!(
            schemas.contains_key(payload.type_name),
            "{}",
            payload.type_name
        );
    }
    for (key, message) in doc["components"]["messages"].as_object().expect("messages") {
        if let Some(payload_type) = message.get("x-verge-payload-type") {
            let payload = PAYLOADS
                .iter()
                .find(|p| p.payload_type == payload_type.as_str())
                .expect("a known payload type");
            assert_eq!(
                message["x-verge-signed-payload"]["$ref"],
                format!("#/components/schemas/{}", payload.type_name),
                "{key}"
            );
        }
    }
}

#[test]
fn every_hoisted_schema_is_the_one_each_published_schema_defines() {
    let doc = crate::asyncapi::document();
    let components = doc["components"]["schemas"].as_object().expect("schemas");
    let roots: Vec<&str> = PAYLOADS.iter().map(|p| p.type_name).collect();
    // Keys the published root schemas add to their type's own schema.
    let own = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            for key in [
                "title",
                "description",
                "examples",
                "$id",
                "$schema",
                "$defs",
            ] {
                o.remove(key);
            }
        }
        v
    };
    for (name, schema) in schema::schemas() {
        let defs = schema["$defs"].as_object().cloned().unwrap_or_default();
        for (def, value) in defs {
            let hoisted = components.get(&def).expect("hoisted").clone();
            let local = serde_json::from_str::<Value>(
                &value
                    .to_string()
                    .replace("#/$defs/", "#/components/schemas/"),
            )
            .expect("JSON");
            if roots.contains(&def.as_str()) {
                assert_eq!(own(hoisted), own(local), "{def} in {name}.json");
            } else {
                assert_eq!(hoisted, local, "{def} in {name}.json");
            }
        }
    }
}
