//! Node identity end to end, with TLS on: token enrollment, mTLS at the
//! embedded broker, online certificate renewal and revocation, against the
//! real controller and agent processes.

use std::path::Path;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use verge_shared::enroll::{RENEWAL_PAYLOAD_TYPE, RENEWAL_SCHEMA_VERSION, RenewalRequest};
use verge_shared::{AgentId, SigningKey, Timestamp};
use verge_tests::mqtt::TestClient;
use verge_tests::proxy::Proxy;
use verge_tests::tls::{client_config, mqtt_plain_connect, mqtt_tls_connect};
use verge_tests::verge::Verge;
use verge_tests::workload::{deploy_hello, wait_running};
use verge_tests::{Cluster, ClusterOptions, wait_for};

async fn tls_cluster(client_cert_ttl_secs: Option<u64>) -> Cluster {
    Cluster::start(ClusterOptions {
        tls: true,
        client_cert_ttl_secs,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts")
}

/// Creates a bootstrap token through the API; returns (id, token).
async fn create_token(cluster: &Cluster, region: &str, uses: u32) -> (String, String) {
    cluster
        .api
        .create_token(region, uses)
        .await
        .expect("POST /api/v1/tokens")
}

/// A CSR (PEM) for a fresh key.
fn csr() -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem")
}

/// POSTs an enrollment request without any admin token.
async fn enroll(cluster: &Cluster, token: &str, agent: &str) -> (u16, Value) {
    let key = SigningKey::generate().expect("key").0;
    let body = json!({
        "token": token,
        "agent_id": agent,
        "csr_pem": csr(),
        "node_public_key": key.public_key().to_string(),
    });
    let response = cluster
        .api
        .http()
        .post(format!("{}/api/v1/enroll", cluster.api.base))
        .json(&body)
        .send()
        .await
        .expect("POST /api/v1/enroll");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

/// The agent's current certificate and key (PEM) from its data directory.
fn agent_identity(data_dir: &Path) -> (String, String) {
    let cert = std::fs::read_to_string(data_dir.join("tls/cert.pem")).expect("cert.pem");
    let key = std::fs::read_to_string(data_dir.join("tls/key.pem")).expect("key.pem");
    (cert, key)
}

/// The serial number (hex) of a PEM certificate.
fn serial(cert_pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert parses");
    hex::encode(cert.raw_serial())
}

/// A certificate and key from a CA the controller never heard of.
fn foreign_identity() -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "edge-a");
    let cert = params.signed_by(&key, &issuer).expect("leaf");
    drop(ca_cert);
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_enrolls_one_agent_over_mtls_and_is_never_stored_on_the_node() {
    let mut cluster = tls_cluster(None).await;
    let ca_pem = cluster.ca_pem.clone().expect("TLS mode has a CA");
    let (token_id, token) = create_token(&cluster, "region-a", 1).await;

    // Listing shows the token without its text.
    let listed = cluster.api.get("/api/v1/tokens").await.expect("list");
    let text = listed.to_string();
    assert!(text.contains(&token_id), "{text}");
    assert!(
        !text.contains(&token),
        "the token text must not be listed: {text}"
    );
    assert_eq!(listed["tokens"][0]["uses_left"], 1, "{listed}");

    // An agent with only the token and the CA file enrolls, connects over
    // mTLS and reports presence (the harness waits for online + healthy).
    let broker = cluster.mqtt_addr;
    cluster
        .add_enrolling_agent("edge-a", "region-a", &token, broker)
        .await
        .expect("agent enrolls");
    let node = cluster.api.node("edge-a").await.expect("node");
    assert_eq!(node["region"], "region-a", "{node}");
    assert_eq!(node["revoked"], false, "{node}");

    // The token is spent: a second use is refused, with the reason.
    let (status, body) = enroll(&cluster, &token, "edge-b").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "token_spent", "{body}");
    // Unknown and revoked tokens are refused too, each with its reason.
    let (status, body) = enroll(&cluster, "0000.1111", "edge-b").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "token_unknown", "{body}");
    let (revoked_id, revoked_token) = create_token(&cluster, "region-a", 5).await;
    let reply = cluster
        .api
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/tokens/{revoked_id}"),
            None,
        )
        .await
        .expect("DELETE token");
    assert_eq!(reply.status, 204, "{}", reply.body);
    let (status, body) = enroll(&cluster, &revoked_token, "edge-b").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "token_revoked", "{body}");

    // The token appears nowhere in the agent's data directory (nor its
    // config: the harness passes it in the environment). Positive control:
    // the same search finds the certificate the agent did store.
    let agent = cluster.agent("edge-a");
    let data_dir = agent.data_dir.clone();
    assert!(
        !files_containing(&data_dir, "BEGIN CERTIFICATE").is_empty(),
        "the search must find the stored certificate"
    );
    let secret = token.split_once('.').map(|(_, s)| s).expect("token format");
    assert_eq!(
        files_containing(&data_dir, &token),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        files_containing(&data_dir, secret),
        Vec::<std::path::PathBuf>::new()
    );
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data_dir.join("tls/key.pem"))
            .expect("key.pem")
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);

    // The broker listener: the agent's certificate is accepted (positive
    // control); no certificate, a certificate from another CA, and plain
    // TCP are not.
    let (cert, key) = agent_identity(&data_dir);
    mqtt_tls_connect(broker, &ca_pem, Some((&cert, &key)), "probe-valid")
        .await
        .expect("a valid client certificate is accepted");
    let none = mqtt_tls_connect(broker, &ca_pem, None, "probe-none").await;
    assert!(none.is_err(), "a client without a certificate got in");
    let (foreign_cert, foreign_key) = foreign_identity();
    let foreign = mqtt_tls_connect(
        broker,
        &ca_pem,
        Some((&foreign_cert, &foreign_key)),
        "probe-foreign",
    )
    .await;
    assert!(foreign.is_err(), "a certificate from another CA got in");
    let plain = mqtt_plain_connect(broker, "probe-plain").await;
    assert!(plain.is_err(), "a plain-TCP client got a CONNACK");
    // The HTTPS API answers only over TLS verified against the CA.
    let api_addr = cluster.api.base.trim_start_matches("https://").to_owned();
    let plain_http = reqwest::Client::new()
        .get(format!("http://{api_addr}/healthz"))
        .send()
        .await;
    assert!(
        plain_http.is_err() || !plain_http.is_ok_and(|r| r.status().is_success()),
        "the API answered plain HTTP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_online_without_touching_workloads() {
    const TTL_SECS: u64 = 20;
    let mut cluster = tls_cluster(Some(TTL_SECS)).await;
    let ca_pem = cluster.ca_pem.clone().expect("CA");
    let (_, token) = create_token(&cluster, "region-a", 1).await;
    let proxy = Proxy::start(cluster.mqtt_addr).await.expect("proxy");
    cluster
        .add_enrolling_agent("edge-a", "region-a", &token, proxy.addr)
        .await
        .expect("agent enrolls");
    let data_dir = cluster.agent("edge-a").data_dir.clone();
    let first = serial(&agent_identity(&data_dir).0);
    let enrolled_at = Instant::now();

    let before = deploy_hello(&cluster.api, "hello", "v1", "region-a").await;

    // At least two renewals: three distinct serials in the agent's cert file.
    let mut serials = vec![first];
    wait_for(
        "two certificate renewals",
        Duration::from_secs(TTL_SECS * 4),
        || {
            let current = serial(&agent_identity(&data_dir).0);
            if !serials.contains(&current) {
                serials.push(current);
            }
            let seen = serials.len();
            async move {
                if seen >= 3 {
                    Ok(())
                } else {
                    Err(format!("{seen} distinct certificates so far"))
                }
            }
        },
    )
    .await;
    // The first certificate has expired by now (or will have before the
    // reconnect below), so a successful reconnect proves the new one is used.
    let expiry = Duration::from_secs(TTL_SECS + 1);
    if let Some(left) = expiry.checked_sub(enrolled_at.elapsed()) {
        tokio::time::sleep(left).await;
    }

    // Status keeps flowing on the same session: last_seen moves on.
    let seen = cluster.api.node("edge-a").await.expect("node")["last_seen"].clone();
    wait_for(
        "a newer status or heartbeat",
        Duration::from_secs(30),
        || async {
            let node = cluster
                .api
                .node("edge-a")
                .await
                .map_err(|e| e.to_string())?;
            if node["last_seen"] != seen && node["online"] == true {
                Ok(())
            } else {
                Err(node.to_string())
            }
        },
    )
    .await;

    // A new TLS handshake uses the renewed certificate: cut the uplink,
    // let the agent reconnect, and the session works again.
    proxy.cut();
    wait_for(
        "the node to go offline",
        Duration::from_secs(60),
        || async {
            let node = cluster
                .api
                .node("edge-a")
                .await
                .map_err(|e| e.to_string())?;
            if node["online"] == false {
                Ok(())
            } else {
                Err(node.to_string())
            }
        },
    )
    .await;
    proxy.restore();
    cluster.wait_node_online("edge-a").await;

    // The workload never noticed: same replica, same pid, same generation.
    let after = wait_running(&cluster.api, "hello", "v1").await;
    assert_eq!(before.len(), 1);
    assert_eq!(after.len(), 1);
    assert_eq!(before[0].pid, after[0].pid, "the workload was restarted");
    assert_eq!(before[0].applied_generation, after[0].applied_generation);
    // Renewal runs at 2/3 of the lifetime, not in a loop: at most one
    // renewal per ~13 s since enrollment (plus slack for retries).
    let renewals = cluster
        .agent("edge-a")
        .log_text()
        .matches("Renewed the node certificate.")
        .count();
    let bound = usize::try_from(enrolled_at.elapsed().as_secs() / 10).expect("fits") + 2;
    assert!(
        (2..=bound).contains(&renewals),
        "{renewals} renewals in {:?}",
        enrolled_at.elapsed()
    );
    // The renewed certificate is what the broker accepts now.
    let (cert, key) = agent_identity(&data_dir);
    mqtt_tls_connect(
        cluster.mqtt_addr,
        &ca_pem,
        Some((&cert, &key)),
        "probe-renewed",
    )
    .await
    .expect("the renewed certificate is accepted");
}

