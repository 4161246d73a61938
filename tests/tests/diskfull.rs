//! Disk full: an agent whose data directory is a small tmpfs that a filler
//! file has filled reports why a new workload cannot start, keeps the
//! workload that runs, and starts the new one once the filler is gone;
//! its state then still opens after a restart.
//!
//! Needs root (to mount a tmpfs); skips with a message where that fails.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use verge_tests::wait::wait_for;
use verge_tests::workload::{ask, hello_artifact, hello_spec, wait_running};
use verge_tests::{Cluster, ClusterOptions};

/// The size of the agent's file system.
const TMPFS_MIB: u64 = 64;
/// What is appended to the example workload to make an artifact that cannot
/// fit (an ELF file runs with trailing bytes).
const PADDING: usize = 24 * 1024 * 1024;
const AGENT: &str = "disk-1";

/// A tmpfs mounted in a temp directory, unmounted on drop (also when a
/// test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("verge-diskfull-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file open: detach it now, freed when closed.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Bytes free for writing on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    edge_agent::disk::free_bytes(path).expect("statvfs")
}

/// Writes a file of zeros named `name` that leaves `leave` bytes free under
/// `dir` (tmpfs allocates what is written, so it is not sparse); with
/// `leave` 0 it writes until the file system refuses.
fn fill(dir: &Path, name: &str, leave: u64) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut left = free_bytes(dir).saturating_sub(leave);
    // Bounded by the file system's size, plus a few rounds to reach ENOSPC.
    for _ in 0..TMPFS_MIB * 16 + 16 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        if leave > 0 && n == 0 {
            break;
        }
        match file.write(&chunk[..n.max(1)]) {
            Ok(written) => left = left.saturating_sub(written as u64),
            Err(e) if leave == 0 && e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("write the filler: {e}"),
        }
    }
    path
}

/// The node as the API shows it.
async fn node(cluster: &Cluster) -> Result<Value, String> {
    cluster.api.node(AGENT).await.map_err(|e| e.to_string())
}

/// The workload entry for `service` in the node's latest status.
fn workload<'a>(node: &'a Value, service: &str) -> Option<&'a Value> {
    node["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["service"] == service)
}

