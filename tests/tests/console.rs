//! The web console in a real browser (Debian's Chromium over WebDriver)
//! against real controller and agent processes: signing in, live updates,
//! deploying through the form, field errors, cordon, a node going offline,
//! recovery after a controller restart, what a viewer may do, and refused
//! cross-site posts. Every page is photographed under
//! `target/console-screenshots/` (docs/console.md shows them), and no page
//! may log a console error.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use verge_tests::browser::Browser;
use verge_tests::require::{Tool, missing};
use verge_tests::workload::{hello_artifact, hello_spec};
use verge_tests::{Cluster, ClusterOptions, wait_for};

const PASSWORD: &str = "correct horse battery";

/// A cluster with one agent, and a user of `role` with [`PASSWORD`].
async fn cluster_with_user(name: &str, role: &str) -> Cluster {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    // Telemetry every 2 s, so that the node page has charts to show.
    let broker = cluster.mqtt_addr;
    cluster
        .add_agent_with("edge-a", "region-a", broker, "telemetry_interval_secs = 2")
        .await
        .expect("agent starts");
    let reply = cluster
        .api
        .request(
            Method::POST,
            "/api/v1/users",
            Some(
                serde_json::to_vec(&json!({"name": name, "role": role, "password": PASSWORD}))
                    .expect("json")
                    .into(),
            ),
        )
        .await
        .expect("create user");
    assert_eq!(reply.status, 201, "{}", reply.body);
    cluster
}

async fn sign_in(browser: &Browser, base: &str, user: &str, password: &str) {
    browser.goto(&format!("{base}/login")).await;
    browser.fill("#user", user).await;
    browser.fill("#password", password).await;
    browser.click("#signin").await;
}