/// A renewal request for `agent` signed by `key`.
fn renewal(key: &SigningKey, agent: &str) -> Vec<u8> {
    let request = RenewalRequest {
        schema_version: RENEWAL_SCHEMA_VERSION,
        agent: AgentId::new(agent).expect("id"),
        csr_pem: csr(),
        at: Timestamp::now(),
    };
    key.sign_json(RENEWAL_PAYLOAD_TYPE, &request)
}

async fn post_renewal(cluster: &Cluster, agent: &str, body: Vec<u8>) -> (u16, Value) {
    let response = cluster
        .api
        .http()
        .post(format!(
            "{}/api/v1/nodes/{agent}/certificate",
            cluster.api.base
        ))
        .body(body)
        .send()
        .await
        .expect("POST certificate");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// GET /healthz presenting a client certificate.
async fn api_with_cert(cluster: &Cluster, cert: &str, key: &str) -> Result<u16, String> {
    let ca_pem = cluster.ca_pem.as_deref();
    let config = client_config(ca_pem, Some((cert, key))).map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    client
        .get(format!("{}/healthz", cluster.api.base))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_a_node_off_and_withdraws_its_desired_state() {
    let mut cluster = tls_cluster(None).await;
    let ca_pem = cluster.ca_pem.clone().expect("CA");
    let (_, token) = create_token(&cluster, "region-a", 1).await;
    let broker = cluster.mqtt_addr;
    cluster
        .add_enrolling_agent("edge-a", "region-a", &token, broker)
        .await
        .expect("agent enrolls");
    let data_dir = cluster.agent("edge-a").data_dir.clone();
    let node_key =
        SigningKey::from_pkcs8(&std::fs::read(data_dir.join("node.key")).expect("node.key"))
            .expect("node key");
    deploy_hello(&cluster.api, "hello", "v1", "region-a").await;
    let desired_before = cluster.api.node("edge-a").await.expect("node")["desired_generation"]
        .as_u64()
        .expect("a desired generation");
    // A watcher on the broker with the controller's own client certificate
    // sees edge-a's retained desired state now (positive control) and its
    // clearing later.
    let topic = verge_shared::Topics::default().desired(&AgentId::new("edge-a").expect("id"));
    let read = |name: &str| {
        std::fs::read_to_string(cluster.controller_data.join("ca").join(name)).expect("CA file")
    };
    let watcher_tls = client_config(
        Some(&ca_pem),
        Some((&read("controller.pem"), &read("controller.key"))),
    )
    .expect("TLS config");
    let mut watcher = TestClient::connect_tls(broker, "watcher", watcher_tls)
        .await
        .expect("the controller's client certificate is accepted");
    watcher.subscribe(&topic).await.expect("subscribe");
    let retained = watcher
        .next_on(&topic, Duration::from_secs(30))
        .await
        .expect("the retained desired state");
    assert!(retained.retain && !retained.payload.is_empty());

    // Positive controls: before revocation the node's certificate works at
    // the broker and the API, and a signed renewal is accepted.
    let (cert, key) = agent_identity(&data_dir);
    mqtt_tls_connect(broker, &ca_pem, Some((&cert, &key)), "probe-before")
        .await
        .expect("the node's certificate works before revocation");
    assert_eq!(api_with_cert(&cluster, &cert, &key).await, Ok(200));
    let (status, body) = post_renewal(&cluster, "edge-a", renewal(&node_key, "edge-a")).await;
    assert_eq!(status, 200, "{body}");
    // A renewal signed by another key is refused.
    let stranger = SigningKey::generate().expect("key").0;
    let (status, body) = post_renewal(&cluster, "edge-a", renewal(&stranger, "edge-a")).await;
    assert_eq!(status, 401, "{body}");

    let reply = cluster
        .api
        .request(reqwest::Method::POST, "/api/v1/nodes/edge-a/revoke", None)
        .await
        .expect("revoke");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["revoked"], true, "{}", reply.body);

    // The live connection is dropped and reconnects are refused at the
    // handshake: the agent's own certificate no longer gets a CONNACK.
    let refused = mqtt_tls_connect(broker, &ca_pem, Some((&cert, &key)), "probe-after").await;
    assert!(refused.is_err(), "a revoked certificate got in");
    wait_for(
        "the terminator to close the revoked connection",
        Duration::from_secs(60),
        || async {
            let log = cluster.controller_log();
            if log.contains("Closed a broker connection")
                && log.contains("its certificate was revoked")
            {
                Ok(())
            } else {
                Err("no closed connection in the controller log yet".to_owned())
            }
        },
    )
    .await;
    // The API refuses its certificate, and its renewals.
    assert!(api_with_cert(&cluster, &cert, &key).await.is_err());
    let (status, body) = post_renewal(&cluster, "edge-a", renewal(&node_key, "edge-a")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "node_revoked", "{body}");

    // Its retained desired state is cleared (an empty retained publish)...
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut cleared = false;
    for _ in 0..100 {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = watcher
            .next_on(&topic, left)
            .await
            .unwrap_or_else(|e| panic!("no clearing publish ({e}); saw {seen:?} bytes"));
        if message.payload.is_empty() {
            cleared = true;
            break;
        }
        seen.push(message.payload.len());
    }
    assert!(cleared, "no clearing publish among {seen:?}");
    // ...and it is withdrawn: a new generation with no workloads, and the
    // replica is unplaced rather than kept on the revoked node.
    wait_for(
        "the replica to leave edge-a",
        Duration::from_secs(30),
        || async {
            let service = cluster
                .api
                .service("hello")
                .await
                .map_err(|e| e.to_string())?;
            let node = cluster
                .api
                .node("edge-a")
                .await
                .map_err(|e| e.to_string())?;
            let placed_here = service.to_string().contains("\"node\":\"edge-a\"");
            let generation = node["desired_generation"].as_u64().unwrap_or(0);
            if !placed_here && generation > desired_before {
                Ok(())
            } else {
                Err(format!("service {service}, node {node}"))
            }
        },
    )
    .await;
    let node = cluster.api.node("edge-a").await.expect("node");
    assert_eq!(node["revoked"], true, "{node}");
    assert_eq!(node["online"], false, "{node}");
}

/// The `notAfter` of a PEM certificate, in Unix seconds.
fn not_after(cert_pem: &str) -> i64 {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("cert pem");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("cert parses");
    cert.validity().not_after.timestamp()
}

fn unix_now() -> i64 {
    i64::try_from(Timestamp::now().unix_millis() / 1000).expect("time fits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_past_expiry_keeps_its_workloads_and_renews_when_back() {
    const TTL_SECS: u64 = 20;
    let mut cluster = tls_cluster(Some(TTL_SECS)).await;
    let (_, token) = create_token(&cluster, "region-a", 1).await;
    // Both of the agent's links (broker and API) go through cuttable proxies.
    let broker = Proxy::start(cluster.mqtt_addr).await.expect("broker proxy");
    let api_addr: std::net::SocketAddr = cluster
        .api
        .base
        .trim_start_matches("https://")
        .parse()
        .expect("API address");
    let api = Proxy::start(api_addr).await.expect("API proxy");
    let env = vec![
        ("VERGE_AGENT_ENROLL_TOKEN".to_owned(), token),
        (
            "VERGE_AGENT_CONTROLLER_URL".to_owned(),
            format!("https://{}", api.addr),
        ),
    ];
    cluster
        .spawn_agent("edge-a", "region-a", broker.addr, "", env)
        .expect("agent starts");
    cluster.wait_node_online("edge-a").await;
    let data_dir = cluster.agent("edge-a").data_dir.clone();
    let before = deploy_hello(&cluster.api, "hello", "v1", "region-a").await;

    // The uplink goes; the certificate the node holds then expires.
    broker.cut();
    api.cut();
    let held = wait_for(
        "the node's certificate to expire while it is offline",
        Duration::from_secs(TTL_SECS * 3),
        || async {
            let (cert, _) = agent_identity(&data_dir);
            if not_after(&cert) < unix_now() {
                Ok(cert)
            } else {
                Err(format!("valid until {}", not_after(&cert)))
            }
        },
    )
    .await;
    // The workload kept running all along.
    assert!(
        verge_tests::cluster::process_alive(u32::try_from(before[0].pid).expect("pid")),
        "the workload stopped while the node was offline"
    );

    // Back online: the agent renews (within the grace) and reconnects.
    api.restore();
    broker.restore();
    wait_for(
        "a certificate renewed after expiry",
        Duration::from_secs(60),
        || async {
            let (cert, _) = agent_identity(&data_dir);
            if serial(&cert) != serial(&held) && not_after(&cert) > unix_now() {
                Ok(())
            } else {
                Err("still the expired certificate".to_owned())
            }
        },
    )
    .await;
    cluster.wait_node_online("edge-a").await;
    let after = wait_running(&cluster.api, "hello", "v1").await;
    assert_eq!(before[0].pid, after[0].pid, "the workload was restarted");
}

#[test]
fn an_agent_with_tls_urls_but_no_token_and_no_certificate_exits_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"edge-x\"\nregion = \"r\"\ndata_dir = \"{}\"\n\
             broker_url = \"mqtts://127.0.0.1:1\"\ncontroller_url = \"https://127.0.0.1:1\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let output = std::process::Command::new(verge_tests::cluster::binary("edge-agent"))
        .arg("--config")
        .arg(&config)
        .env_remove("VERGE_AGENT_ENROLL_TOKEN")
        .output()
        .expect("agent runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("VERGE_AGENT_ENROLL_TOKEN"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verge_signs_in_over_https_and_manages_tokens_and_nodes() {
    let mut cluster = tls_cluster(None).await;
    let token_file = cluster.controller_data.join("admin-token");
    let ca_file = cluster.controller_data.join("ca/ca.pem");
    let token_file = token_file.to_str().expect("UTF-8 path");
    let ca_file = ca_file.to_str().expect("UTF-8 path");
    let verge = Verge::new();
    // Without the CA, the API's certificate cannot be verified: no sign-in.
    let unverified = verge
        .run(&["login", &cluster.api.base, "--token-file", token_file])
        .await
        .exits(1);
    assert!(
        unverified
            .stderr
            .starts_with("error: GET /api/v1/whoami: cannot reach"),
        "{unverified}"
    );
    verge
        .run(&[
            "login",
            &cluster.api.base,
            "--ca-file",
            ca_file,
            "--token-file",
            token_file,
            "--name",
            "tls",
        ])
        .await
        .ok();

    let created = verge
        .run(&[
            "token", "create", "--region", "region-a", "--uses", "1", "--ttl", "10m",
        ])
        .await
        .ok();
    // The token alone on stdout; what it is on stderr.
    let token = created.stdout.trim().to_owned();
    assert_eq!(created.stdout.lines().count(), 1, "{created}");
    assert!(created.stderr.contains("region region-a"), "{created}");
    let broker = cluster.mqtt_addr;
    cluster
        .add_enrolling_agent("edge-a", "region-a", &token, broker)
        .await
        .expect("the agent enrolls with the command's token");

    let listed = verge.run(&["token", "ls"]).await.ok();
    assert!(listed.stdout.contains("spent"), "{listed}");
    assert!(
        !listed.stdout.contains(&token),
        "the token text was listed: {listed}"
    );
    let listed = verge.run(&["-o", "json", "token", "ls"]).await.ok().json();
    assert_eq!(listed["tokens"][0]["state"], "spent", "{listed}");

    let revoked = verge.run(&["node", "revoke", "edge-a"]).await.ok();
    assert!(
        revoked
            .stdout
            .lines()
            .any(|l| l.starts_with("edge-a") && l.contains("revoked")),
        "{revoked}"
    );
    assert_eq!(
        cluster.api.node("edge-a").await.expect("node")["revoked"],
        true
    );
}
