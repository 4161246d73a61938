//! The operator's offline flows end to end, through the built `verge-admin`
//! binary and the shipped example specs (`configs/trust/*.toml`): keys, a
//! 2-of-3 root ceremony in two steps, a release of a real file, verification
//! of good and tampered documents, and a root rotation.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use verge_shared::messages::{Assignment, Delivery, DesiredState, SCHEMA_VERSION, payload_type};
use verge_shared::{
    AgentId, Envelope, Generation, ServiceName, Sha256Digest, SigningKey, Timestamp,
};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary in `dir` and returns its exit code and output.
fn admin(dir: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_verge-admin"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run verge-admin");
    Run {
        code: status.code().expect("exited, not signalled"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

#[track_caller]
fn expect(run: &Run, code: i32, needle: &str) {
    let all = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.code, code,
        "exit code; stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(all.contains(needle), "expected {needle:?} in:\n{all}");
}

/// A temporary copy of the repository layout the example specs expect:
/// `configs/trust/` with the specs and `target/release/hello-edge`.
struct Workspace {
    _tmp: tempfile::TempDir,
    trust: PathBuf,
    artifact: PathBuf,
}

fn workspace() -> Workspace {
    let tmp = tempfile::tempdir().expect("tempdir");
    let trust = tmp.path().join("configs/trust");
    std::fs::create_dir_all(&trust).expect("mkdir");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/trust");
    for spec in ["bundle.toml", "release.toml"] {
        std::fs::copy(shipped.join(spec), trust.join(spec)).expect("copy spec");
    }
    // A real executable as the artifact: this very tool.
    let release_dir = tmp.path().join("target/release");
    std::fs::create_dir_all(&release_dir).expect("mkdir");
    let artifact = release_dir.join("hello-edge");
    std::fs::copy(env!("CARGO_BIN_EXE_verge-admin"), &artifact).expect("copy artifact");
    Workspace {
        _tmp: tmp,
        trust,
        artifact,
    }
}

fn create_keys(dir: &Path, names: &[&str]) {
    for name in names {
        let out = format!("{name}.pk8");
        let run = admin(dir, &["key", "create", "--out", &out]);
        expect(&run, 0, "key id: ");
        let mode = std::fs::metadata(dir.join(&out))
            .expect("private key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{out}");
        let show = admin(dir, &["key", "show", &format!("{name}.pub")]);
        let id_line = run.stdout.lines().find(|l| l.starts_with("key id: "));
        expect(&show, 0, id_line.expect("key id line"));
    }
}

/// Replaces `from` by `to` in a file, insisting it was there: a changed
/// example spec must fail here, not make the test vacuous.
fn edit(path: &Path, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{from:?} not in {}", path.display());
    text.replacen(from, to, 1)
}

/// The payload of an envelope file changed by `change`, signatures kept.
fn tamper(path: &Path, change: impl Fn(String) -> String) {
    let mut env: Envelope =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("envelope");
    let payload = String::from_utf8(B64.decode(&env.payload).expect("b64")).expect("utf8");
    let changed = change(payload.clone());
    assert_ne!(changed, payload, "tampering changed nothing");
    env.payload = B64.encode(changed);
    std::fs::write(path, serde_json::to_vec(&env).expect("json")).expect("write");
}

#[test]
fn full_ceremony_with_the_shipped_specs() {
    let ws = workspace();
    let dir = ws.trust.as_path();
    create_keys(dir, &["root1", "root2", "root3", "controller", "publisher"]);
    expect(
        &admin(dir, &["key", "create", "--out", "root1.pk8"]),
        2,
        "already exists",
    );

    // 2-of-3, in two steps: one holder signs, another adds theirs.
    let signed = admin(
        dir,
        &[
            "trust",
            "sign",
            "--spec",
            "bundle.toml",
            "--key",
            "root1.pk8",
            "--out",
            "bundle.json",
        ],
    );
    expect(&signed, 0, "1 of 2 required root signatures: 1 more needed");
    expect(
        &admin(dir, &["verify", "bundle.json"]),
        1,
        "threshold not met: 1 of 2 required signatures",
    );
    let added = admin(
        dir,
        &[
            "trust",
            "add-signature",
            "--in",
            "bundle.json",
            "--key",
            "root3.pk8",
            "--out",
            "bundle.json",
        ],
    );
    expect(&added, 0, "2 of 2 required root signatures: complete");
    expect(
        &admin(dir, &["verify", "bundle.json"]),
        0,
        "VERIFIED: the trust bundle verifies",
    );
    // The controller's key is not a root key and may not sign as one.
    expect(
        &admin(
            dir,
            &[
                "trust",
                "add-signature",
                "--in",
                "bundle.json",
                "--key",
                "controller.pk8",
                "--out",
                "x.json",
            ],
        ),
        2,
        "is a controller key of this bundle",
    );

    // A release of a real file; the digest printed is the envelope's.
    let release = admin(
        dir,
        &[
            "release",
            "sign",
            "--spec",
            "release.toml",
            "--key",
            "publisher.pk8",
            "--out",
            "release.json",
        ],
    );
    expect(&release, 0, "release digest: ");
    let env: Envelope =
        serde_json::from_slice(&std::fs::read(dir.join("release.json")).expect("read"))
            .expect("env");
    let digest = env.signed_digest().expect("digest").to_string();
    assert!(
        release
            .stdout
            .contains(&format!("release digest: {digest}")),
        "{}",
        release.stdout
    );
    let artifact = std::fs::read(&ws.artifact).expect("artifact");
    let payload: serde_json::Value = env.peek_unverified().expect("payload");
    assert_eq!(
        payload["artifacts"][0]["sha256"],
        Sha256Digest::of(&artifact).to_string()
    );
    assert_eq!(payload["artifacts"][0]["size"], artifact.len());
    assert_eq!(payload["run"]["args"][0], "--greeting");
    expect(
        &admin(dir, &["verify", "release.json", "--trust", "bundle.json"]),
        0,
        "Signed by publisher \"web team\"",
    );
    // A release needs a trust bundle to be checked against: a usage error.
    expect(&admin(dir, &["verify", "release.json"]), 2, "give --trust");

    // Tampered copies fail, and say why.
    std::fs::copy(dir.join("release.json"), dir.join("tampered.json")).expect("copy");
    tamper(&dir.join("tampered.json"), |p| {
        p.replace("\"1.0.0\"", "\"9.0.0\"")
    });
    expect(
        &admin(dir, &["verify", "tampered.json", "--trust", "bundle.json"]),
        1,
        "does not verify: the document was changed after signing",
    );
    std::fs::copy(dir.join("bundle.json"), dir.join("tampered-bundle.json")).expect("copy");
    tamper(&dir.join("tampered-bundle.json"), |p| {
        p.replace("web-*", "*")
    });
    expect(
        &admin(dir, &["verify", "tampered-bundle.json"]),
        1,
        "threshold not met: 0 of 2",
    );

    // A release over the envelope limit is refused before it is written.
    let long = format!(
        "args = [{}]",
        vec![format!("\"{}\"", "x".repeat(4000)); 20].join(", ")
    );
    let big = edit(
        &dir.join("release.toml"),
        "args = [\"--greeting\", \"hello from a signed release\"]",
        &long,
    );
    std::fs::write(dir.join("big.toml"), big).expect("write");
    expect(
        &admin(
            dir,
            &[
                "release",
                "sign",
                "--spec",
                "big.toml",
                "--key",
                "publisher.pk8",
                "--out",
                "big.json",
            ],
        ),
        2,
        "over the limit of 65536",
    );
    assert!(!dir.join("big.json").exists());

    // A publisher outside its services, and a key that is no publisher.
    let db = edit(
        &dir.join("release.toml"),
        "service = \"hello\"",
        "service = \"db\"",
    );
    std::fs::write(dir.join("db.toml"), db).expect("write");
    expect(
        &admin(
            dir,
            &[
                "release",
                "sign",
                "--spec",
                "db.toml",
                "--key",
                "publisher.pk8",
                "--out",
                "db.json",
            ],
        ),
        0,
        "release digest",
    );
    expect(
        &admin(dir, &["verify", "db.json", "--trust", "bundle.json"]),
        1,
        "publisher \"web team\" is not allowed service db (it may publish: hello, web-*)",
    );
    create_keys(dir, &["stranger"]);
    expect(
        &admin(
            dir,
            &[
                "release",
                "sign",
                "--spec",
                "release.toml",
                "--key",
                "stranger.pk8",
                "--out",
                "s.json",
            ],
        ),
        0,
        "release digest",
    );
    expect(
        &admin(dir, &["verify", "s.json", "--trust", "bundle.json"]),
        1,
        "unknown publisher: signed by key",
    );

    delivery_checks(dir, &digest);
    rotation(dir);

    // Usage and I/O problems are exit code 2, not a verdict.
    expect(
        &admin(dir, &["verify", "missing.json"]),
        2,
        "missing.json: cannot open",
    );
    expect(&admin(dir, &["verify"]), 2, "Usage");
}

/// A controller-signed delivery verifies with its releases, and names a
/// missing one.
fn delivery_checks(dir: &Path, release_digest: &str) {
    let controller =
        SigningKey::from_pkcs8(&std::fs::read(dir.join("controller.pk8")).expect("read"))
            .expect("key");
    let release: Envelope =
        serde_json::from_slice(&std::fs::read(dir.join("release.json")).expect("read"))
            .expect("env");
    let trust: Envelope =
        serde_json::from_slice(&std::fs::read(dir.join("bundle.json")).expect("read"))
            .expect("env");
    let now = Timestamp::now();
    let desired = |release: &str| DesiredState {
        schema_version: SCHEMA_VERSION,
        agent: AgentId::new("edge-1").expect("id"),
        generation: Generation::new(7),
        issued_at: now,
        expires_at: now.saturating_add(std::time::Duration::from_secs(3600)),
        workloads: vec![Assignment {
            service: ServiceName::new("hello").expect("name"),
            replica: 0,
            release: release.parse().expect("digest"),
            rollback: false,
            config: Default::default(),
        }],
    };
    let write = |name: &str, release_digest: &str| {
        let bytes = controller.sign_json(payload_type::DESIRED_STATE, &desired(release_digest));
        let delivery = Delivery {
            schema_version: SCHEMA_VERSION,
            trust: Some(trust.clone()),
            desired: serde_json::from_slice(&bytes).expect("env"),
            releases: vec![release.clone()],
        };
        std::fs::write(dir.join(name), serde_json::to_vec(&delivery).expect("json"))
            .expect("write");
    };
    // A bare desired state: the controller's signature, not the releases.
    let bare = controller.sign_json(payload_type::DESIRED_STATE, &desired(release_digest));
    std::fs::write(dir.join("desired.json"), bare).expect("write");
    expect(
        &admin(dir, &["verify", "desired.json", "--trust", "bundle.json"]),
        0,
        "Releases are not checked",
    );
    let stranger = SigningKey::from_pkcs8(&std::fs::read(dir.join("stranger.pk8")).expect("read"))
        .expect("key");
    let forged = stranger.sign_json(payload_type::DESIRED_STATE, &desired(release_digest));
    std::fs::write(dir.join("forged.json"), forged).expect("write");
    expect(
        &admin(dir, &["verify", "forged.json", "--trust", "bundle.json"]),
        1,
        "not signed by a controller key of the trust bundle version 1",
    );

    write("delivery.json", release_digest);
    let ok = admin(dir, &["verify", "delivery.json", "--trust", "bundle.json"]);
    expect(&ok, 0, "VERIFIED: the delivery verifies");
    assert!(
        ok.stdout
            .contains("release hello 1.0.0 signed by publisher \"web team\""),
        "{}",
        ok.stdout
    );
    let other = Sha256Digest::of(b"never signed").to_string();
    write("mixed.json", &other);
    expect(
        &admin(dir, &["verify", "mixed.json", "--trust", "bundle.json"]),
        1,
        &format!("release {other} was not delivered with the desired state"),
    );
}

/// Version 2 replaces root3 by root4 and the controller key, and resets
/// generations; agents holding version 1 need 2 of its roots to sign it.
fn rotation(dir: &Path) {
    create_keys(dir, &["root4", "controller2"]);
    let v2 = edit(&dir.join("bundle.toml"), "version = 1", "version = 2");
    std::fs::write(dir.join("bundle2.toml"), v2).expect("write");
    let v2 = edit(&dir.join("bundle2.toml"), "\"root3.pub\"", "\"root4.pub\"");
    std::fs::write(dir.join("bundle2.toml"), v2).expect("write");
    let v2 = edit(
        &dir.join("bundle2.toml"),
        "[\"controller.pub\"]",
        "[\"controller2.pub\"]",
    );
    std::fs::write(dir.join("bundle2.toml"), v2).expect("write");
    let v2 = edit(
        &dir.join("bundle2.toml"),
        "reset_generations = false",
        "reset_generations = true",
    );
    std::fs::write(dir.join("bundle2.toml"), v2).expect("write");

    // root1 and the new root4: enough for the new bundle, not for agents
    // holding version 1 (only root1 of its roots signed).
    let signed = admin(
        dir,
        &[
            "trust",
            "sign",
            "--spec",
            "bundle2.toml",
            "--key",
            "root1.pk8",
            "--key",
            "root4.pk8",
            "--out",
            "bundle2.json",
        ],
    );
    expect(&signed, 0, "2 of 2 required root signatures: complete");
    assert!(
        signed.stdout.contains("reset_generations"),
        "{}",
        signed.stdout
    );
    expect(&admin(dir, &["verify", "bundle2.json"]), 0, "VERIFIED");
    expect(
        &admin(
            dir,
            &["verify", "bundle2.json", "--previous", "bundle.json"],
        ),
        1,
        "threshold not met: 1 of 2 required signatures by the root keys of the previous trust bundle version 1",
    );
    // An old root that is no root of version 2 may still sign it (rotation).
    let added = admin(
        dir,
        &[
            "trust",
            "add-signature",
            "--in",
            "bundle2.json",
            "--key",
            "root3.pk8",
            "--out",
            "bundle2.json",
        ],
    );
    expect(&added, 0, "is not a root key of this bundle");
    expect(
        &admin(
            dir,
            &["verify", "bundle2.json", "--previous", "bundle.json"],
        ),
        0,
        "A valid successor of version 1",
    );
    // Going back is refused.
    expect(
        &admin(
            dir,
            &["verify", "bundle.json", "--previous", "bundle2.json"],
        ),
        1,
        "older version than the previous bundle: version 1 is older than version 2",
    );
}