/// A small tmpfs, a cluster, and the agent with its data on the tmpfs
/// (and its pid); `None`, with a note, where no tmpfs can be mounted.
async fn agent_on_tmpfs() -> Option<(Tmpfs, Cluster, u32)> {
    let tmpfs = match Tmpfs::mount(TMPFS_MIB) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED: this test needs a tmpfs for the agent's data: {e}");
            return None;
        }
    };
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster");
    let broker = cluster.mqtt_addr;
    cluster
        .add_agent_at(AGENT, "region-a", broker, "", tmpfs.path())
        .await
        .expect("agent on the tmpfs");
    let agent_pid = cluster.agent(AGENT).pid().expect("agent runs");
    Some((tmpfs, cluster, agent_pid))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_keeps_what_runs_and_recovers() {
    // The cluster comes second, so it is dropped (agent and workloads
    // stopped) before the tmpfs is unmounted.
    let Some((tmpfs, mut cluster, agent_pid)) = agent_on_tmpfs().await else {
        return;
    };

    let hello = hello_artifact();
    let mut padded = hello.clone();
    padded.resize(hello.len() + PADDING, 0);
    let small = cluster.api.upload_artifact(hello).await.expect("upload");
    let big = cluster.api.upload_artifact(padded).await.expect("upload");

    cluster
        .api
        .put_service("keep", &hello_spec(&small, "keep", 1, &["region-a"]))
        .await
        .expect("put")
        .ok()
        .expect("keep accepted");
    let keep = wait_running(&cluster.api, "keep", "keep").await;
    let keep_pid = keep[0].pid;
    let healthy = node(&cluster).await.expect("node");
    assert!(
        healthy["storage_problem"].is_null(),
        "no storage problem before the disk fills: {healthy}"
    );

    // Leave room for the agent's own writes, not for the big artifact.
    let filler = fill(
        tmpfs.path(),
        "filler",
        edge_agent::disk::RESERVE_BYTES + 2 * 1024 * 1024,
    );
    assert!(
        free_bytes(tmpfs.path()) < (PADDING as u64),
        "the filler must leave less room than the big artifact needs"
    );
    cluster
        .api
        .put_service("big", &hello_spec(&big, "big", 1, &["region-a"]))
        .await
        .expect("put")
        .ok()
        .expect("big accepted");

    let reported = wait_for(
        "the agent to report the full disk",
        Duration::from_secs(60),
        || async {
            let node = node(&cluster).await?;
            let problem = &node["storage_problem"];
            let failed = workload(&node, "big").is_some_and(|w| {
                w["state"] == "failed"
                    && w["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("the disk is full"))
            });
            if problem["reason"] == "disk_full" && failed {
                Ok(node)
            } else {
                Err(node.to_string())
            }
        },
    )
    .await;
    let detail = reported["storage_problem"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains("kept in reserve"),
        "the reason says what did not fit: {detail}"
    );
    // What ran before runs on, untouched.
    let answer = ask(keep[0].port).await.expect("keep answers");
    assert_eq!(answer["pid"], keep_pid, "keep was not restarted");
    assert_eq!(
        workload(&reported, "keep").map(|w| w["pid"].clone()),
        Some(Value::from(keep_pid))
    );
    assert!(
        !tmpfs.path().join("artifacts/sha256").join(&big).exists(),
        "nothing partial is in the cache"
    );

    // Space returns: the new workload starts on the agent's own retries.
    std::fs::remove_file(&filler).expect("remove the filler");
    let both = wait_running(&cluster.api, "big", "big").await;
    wait_for(
        "the storage problem to clear",
        Duration::from_secs(60),
        || async {
            let node = node(&cluster).await?;
            if node["storage_problem"].is_null() {
                Ok(())
            } else {
                Err(node.to_string())
            }
        },
    )
    .await;
    let answer = ask(keep[0].port).await.expect("keep answers");
    assert_eq!(answer["pid"], keep_pid, "keep ran through it all");
    assert_eq!(
        cluster.agent(AGENT).pid(),
        Some(agent_pid),
        "the agent itself never restarted"
    );

    // The state written around the full disk opens again, and a restarted
    // agent adopts both workloads instead of starting them again.
    cluster.agent(AGENT).restart().expect("restart");
    cluster.wait_node_online(AGENT).await;
    let keep_after = wait_running(&cluster.api, "keep", "keep").await;
    let big_after = wait_running(&cluster.api, "big", "big").await;
    assert_eq!(keep_after[0].pid, keep_pid);
    assert_eq!(big_after[0].pid, both[0].pid);
}

/// Waits until the node shows `service` running with the pid the workload
/// itself answers with; returns that pid.
async fn wait_answering(cluster: &Cluster, service: &str) -> u64 {
    wait_running(&cluster.api, service, service).await[0].pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_without_a_free_byte_breaks_nothing_and_the_next_state_applies_later() {
    // The cluster comes second, so it is dropped (agent and workloads
    // stopped) before the tmpfs is unmounted.
    let Some((tmpfs, mut cluster, agent_pid)) = agent_on_tmpfs().await else {
        return;
    };
    let small = cluster
        .api
        .upload_artifact(hello_artifact())
        .await
        .expect("upload");
    cluster
        .api
        .put_service("keep", &hello_spec(&small, "keep", 1, &["region-a"]))
        .await
        .expect("put")
        .ok()
        .expect("keep accepted");
    let keep = wait_running(&cluster.api, "keep", "keep").await;
    let keep_pid = keep[0].pid;

    // Not one byte left: the next desired state needs no download (its
    // artifact is cached), only writes of the agent's own state.
    let filler = fill(tmpfs.path(), "filler", 0);
    assert_eq!(free_bytes(tmpfs.path()), 0, "the file system is full");
    cluster
        .api
        .put_service("second", &hello_spec(&small, "second", 1, &["region-a"]))
        .await
        .expect("put")
        .ok()
        .expect("second accepted");
    // The agent cannot say much now (its outbox cannot grow either); it
    // must not fall over, and what runs must keep running.
    let desired = wait_for(
        "the controller to issue the new desired state",
        Duration::from_secs(30),
        || async {
            let node = node(&cluster).await?;
            node["desired_generation"]
                .as_u64()
                .filter(|g| *g >= 2)
                .ok_or(node.to_string())
        },
    )
    .await;
    // Give the agent a few of its own retry rounds on the full disk.
    wait_for(
        "the agent to fail a write on the full disk",
        Duration::from_secs(30),
        || async {
            let logs = cluster.logs();
            if logs.contains("No space left on device") || logs.contains("the disk is full") {
                Ok(())
            } else {
                Err("no disk-full error in the agent's log yet".to_owned())
            }
        },
    )
    .await;
    assert_eq!(cluster.agent(AGENT).pid(), Some(agent_pid));
    assert!(
        verge_tests::cluster::process_alive(agent_pid),
        "the agent survives a full disk"
    );
    // The API shows keep pending (its node has not applied the new
    // generation); keep itself says it still runs.
    let answer = ask(keep[0].port).await.expect("keep answers");
    assert_eq!(answer["pid"], keep_pid);

    // Space returns. sled keeps failing with the error it hit first, so
    // the agent stops itself (leaving its workloads running) once it sees
    // room but a store that still refuses; a service manager starts it
    // again, as this test does, and the new process applies the state.
    std::fs::remove_file(&filler).expect("remove the filler");
    wait_for(
        "the agent to stop on its stuck store",
        Duration::from_secs(60),
        || async {
            if verge_tests::cluster::process_alive(agent_pid) {
                Err(format!(
                    "the agent still runs; {} bytes free",
                    free_bytes(tmpfs.path())
                ))
            } else {
                Ok(())
            }
        },
    )
    .await;
    let answer = ask(keep[0].port).await.expect("keep answers");
    assert_eq!(answer["pid"], keep_pid, "the workload outlives the agent");
    cluster.agent(AGENT).restart().expect("restart");
    cluster.wait_node_online(AGENT).await;
    wait_answering(&cluster, "second").await;
    let node_after = wait_for(
        "the node to report the new generation",
        Duration::from_secs(60),
        || async {
            let node = node(&cluster).await?;
            if node["applied_generation"].as_u64() >= Some(desired)
                && node["storage_problem"].is_null()
            {
                Ok(node)
            } else {
                Err(node.to_string())
            }
        },
    )
    .await;
    assert_eq!(
        workload(&node_after, "keep").map(|w| w["pid"].clone()),
        Some(Value::from(keep_pid)),
        "keep was adopted, not started again"
    );
}
