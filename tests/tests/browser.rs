//! The browser harness (`verge_tests::browser`) tested on pages of its own,
//! served from loopback: navigation, typing, clicking and waiting for what
//! the page shows, cookies, scripts, window sizes, screenshots, and console
//! errors (a thrown error, a Content-Security-Policy violation); and the
//! skip-or-fail rule when Chromium is missing.

use std::process::Command;

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::json;
use verge_tests::browser::Browser;
use verge_tests::require::{CHROMEDRIVER_VAR, REQUIRE_VAR, Tool, missing};
use verge_tests::wait_for;

/// Every page declares an empty icon: Chromium would otherwise ask for
/// /favicon.ico, and the 404 is a console error.
const HEAD: &str = r#"<meta charset="utf-8"><link rel="icon" href="data:,">"#;

/// The name of the test that runs the browser, which the skip test runs again.
const BROWSER_TEST: &str = "a_page_is_driven_and_its_console_errors_are_reported";

/// The good page: typing a name and clicking the button greets it, after a
/// moment (so that the waits have to wait), and hides the busy note.
async fn index() -> impl IntoResponse {
    (
        [(
            header::SET_COOKIE,
            "session=s3cret; HttpOnly; SameSite=Strict; Path=/",
        )],
        Html(format!(
            r#"<!doctype html><html><head>{HEAD}<title>Harness</title>
<script src="/app.js" defer></script></head>
<body><h1>Harness</h1>
<label>Name <input id="name"></label>
<button id="greet">Greet</button>
<p id="greeting">Nobody greeted yet</p>
<p id="busy">Nothing done yet</p>
<a id="bad" href="/bad">A broken page</a>
</body></html>"#
        )),
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript")],
        r#"document.getElementById("greet").addEventListener("click", () => {
  const name = document.getElementById("name").value;
  setTimeout(() => {
    document.getElementById("greeting").textContent = `Hello, ${name}!`;
    document.getElementById("busy").hidden = true;
  }, 300);
});"#,
    )
}

/// A page whose script throws while it loads.
async fn bad() -> Html<String> {
    Html(format!(
        r#"<!doctype html><html><head>{HEAD}<title>Broken</title>
<script>throw new Error("verge-harness-boom");</script></head>
<body><h1>Broken</h1></body></html>"#
    ))
}

/// A page whose inline script its own policy forbids.
async fn csp() -> impl IntoResponse {
    (
        [(header::CONTENT_SECURITY_POLICY, "script-src 'self'")],
        Html(format!(
            r#"<!doctype html><html><head>{HEAD}<title>Policy</title></head>
<body><h1>Policy</h1><script>document.title = "ran";</script></body></html>"#
        )),
    )
}

/// Serves the pages on a free loopback port; returns the base address.
async fn serve() -> String {
    let app = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/bad", get(bad))
        .route("/csp", get(csp));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve the pages");
    });
    format!("http://{addr}")
}

/// The width and height in a PNG's header.
fn png_size(png: &[u8]) -> (u32, u32) {
    let word = |at: usize| {
        let bytes: [u8; 4] = png[at..at + 4].try_into().expect("four bytes");
        u32::from_be_bytes(bytes)
    };
    (word(16), word(20))
}

