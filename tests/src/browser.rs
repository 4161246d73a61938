//! A real browser for the web console's tests: Debian's Chromium, headless,
//! driven over WebDriver by its `chromedriver` through `fantoccini`.
//!
//! [`Browser::start`] runs a `chromedriver` of its own on a free loopback
//! port, with a fresh profile in a temporary directory, and opens one
//! session. Tests call [`crate::require::missing`] with [`Tool::Chromium`]
//! first, like every test of a system program.
//!
//! Everything that looks for something on the page waits for it, with a
//! deadline ([`Browser::set_timeout`]), through [`crate::wait::wait_for`]:
//! a test never sleeps and hopes that the page has caught up. Like
//! `wait_for`, the helpers panic when the deadline passes or the browser
//! refuses, saying what they were doing and what they saw: in a browser
//! test, a click that cannot happen is the failure. Only starting and
//! closing return errors.
//!
//! [`Browser::js_errors`] reads the browser's console log (errors thrown by
//! scripts, failed loads, Content-Security-Policy violations), so that a
//! test can check that a page works without a console error.
//!
//! Dropping a [`Browser`] kills `chromedriver` and every Chromium process it
//! started, also when a test panics (which prints the end of
//! `chromedriver`'s log); [`Browser::close`] ends the session first.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::cluster::free_port;
use crate::require::{Tool, chromedriver_path};
use crate::wait::wait_for;

pub use fantoccini::cookies::Cookie;
pub use fantoccini::elements::Element;

/// How long `chromedriver` may take to answer and Chromium to open a
/// session on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the helpers wait for the page by default.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Chromium, headless, driven by a `chromedriver` of its own.
pub struct Browser {
    client: Client,
    timeout: Duration,
    // Held for its drop, after the client's: kills chromedriver and
    // Chromium, then removes the profile.
    _driver: Driver,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium whose page area (the
    /// viewport, what a screenshot shows) is `width` × `height` CSS pixels.
    ///
    /// Fails when either program is missing (call
    /// `require::missing(Tool::Chromium)` first), or when `chromedriver`
    /// does not answer or Chromium does not start within a minute.
    pub async fn start(width: u32, height: u32) -> Result<Browser> {
        let (Some(chromium), Some(chromedriver)) = (Tool::Chromium.path(), chromedriver_path())
        else {
            bail!(
                "chromium and chromedriver are needed ({}; .ci/run does this)",
                Tool::Chromium.install_hint()
            );
        };
        let driver = Driver::start(&chromedriver).await?;
        let profile = driver.dir.path().join("profile");
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Chromium refuses to run as root with its sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    // /dev/shm is small in containers.
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        // Keeps the console log for `js_errors`.
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = tokio::time::timeout(
            START_TIMEOUT,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&driver.url),
        )
        .await
        .map_err(|_| anyhow::anyhow!("Chromium did not start within {START_TIMEOUT:?}"))?
        .with_context(|| {
            format!(
                "open a Chromium session; chromedriver's log ends:\n{}",
                driver.log_tail()
            )
        })?;
        let browser = Browser {
            client,
            timeout: WAIT_TIMEOUT,
            _driver: driver,
        };
        browser.resize(width, height).await;
        Ok(browser)
    }

    /// Changes how long the helpers wait for the page (20 s unless set).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The underlying WebDriver client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits until the page has loaded (its `load` event).
    pub async fn goto(&self, url: &str) {
        if let Err(e) = self.client.goto(url).await {
            panic!("open {url}: {e}");
        }
    }

    /// The address of the page shown now.
    pub async fn current_url(&self) -> String {
        match self.client.current_url().await {
            Ok(url) => url.into(),
            Err(e) => panic!("read the current URL: {e}"),
        }
    }

    /// Waits until an element matches `css` and returns the first.
    pub async fn wait_for(&self, css: &str) -> Element {
        let client = &self.client;
        wait_for(
            &format!("an element matching {css:?}"),
            self.timeout,
            || async move {
                client
                    .find(Locator::Css(css))
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await
    }

    /// Waits until an element matching `css` contains `needle` in its text
    /// (as rendered: hidden elements have none) and returns that text.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> String {
        let client = &self.client;
        wait_for(
            &format!("an element matching {css:?} with text {needle:?}"),
            self.timeout,
            || async move {
                let mut seen = Vec::new();
                for element in client
                    .find_all(Locator::Css(css))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    // An element replaced meanwhile is skipped; the next
                    // round sees its successor.
                    let Ok(text) = element.text().await else {
                        continue;
                    };
                    if text.contains(needle) {
                        return Ok(text);
                    }
                    seen.push(text);
                }
                Err(format!("texts {seen:?}"))
            },
        )
        .await
    }

