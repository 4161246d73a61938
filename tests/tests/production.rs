//! README's "Run it for real" section, followed word for word with the real
//! binaries: every `sh` block of the section runs as written, in a fresh
//! directory, with the binaries just built first on `PATH`. Then a release
//! signed with the publisher key `verge-admin init` made is deployed to the
//! node that enrolled, so the keys, bundle and configurations it wrote are
//! shown to work together, not only to exist.
//!
//! Each block stands for a terminal: it runs in its own `bash -eu`, in the
//! order of the README. A block still running after [`SETTLE`] is a service
//! (the controller, the agent) and is left running; a block that fails
//! before then is run again, until [`BLOCK_DEADLINE`], as a reader would
//! retry a step whose server was still starting.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use verge_tests::api::Api;
use verge_tests::cluster::binary;
use verge_tests::wait::wait_for;

/// How long a block must run to count as a service.
const SETTLE: Duration = Duration::from_secs(5);
/// How long a block may keep failing before the test fails.
const BLOCK_DEADLINE: Duration = Duration::from_secs(90);

/// The `sh` blocks of README's "Run it for real" section.
fn readme_blocks() -> Vec<String> {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md is readable");
    let (_, section) = readme
        .split_once("\n## Run it for real\n")
        .expect("README has a \"Run it for real\" section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some((_, after)) = rest.split_once("```sh\n") {
        let (block, after) = after.split_once("```").expect("a closed code block");
        blocks.push(block.to_owned());
        rest = after;
    }
    assert!(
        blocks.len() >= 2,
        "the section has its setup blocks: {blocks:?}"
    );
    blocks
}

/// A block left running, stopped with its whole process group.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs `block` as README says, in `dir`, until it exits 0 or keeps running.
fn run_block(index: usize, block: &str, dir: &Path, path: &str) -> Option<Running> {
    // `verge login` keeps its contexts under the XDG config directory: the
    // test's own, never the user's.
    let config_home = dir.join("config");
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let log = dir.join(format!("block-{index}-{attempt}.log"));
        let out = std::fs::File::create(&log).expect("block log");
        let mut command = Command::new("bash");
        command
            .args(["-euo", "pipefail", "-c", block])
            .current_dir(dir)
            .env("PATH", path)
            .env("XDG_CONFIG_HOME", &config_home)
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command.spawn().expect("bash runs");
        let settle = Instant::now() + SETTLE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the block") {
                break Some(status);
            }
            if Instant::now() >= settle {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = || std::fs::read_to_string(&log).unwrap_or_default();
        match status {
            None => return Some(Running { child, log }),
            Some(status) if status.success() => return None,
            Some(status) => assert!(
                started.elapsed() < BLOCK_DEADLINE,
                "README block {index} kept failing ({status}):\n{block}\n--- output ---\n{}",
                text()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_production_section_word_for_word() {
    let bin_dir = binary("central-controller")
        .parent()
        .expect("binaries have a directory")
        .to_owned();
    let hello = binary("hello-edge");
    // The operator tools are built on their own (see `cluster::binary`).
    for tool in ["verge-admin", "verge"] {
        assert!(binary(tool).exists(), "{tool} is built");
    }
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();

    let mut services = Vec::new();
    for (i, block) in readme_blocks().iter().enumerate() {
        services.extend(run_block(i + 1, block, dir, &path));
    }
    let logs = || {
        services
            .iter()
            .map(|s| std::fs::read_to_string(&s.log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert_eq!(
        services.len(),
        2,
        "the controller and the agent run:\n{}",
        logs()
    );

    let install = dir.join("verge");
    let ca = std::fs::read_to_string(install.join("data/ca/ca.pem")).expect("the controller's CA");
    let token = std::fs::read_to_string(install.join("data/admin-token")).expect("admin token");
    let api = Api::with_ca(
        "https://localhost:7700".into(),
        token.trim().to_owned(),
        Some(&ca),
    );
    wait_for(
        "the enrolled node online",
        Duration::from_secs(60),
        || async {
            let node = api.node("edge-01").await.map_err(|e| e.to_string())?;
            (node["online"] == true)
                .then_some(())
                .ok_or_else(|| format!("{node}\n{}", logs()))
        },
    )
    .await;

    // A release signed with the publisher key init made, deployed through
    // the controller whose key init put in the bundle.
    let spec = dir.join("release.toml");
    std::fs::write(
        &spec,
        format!(
            "service = \"hello\"\nversion = \"1.0.0\"\n[artifact]\npath = {:?}\nmedia_type = \"executable\"\n[run]\nargs = []\n[[run.ports]]\nname = \"http\"\n",
            hello.display()
        ),
    )
    .expect("release spec");
    let signed = dir.join("release.json");
    let status = Command::new(bin_dir.join("verge-admin"))
        .args(["release", "sign", "--spec"])
        .arg(&spec)
        .arg("--key")
        .arg(install.join("offline/publisher.pk8"))
        .arg("--out")
        .arg(&signed)
        .status()
        .expect("verge-admin runs");
    assert!(status.success(), "verge-admin release sign: {status}");
    api.upload_artifact(std::fs::read(&hello).expect("hello-edge"))
        .await
        .expect("artifact uploaded");
    let release = api
        .post_release(std::fs::read(&signed).expect("signed release"))
        .await
        .expect("release posted")
        .ok()
        .expect("release accepted");
    let digest = release["digest"]
        .as_str()
        .expect("release digest")
        .to_owned();
    api.put_service(
        "hello",
        &json!({"release": digest, "replicas": 1, "regions": ["local"]}),
    )
    .await
    .expect("service put")
    .ok()
    .expect("service accepted");
    wait_for(
        "the replica running on edge-01",
        Duration::from_secs(90),
        || async {
            let service = api.service("hello").await.map_err(|e| e.to_string())?;
            let replica = &service["replicas"][0];
            (replica["node"] == "edge-01" && replica["state"] == "running")
                .then_some(())
                .ok_or_else(|| format!("{service}\n{}", logs()))
        },
    )
    .await;
    // Stopped before the agent is: it leaves workloads running on SIGTERM.
    api.delete_service("hello").await.expect("service deleted");
    wait_for("the workload stopped", Duration::from_secs(60), || async {
        let node = api.node("edge-01").await.map_err(|e| e.to_string())?;
        let workloads = node["workloads"].as_array().map_or(0, Vec::len);
        (workloads == 0)
            .then_some(())
            .ok_or_else(|| node.to_string())
    })
    .await;
}
