//! End to end: deploy, update and delete a service on three agents in three
//! regions, over the embedded broker and over a real Mosquitto.

use std::time::Duration;

use serde_json::json;
use verge_tests::cluster::process_alive;
use verge_tests::workload::{hello_artifact, hello_spec, wait_running};
use verge_tests::{BrokerKind, Cluster, ClusterOptions, wait_for};

async fn three_regions(broker: BrokerKind) -> Cluster {
    let mut cluster = Cluster::start(ClusterOptions {
        broker,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts");
    for (id, region) in [
        ("edge-a", "region-a"),
        ("edge-b", "region-b"),
        ("edge-c", "region-c"),
    ] {
        cluster.add_agent(id, region).await.expect("agent starts");
    }
    cluster
}

/// Where the two replicas may go; the third region stays empty.
const REGIONS: [&str; 2] = ["region-a", "region-b"];

async fn deploy_update_delete(broker: BrokerKind) {
    let cluster = three_regions(broker).await;
    let api = &cluster.api;
    let artifact = api.upload_artifact(hello_artifact()).await.expect("upload");

    // Deploy: one replica lands in each allowed region, none in the third.
    let reply = api
        .put_service("hello", &hello_spec(&artifact, "v1", 2, &REGIONS))
        .await
        .expect("PUT");
    assert_eq!(reply.status, 201, "{}", reply.body);
    let v1 = wait_running(api, "hello", "v1").await;
    let placed: Vec<(&str, &str)> = v1
        .iter()
        .map(|r| (r.node.as_str(), r.region.as_str()))
        .collect();
    assert_eq!(placed, [("edge-a", "region-a"), ("edge-b", "region-b")]);
    let idle = api.node("edge-c").await.expect("node edge-c");
    assert_eq!(
        idle["workloads"],
        json!([]),
        "edge-c must run nothing: {idle}"
    );

    // The node list, a page at a time, filtered, with bad parameters named.
    let first = api.get("/api/v1/nodes?limit=2").await.expect("page 1");
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["id"].as_str().expect("id").to_owned())
            .collect()
    };
    assert_eq!(ids(&first), ["edge-a", "edge-b"]);
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_owned();
    let second = api
        .get(&format!("/api/v1/nodes?limit=2&cursor={cursor}"))
        .await
        .expect("page 2");
    assert_eq!(
        (ids(&second), &second["next_cursor"]),
        (vec!["edge-c".to_owned()], &json!(null))
    );
    let filtered = api
        .get("/api/v1/nodes?region=region-b&state=healthy")
        .await
        .expect("filtered");
    assert_eq!(ids(&filtered), ["edge-b"]);
    for (query, field) in [
        ("limit=0", "limit"),
        ("cursor=edge-a", "cursor"),
        ("state=asleep", "state"),
    ] {
        let reply = api
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/nodes?{query}"),
                None,
            )
            .await
            .expect("GET");
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert_eq!(
            reply.body["error"]["field"], field,
            "{query}: {}",
            reply.body
        );
    }

    // Update: each agent applies exactly the next generation and the new
    // version replaces the old process.
    let reply = api
        .put_service("hello", &hello_spec(&artifact, "v2", 2, &REGIONS))
        .await
        .expect("PUT");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v2 = wait_running(api, "hello", "v2").await;
    for (old, new) in v1.iter().zip(&v2) {
        assert_eq!(old.node, new.node, "an update does not move replicas");
        assert_eq!(new.applied_generation, old.applied_generation + 1);
        assert_ne!(old.pid, new.pid);
    }
    wait_for(
        "the v1 processes to be gone",
        Duration::from_secs(30),
        || async {
            match v1.iter().find(|r| process_alive(r.pid as u32)) {
                Some(r) => Err(format!("v1 pid {} on {} still runs", r.pid, r.node)),
                None => Ok(()),
            }
        },
    )
    .await;

    // Conditional writes: the ETag is the revision; a DELETE naming a
    // revision the service has left is refused and changes nothing.
    let (reply, headers) = api
        .request_with(reqwest::Method::GET, "/api/v1/services/hello", None, &[])
        .await
        .expect("GET");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        headers.get("etag").and_then(|v| v.to_str().ok()),
        Some("\"2\"")
    );
    let (reply, _) = api
        .request_with(
            reqwest::Method::DELETE,
            "/api/v1/services/hello",
            None,
            &[("if-match", "\"1\"")],
        )
        .await
        .expect("DELETE");
    assert_eq!(reply.status, 412, "{}", reply.body);
    assert_eq!(reply.error_code(), "precondition_failed", "{}", reply.body);
    assert_eq!(
        api.service("hello").await.expect("still there")["revision"],
        2
    );

    // Delete: the workloads stop and the agents report nothing running.
    let reply = api.delete_service("hello").await.expect("DELETE");
    assert_eq!(reply.status, 204, "{}", reply.body);
    wait_for(
        "the v2 processes to stop",
        Duration::from_secs(60),
        || async {
            for r in &v2 {
                let node = api.node(&r.node).await.map_err(|e| e.to_string())?;
                if node["workloads"] != json!([]) || process_alive(r.pid as u32) {
                    return Err(format!("{} still reports or runs: {node}", r.node));
                }
            }
            Ok(())
        },
    )
    .await;
    let gone = api
        .request(reqwest::Method::GET, "/api/v1/services/hello", None)
        .await
        .expect("GET");
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error_code(), "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_update_delete_over_the_embedded_broker() {
    deploy_update_delete(BrokerKind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_update_delete_over_mosquitto() {
    if verge_tests::require::missing(verge_tests::require::Tool::Mosquitto) {
        return;
    }
    deploy_update_delete(BrokerKind::Mosquitto).await;
}
