//! Paging through 1,000 nodes of a real controller while the fleet changes
//! underneath: nodes join before, inside and after the page being read, and
//! others go offline and come back. Every node that exists for the whole
//! walk is seen exactly once; no id is ever repeated.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use verge_tests::mqtt::TestClient;
use verge_tests::node::{FakeNode, registered};
use verge_tests::{Cluster, ClusterOptions, wait_for};

const LASTING: u64 = 1000;
const PAGE: u64 = 97;

fn ids(page: &Value) -> Vec<String> {
    page["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_walk_over_a_changing_fleet_shows_every_lasting_node_once() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let mqtt = TestClient::connect(cluster.mqtt_addr, "paging")
        .await
        .expect("mqtt");
    let mut lasting = Vec::new();
    for i in 0..LASTING {
        let node = FakeNode::new(&format!("n{i:04}"), "eu-west").expect("node");
        node.announce(&mqtt).await.expect("announce");
        lasting.push(node);
    }
    registered(&cluster, LASTING).await.expect("registered");

    // Changes while the walk goes on: newcomers around every position, and
    // lasting nodes flapping offline and online (still registered).
    let churn_mqtt = TestClient::connect(cluster.mqtt_addr, "churn")
        .await
        .expect("mqtt");
    let progress = Arc::new(AtomicU64::new(0));
    let churned = Arc::clone(&progress);
    let churn = tokio::spawn(async move {
        let mut sent = 0u64;
        for round in 0..300u64 {
            for id in [
                format!("a{round:03}"),
                format!("n{round:04}x"),
                format!("z{round:03}"),
            ] {
                let node = FakeNode::new(&id, "eu-west").expect("node");
                node.announce(&churn_mqtt).await.expect("announce");
                sent += 1;
            }
            churned.store(round + 1, Ordering::SeqCst);
            let flapping = usize::try_from(round * 3 % LASTING).unwrap_or(0);
            lasting[flapping]
                .presence(&churn_mqtt, round % 2 == 1)
                .await
                .expect("flap");
        }
        sent
    });

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 0..200u64 {
        // Interleave: each page is read after more churn has been sent.
        let wanted = (page_number * 25).min(300);
        wait_for("the churn to go on", Duration::from_secs(60), || {
            let done = progress.load(Ordering::SeqCst);
            async move {
                if done >= wanted {
                    Ok(())
                } else {
                    Err(format!("{done} rounds"))
                }
            }
        })
        .await;
        let path = match &cursor {
            Some(c) => format!("/api/v1/nodes?limit={PAGE}&cursor={c}"),
            None => format!("/api/v1/nodes?limit={PAGE}"),
        };
        let page = cluster.api.get(&path).await.expect("page");
        let batch = ids(&page);
        assert!(batch.len() as u64 <= PAGE);
        seen.extend(batch);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let newcomers = churn.await.expect("churn");
    assert_eq!(newcomers, 900);

    assert!(
        seen.len() as u64 > LASTING,
        "newcomers joined during the walk and some were shown"
    );
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a node was shown twice");
    let missing: Vec<String> = (0..LASTING)
        .map(|i| format!("n{i:04}"))
        .filter(|id| !unique.contains(id))
        .collect();
    assert!(missing.is_empty(), "lasting nodes never shown: {missing:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages come in id order");
}
