//! Archive artifacts: a tar.gz holding the example workload under `bin/`
//! is deployed with an `entrypoint`, extracted by the real agent and runs;
//! an entrypoint that is not a plain relative path is refused by the API,
//! and an archive with a link out of its root is refused by the agent with
//! the reason in the replica's status, without a restart loop.

use std::time::Duration;

use serde_json::Value;
use verge_tests::workload::{hello_artifact, hello_spec, wait_running};
use verge_tests::{Cluster, wait_for};

const DEADLINE: Duration = Duration::from_secs(90);

/// A tar.gz of `files` (path, mode, content) and `links` (path, target).
fn tar_gz(files: &[(&str, u32, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, mode, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(*mode);
        header.set_cksum();
        builder
            .append_data(&mut header, path, *body)
            .expect("append file");
    }
    for (path, target) in links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, path, target)
            .expect("append link");
    }
    builder
        .into_inner()
        .expect("finish tar")
        .finish()
        .expect("finish gzip")
}

fn with_entrypoint(mut spec: Value, entrypoint: &str) -> Value {
    spec["entrypoint"] = Value::from(entrypoint);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_gz_artifact_runs_its_entrypoint() {
    let mut cluster = Cluster::with_agents(&[("edge-a", "region-a")]).await;
    let api = cluster.api.clone();

    let hello = hello_artifact();
    let archive = tar_gz(
        &[
            ("bin/hello-edge", 0o755, &hello),
            ("README", 0o644, b"example workload\n"),
        ],
        &[],
    );
    let artifact = api.upload_artifact(archive).await.expect("upload");
    let spec = with_entrypoint(
        hello_spec(&artifact, "from-archive", 1, &["region-a"]),
        "bin/hello-edge",
    );
    api.put_service("packed", &spec)
        .await
        .expect("PUT")
        .ok()
        .expect("accepted");
    let running = wait_running(&api, "packed", "from-archive").await;
    assert_eq!(running.len(), 1, "{running:?}");
    // The process runs from the extraction, not from the archive file.
    let exe = std::fs::read_link(format!("/proc/{}/exe", running[0].pid)).expect("exe");
    let data_dir = cluster.agent("edge-a").data_dir.clone();
    assert!(
        exe.starts_with(data_dir.join("artifacts/unpacked")),
        "runs {}",
        exe.display()
    );

    // The controller refuses a release whose entrypoint could leave the
    // archive (the harness uploads the release before the service).
    let refused = api
        .put_service("escape", &with_entrypoint(spec.clone(), "../hello-edge"))
        .await
        .expect("PUT");
    assert_eq!(refused.status.as_u16(), 400, "{:?}", refused.body);
    assert_eq!(
        refused.body["error"]["field"], "run.entrypoint",
        "{:?}",
        refused.body
    );

    // The agent refuses an archive whose entrypoint links out of its root
    // and says why. The service view shows workload status only once a
    // generation is applied, which this one never is: read the node's
    // reported workloads instead.
    let evil = tar_gz(&[], &[("bin/app", "/bin/sh")]);
    let evil = api.upload_artifact(evil).await.expect("upload");
    let spec = with_entrypoint(hello_spec(&evil, "evil", 1, &["region-a"]), "bin/app");
    api.put_service("evil", &spec)
        .await
        .expect("PUT")
        .ok()
        .expect("accepted");
    let failed = wait_for("the refused archive reported", DEADLINE, || async {
        let node = api.node("edge-a").await.map_err(|e| e.to_string())?;
        let evil = node["workloads"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["service"] == "evil").cloned());
        match evil {
            Some(w)
                if w["state"] == "failed"
                    && w["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("leaves the extraction root")) =>
            {
                Ok(w)
            }
            _ => Err(node.to_string()),
        }
    })
    .await;
    assert!(failed["pid"].is_null(), "nothing runs: {failed}");
    // The good service kept running meanwhile; once the bad one is
    // deleted, the next generation applies and it is the same process.
    api.delete_service("evil")
        .await
        .expect("DELETE")
        .ok()
        .expect("deleted");
    let after = wait_running(&api, "packed", "from-archive").await;
    assert_eq!(after[0].pid, running[0].pid, "not restarted");
}
