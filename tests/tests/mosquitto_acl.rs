//! The shipped Mosquitto configuration (`configs/mosquitto/`) keeps edge
//! agents apart on a real Mosquitto: client certificates from a throwaway CA,
//! the shipped `verge.conf` with only its paths and port changed, and the
//! shipped `verge.acl` as it is. An agent cannot publish on another agent's
//! topics, read another's desired state (also through wildcards), pose as the
//! controller, plant a Last Will on another's topic, take over another's
//! session through its client id, or connect without a certificate from the
//! Verge CA or with a revoked one. Every refusal is paired with the same
//! action on the agent's own topics, or by another identity, which must get
//! through. Read-only consumers (`consumer+<name>`, with the `user` blocks
//! the controller adds to the shipped file) read presence, telemetry and
//! events (a region-limited one only its region's) and can publish nothing
//! anywhere, a Last Will included.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rumqttc::{LastWill, MqttOptions, QoS, SubscribeReasonCode, TlsConfiguration, Transport};
use verge_shared::topic::{Channel, DEFAULT_PREFIX, Topics};
use verge_shared::{AgentId, RegionId};
use verge_tests::cluster::{Mosquitto, free_port};
use verge_tests::mqtt::{Message, TestClient};
use verge_tests::require::{Tool, missing};
use verge_tests::wait_for;

/// How long a message or acknowledgement may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);
/// Most messages a client may see before its marker arrives.
const MAX_MESSAGES: usize = 1000;
const REGION: &str = "eu-west";

/// The shipped file `name` from `configs/mosquitto/`.
fn shipped(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs/mosquitto")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with `from` replaced by `to`; `from` must be there, so the test
/// never runs a configuration the shipped file no longer resembles.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "verge.conf no longer contains {from:?}"
    );
    text.replace(from, to)
}