    /// Waits until no element matching `css` is shown: none is in the page,
    /// or those that are are hidden.
    pub async fn wait_gone(&self, css: &str) {
        let client = &self.client;
        wait_for(
            &format!("no element matching {css:?} shown"),
            self.timeout,
            || async move {
                let mut shown = 0;
                for element in client
                    .find_all(Locator::Css(css))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    // An error here is an element that has left the page.
                    if element.is_displayed().await.unwrap_or(false) {
                        shown += 1;
                    }
                }
                if shown == 0 {
                    Ok(())
                } else {
                    Err(format!("{shown} shown"))
                }
            },
        )
        .await;
    }

    /// Whether an element matches `css` now, without waiting.
    pub async fn exists(&self, css: &str) -> bool {
        match self.client.find_all(Locator::Css(css)).await {
            Ok(found) => !found.is_empty(),
            Err(e) => panic!("look for {css:?}: {e}"),
        }
    }

    /// Waits until the element matching `css` can be clicked, and clicks it
    /// (a WebDriver click: the browser scrolls to it and clicks its centre,
    /// as a user would, so an element that is hidden, disabled in the
    /// sense of not interactable, or covered is waited for).
    pub async fn click(&self, css: &str) {
        let client = &self.client;
        wait_for(
            &format!("a click on {css:?}"),
            self.timeout,
            || async move {
                let element = find(client, css).await?;
                element.click().await.map_err(|e| e.to_string())
            },
        )
        .await;
    }

    /// Waits for the field matching `css`, empties it and types `text`
    /// into it (key by key, so the page's input handlers run), until its
    /// value is `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let client = &self.client;
        wait_for(
            &format!("{css:?} filled with {text:?}"),
            self.timeout,
            || async move {
                let element = find(client, css).await?;
                element.clear().await.map_err(|e| e.to_string())?;
                element.send_keys(text).await.map_err(|e| e.to_string())?;
                match element.prop("value").await.map_err(|e| e.to_string())? {
                    // Not a form field (an editable element): what was typed is it.
                    None => Ok(()),
                    Some(value) if value == text => Ok(()),
                    Some(value) => Err(format!("value {value:?}")),
                }
            },
        )
        .await;
    }

    /// Waits for an element matching `css` and returns its text as
    /// rendered.
    pub async fn text(&self, css: &str) -> String {
        let client = &self.client;
        wait_for(
            &format!("the text of {css:?}"),
            self.timeout,
            || async move {
                let element = find(client, css).await?;
                element.text().await.map_err(|e| e.to_string())
            },
        )
        .await
    }

    /// Runs `js` as the body of a function in the page, with `args` as its
    /// `arguments`, and returns what it returns (a promise is not waited
    /// for; use [`Client::execute_async`] through [`Browser::client`]).
    pub async fn execute(&self, js: &str, args: Vec<Value>) -> Value {
        match self.client.execute(js, args).await {
            Ok(value) => value,
            Err(e) => panic!("run script {js:?}: {e}"),
        }
    }

    /// The page's cookies (those of the current page's address), with
    /// their attributes (`http_only()`, `same_site()`, `secure()`).
    pub async fn cookies(&self) -> Vec<Cookie<'static>> {
        match self.client.get_all_cookies().await {
            Ok(cookies) => cookies,
            Err(e) => panic!("read the cookies: {e}"),
        }
    }

    /// Makes the viewport `width` × `height` CSS pixels. The window is
    /// larger than its viewport (headless Chromium keeps room for a
    /// toolbar), so it is resized, measured and corrected.
    pub async fn resize(&self, width: u32, height: u32) {
        let mut window = (width, height);
        let mut viewport = (0, 0);
        // Twice at most: once to measure the frame, once to correct for it.
        for _ in 0..2 {
            if let Err(e) = self.client.set_window_size(window.0, window.1).await {
                panic!("resize the window to {}x{}: {e}", window.0, window.1);
            }
            viewport = self.viewport().await;
            if viewport == (width, height) {
                return;
            }
            window = (
                window.0 + width.saturating_sub(viewport.0),
                window.1 + height.saturating_sub(viewport.1),
            );
        }
        panic!(
            "the viewport is {}x{}, not {width}x{height} (Chromium has minimum window sizes)",
            viewport.0, viewport.1
        );
    }

    /// The viewport's size in CSS pixels.
    async fn viewport(&self) -> (u32, u32) {
        let size = self
            .execute("return [window.innerWidth, window.innerHeight];", vec![])
            .await;
        let dimension = |i: usize| {
            size.get(i)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or_else(|| panic!("the viewport's size is not two numbers: {size}"))
        };
        (dimension(0), dimension(1))
    }

    /// Saves what the viewport shows as `target/console-screenshots/<name>.png`
    /// (under `CARGO_TARGET_DIR` when that is set) and returns the path.
    /// Characters other than letters, digits, `.`, `_` and `-` in `name`
    /// become `-`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = match self.client.screenshot().await {
            Ok(png) => png,
            Err(e) => panic!("take a screenshot: {e}"),
        };
        let dir = screenshot_dir();
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let path = dir.join(format!("{file}.png"));
        if let Err(e) = fs::create_dir_all(&dir).and_then(|()| fs::write(&path, png)) {
            panic!("write {}: {e}", path.display());
        }
        path
    }

    /// The errors in the browser's console since the last call (reading
    /// drains the log; entries below `SEVERE` are dropped): uncaught
    /// exceptions, `console.error`, failed requests (a 404 included, so a
    /// page without a favicon has one unless it declares
    /// `<link rel="icon" href="data:,">`), and Content-Security-Policy
    /// violations.
    ///
    /// The log is what Chromium has reported so far: an error that a
    /// click causes later, in a timer or after a request, needs the page
    /// to be waited for first ([`Browser::wait_for_text`] on what it shows).
    pub async fn js_errors(&self) -> Vec<ConsoleEntry> {
        let value = match self.client.issue_cmd(BrowserLog).await {
            Ok(value) => value,
            Err(e) => panic!("read the browser's console log: {e}"),
        };
        let entries: Vec<ConsoleEntry> = match serde_json::from_value(value.clone()) {
            Ok(entries) => entries,
            Err(e) => panic!("the console log is not a list of entries ({e}): {value}"),
        };
        entries
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .collect()
    }

    /// Fails, listing them, if the console has errors since the last
    /// [`Browser::js_errors`] call.
    pub async fn assert_no_js_errors(&self) {
        let errors = self.js_errors().await;
        if !errors.is_empty() {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!(
                "{} console error(s) in {}:\n{}",
                errors.len(),
                self.current_url().await,
                list.join("\n")
            );
        }
    }

    /// Ends the session (Chromium exits), then stops `chromedriver`.
    pub async fn close(self) -> Result<()> {
        self.client
            .clone()
            .close()
            .await
            .context("end the browser session")
    }
}