/// The browser's errors so far, as text (the log is drained).
async fn errors(browser: &Browser) -> Vec<String> {
    browser
        .js_errors()
        .await
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Visits `path`, waits for its heading, photographs it and checks that it
/// logged no error.
async fn visit(browser: &Browser, base: &str, path: &str, heading: &str, shot: &str) {
    browser.goto(&format!("{base}{path}")).await;
    browser.wait_for_text("h1", heading).await;
    browser.screenshot(shot).await;
    browser.assert_no_js_errors().await;
}

/// Uploads the example workload and a signed release of it for `service`;
/// returns the release digest.
async fn release(cluster: &Cluster, service: &str, greeting: &str) -> String {
    let artifact = cluster
        .api
        .upload_artifact(hello_artifact())
        .await
        .expect("upload");
    cluster
        .api
        .release_from_spec(service, &hello_spec(&artifact, greeting, 1, &["region-a"]))
        .await
        .expect("sign")
        .expect("release accepted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_fleet_from_the_console() {
    if missing(Tool::Chromium) {
        return;
    }
    let mut cluster = cluster_with_user("olivia", "operator").await;
    let base = cluster.api.base.clone();
    let browser = Browser::start(1280, 900).await.expect("browser starts");

    // Signing in: a wrong password is refused, the right one lands on the
    // page that was asked for.
    browser.goto(&format!("{base}/nodes")).await;
    browser.wait_for("#signin").await;
    browser.screenshot("login").await;
    sign_in(&browser, &base, "olivia", "wrong password!").await;
    browser
        .wait_for_text("#signin-notice", "Wrong user name or password")
        .await;
    // The refused sign-in is a 401 page: the one error the log may hold.
    let refused = errors(&browser).await;
    assert!(
        refused.iter().all(|e| e.contains("401")),
        "only the refused sign-in: {refused:?}"
    );
    sign_in(&browser, &base, "olivia", PASSWORD).await;
    browser.wait_for_text("h1", "Overview").await;
    browser.wait_for_text("#live-status", "live").await;
    browser.screenshot("overview").await;
    browser.assert_no_js_errors().await;

    // A node appears live when its agent starts: no reload (the marker set
    // on this page survives).
    visit(&browser, &base, "/nodes", "Nodes", "nodes").await;
    browser.wait_for_text("#live-status", "live").await;
    browser.execute("window.__same_page = true;", vec![]).await;
    cluster
        .add_agent("edge-b", "region-b")
        .await
        .expect("second agent");
    browser.wait_for_text("#nodes", "edge-b").await;
    assert_eq!(
        browser
            .execute("return window.__same_page === true;", vec![])
            .await,
        Value::Bool(true),
        "the node list changed without a reload"
    );

    // Deploy through the form: a field error is shown next to its field,
    // then the corrected form deploys and the replica becomes running.
    let digest = release(&cluster, "web", "from the console").await;
    visit(&browser, &base, "/deploy", "Deploy a service", "deploy").await;
    browser.fill("#f-name", "web").await;
    browser
        .execute(
            "document.getElementById('f-release').value = arguments[0];",
            vec![json!(digest)],
        )
        .await;
    browser.fill("#f-replicas", "500").await;
    browser.fill("#f-regions", "region-a").await;
    browser.click("#save-service").await;
    let error = browser
        .wait_for_text("[data-error-for=\"replicas\"]", "100")
        .await;
    assert!(!error.contains('{'), "a message, not JSON: {error}");
    browser.screenshot("deploy-field-error").await;
    // The refused PUT is logged as a failed request (400).
    let refused = errors(&browser).await;
    assert!(
        refused.iter().all(|e| e.contains("400")),
        "only the refused PUT: {refused:?}"
    );
    browser.fill("#f-replicas", "1").await;
    browser.click("#save-service").await;
    browser.wait_for_text("h1", "Service web").await;
    browser.wait_for_text("#replicas", "running").await;
    browser.wait_for_text("#replicas", "edge-a").await;
    browser.screenshot("service").await;
    browser.assert_no_js_errors().await;
    visit(&browser, &base, "/services", "Services", "services").await;
    visit(&browser, &base, "/releases", "Releases", "releases").await;

    // Cordon from the node page, after a confirmation that says what
    // happens.
    wait_for(
        "the node page with telemetry charts",
        Duration::from_secs(60),
        || async {
            browser.goto(&format!("{base}/nodes/edge-a")).await;
            browser.wait_for_text("h1", "Node edge-a").await;
            if browser.exists("#telemetry-host-cpu").await {
                Ok(())
            } else {
                Err("no chart yet".to_owned())
            }
        },
    )
    .await;
    browser.screenshot("node").await;
    browser.assert_no_js_errors().await;
    browser.click("#action-cordon").await;
    let question = browser
        .wait_for_text("#confirm-text", "No new replicas")
        .await;
    assert!(question.contains("edge-a"), "{question}");
    browser.screenshot("node-cordon-confirm").await;
    browser.click("#confirm-ok").await;
    browser.wait_for_text("#node-state", "cordoned").await;
    let node = cluster.api.node("edge-a").await.expect("node");
    assert_eq!(node["cordon"], "cordoned", "{node}");
    browser.assert_no_js_errors().await;

    // A bootstrap token: shown once, with a copy button.
    visit(&browser, &base, "/tokens", "Tokens", "tokens").await;
    browser.fill("#t-region", "region-c").await;
    browser.fill("#t-uses", "3").await;
    browser.click("#create-token").await;
    let shown = browser.wait_for_text("#new-token-text", ".").await;
    browser.wait_for_text("#tokens", "region-c").await;
    browser.screenshot("tokens-created").await;
    let listed = cluster.api.get("/api/v1/tokens").await.expect("tokens");
    assert_eq!(
        listed["tokens"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert!(
        !listed.to_string().contains(shown.trim()),
        "the text is not listed again"
    );
    browser.assert_no_js_errors().await;
    visit(&browser, &base, "/trust", "Trust", "trust").await;
    visit(&browser, &base, "/audit", "Audit log", "audit").await;
    browser.wait_for_text("table", "olivia").await;

    // The console follows a controller restart by itself: after it, a
    // killed agent shows as offline on the open page.
    visit(&browser, &base, "/nodes", "Nodes", "nodes-before-restart").await;
    browser.execute("window.__same_page = true;", vec![]).await;
    cluster.stop_controller();
    cluster
        .start_controller()
        .await
        .expect("controller restarts");
    browser.wait_for_text("#live-status", "live").await;
    cluster.agent("edge-b").kill();
    let row = browser
        .wait_for_text("#nodes tr[data-node=\"edge-b\"]", "offline")
        .await;
    assert!(row.contains("edge-b"), "{row}");
    assert_eq!(
        browser
            .execute("return window.__same_page === true;", vec![])
            .await,
        Value::Bool(true),
        "the page followed the restart without a reload"
    );
    browser.screenshot("nodes-offline").await;
    // While the controller was away the stream's reconnects failed; the
    // browser logs those (net::ERR_CONNECTION_REFUSED). Nothing else.
    let during = errors(&browser).await;
    assert!(
        during
            .iter()
            .all(|e| e.contains("ERR_CONNECTION_REFUSED") || e.contains("watch")),
        "{during:?}"
    );

    // The lost node is an alarm: listed, acknowledged after a confirmation,
    // and the acknowledgement recorded with who did it.
    let instance = wait_for(
        "edge-b's node_offline alarm",
        Duration::from_secs(30),
        || async {
            let active = cluster
                .api
                .get("/api/v1/alarms?alarm=node_offline&node=edge-b")
                .await
                .map_err(|e| e.to_string())?;
            active["alarms"][0]["instance"]
                .as_u64()
                .ok_or_else(|| active.to_string())
        },
    )
    .await;
    visit(&browser, &base, "/alarms", "Alarms", "alarms-raised").await;
    let row = browser
        .wait_for_text(
            &format!("#alarms tr[data-instance=\"{instance}\"]"),
            "node=edge-b",
        )
        .await;
    assert!(row.contains("Node offline"), "{row}");
    browser.click(&format!("#action-ack-{instance}")).await;
    browser.wait_for_text("#confirm-text", "stays raised").await;
    browser.click("#confirm-ok").await;
    browser
        .wait_for_text(
            &format!("#alarms tr[data-instance=\"{instance}\"]"),
            "olivia",
        )
        .await;
    browser.screenshot("alarms-acknowledged").await;
    browser.assert_no_js_errors().await;

    // At 800 px wide the pages still work.
    browser.resize(800, 900).await;
    visit(
        &browser,
        &base,
        "/nodes/edge-a",
        "Node edge-a",
        "node-800px",
    )
    .await;
    visit(&browser, &base, "/", "Overview", "overview-800px").await;
    browser.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_controls_and_forged_changes_are_refused() {
    if missing(Tool::Chromium) {
        return;
    }
    let cluster = cluster_with_user("victor", "viewer").await;
    cluster.wait_node_online("edge-a").await;
    let base = cluster.api.base.clone();
    let browser = Browser::start(1280, 900).await.expect("browser starts");
    sign_in(&browser, &base, "victor", PASSWORD).await;
    browser.wait_for_text("h1", "Overview").await;

    // No mutating control on any page a viewer may see.
    for (path, heading) in [
        ("/", "Overview"),
        ("/nodes", "Nodes"),
        ("/nodes/edge-a", "Node edge-a"),
        ("/services", "Services"),
        ("/releases", "Releases"),
        ("/trust", "Trust"),
    ] {
        browser.goto(&format!("{base}{path}")).await;
        browser.wait_for_text("h1", heading).await;
        assert!(
            !browser.exists("form[data-api]").await,
            "{path} shows a control that changes something"
        );
        assert!(!browser.exists("a[href=\"/deploy\"]").await, "{path}");
    }
    browser.screenshot("node-as-viewer").await;
    browser.assert_no_js_errors().await;
    // Pages for operators and admins say so.
    browser.goto(&format!("{base}/users")).await;
    browser.wait_for_text("main", "needs the admin role").await;
    let refused = errors(&browser).await;
    assert!(refused.iter().all(|e| e.contains("403")), "{refused:?}");

    // A forged POST with the viewer's own cookie and CSRF token: the API
    // refuses it by role.
    browser.goto(&format!("{base}/nodes/edge-a")).await;
    let answer = post_from_page(&browser, "/api/v1/nodes/edge-a/cordon", true).await;
    assert_eq!(answer[0], 403, "{answer}");
    assert!(
        answer[1].as_str().unwrap_or("").contains("\"forbidden\""),
        "{answer}"
    );
    // Without the token, even the role is not looked at.
    let answer = post_from_page(&browser, "/api/v1/nodes/edge-a/cordon", false).await;
    assert_eq!(answer[0], 403, "{answer}");
    assert!(
        answer[1].as_str().unwrap_or("").contains("\"csrf\""),
        "{answer}"
    );
    let _ = errors(&browser).await;

    // A cross-site form post, from a page on another port of this host
    // (same site, so the browser sends the cookie) signed in as an admin:
    // refused for its origin, and nothing changes.
    let admin_token = cluster.api.token().to_owned();
    browser.goto(&format!("{base}/login")).await;
    browser.fill("#token", &admin_token).await;
    browser.click("#signin").await;
    browser.wait_for_text("h1", "Overview").await;
    visit(&browser, &base, "/users", "Users", "users").await;
    browser.wait_for_text("table", "victor").await;
    let attacker = attacker_page(&format!("{base}/api/v1/nodes/edge-a/drain")).await;
    browser.goto(&attacker).await;
    let shown = browser.wait_for_text("body", "cross_origin").await;
    assert!(shown.contains("403") || shown.contains("origin"), "{shown}");
    let node = cluster.api.node("edge-a").await.expect("node");
    assert_eq!(
        node["cordon"],
        Value::Null,
        "the forged drain changed nothing: {node}"
    );
    let audit = cluster
        .api
        .get("/api/v1/audit?target=nodes/edge-a")
        .await
        .expect("audit");
    let refusal = audit["entries"]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["error"] == "cross_origin"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        refusal["actor"], "admin",
        "the refusal is audited with who: {audit}"
    );

    // Signing out ends the session: the page says so, and the cookie
    // opens nothing any more.
    browser.goto(&format!("{base}/nodes")).await;
    browser.click("header form button").await;
    browser.wait_for_text("#signin-notice", "signed out").await;
    browser.goto(&format!("{base}/nodes")).await;
    browser.wait_for("#signin").await;
    browser.close().await.expect("close");
}

/// POSTs to `path` from the open page with its cookie (and its CSRF token
/// when `with_csrf`); returns `[status, body]`.
async fn post_from_page(browser: &Browser, path: &str, with_csrf: bool) -> Value {
    // A synchronous request keeps the script simple: WebDriver returns
    // its answer directly.
    let script = "var x = new XMLHttpRequest();
        x.open('POST', arguments[0], false);
        if (arguments[1]) {
            x.setRequestHeader('X-CSRF-Token',
                document.querySelector('meta[name=\"csrf-token\"]').content);
        }
        x.send();
        return [x.status, x.responseText];";
    browser
        .execute(script, vec![json!(path), json!(with_csrf)])
        .await
}

/// Serves, on another loopback port, a page whose form posts itself to
/// `target` as soon as it loads; returns its address. One connection is
/// answered, then the server stops.
async fn attacker_page(target: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let page = format!(
        "<!DOCTYPE html><html><body><form id=f method=post action=\"{target}\">\
         <input name=x value=1></form><script>document.getElementById('f').submit()</script>\
         </body></html>"
    );
    tokio::spawn(async move {
        let accept = tokio::time::timeout(Duration::from_secs(60), listener.accept()).await;
        let Ok(Ok((mut socket, _))) = accept else {
            return;
        };
        let mut request = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut request)).await;
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
    });
    format!("http://{address}/")
}