#[tokio::test]
async fn a_page_is_driven_and_its_console_errors_are_reported() {
    if missing(Tool::Chromium) {
        return;
    }
    let base = serve().await;
    let browser = Browser::start(1024, 700).await.expect("browser starts");
    assert_eq!(
        browser
            .execute("return [innerWidth, innerHeight];", vec![])
            .await,
        json!([1024, 700]),
        "the viewport is the size asked for"
    );

    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.current_url().await, format!("{base}/"));
    assert_eq!(browser.text("h1").await, "Harness");
    assert!(browser.exists("#greet").await);
    assert!(!browser.exists("#nothing-like-this").await);
    assert!(
        browser.js_errors().await.is_empty(),
        "a page without errors has none"
    );

    // The greeting comes 300 ms after the click: the waits have to wait.
    browser.fill("#name", "Ada").await;
    browser.click("#greet").await;
    let greeting = browser.wait_for_text("#greeting", "Hello, Ada").await;
    assert_eq!(greeting, "Hello, Ada!");
    browser.wait_gone("#busy").await;
    assert!(
        browser.exists("#busy").await,
        "hidden, not removed: gone means not shown"
    );
    // Typing again replaces what the field held.
    browser.fill("#name", "Grace").await;
    browser.click("#greet").await;
    browser.wait_for_text("#greeting", "Hello, Grace!").await;
    browser.assert_no_js_errors().await;

    let cookies = browser.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c.name() == "session")
        .unwrap_or_else(|| panic!("a session cookie among {cookies:?}"));
    assert_eq!(session.value(), "s3cret");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(
        browser
            .execute(
                "return arguments[0] + arguments[1];",
                vec![json!(40), json!(2)]
            )
            .await,
        json!(42)
    );

    let shot = browser.screenshot("harness self-test").await;
    assert!(
        shot.ends_with("console-screenshots/harness-self-test.png"),
        "{}",
        shot.display()
    );
    let png = std::fs::read(&shot).expect("the screenshot is written");
    assert!(png.len() > 24, "{} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert_eq!(png_size(&png), (1024, 700), "the viewport, whole");

    // A phone's size; the screenshot follows.
    browser.resize(390, 844).await;
    assert_eq!(
        browser
            .execute("return [innerWidth, innerHeight];", vec![])
            .await,
        json!([390, 844])
    );
    let png = std::fs::read(browser.screenshot("harness-self-test-phone").await)
        .expect("the screenshot is written");
    assert_eq!(png_size(&png), (390, 844));

    // Following a link to a page whose script throws.
    browser.click("#bad").await;
    wait_for(
        "the broken page",
        std::time::Duration::from_secs(20),
        || {
            let browser = &browser;
            async move {
                let url = browser.current_url().await;
                if url.ends_with("/bad") {
                    Ok(())
                } else {
                    Err(url)
                }
            }
        },
    )
    .await;
    browser.wait_for_text("h1", "Broken").await;
    let errors = browser.js_errors().await;
    assert!(
        errors
            .iter()
            .any(|e| e.source == "javascript" && e.message.contains("verge-harness-boom")),
        "the thrown error is reported: {errors:?}"
    );
    assert!(
        browser.js_errors().await.is_empty(),
        "reading the log drains it"
    );

    // A Content-Security-Policy violation is a console error too.
    browser.goto(&format!("{base}/csp")).await;
    assert_eq!(browser.text("h1").await, "Policy");
    let errors = browser.js_errors().await;
    assert!(
        errors
            .iter()
            .any(|e| e.source == "security" && e.message.contains("Content Security Policy")),
        "the violation is reported: {errors:?}"
    );
    assert_eq!(
        browser.execute("return document.title;", vec![]).await,
        json!("Policy"),
        "the forbidden script did not run"
    );

    browser.close().await.expect("the session ends");
}

/// Runs [`BROWSER_TEST`] in a child process of this test binary with
/// `env` set (a path of `None` removes the variable); returns whether it
/// passed and what it printed.
fn run_browser_test(env: &[(&str, Option<&str>)]) -> (bool, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", BROWSER_TEST, "--test-threads=1"]);
    for (name, value) in env {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
    let out = cmd.output().expect("the test binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 passed") || text.contains("1 failed"),
        "the test ran: {text}"
    );
    (out.status.success(), text)
}

#[test]
fn without_chromium_the_browser_test_skips_unless_verge_require_lists_it() {
    let nowhere = "/nonexistent/verge-browser-test";
    let skip = "SKIPPED: chromium is not installed";

    let (passed, out) = run_browser_test(&[
        (Tool::Chromium.path_var(), Some(nowhere)),
        (REQUIRE_VAR, None),
    ]);
    assert!(passed && out.contains(skip), "skips: {out}");

    // chromedriver is part of the tool: without it, Chromium alone is missing too.
    let (passed, out) = run_browser_test(&[
        (Tool::Chromium.path_var(), None),
        (CHROMEDRIVER_VAR, Some(nowhere)),
        (REQUIRE_VAR, Some("mosquitto")),
    ]);
    assert!(passed && out.contains(skip), "skips: {out}");

    let (passed, out) = run_browser_test(&[
        (Tool::Chromium.path_var(), Some(nowhere)),
        (REQUIRE_VAR, Some("mosquitto,chromium")),
    ]);
    assert!(
        !passed && out.contains("VERGE_REQUIRE requires it") && !out.contains(skip),
        "fails: {out}"
    );
}
