//! Crash consistency: the agent's durable writes (desired-state acceptance,
//! outbox pushes and acknowledgements, artifact downloads) are killed with
//! SIGKILL at seeded random moments, 200 times in a row on one data dir.
//! After every kill the state opens, agrees with what the writer reported
//! as done, and the artifact cache holds only complete, verified files.
//!
//! The writes run in `crash-writer`, a small binary over the agent's own
//! `SledStore`, `Outbox` and `ArtifactCache`: the same code and the same
//! files as the agent, without the process supervision that would only slow
//! the loop down.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_agent::artifacts::ArtifactCache;
use edge_agent::outbox::Outbox;
use edge_agent::state::{SledStore, StateStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use verge_shared::Sha256Digest;

const KILLS: u32 = 200;
const SEED: u64 = 0x5eed_c0ff_ee00_0004;

/// xorshift64*: a seeded sequence, so a failure can be replayed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Serves `blob` slowly (so kills land mid-download) with Range support.
async fn serve(blob: Arc<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let blob = blob.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let n = socket.read(&mut request).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&request[..n]).to_lowercase();
                let from = text
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok())
                    .filter(|f| *f < blob.len());
                let (status, body) = match from {
                    Some(f) => ("206 Partial Content", &blob[f..]),
                    None => ("200 OK", &blob[..]),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for chunk in body.chunks(32 * 1024) {
                    if socket.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// What the writer reported as done before it was killed.
#[derive(Debug, Default)]
struct Reported {
    saved: Option<u64>,
    pushed: Option<u64>,
    cached: u32,
}

fn check_after_kill(dir: &Path, reported: &Reported, round: u32) {
    let store = SledStore::open(&dir.join("state"))
        .unwrap_or_else(|e| panic!("kill {round}: the state does not open: {e}"));
    let loaded = store
        .load()
        .unwrap_or_else(|e| panic!("kill {round}: the state does not load: {e}"))
        .map(|a| {
            assert!(
                String::from_utf8_lossy(&a.envelope)
                    .starts_with(&format!("envelope {} ", a.desired.generation)),
                "kill {round}: envelope and document disagree"
            );
            a.desired.generation.get()
        });
    if let Some(saved) = reported.saved {
        // The acknowledged save is there; at most the one in progress is newer.
        let got = loaded.unwrap_or(0);
        assert!(
            got == saved || got == saved + 1,
            "kill {round}: saved {saved} was acknowledged, the store has {got}"
        );
    }
    let outbox = Outbox::open(store.db(), dir.join("state"), u64::MAX)
        .unwrap_or_else(|e| panic!("kill {round}: the outbox does not open: {e}"));
    if let Some(pushed) = reported.pushed {
        let last = outbox.last_seq();
        assert!(
            last == pushed || last == pushed + 1,
            "kill {round}: push {pushed} was acknowledged, the outbox is at {last}"
        );
    }
    let entries = outbox
        .entries_from(0, usize::MAX)
        .unwrap_or_else(|e| panic!("kill {round}: outbox entries unreadable: {e}"));
    assert_eq!(entries.len() as u64, outbox.metrics().queued);
    drop(outbox);
    drop(store);
    let cache = ArtifactCache::open(&dir.join("artifacts"), "http://127.0.0.1:9", 1 << 30)
        .unwrap_or_else(|e| panic!("kill {round}: the cache does not open: {e}"));
    assert_eq!(
        cache.metrics().corrupt_removed,
        0,
        "kill {round}: a partial or corrupt file was under sha256/"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_outbox_and_cache_survive_200_random_kills() {
    let blob: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let digest = Sha256Digest::of(&blob);
    let size = blob.len();
    let url = serve(Arc::new(blob)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = env!("CARGO_BIN_EXE_crash-writer");
    let mut rng = SEED;
    let started = Instant::now();
    let mut totals = Reported::default();
    for round in 1..=KILLS {
        let mut child = Command::new(writer)
            .arg(dir.path())
            .arg(&url)
            .arg(digest.to_string())
            .arg(size.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn crash-writer");
        let stdout = child.stdout.take().expect("stdout");
        let delay = Duration::from_millis(10 + next(&mut rng) % 400);
        // Read the acknowledgements on a thread while the writer runs.
        let reader = std::thread::spawn(move || {
            let mut reported = Reported::default();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match line.split_once(' ') {
                    Some(("saved", n)) => reported.saved = n.parse().ok(),
                    Some(("pushed", n)) => reported.pushed = n.parse().ok(),
                    _ if line == "cached" => reported.cached += 1,
                    _ => {}
                }
            }
            reported
        });
        // The kill moment itself (some land while the writer opens its files).
        std::thread::sleep(delay);
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kill {round}: the writer exited on its own: {status}");
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let reported = reader.join().expect("reader");
        check_after_kill(dir.path(), &reported, round);
        totals.cached += reported.cached;
        totals.saved = reported.saved.or(totals.saved);
        totals.pushed = reported.pushed.or(totals.pushed);
    }
    eprintln!(
        "{KILLS} kills in {:?}: last generation {:?}, last outbox seq {:?}, {} downloads completed",
        started.elapsed(),
        totals.saved,
        totals.pushed,
        totals.cached
    );
    assert!(totals.cached > 0, "some downloads completed between kills");
}
