//! `verge`, the operator CLI, with the real binaries: the README's "Deploy a
//! service" walk-through run as README.md writes it (the commands are read
//! from the README, so the two cannot drift) against `central-controller
//! dev`, then JSON output, the API's refusals with exit code 1, usage
//! errors with exit code 2, `--wait` on a replica that fails, logs, and the
//! change stream with resumption.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use verge_tests::cluster::{binary, free_port, process_alive};
use verge_tests::verge::Verge;
use verge_tests::{Api, wait_for};

/// The README's address for the dev controller, replaced by the test's.
const README_ADDR: &str = "127.0.0.1:7700";

/// `central-controller dev` in a work directory laid out like a checkout:
/// `verge-dev/` its data, `target/release/` the test's binaries,
/// `configs/trust/release.toml` and `examples/hello-service.toml` copied.
struct Dev {
    child: Child,
    _dir: tempfile::TempDir,
    work: PathBuf,
    addr: String,
    log: PathBuf,
}

impl Dev {
    async fn start() -> Dev {
        let dir = tempfile::Builder::new()
            .prefix("verge-cli-")
            .tempdir()
            .expect("tempdir");
        let work = dir.path().join("work");
        let bin_dir = binary("central-controller")
            .parent()
            .expect("binary directory")
            .to_owned();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root")
            .to_owned();
        for (from, to) in [
            ("configs/trust/release.toml", "configs/trust/release.toml"),
            ("examples/hello-service.toml", "examples/hello-service.toml"),
        ] {
            let to = work.join(to);
            std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
            std::fs::copy(repo.join(from), &to).expect("copy");
        }
        std::fs::create_dir_all(work.join("target")).expect("mkdir");
        std::os::unix::fs::symlink(&bin_dir, work.join("target/release")).expect("symlink");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("dev.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin_dir.join("central-controller"))
            .args(["dev", "--data-dir", "verge-dev", "--api-listen", &addr])
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--agent-bin")
            .arg(bin_dir.join("edge-agent"))
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("central-controller dev starts");
        let dev = Dev {
            child,
            _dir: dir,
            work,
            addr,
            log,
        };
        let token_file = dev.work.join("verge-dev/admin-token");
        let token = wait_for("dev's admin token", Duration::from_secs(60), || async {
            std::fs::read_to_string(&token_file).map_err(|e| e.to_string())
        })
        .await;
        let api = dev.api(token.trim());
        wait_for("the dev agent online", Duration::from_secs(90), || async {
            match api.node("local-1").await {
                Ok(node) if node["online"] == true => Ok(()),
                Ok(node) => Err(node.to_string()),
                Err(e) => Err(format!("{e:#}\n{}", dev.log_text())),
            }
        })
        .await;
        dev
    }

    fn api(&self, token: &str) -> Api {
        Api::new(format!("http://{}", self.addr), token.to_owned())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A `verge` running in the work directory with the binaries on PATH.
    fn verge(&self) -> Verge {
        let bin_dir = self.work.join("target/release");
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Verge::new().env("PATH", &path).in_dir(self.work.clone())
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // dev stops its agent and the agent its workloads on SIGTERM.
        let pid = self.child.id();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        assert!(!process_alive(pid), "dev is still running");
    }
}

/// The commands of README.md's "Deploy a service" block: continuation
/// lines joined, comments and blank lines left out.
fn readme_walk_through() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let section = readme
        .split("\n## Deploy a service\n")
        .nth(1)
        .expect("README has a \"Deploy a service\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the section has a sh block");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim_end());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// A child process that is killed when the test ends, failed or not.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of a child's stdout, read on a thread.
fn lines_of(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads JSON lines until one satisfies `done`; all of them.
fn read_until(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("watch -o json printed {line:?}: {e}"));
                let end = done(&value);
                seen.push(value);
                if end {
                    return seen;
                }
            }
            Err(_) => panic!("timed out waiting for {what}; saw {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_through_deploys_and_verge_reports_refusals_and_failures() {
    let dev = Dev::start().await;
    let verge = dev.verge();

    // --- The README's commands, as written (the address is the test's). ---
    let commands = readme_walk_through();
    let mut script = String::new();
    let mut ask = None;
    for command in &commands {
        if command.starts_with("cargo build ") {
            for package in ["verge-cli", "hello-edge", "verge-admin"] {
                assert!(command.contains(&format!("-p {package}")), "{command}");
            }
            continue; // the harness built them with the test's profile
        }
        if command.starts_with("export PATH=") {
            continue; // the runner puts the binaries on PATH
        }
        if command.contains("<port>") {
            ask = Some(command.clone());
            continue;
        }
        script.push_str(&command.replace(README_ADDR, &dev.addr));
        script.push('\n');
    }
    assert!(
        script.contains("verge login") && script.contains("verge service apply"),
        "{script}"
    );
    // The same environment as verge's own runs (PATH, XDG_CONFIG_HOME).
    let bash = verge.command(&[]);
    let mut command = Command::new("bash");
    command.args(["-euo", "pipefail", "-c", &script]);
    command.current_dir(&dev.work);
    for (name, value) in bash.get_envs() {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the README walk-through failed:\n{script}\n{text}\n{}",
        dev.log_text()
    );
    for expected in [
        "Signed in to http://",
        "artifact ",
        "service hello: new",
        "+ replicas: 1",
        "service hello: created (revision 1)",
        "replica 0: running on local-1",
        "service hello: 1 replica(s) running",
        "REPLICA",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    // Step 6: the workload answers on the port `verge service show` gives.
    let view = verge
        .run(&["-o", "json", "service", "show", "hello"])
        .await
        .ok()
        .json();
    let port = view["replicas"][0]["ports"]["http"]
        .as_u64()
        .expect("a port");
    let ask = ask.expect("the README asks the workload");
    let url = ask
        .strip_prefix("curl -s ")
        .expect("the README asks with curl -s URL")
        .replace("<port>", &port.to_string());
    let answer: Value = reqwest::get(&url)
        .await
        .expect("the workload answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        answer["greeting"], "hello from a signed release",
        "{answer}"
    );
    assert_eq!(answer["agent"], "local-1");

    // --- JSON output is the API's JSON. ---
    let admin = dev.api(
        std::fs::read_to_string(dev.work.join("verge-dev/admin-token"))
            .expect("token")
            .trim(),
    );
    let services = verge
        .run(&["service", "ls", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(services, admin.get("/api/v1/services").await.expect("GET"));
    let nodes = verge.run(&["-o", "json", "node", "ls"]).await.ok().json();
    assert_eq!(nodes["nodes"][0]["id"], "local-1", "{nodes}");
    let node = verge
        .run(&["-o", "json", "node", "show", "local-1"])
        .await
        .ok()
        .json();
    assert_eq!(node["region"], "local");
    let table = verge.run(&["node", "ls"]).await.ok();
    assert!(
        table.stdout.lines().any(|l| l.starts_with("local-1")
            && l.contains("ready")
            && l.contains("hello:running")),
        "{table}"
    );
    let contexts = verge.run(&["context", "ls"]).await.ok();
    assert!(
        contexts
            .stdout
            .lines()
            .any(|l| l.starts_with('*') && l.contains("dev")),
        "{contexts}"
    );
    // The contexts file holds the token: only its owner may read it.
    let config = verge.config_home().join("verge/config.toml");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&config)
            .expect("contexts file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // Applying the same file again changes nothing.
    let digest = view["spec"]["release"]
        .as_str()
        .expect("release")
        .to_owned();
    let again = verge
        .run(&[
            "service",
            "apply",
            "-f",
            "examples/hello-service.toml",
            "--release",
            &digest,
        ])
        .await
        .ok();
    assert!(again.stdout.contains("service hello: no change"), "{again}");
    assert_eq!(admin.service("hello").await.expect("GET")["revision"], 1);

    // --- Logs: the workload's stderr tail from its node. ---
    let logs = verge
        .run(&["logs", "hello", "--stream", "stderr"])
        .await
        .ok();
    assert!(logs.stdout.contains("listening on port"), "{logs}");

    // --- A refusal: the API's code and message, exit code 1. ---
    let viewer = verge
        .run(&["api-token", "create", "dashboard", "--role", "viewer"])
        .await
        .ok();
    let viewer_token = viewer.stdout.trim().to_owned();
    assert!(viewer_token.starts_with("verge_"), "{viewer}");
    let refused = dev
        .verge()
        .env("VERGE_ADDR", &format!("http://{}", dev.addr))
        .env("VERGE_TOKEN", &viewer_token)
        .run(&["service", "rm", "hello"])
        .await
        .exits(1);
    assert!(
        refused.stderr.starts_with("error: forbidden: ")
            && refused.stderr.contains("needs the operator role")
            && refused.stdout.is_empty(),
        "{refused}"
    );
    assert!(
        !refused.stderr.contains("panicked") && !refused.stderr.contains("ApiError"),
        "{refused}"
    );
    assert_eq!(
        admin.service("hello").await.expect("still there")["name"],
        "hello"
    );
    // An unknown node: not_found, exit 1.
    let missing = verge.run(&["node", "cordon", "nobody"]).await.exits(1);
    assert!(
        missing.stderr.starts_with("error: not_found: "),
        "{missing}"
    );

    // --- A change stream, resumed after its sync point. ---
    let mut watch = verge.command(&["-o", "json", "watch", "--kind", "service"]);
    let mut watcher = Reaped(
        watch
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("watch"),
    );
    let watched = lines_of(&mut watcher.0);
    let sync = read_until(&watched, "sync", |v| v["kind"] == "sync");
    let sync_id = sync.last().expect("sync")["id"].as_u64().expect("sync id");

    // --- --wait reports a replica that fails, and exits 1. ---
    let spec = std::fs::read_to_string(dev.work.join("configs/trust/release.toml")).expect("spec");
    let broken = spec
        .replace("service = \"hello\"", "service = \"broken\"")
        .replace(
            "args = [\"--greeting\", \"hello from a signed release\"]",
            "args = [\"--no-such-flag\"]",
        )
        .replace("restart = \"always\"", "restart = \"never\"");
    assert!(
        broken.contains("--no-such-flag") && broken.contains("\"never\""),
        "the spec changed shape"
    );
    std::fs::write(dev.work.join("configs/trust/broken.toml"), broken).expect("write");
    std::fs::write(
        dev.work.join("broken.json"),
        r#"{"name": "broken", "replicas": 1, "regions": ["local"]}"#,
    )
    .expect("write");
    let signed = Command::new(dev.work.join("target/release/verge-admin"))
        .args(["release", "sign", "--spec", "configs/trust/broken.toml"])
        .args([
            "--key",
            "verge-dev/dev-keys/publisher.pk8",
            "--out",
            "broken-release.json",
        ])
        .current_dir(&dev.work)
        .output()
        .expect("verge-admin runs");
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let pushed = verge
        .run(&[
            "release",
            "push",
            "target/release/hello-edge",
            "broken-release.json",
        ])
        .await
        .ok();
    let broken_release = pushed.stdout.trim().to_owned();
    assert_eq!(broken_release.len(), 64, "{pushed}");
    let failed = verge
        .run(&[
            "service",
            "apply",
            "-f",
            "broken.json",
            "--release",
            &broken_release,
            "--wait",
            "--timeout",
            "3m",
        ])
        .await
        .exits(1);
    assert!(
        ["exited", "failed", "crash_loop"].iter().any(|s| failed
            .stdout
            .contains(&format!("replica 0: {s} on local-1"))),
        "{failed}"
    );
    assert!(
        failed
            .stderr
            .starts_with("error: service broken: 1 of 1 replica(s) failed"),
        "{failed}"
    );

    // The watcher saw the new service; a new one resumed from the sync
    // point replays it (Last-Event-ID) without a relist.
    let seen = read_until(&watched, "broken created", |v| {
        v["action"] == "created" && v["object"]["name"] == "broken"
    });
    assert!(seen.iter().all(|v| v["kind"] == "service"), "{seen:?}");
    drop(watcher);
    let since = sync_id.to_string();
    let mut resumed = Reaped(
        verge
            .command(&[
                "-o", "json", "watch", "--kind", "service", "--since", &since,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("watch"),
    );
    let replayed = read_until(&lines_of(&mut resumed.0), "the replayed creation", |v| {
        v["action"] == "created" && v["object"]["name"] == "broken"
    });
    assert!(
        replayed.iter().all(|v| v["kind"] != "relist"),
        "{replayed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_completions_and_the_man_page_come_from_the_same_definitions() {
    let verge = Verge::new();
    let missing_file = verge.run(&["service", "apply"]).await.exits(2);
    assert!(missing_file.stderr.contains("--file"), "{missing_file}");
    verge.run(&["node", "frobnicate"]).await.exits(2);
    verge.run(&["-o", "yaml", "node", "ls"]).await.exits(2);
    // No context and no VERGE_ADDR: a usage error naming what to do.
    let nowhere = verge.run(&["node", "ls"]).await.exits(2);
    assert!(nowhere.stderr.contains("verge login"), "{nowhere}");
    let unknown = verge.run(&["context", "use", "nope"]).await.exits(2);
    assert!(
        unknown
            .stderr
            .starts_with("error: no context named \"nope\""),
        "{unknown}"
    );
    // A controller that is not there: exit 1, said plainly.
    let port = free_port();
    let down = Verge::new()
        .env("VERGE_ADDR", &format!("http://127.0.0.1:{port}"))
        .env("VERGE_TOKEN", "verge_x.y")
        .run(&["node", "ls"])
        .await
        .exits(1);
    assert!(
        down.stderr.starts_with("error: GET /api/v1/nodes"),
        "{down}"
    );
    assert!(down.stderr.contains("cannot reach"), "{down}");

    let bash = verge.run(&["completion", "bash"]).await.ok();
    assert!(
        bash.stdout.contains("_verge") && bash.stdout.contains("cordon"),
        "{bash}"
    );
    for shell in ["zsh", "fish"] {
        let script = verge.run(&["completion", shell]).await.ok();
        assert!(script.stdout.contains("api-token"), "{script}");
    }
    let man = verge.run(&["man"]).await.ok();
    assert!(
        man.stdout.contains(".TH verge") && man.stdout.contains("Exit codes"),
        "{man}"
    );
}
