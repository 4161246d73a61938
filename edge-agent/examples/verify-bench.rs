//! How long an agent spends verifying a desired state: the delivery's
//! signatures and checks (one desired state naming 10 releases, each checked
//! against the trust bundle) and the SHA-256 check of their 100 MB of
//! artifacts, as the cache does it for every entry at start and as a
//! download does it while streaming.
//!
//! `cargo run --release -p edge-agent --example verify-bench`
//! (figures in docs/benchmarks.md, "Verifying a desired state").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edge_agent::artifacts::ArtifactCache;
use edge_agent::intake::{self, Context, Decision};
use verge_shared::messages::{
    Assignment, Delivery, DesiredState, RunSpec, SCHEMA_VERSION, payload_type,
};
use verge_shared::trust::{
    MediaType, Publisher, Release, ReleaseArtifact, RootRole, TrustBundle,
    payload_type as trust_type,
};
use verge_shared::{AgentId, Generation, ServiceName, Sha256Digest, SigningKey, Timestamp};

const RELEASES: usize = 10;
const ARTIFACT_BYTES: usize = 10 * 1024 * 1024;
const CHECK_RUNS: usize = 200;
const HASH_RUNS: usize = 5;

fn key() -> SigningKey {
    SigningKey::generate().expect("key").0
}

/// Deterministic, incompressible-looking bytes (xorshift).
fn artifact(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(ARTIFACT_BYTES);
    while out.len() < ARTIFACT_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let (root, controller, publisher) = (key(), key(), key());
    let now = Timestamp::now();
    let bundle = TrustBundle {
        schema_version: SCHEMA_VERSION,
        version: 1,
        issued_at: now,
        expires_at: now.saturating_add(Duration::from_secs(3600)),
        root: RootRole {
            keys: vec![root.public_key()],
            threshold: 1,
        },
        controllers: vec![controller.public_key()],
        publishers: vec![Publisher {
            name: "bench".into(),
            key: publisher.public_key(),
            services: vec!["svc-*".into()],
        }],
        reset_generations: false,
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("artifacts").join("sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let mut releases = Vec::new();
    let mut assignments = Vec::new();
    for i in 0..RELEASES {
        let bytes = artifact(i as u64 + 1);
        let sha256 = Sha256Digest::of(&bytes);
        std::fs::write(blobs.join(sha256.to_string()), &bytes).expect("write artifact");
        let release = Release {
            schema_version: SCHEMA_VERSION,
            service: ServiceName::new(format!("svc-{i}")).expect("name"),
            version: "1.0.0".parse().expect("version"),
            issued_at: now,
            artifacts: vec![ReleaseArtifact {
                sha256,
                size: bytes.len() as u64,
                media_type: MediaType::Executable,
            }],
            run: RunSpec {
                args: vec!["--port".into(), "8080".into()],
                ..RunSpec::default()
            },
            resources: Default::default(),
        };
        let envelope = publisher.sign(
            trust_type::RELEASE,
            &serde_json::to_vec(&release).expect("json"),
        );
        assignments.push(Assignment {
            service: release.service.clone(),
            replica: 0,
            release: envelope.signed_digest().expect("digest"),
            rollback: false,
            config: BTreeMap::new(),
        });
        releases.push(envelope);
    }
    let me = AgentId::new("bench").expect("id");
    let desired = DesiredState {
        schema_version: SCHEMA_VERSION,
        agent: me.clone(),
        generation: Generation::new(1),
        issued_at: now,
        expires_at: now.saturating_add(Duration::from_secs(3600)),
        workloads: assignments,
    };
    let bytes = serde_json::to_vec(&Delivery {
        schema_version: SCHEMA_VERSION,
        trust: Some(root.sign(
            trust_type::TRUST_BUNDLE,
            &serde_json::to_vec(&bundle).expect("json"),
        )),
        desired: controller.sign(
            payload_type::DESIRED_STATE,
            &serde_json::to_vec(&desired).expect("json"),
        ),
        releases,
    })
    .expect("json");

    // 1. The delivery: parse, 11 signatures, every rule of the intake.
    let mut checks = Vec::with_capacity(CHECK_RUNS);
    for _ in 0..CHECK_RUNS {
        let started = Instant::now();
        let delivery = intake::parse_delivery(&bytes).expect("parses");
        let decision = intake::check(
            &delivery,
            &Context {
                trust: &bundle,
                me: &me,
                last: None,
                running: &[],
                now: Timestamp::now(),
            },
        );
        checks.push(started.elapsed());
        assert!(matches!(decision, Ok(Decision::Accept(ref s)) if s.workloads.len() == RELEASES));
    }

    // 2. The artifacts: the cache re-hashes every entry when it opens; the
    //    same SHA-256 work a download does while streaming.
    let mut hashes = Vec::with_capacity(HASH_RUNS);
    for _ in 0..HASH_RUNS {
        let started = Instant::now();
        let cache =
            ArtifactCache::open(&dir.path().join("artifacts"), "http://127.0.0.1:9", 1 << 40)
                .expect("cache opens");
        hashes.push(started.elapsed());
        drop(cache);
        assert_eq!(
            std::fs::read_dir(&blobs).expect("ls").count(),
            RELEASES,
            "every artifact verified and kept"
        );
    }

    let total_mb = (RELEASES * ARTIFACT_BYTES) as f64 / 1e6;
    let check = median(checks);
    let hash = median(hashes);
    println!(
        "delivery: {} bytes, {RELEASES} releases, 11 signatures",
        bytes.len()
    );
    println!(
        "signatures and rules: median {:.2} ms over {CHECK_RUNS} runs",
        check.as_secs_f64() * 1e3
    );
    println!(
        "artifacts: {total_mb:.0} MB re-hashed in median {:.0} ms over {HASH_RUNS} runs ({:.0} MB/s, page cache warm, one core)",
        hash.as_secs_f64() * 1e3,
        total_mb / hash.as_secs_f64()
    );
    println!("total: {:.0} ms", (check + hash).as_secs_f64() * 1e3);
}
