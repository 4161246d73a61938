//! Prints how the web console renders and follows changes at fleet size,
//! measured in a real headless Chromium against a real controller: the
//! first render of the overview, the node list, one node and the service
//! list, and how long an update burst takes to show on an open node list.
//! Asserts nothing.
//!
//! ```text
//! cargo run --release -p verge-tests --bin console-bench [-- --nodes 10000 --services 1000 --runs 5 --burst 1000]
//! ```
//!
//! Nodes are announced by signed presence messages over the embedded broker
//! (no agent processes), spread over 50 regions; each service has its own
//! signed release and one replica placed on one of them. First render is
//! read from the page's own Navigation Timing (`responseEnd`: the HTML has
//! arrived; `domContentLoadedEventEnd`: parsed and the script run;
//! `loadEventEnd`), median of `--runs` loads. The burst sends `--burst`
//! presence changes (nodes going offline, the first node of the open page
//! last) and measures, in the page, from just before the last one is sent
//! until its row says `offline`; a `PerformanceObserver` adds up the main
//! thread's long tasks meanwhile. Needs `chromium` and `chromium-driver`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use verge_tests::Cluster;
use verge_tests::ClusterOptions;
use verge_tests::bench::{arg, build, percentile};
use verge_tests::browser::Browser;
use verge_tests::mqtt::TestClient;
use verge_tests::node::{FakeNode, registered};
use verge_tests::workload::{hello_artifact, hello_spec};

const REGIONS: u64 = 50;
/// Presences sent before waiting for them to register.
const BATCH: u64 = 500;

/// Navigation Timing of the page just loaded, in ms, and its HTML size.
async fn timing(browser: &Browser) -> Result<(f64, f64, f64, f64)> {
    let t = browser
        .execute(
            "const n = performance.getEntriesByType('navigation')[0];
             return [n.responseEnd, n.domContentLoadedEventEnd, n.loadEventEnd, n.decodedBodySize];",
            vec![],
        )
        .await;
    let f = |i: usize| t[i].as_f64().unwrap_or(f64::NAN);
    Ok((f(0), f(1), f(2), f(3)))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 50.0).unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> Result<()> {
    let nodes = arg("--nodes", 10_000);
    let services = arg("--services", 1_000);
    let runs = arg("--runs", 5);
    let burst = arg("--burst", 1_000).clamp(1, nodes);
    println!(
        "console-bench ({} build): {nodes} nodes in {REGIONS} regions, {services} services, {runs} loads per page, bursts of {burst} changes",
        build()
    );
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let mqtt = TestClient::connect(cluster.mqtt_addr, "console-bench").await?;
    let started = Instant::now();
    let mut fleet = Vec::new();
    for i in 0..nodes {
        let node = FakeNode::new(&format!("node-{i:05}"), &format!("region-{}", i % REGIONS))?;
        node.announce(&mqtt).await?;
        fleet.push(node);
        if (i + 1) % BATCH == 0 || i + 1 == nodes {
            registered(&cluster, i + 1).await?;
        }
    }
    println!(
        "registered {nodes} nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let artifact = cluster.api.upload_artifact(hello_artifact()).await?;
    for i in 0..services {
        let name = format!("svc-{i:04}");
        let region = format!("region-{}", i % REGIONS);
        let reply = cluster
            .api
            .put_service(
                &name,
                &hello_spec(&artifact, "bench", 1, &[region.as_str()]),
            )
            .await?;
        ensure!(reply.status.is_success(), "{name}: {}", reply.body);
    }
    println!(
        "created {services} services in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let base = cluster.api.base.clone();
    let browser = Browser::start(1280, 900).await?;
    browser.goto(&format!("{base}/login")).await;
    browser.fill("#token", cluster.api.token()).await;
    browser.click("#signin").await;
    browser.wait_for_text("h1", "Overview").await;

    for (path, heading) in [
        ("/", "Overview"),
        ("/nodes", "Nodes"),
        ("/nodes/node-00000", "Node node-00000"),
        ("/services", "Services"),
    ] {
        let (mut html, mut dom, mut load, mut bytes) = (vec![], vec![], vec![], 0.0);
        for _ in 0..runs {
            browser.goto(&format!("{base}{path}")).await;
            browser.wait_for_text("h1", heading).await;
            let (r, d, l, b) = timing(&browser).await?;
            html.push(r);
            dom.push(d);
            load.push(l);
            bytes = b;
        }
        println!(
            "first render {path}: HTML in {:.0} ms, parsed and scripted {:.0} ms, loaded {:.0} ms ({:.0} KiB of HTML; median of {runs})",
            median(html),
            median(dom),
            median(load),
            bytes / 1024.0
        );
    }
    browser.assert_no_js_errors().await;

    // Update bursts on the open node list.
    browser.goto(&format!("{base}/nodes")).await;
    browser.wait_for_text("#live-status", "live").await;
    let mut lags = Vec::new();
    let mut blocked = Vec::new();
    let mut sending = Vec::new();
    for round in 0..runs {
        let online = round % 2 == 1;
        let word = if online { "healthy" } else { "offline" };
        browser
            .execute(
                "window.__seen = null; window.__blocked = 0;
                 window.__longtasks = new PerformanceObserver((list) => {
                   for (const e of list.getEntries()) window.__blocked += Math.max(0, e.duration - 50);
                 });
                 window.__longtasks.observe({type: 'longtask'});
                 const word = arguments[0];
                 const check = () => {
                   const row = document.querySelector('tr[data-node=\"node-00000\"]');
                   if (window.__seen === null && row && row.textContent.includes(word)) window.__seen = performance.now();
                 };
                 window.__watcher = new MutationObserver(check);
                 window.__watcher.observe(document.getElementById('main'), {subtree: true, childList: true, characterData: true});",
                vec![json!(word)],
            )
            .await;
        let began = Instant::now();
        for node in fleet.iter().take(usize::try_from(burst)?).skip(1).rev() {
            node.presence(&mqtt, online).await?;
        }
        let t0 = browser.execute("return performance.now();", vec![]).await;
        fleet[0].presence(&mqtt, online).await?;
        sending.push(began.elapsed().as_secs_f64() * 1e3);
        browser
            .wait_for_text("#nodes tr[data-node=\"node-00000\"]", word)
            .await;
        let seen: Value = verge_tests::wait_for(
            "the page's record of the change",
            Duration::from_secs(10),
            || {
                let browser = &browser;
                async move {
                    let v = browser.execute("return window.__seen;", vec![]).await;
                    if v.is_null() {
                        Err("not yet".to_owned())
                    } else {
                        Ok(v)
                    }
                }
            },
        )
        .await;
        let lag = seen.as_f64().context("seen")? - t0.as_f64().context("t0")?;
        let long = browser
            .execute("window.__longtasks.disconnect(); window.__watcher.disconnect(); return window.__blocked;", vec![])
            .await;
        lags.push(lag);
        blocked.push(long.as_f64().unwrap_or(f64::NAN));
        // Let the controller settle before the next burst.
        verge_tests::node::registered(&cluster, nodes).await?;
    }
    browser.assert_no_js_errors().await;
    println!(
        "update burst of {burst} changes on /nodes: last change shown {:.0} ms after it was sent (median of {runs}; max {:.0}), main thread blocked {:.0} ms (long-task time over 50 ms), burst sent in {:.0} ms",
        median(lags.clone()),
        lags.iter().copied().fold(0.0, f64::max),
        median(blocked),
        median(sending)
    );
    browser.close().await?;
    Ok(())
}