/// A client certificate and its private key, PEM.
struct Identity {
    /// The certificate's Common Name.
    name: String,
    serial: u64,
    cert: String,
    key: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

/// A certificate with Common Name `name` issued by `ca`: for the broker
/// (127.0.0.1, server auth) or for a client (client auth).
fn issue(ca: &CertifiedIssuer<'static, KeyPair>, name: &str, server: bool) -> Identity {
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from(serial));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if server {
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    } else {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("certificate");
    Identity {
        name: name.to_owned(),
        serial,
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A revocation list from `ca` naming `revoked`, PEM.
fn revocation_list(ca: &CertifiedIssuer<'static, KeyPair>, revoked: &[&Identity]) -> String {
    static NUMBER: AtomicU64 = AtomicU64::new(1);
    let params = CertificateRevocationListParams {
        this_update: date_time_ymd(2020, 1, 1),
        next_update: date_time_ymd(2100, 1, 1),
        crl_number: SerialNumber::from(NUMBER.fetch_add(1, Ordering::Relaxed)),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|i| RevokedCertParams {
                serial_number: SerialNumber::from(i.serial),
                revocation_time: date_time_ymd(2020, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(ca).expect("CRL").pem().expect("PEM")
}

/// The shipped ACL as the controller writes it with two consumers:
/// `reader` (every region) and `limited` (region `elsewhere` only).
fn with_consumers() -> String {
    use central_controller::store::{ConsumerCredential, ConsumerRecord};
    let consumer = |name: &str, regions: &[&str]| ConsumerRecord {
        name: name.to_owned(),
        regions: regions
            .iter()
            .map(|r| RegionId::new(*r).expect("region"))
            .collect(),
        credential: Some(ConsumerCredential::Password {
            hash: String::new(),
        }),
        created_at: verge_shared::Timestamp::now(),
        revoked_serials: Vec::new(),
    };
    let acl = central_controller::app::access_list(
        DEFAULT_PREFIX,
        &[consumer("reader", &[]), consumer("limited", &["elsewhere"])],
    );
    assert!(acl.starts_with(&shipped("verge.acl")));
    acl
}

/// Writes `contents` readable by the `mosquitto` user, which the broker
/// switches to when started as root.
fn write_readable(path: &Path, contents: &str) {
    fs::write(path, contents).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// A real Mosquitto running the shipped files, and the identities to use it.
struct Broker {
    addr: SocketAddr,
    ca: String,
    controller: Identity,
    consumer: Identity,
    /// `consumer+limited`, limited to another region than the agents'.
    limited: Identity,
    edge_a: Identity,
    edge_b: Identity,
    /// Common Name "edge-b", issued by a CA the broker does not know.
    foreign_edge_b: Identity,
    topics: Topics,
    a: AgentId,
    b: AgentId,
    region: RegionId,
    verge_ca: CertifiedIssuer<'static, KeyPair>,
    // Dropped before the directory it reads from.
    mosquitto: Mosquitto,
    dir: tempfile::TempDir,
}

impl Broker {
    /// The shipped files as they are.
    async fn start() -> Broker {
        Broker::launch(false).await
    }

    /// The shipped files with the `crlfile` line uncommented, and a
    /// revocation list that revokes nothing yet.
    async fn start_with_crl() -> Broker {
        Broker::launch(true).await
    }

    async fn launch(crl: bool) -> Broker {
        // ring is the only provider compiled in; the first test installs it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("verge-acl-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let persistence = dir.path().join("persistence");
        fs::create_dir(&persistence).expect("mkdir");
        fs::set_permissions(&persistence, fs::Permissions::from_mode(0o777)).expect("chmod");

        let verge_ca = ca("verge test CA");
        let other_ca = ca("another CA");
        let server = issue(&verge_ca, "broker", true);
        write_readable(&dir.path().join("ca.crt"), &verge_ca.pem());
        write_readable(&dir.path().join("server.crt"), &server.cert);
        write_readable(&dir.path().join("server.key"), &server.key);
        write_readable(&dir.path().join("verge.acl"), &with_consumers());
        let mut conf = shipped("verge.conf");
        if crl {
            write_readable(&dir.path().join("ca.crl"), &revocation_list(&verge_ca, &[]));
            conf = replace(&conf, "#crlfile ", "crlfile ");
        }

        let port = free_port();
        let files = format!("{}/", dir.path().display());
        let conf = replace(
            &conf,
            "listener 8883\n",
            &format!("listener {port} 127.0.0.1\n"),
        );
        let conf = replace(&conf, "/etc/mosquitto/verge/", &files);
        let conf = replace(
            &conf,
            "/var/lib/mosquitto/",
            &format!("{}/", persistence.display()),
        );
        let conf_path = dir.path().join("verge.conf");
        write_readable(&conf_path, &conf);
        let mosquitto = Mosquitto::start(&conf_path, &dir.path().join("mosquitto.log"), port)
            .await
            .expect("mosquitto starts with the shipped configuration");

        Broker {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            ca: verge_ca.pem(),
            controller: issue(&verge_ca, "controller", false),
            consumer: issue(&verge_ca, "consumer+reader", false),
            limited: issue(&verge_ca, "consumer+limited", false),
            edge_a: issue(&verge_ca, "edge-a", false),
            edge_b: issue(&verge_ca, "edge-b", false),
            foreign_edge_b: issue(&other_ca, "edge-b", false),
            topics: Topics::default(),
            a: AgentId::new("edge-a").expect("id"),
            b: AgentId::new("edge-b").expect("id"),
            region: RegionId::new(REGION).expect("region"),
            verge_ca,
            mosquitto,
            dir,
        }
    }

    /// Replaces the revocation list with one naming `revoked` and has the
    /// broker reload it.
    fn revoke(&self, revoked: &[&Identity]) {
        let list = revocation_list(&self.verge_ca, revoked);
        write_readable(&self.dir.path().join("ca.crl"), &list);
        self.mosquitto.reload().expect("SIGHUP");
    }

    /// TLS options trusting the Verge CA and presenting `identity`, if any,
    /// with its name as client id (as agents do).
    fn options(&self, identity: Option<&Identity>) -> MqttOptions {
        let client_id = identity.map_or("anonymous", |i| i.name.as_str());
        let mut options = TestClient::options(self.addr, client_id);
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: self.ca.clone().into_bytes(),
            alpn: None,
            client_auth: identity
                .map(|i| (i.cert.clone().into_bytes(), i.key.clone().into_bytes())),
        }));
        options
    }

    async fn connect(&self, identity: &Identity) -> TestClient {
        TestClient::connect_with(self.options(Some(identity)))
            .await
            .expect("a client with a Verge certificate connects")
    }

    fn agent(&self, agent: &AgentId, channel: Channel) -> String {
        self.topics.agent(agent, channel)
    }

    fn telemetry(&self, agent: &AgentId) -> String {
        self.topics.telemetry(&self.region, agent)
    }

    fn events(&self, agent: &AgentId) -> String {
        self.topics.events(&self.region, agent)
    }
}

/// Everything `client` receives up to and including the first message on
/// `topic` with `payload`, within [`DEADLINE`] and [`MAX_MESSAGES`].
async fn until_marker(client: &mut TestClient, topic: &str, payload: &[u8]) -> Vec<Message> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while seen.len() < MAX_MESSAGES {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = client
            .next(left)
            .await
            .unwrap_or_else(|e| panic!("waiting for the marker on {topic}: {e}; saw {seen:?}"));
        let done = msg.topic == topic && msg.payload == payload;
        seen.push(msg);
        if done {
            return seen;
        }
    }
    panic!("no marker on {topic} among {MAX_MESSAGES} messages");
}

/// Waits until `client` has `count` PUBACKs and checks that it has exactly
/// that many: the broker acknowledges every QoS 1 publish, refused or not.
async fn wait_pubacks(client: &TestClient, who: &str, count: usize) {
    wait_for(&format!("{count} PUBACKs for {who}"), DEADLINE, || async {
        match client.pubacks() {
            n if n >= count => Ok(()),
            n => Err(format!("{n} PUBACKs")),
        }
    })
    .await;
    assert_eq!(client.pubacks(), count, "PUBACKs for {who}");
}

/// Whether a SUBACK granted the subscription.
fn subscribed(code: SubscribeReasonCode) -> bool {
    matches!(code, SubscribeReasonCode::Success(_))
}

/// The messages on edge-b's topics or forged by edge-a: none may arrive.
fn from_b(messages: &[Message]) -> Vec<&Message> {
    messages
        .iter()
        .filter(|m| m.topic.contains("edge-b") || m.payload.starts_with(b"forged"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_publish_on_another_agents_topics() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let broker = Broker::start().await;
    let (a, b) = (&broker.a, &broker.b);
    let upward = [
        Channel::Presence,
        Channel::Status,
        Channel::Heartbeat,
        Channel::Latency,
        Channel::LogResponse,
    ];

    let mut controller = broker.connect(&broker.controller).await;
    let prefix = broker.topics.prefix();
    let mut filters: Vec<String> = upward
        .iter()
        .map(|c| broker.topics.all_agents(*c))
        .collect();
    filters.push(format!("{prefix}/telemetry/#"));
    filters.push(format!("{prefix}/events/#"));
    for filter in &filters {
        let code = controller.subscribe_acked(filter).await.expect("SUBACK");
        assert!(subscribed(code), "controller refused {filter}: {code:?}");
    }
    let mut consumer = broker.connect(&broker.consumer).await;
    consumer.subscribe_acked("#").await.expect("SUBACK");
    let mut agent_b = broker.connect(&broker.edge_b).await;
    for channel in [Channel::Desired, Channel::Probes, Channel::LogRequest] {
        let code = agent_b
            .subscribe_acked(&broker.agent(b, channel))
            .await
            .expect("SUBACK");
        assert!(
            subscribed(code),
            "edge-b refused its own {channel}: {code:?}"
        );
    }

    // edge-a forges each of edge-b's messages, each followed by the same
    // message on its own topic (the control), then a marker on its events.
    let agent_a = broker.connect(&broker.edge_a).await;
    let mut pairs: Vec<(String, String)> = upward
        .iter()
        .map(|c| (broker.agent(b, *c), broker.agent(a, *c)))
        .collect();
    pairs.push((broker.telemetry(b), broker.telemetry(a)));
    pairs.push((broker.events(b), broker.events(a)));
    let controller_only = [Channel::Desired, Channel::Probes, Channel::LogRequest];
    for channel in controller_only {
        agent_a
            .publish(&broker.agent(b, channel), b"forged".to_vec())
            .await
            .expect("publish");
    }
    for (theirs, own) in &pairs {
        agent_a
            .publish(theirs, b"forged".to_vec())
            .await
            .expect("publish");
        agent_a
            .publish(own, b"own".to_vec())
            .await
            .expect("publish");
    }
    let marker = broker.events(a);
    agent_a
        .publish(&marker, b"marker".to_vec())
        .await
        .expect("publish");
    let published = controller_only.len() + 2 * pairs.len() + 1;
    // Mosquitto 2.0 acknowledges a refused QoS 1 publish and drops it.
    wait_pubacks(&agent_a, "edge-a", published).await;

    let seen = until_marker(&mut controller, &marker, b"marker").await;
    assert!(
        from_b(&seen).is_empty(),
        "controller got forgeries: {:?}",
        from_b(&seen)
    );
    let own: Vec<&str> = seen
        .iter()
        .filter(|m| m.payload == b"own")
        .map(|m| m.topic.as_str())
        .collect();
    let expected: Vec<&str> = pairs.iter().map(|(_, own)| own.as_str()).collect();
    assert_eq!(
        own, expected,
        "the controller gets each of edge-a's own messages"
    );

    let seen = until_marker(&mut consumer, &marker, b"marker").await;
    let seen: Vec<(&str, &[u8])> = seen
        .iter()
        .map(|m| (m.topic.as_str(), m.payload.as_slice()))
        .collect();
    let (presence_a, telemetry_a) = (broker.agent(a, Channel::Presence), broker.telemetry(a));
    assert_eq!(
        seen,
        [
            (presence_a.as_str(), b"own".as_slice()),
            (telemetry_a.as_str(), b"own".as_slice()),
            (marker.as_str(), b"own".as_slice()),
            (marker.as_str(), b"marker".as_slice()),
        ],
        "the consumer reads edge-a's presence, telemetry and events, nothing else"
    );

    // Whatever edge-a sent to edge-b's controller topics was dropped before
    // this marker, which the controller sends after edge-a's PUBACKs.
    let b_log_request = broker.agent(b, Channel::LogRequest);
    controller
        .publish(&b_log_request, b"marker".to_vec())
        .await
        .expect("publish");
    let seen = until_marker(&mut agent_b, &b_log_request, b"marker").await;
    assert_eq!(seen.len(), 1, "edge-b got forgeries: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_read_another_agents_desired_state() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let broker = Broker::start().await;
    let (a, b) = (&broker.a, &broker.b);
    let (desired_a, desired_b) = (broker.topics.desired(a), broker.topics.desired(b));

    let controller = broker.connect(&broker.controller).await;
    controller
        .publish_retained(&desired_b, b"desired-b".to_vec())
        .await
        .expect("publish");
    controller
        .publish_retained(&desired_a, b"desired-a".to_vec())
        .await
        .expect("publish");
    wait_pubacks(&controller, "controller", 2).await;

    // edge-b reads its own retained desired state: the control.
    let mut agent_b = broker.connect(&broker.edge_b).await;
    let code = agent_b.subscribe_acked(&desired_b).await.expect("SUBACK");
    assert!(subscribed(code), "edge-b refused its own desired: {code:?}");
    let got = agent_b
        .next_on(&desired_b, DEADLINE)
        .await
        .expect("retained");
    assert_eq!(got.payload, b"desired-b");

    let mut agent_a = broker.connect(&broker.edge_a).await;
    let prefix = broker.topics.prefix();
    let filters = [
        desired_b.clone(),
        broker.topics.all_agents(Channel::Desired),
        format!("{prefix}/agents/{b}/#"),
        format!("{prefix}/agents/+/+"),
        format!("{prefix}/#"),
        "#".to_owned(),
    ];
    let mut granted = Vec::new();
    for filter in &filters {
        let code = agent_a.subscribe_acked(filter).await.expect("SUBACK");
        granted.push((filter.as_str(), code));
    }
    // Mosquitto 2.0.11 grants these subscriptions and filters delivery by
    // the read ACL; a refusal (0x80) would do as well.
    eprintln!("edge-a's subscriptions: {granted:?}");

    // edge-b's status, and live desired states for edge-b then edge-a.
    agent_b
        .publish(&broker.agent(b, Channel::Status), b"status-b".to_vec())
        .await
        .expect("publish");
    wait_pubacks(&agent_b, "edge-b", 1).await;
    controller
        .publish(&desired_b, b"live-b".to_vec())
        .await
        .expect("publish");
    controller
        .publish(&desired_a, b"marker".to_vec())
        .await
        .expect("publish");

    let seen = until_marker(&mut agent_a, &desired_a, b"marker").await;
    assert!(
        from_b(&seen).is_empty(),
        "edge-a read edge-b: {:?}",
        from_b(&seen)
    );
    let own_retained = seen.iter().filter(|m| m.payload == b"desired-a").count();
    assert!(
        own_retained >= 1,
        "edge-a's wildcards deliver its own retained desired state: {seen:?}"
    );
    let got = agent_b.next_on(&desired_b, DEADLINE).await.expect("live");
    assert_eq!(got.payload, b"live-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_pose_as_the_controller() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let broker = Broker::start().await;
    let (a, b) = (&broker.a, &broker.b);
    let (desired_a, desired_b) = (broker.topics.desired(a), broker.topics.desired(b));

    let controller = broker.connect(&broker.controller).await;
    controller
        .publish_retained(&desired_a, b"genuine-a".to_vec())
        .await
        .expect("publish");
    controller
        .publish_retained(&desired_b, b"genuine-b".to_vec())
        .await
        .expect("publish");
    wait_pubacks(&controller, "controller", 2).await;

    let mut agent_a = broker.connect(&broker.edge_a).await;
    let mut agent_b = broker.connect(&broker.edge_b).await;
    for (agent, topic, payload) in [
        (&mut agent_a, &desired_a, b"genuine-a"),
        (&mut agent_b, &desired_b, b"genuine-b"),
    ] {
        agent.subscribe_acked(topic).await.expect("SUBACK");
        let got = agent.next_on(topic, DEADLINE).await.expect("retained");
        assert_eq!(got.payload, payload);
    }

    // edge-a writes retained desired states for itself and for edge-b.
    for topic in [&desired_a, &desired_b] {
        agent_a
            .publish_retained(topic, b"forged".to_vec())
            .await
            .expect("publish");
    }
    wait_pubacks(&agent_a, "edge-a", 2).await;
    for topic in [&desired_a, &desired_b] {
        controller
            .publish(topic, b"marker".to_vec())
            .await
            .expect("publish");
    }
    for (agent, topic, genuine) in [
        (&mut agent_a, &desired_a, b"genuine-a"),
        (&mut agent_b, &desired_b, b"genuine-b"),
    ] {
        let seen = until_marker(agent, topic, b"marker").await;
        assert_eq!(seen.len(), 1, "forged desired state delivered: {seen:?}");
        // The broker still keeps the controller's document retained.
        agent.subscribe_acked(topic).await.expect("SUBACK");
        let got = agent.next_on(topic, DEADLINE).await.expect("retained");
        assert_eq!(got.payload, genuine, "retained desired state on {topic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_will_on_another_agents_topic_is_dropped() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let broker = Broker::start().await;
    let presence_b = broker.agent(&broker.b, Channel::Presence);
    let mut controller = broker.connect(&broker.controller).await;
    controller
        .subscribe_acked(&broker.topics.all_agents(Channel::Presence))
        .await
        .expect("SUBACK");

    // edge-a's Last Will claims that edge-b is offline.
    let mut options = broker.options(Some(&broker.edge_a));
    options.set_last_will(LastWill::new(
        &presence_b,
        "forged",
        QoS::AtLeastOnce,
        false,
    ));
    match TestClient::connect_with(options).await {
        Ok(client) => client.drop_connection().await,
        Err(e) => eprintln!("the broker refused edge-a's foreign Last Will at CONNECT: {e}"),
    }
    // edge-b's own Last Will is published: the control. Its connection
    // starts after edge-a's has closed, so its will comes last.
    let mut options = broker.options(Some(&broker.edge_b));
    options.set_last_will(LastWill::new(
        &presence_b,
        "offline",
        QoS::AtLeastOnce,
        false,
    ));
    let client = TestClient::connect_with(options)
        .await
        .expect("edge-b connects");
    client.drop_connection().await;

    let seen = until_marker(&mut controller, &presence_b, b"offline").await;
    assert_eq!(seen.len(), 1, "a forged Last Will was delivered: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_take_over_another_agents_session() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let broker = Broker::start().await;
    let desired_b = broker.topics.desired(&broker.b);
    let controller = broker.connect(&broker.controller).await;
    let mut agent_b = broker.connect(&broker.edge_b).await;
    agent_b.subscribe_acked(&desired_b).await.expect("SUBACK");

    // edge-a connects with edge-b's client id: the broker replaces it with
    // edge-a's certificate name, so edge-b's connection stays up.
    let mut options = broker.options(Some(&broker.edge_a));
    options.set_client_id(broker.b.to_string());
    let _agent_a = TestClient::connect_with(options)
        .await
        .expect("edge-a connects");
    controller
        .publish(&desired_b, b"marker".to_vec())
        .await
        .expect("publish");
    let seen = until_marker(&mut agent_b, &desired_b, b"marker").await;
    assert_eq!(seen.len(), 1);

    // The control: a second connection with edge-b's own certificate does
    // take the session over, and the first one is closed.
    let _agent_b2 = broker.connect(&broker.edge_b).await;
    wait_for("edge-b's first connection to close", DEADLINE, || async {
        match agent_b.is_connected() {
            true => Err("still connected".to_owned()),
            false => Ok(()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_verge_certificate_are_refused() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let broker = Broker::start().await;

    let plain = TestClient::connect(broker.addr, "plain").await;
    assert!(plain.is_err(), "a plain TCP client connected");
    let Err(anonymous) = TestClient::connect_with(broker.options(None)).await else {
        panic!("a client without a certificate connected");
    };
    let Err(foreign) = TestClient::connect_with(broker.options(Some(&broker.foreign_edge_b))).await
    else {
        panic!("a certificate from another CA connected");
    };
    // Refused in the TLS handshake, for the right reason.
    let (anonymous, foreign) = (format!("{anonymous:#}"), format!("{foreign:#}"));
    assert!(anonymous.contains("CertificateRequired"), "{anonymous}");
    assert!(foreign.contains("UnknownCA"), "{foreign}");

    // The same connection with edge-b's real certificate works.
    let agent_b = broker.connect(&broker.edge_b).await;
    agent_b
        .publish(&broker.agent(&broker.b, Channel::Status), b"up".to_vec())
        .await
        .expect("publish");
    wait_pubacks(&agent_b, "edge-b", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_after_a_reload() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let broker = Broker::start_with_crl().await;
    let desired_a = broker.topics.desired(&broker.a);
    let controller = broker.connect(&broker.controller).await;
    let mut agent_a = broker.connect(&broker.edge_a).await;
    agent_a.subscribe_acked(&desired_a).await.expect("SUBACK");

    // Revoke edge-a and the consumer; the consumer shows when the broker
    // has reloaded the list.
    broker.revoke(&[&broker.edge_a, &broker.consumer]);
    let refusal = wait_for("the consumer to be refused", DEADLINE, || async {
        match TestClient::connect_with(broker.options(Some(&broker.consumer))).await {
            Ok(_) => Err("the consumer still connects".to_owned()),
            Err(e) => Ok(format!("{e:#}")),
        }
    })
    .await;
    assert!(refusal.contains("CertificateRevoked"), "{refusal}");

    // edge-a's open connection is not cut by the reload...
    controller
        .publish(&desired_a, b"marker".to_vec())
        .await
        .expect("publish");
    let seen = until_marker(&mut agent_a, &desired_a, b"marker").await;
    assert_eq!(seen.len(), 1);
    // ...but it cannot connect again, while edge-b, not revoked, can.
    let Err(again) = TestClient::connect_with(broker.options(Some(&broker.edge_a))).await else {
        panic!("a revoked certificate connected");
    };
    assert!(
        format!("{again:#}").contains("CertificateRevoked"),
        "{again:#}"
    );
    broker.connect(&broker.edge_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_publishes_nothing_and_reads_only_its_regions() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let broker = Broker::start().await;
    let a = &broker.a;
    let mut reader = broker.connect(&broker.consumer).await;
    reader.subscribe_acked("#").await.expect("SUBACK");
    let mut limited = broker.connect(&broker.limited).await;
    limited.subscribe_acked("#").await.expect("SUBACK");
    let mut controller = broker.connect(&broker.controller).await;
    for filter in ["verge/v1/#", "verge/v1/agents/+/status"] {
        controller.subscribe_acked(filter).await.expect("SUBACK");
    }
    // The consumer forges on every topic it could hope to reach, its own
    // reads included, then a marker goes out from edge-a.
    let prefix = broker.topics.prefix();
    let forged = [
        broker.agent(a, Channel::Presence),
        broker.agent(a, Channel::Status),
        broker.agent(a, Channel::Desired),
        broker.telemetry(a),
        broker.events(a),
        format!("{prefix}/alarms/{REGION}/node_offline/node=edge-a"),
        format!("{prefix}/fleet/events/{REGION}"),
        format!("{prefix}/telemetry/{REGION}/consumer"),
        format!("{prefix}/agents/consumer/presence"),
    ];
    for topic in &forged {
        reader
            .publish(topic, b"forged".to_vec())
            .await
            .expect("publish");
    }
    wait_pubacks(&reader, "the consumer", forged.len()).await;
    let agent_a = broker.connect(&broker.edge_a).await;
    let marker = broker.events(a);
    agent_a
        .publish(&broker.telemetry(a), b"own".to_vec())
        .await
        .expect("publish");
    agent_a
        .publish(&marker, b"marker".to_vec())
        .await
        .expect("publish");
    wait_pubacks(&agent_a, "edge-a", 2).await;
    for (who, client) in [("controller", &mut controller), ("consumer", &mut reader)] {
        let seen = until_marker(client, &marker, b"marker").await;
        assert!(
            seen.iter().all(|m| m.payload != b"forged"),
            "the {who} got a consumer's forgery: {seen:?}"
        );
        assert!(
            seen.iter().any(|m| m.payload == b"own"),
            "the {who} got edge-a's telemetry"
        );
    }
    // The limited consumer (region `elsewhere`) gets nothing of edge-a's
    // region: the first thing it sees is telemetry from its own region.
    let elsewhere = format!("{prefix}/telemetry/elsewhere/edge-b");
    let agent_b = broker.connect(&broker.edge_b).await;
    agent_b
        .publish(&elsewhere, b"elsewhere".to_vec())
        .await
        .expect("publish");
    let seen = until_marker(&mut limited, &elsewhere, b"elsewhere").await;
    assert_eq!(seen.len(), 1, "only its region: {seen:?}");
    // A Last Will is a publish too: Mosquitto 2.0 takes the CONNECT but
    // drops the Will when it fires. edge-a's own Will is the control; its
    // connection starts after the consumer's has closed.
    let presence_a = broker.agent(a, Channel::Presence);
    let mut options = broker.options(Some(&broker.consumer));
    options.set_last_will(LastWill::new(
        &presence_a,
        "forged",
        QoS::AtLeastOnce,
        false,
    ));
    match TestClient::connect_with(options).await {
        Ok(client) => client.drop_connection().await,
        Err(e) => eprintln!("the broker refused the consumer's Last Will at CONNECT: {e}"),
    }
    let mut options = broker.options(Some(&broker.edge_a));
    options.set_last_will(LastWill::new(
        &presence_a,
        "offline",
        QoS::AtLeastOnce,
        false,
    ));
    let client = TestClient::connect_with(options)
        .await
        .expect("edge-a connects");
    client.drop_connection().await;
    let seen = until_marker(&mut controller, &presence_a, b"offline").await;
    assert!(
        seen.iter().all(|m| m.payload != b"forged"),
        "the consumer's Last Will was delivered: {seen:?}"
    );
}

/// A password consumer: Mosquitto reads the controller's password file
/// (`$7$` hashes) and access list on a listener without client
/// certificates, as the commented second listener of `verge.conf` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_consumer_logs_in_with_the_controllers_password_file() {
    use central_controller::store::{ConsumerCredential, ConsumerRecord};
    if missing(Tool::Mosquitto) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("verge-passwd-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let record = ConsumerRecord {
        name: "script".into(),
        regions: Vec::new(),
        credential: Some(ConsumerCredential::Password {
            hash: central_controller::app::mosquitto_hash("s3cret-from-the-api").expect("hash"),
        }),
        created_at: verge_shared::Timestamp::now(),
        revoked_serials: Vec::new(),
    };
    let records = [record];
    write_readable(
        &dir.path().join("mosquitto.passwd"),
        &central_controller::app::password_file(&records),
    );
    write_readable(
        &dir.path().join("verge.acl"),
        &central_controller::app::access_list(DEFAULT_PREFIX, &records),
    );
    let port = free_port();
    let conf = dir.path().join("verge.conf");
    write_readable(
        &conf,
        &format!(
            "per_listener_settings false\nlistener {port} 127.0.0.1\nuse_username_as_clientid true\n\
             allow_anonymous false\npassword_file {d}/mosquitto.passwd\nacl_file {d}/verge.acl\n\
             persistence false\nlog_dest stderr\n",
            d = dir.path().display()
        ),
    );
    let _mosquitto = Mosquitto::start(&conf, &dir.path().join("mosquitto.log"), port)
        .await
        .expect("mosquitto starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let login = |password: &str| {
        let mut options = TestClient::options(addr, "script");
        options.set_credentials("consumer+script", password);
        options
    };
    let mut reader = TestClient::connect_with(login("s3cret-from-the-api"))
        .await
        .expect("the password from the API logs in");
    reader
        .subscribe_acked(&format!("{DEFAULT_PREFIX}/#"))
        .await
        .expect("SUBACK");
    assert!(
        TestClient::connect_with(login("wrong")).await.is_err(),
        "a wrong password logs in"
    );
    // It publishes nothing, not even where it reads.
    let telemetry = format!("{DEFAULT_PREFIX}/telemetry/{REGION}/edge-a");
    reader
        .publish(&telemetry, b"forged".to_vec())
        .await
        .expect("publish");
    wait_pubacks(&reader, "the consumer", 1).await;
    assert!(
        reader.next(Duration::from_secs(2)).await.is_err(),
        "its own forgery came back"
    );
}

#[test]
fn the_acl_covers_every_channel() {
    let acl = shipped("verge.acl");
    let lines: Vec<&str> = acl
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for channel in Channel::ALL {
        let agent = format!("{DEFAULT_PREFIX}/agents/%u/{channel}");
        let controller = format!("{DEFAULT_PREFIX}/agents/+/{channel}");
        let agent_line = lines.iter().find(|l| l.ends_with(&format!(" {agent}")));
        let controller_line = lines
            .iter()
            .find(|l| l.ends_with(&format!(" {controller}")));
        assert!(agent_line.is_some(), "verge.acl has no pattern for {agent}");
        assert!(
            controller_line.is_some(),
            "verge.acl has no line for {controller}"
        );
        // Each side may only read what the other writes.
        let agent_reads = agent_line.is_some_and(|l| l.starts_with("pattern read "));
        let controller_writes = controller_line.is_some_and(|l| l.starts_with("topic write "));
        assert_eq!(
            agent_reads, controller_writes,
            "{channel}: {agent_line:?} / {controller_line:?}"
        );
    }
    let mentioned = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(
        mentioned("readwrite"),
        0,
        "no identity may both read and write a topic"
    );
    let everything = format!("{DEFAULT_PREFIX}/#");
    assert_eq!(
        mentioned(&everything),
        0,
        "no identity gets the whole prefix"
    );
}