/// One entry of the browser's console log.
#[derive(Clone, Debug, Deserialize)]
pub struct ConsoleEntry {
    /// `SEVERE`, `WARNING`, `INFO` or `DEBUG`.
    pub level: String,
    /// The text, which for a script error starts with its address and
    /// position, e.g. `http://127.0.0.1:4000/app.js 12:9 Uncaught Error: …`.
    pub message: String,
    /// Where it comes from: `javascript`, `console-api`, `network`,
    /// `security` (Content-Security-Policy), …
    #[serde(default)]
    pub source: String,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp: u64,
}

impl fmt::Display for ConsoleEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.source, self.message)
    }
}

/// `POST /session/{id}/se/log {"type": "browser"}`: the console log, which
/// chromedriver still serves beside the W3C commands (which have none).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// Where screenshots go: `console-screenshots` in the workspace's target
/// directory.
fn screenshot_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace");
    // A relative CARGO_TARGET_DIR is taken from the workspace root; an
    // absolute one replaces it.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir));
    target.join("console-screenshots")
}

/// A `chromedriver` process with its log and the browser's profile in a
/// temporary directory.
struct Driver {
    child: tokio::process::Child,
    url: String,
    log: PathBuf,
    dir: TempDir,
}

impl Driver {
    /// Runs `chromedriver` on a free loopback port and waits until its
    /// `/status` says it is ready for a session.
    async fn start(exe: &Path) -> Result<Driver> {
        let dir = tempfile::Builder::new()
            .prefix("verge-browser-")
            .tempdir()
            .context("create the browser's temporary directory")?;
        let log = dir.path().join("chromedriver.log");
        let file = fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let port = free_port();
        let child = tokio::process::Command::new(exe)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", exe.display()))?;
        let mut driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            dir,
        };
        let http = crate::tls::http_client(None)?;
        let status = format!("{}/status", driver.url);
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded by START_TIMEOUT; a driver that exits fails at once.
        loop {
            if let Ok(Some(exit)) = driver.child.try_wait() {
                bail!("chromedriver exited with {exit}: {}", driver.log_tail());
            }
            let last = match http.get(&status).send().await {
                Ok(reply) => match reply.json::<Value>().await {
                    Ok(body) if body["value"]["ready"] == true => return Ok(driver),
                    Ok(body) => body.to_string(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("chromedriver on {} is not ready: {last}", driver.url);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The end of chromedriver's log (which has Chromium's output too).
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium's processes are chromedriver's descendants and share the
        // test's process group, so they are found through /proc and killed
        // together, before any of them is orphaned.
        if let Some(pid) = self.child.id() {
            for pid in process_tree(pid) {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_tail());
        }
    }
}

/// `root` and every process descended from it.
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The parent is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while let Some(&pid) = tree.get(i) {
        tree.extend(children.get(&pid).into_iter().flatten());
        i += 1;
    }
    tree
}

/// The first element matching `css`, or why there is none.
async fn find(client: &Client, css: &str) -> Result<Element, String> {
    client
        .find(Locator::Css(css))
        .await
        .map_err(|e| e.to_string())
}
