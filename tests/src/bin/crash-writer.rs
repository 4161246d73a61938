//! Drives the agent's durable writes in a loop until it is killed, for the
//! crash-consistency test (`tests/tests/crash.rs`): desired-state
//! acceptance, outbox pushes and acknowledgements, and artifact downloads,
//! through the agent's own `SledStore`, `Outbox` and `ArtifactCache`.
//!
//! After each write returns it prints one line (`saved N`, `pushed N`,
//! `acked N`, `cached`), which is what the test treats as acknowledged.
//!
//! Usage: `crash-writer <data-dir> <controller-url> <sha256> <size>`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use edge_agent::artifacts::ArtifactCache;
use edge_agent::intake::ResolvedState;
use edge_agent::outbox::Outbox;
use edge_agent::state::{Accepted, SledStore, StateStore};
use verge_shared::messages::ArtifactRef;
use verge_shared::{Generation, Timestamp};

/// The outbox quota: small, so that drop-oldest runs under crashes too.
const OUTBOX_QUOTA: u64 = 64 * 1024;

fn accepted(generation: u64) -> Accepted {
    let now = Timestamp::now();
    Accepted {
        // A few KiB like a real envelope, tagged with its generation.
        envelope: format!("envelope {generation} {}", "x".repeat(4000)).into_bytes(),
        desired: ResolvedState {
            generation: Generation::new(generation),
            expires_at: now.saturating_add(std::time::Duration::from_secs(3600)),
            workloads: Vec::new(),
        },
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, url, digest, size] = args.as_slice() else {
        bail!("usage: crash-writer <data-dir> <controller-url> <sha256> <size>");
    };
    let dir = PathBuf::from(dir);
    let artifact = ArtifactRef {
        sha256: digest.parse().map_err(anyhow::Error::msg)?,
        size: size.parse().context("size")?,
    };
    let store = SledStore::open(&dir.join("state"))?;
    let outbox = Outbox::open(store.db(), dir.join("state"), OUTBOX_QUOTA)?;
    let cache = ArtifactCache::open(&dir.join("artifacts"), url, 1 << 30)?;
    let mut generation = store.load()?.map_or(0, |a| a.desired.generation.get());
    println!("ready");
    // Bounded: the test kills it long before this ends.
    for round in 0..1_000_000u64 {
        generation += 1;
        store.save(&accepted(generation))?;
        println!("saved {generation}");
        let seq = outbox.push_numbered("crash/telemetry", |seq| {
            format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "y".repeat(1000)).into_bytes()
        })?;
        println!("pushed {seq}");
        if round % 2 == 1
            && let Some(oldest) = outbox.entries_from(outbox.first_key(), 1)?.first()
        {
            outbox.ack(oldest.key)?;
            println!("acked {}", oldest.key);
        }
        if round % 4 == 0 {
            let path = cache.ensure(&artifact).await?;
            println!("cached");
            // Gone again, so the next round downloads (and may be cut) again.
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}
