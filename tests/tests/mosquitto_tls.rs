//! A production broker end to end: the real controller and real
//! token-enrolled agents over TLS through a real Mosquitto running the
//! shipped `configs/mosquitto/` files, with client certificates from the
//! controller's CA (the controller's own with CN `controller`), the shipped
//! ACL and the CRL enabled.
//!
//! The harness ([`BrokerKind::MosquittoTls`]) copies the shipped files into
//! the test's directory and rewrites only paths and the port: the listener
//! becomes a free loopback port, `/etc/mosquitto/verge/` the test's
//! directory, `/var/lib/mosquitto/` a persistence directory there, and the
//! `crlfile` line is uncommented. The broker's certificate, the CA
//! certificate and the first CRL come from `central-controller
//! broker-cert`, as an operator makes them.
//!
//! One scenario, to keep the run short: a service is deployed and runs; the
//! agent running it is killed and its replica moves to another agent; that
//! agent is revoked, the operator's step (copy the CRL, reload and restart
//! Mosquitto) is done, and the revoked agent can no longer connect while the
//! others and the controller come back, and the replica moves again.

use std::time::Duration;

use verge_tests::cluster::{BrokerKind, process_alive};
use verge_tests::require::{Tool, missing};
use verge_tests::workload::{deploy_hello, wait_running};
use verge_tests::{Cluster, ClusterOptions, wait_for};

const REGION: &str = "region-a";
/// How long a reconnect or a log line may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// How often `needle` occurs in `text`.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_enrolled_agents_work_through_the_shipped_mosquitto_over_tls() {
    if missing(Tool::Mosquitto) {
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions {
        broker: BrokerKind::MosquittoTls,
        tls: true,
        failover_grace_secs: 2,
        ..ClusterOptions::default()
    })
    .await
    .expect("the controller starts against the shipped Mosquitto");

    // The controller connects with its own certificate: Mosquitto takes the
    // CN as user name and client id (use_identity_as_username,
    // use_username_as_clientid), which the shipped ACL's `user controller`
    // section matches.
    wait_for(
        "Mosquitto to accept the controller as `controller`",
        DEADLINE,
        || async {
            let log = cluster.broker_log();
            if log.contains("as controller (") && log.contains("u'controller'") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;

    let (_, token) = cluster
        .api
        .create_token(REGION, 3)
        .await
        .expect("POST /api/v1/tokens");
    let broker = cluster.mqtt_addr;
    for id in ["edge-a", "edge-b", "edge-c"] {
        cluster
            .add_enrolling_agent(id, REGION, &token, broker)
            .await
            .unwrap_or_else(|e| panic!("{id} enrolls and comes online: {e:#}"));
    }
    // Enrollment told the agents the advertised broker URL, not the
    // embedded listener's.
    let advertised = format!("mqtts://localhost:{}", broker.port());
    let log = cluster.agent("edge-a").log_text();
    assert!(
        log.contains(&format!("broker={advertised}")),
        "edge-a was not told {advertised}: {log}"
    );

    // Deploy: the desired state reaches the agent through Mosquitto and the
    // status comes back the same way.
    let first = deploy_hello(&cluster.api, "hello", "v1", REGION).await;
    let first_node = first[0].node.clone();

    // Failover: the node running it dies; its replica moves.
    cluster.agent(&first_node).power_off();
    let second = wait_running(&cluster.api, "hello", "v1").await;
    let second_node = second[0].node.clone();
    assert_ne!(second_node, first_node, "the replica did not move");

    // Revocation: the node now running it is revoked.
    let controller_connects = count(&cluster.broker_log(), "as controller (");
    let (other_node, other_connects) = {
        let other = cluster
            .agents
            .iter()
            .find(|a| a.id != first_node && a.id != second_node)
            .expect("a third agent");
        (
            other.id.clone(),
            count(&other.log_text(), "Connected to the broker."),
        )
    };
    let reply = cluster
        .api
        .request(
            reqwest::Method::POST,
            &format!("/api/v1/nodes/{second_node}/revoke"),
            None,
        )
        .await
        .expect("revoke");
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The operator's step: the broker gets the CRL the controller wrote,
    // rereads it and restarts, closing every open connection.
    cluster
        .publish_crl_to_broker()
        .await
        .expect("Mosquitto restarts with the new CRL");
    let revoked_failures = count(
        &cluster.agent(&second_node).log_text(),
        "MQTT connection lost",
    );
    let revoked_connects = count(
        &cluster.agent(&second_node).log_text(),
        "Connected to the broker.",
    );

    // The controller and the other agent come back...
    wait_for(
        "the controller and the remaining agent to reconnect",
        DEADLINE,
        || async {
            let controller = count(&cluster.broker_log(), "as controller (");
            let other = count(
                &cluster
                    .agents
                    .iter()
                    .find(|a| a.id == other_node)
                    .expect("agent")
                    .log_text(),
                "Connected to the broker.",
            );
            if controller > controller_connects && other > other_connects {
                Ok(())
            } else {
                Err(format!(
                    "controller connections {controller}, {other_node} connections {other}"
                ))
            }
        },
    )
    .await;
    cluster.wait_node_online(&other_node).await;
    // ...and the replica runs there.
    let third = wait_running(&cluster.api, "hello", "v1").await;
    assert_eq!(
        third[0].node, other_node,
        "the replica is not on {other_node}"
    );

    // The revoked agent still runs and keeps trying, and Mosquitto refuses
    // it at every attempt: more failures, no new connection.
    let revoked = cluster.agent(&second_node);
    let pid = revoked.pid().expect("the revoked agent still runs");
    assert!(process_alive(pid));
    let revoked_log = || {
        cluster
            .agents
            .iter()
            .find(|a| a.id == second_node)
            .expect("agent")
            .log_text()
    };
    wait_for(
        "the revoked agent's reconnects to be refused",
        DEADLINE,
        || async {
            let log = revoked_log();
            let failures = count(&log, "MQTT connection lost");
            if failures >= revoked_failures + 3 {
                Ok(())
            } else {
                Err(format!("{failures} failures so far"))
            }
        },
    )
    .await;
    let log = revoked_log();
    assert_eq!(
        count(&log, "Connected to the broker."),
        revoked_connects,
        "the revoked agent connected again: {log}"
    );
    let node = cluster.api.node(&second_node).await.expect("node");
    assert_eq!(node["revoked"], true, "{node}");
    assert_eq!(node["online"], false, "{node}");
}
