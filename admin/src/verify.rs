//! `verify`: what a file is (trust bundle, release, desired state or
//! delivery), whether it verifies, and why not, in plain words.
//!
//! The verdict comes from the same checks the agent runs
//! (`verge_shared::trust`, `Envelope::verify_any`); this module only adds
//! the explanation around them.

use std::path::Path;

use anyhow::{Result, bail};
use serde::de::DeserializeOwned;
use verge_shared::messages::{Delivery, DesiredState, check_schema_version, payload_type};
use verge_shared::trust::{self, BundleUpdate, Release, TrustBundle, TrustError};
use verge_shared::{Envelope, Sha256Digest, Timestamp, VerifyError, limits};

use crate::{bundle, files, release};

/// The outcome of `verify`: the problems found; none means it verifies.
#[derive(Debug, Default)]
pub struct Verdict {
    pub problems: Vec<String>,
}

impl Verdict {
    fn fail(&mut self, problem: impl Into<String>) {
        self.problems.push(problem.into());
    }

    pub fn verified(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A trust bundle given on the command line, with where it came from.
#[derive(Clone)]
struct Anchor {
    name: String,
    bundle: TrustBundle,
}

/// Verifies `file`, printing what it is and the verdict. `Err` is for
/// usage and I/O problems; a document that does not verify is a verdict.
pub fn run(file: &Path, trust: Option<&Path>, previous: Option<&Path>) -> Result<Verdict> {
    let mut verdict = Verdict::default();
    let now = Timestamp::now();
    let bytes = files::read_prefix(file, limits::MAX_DELIVERY_BYTES as u64 + 1)?;
    if bytes.len() > limits::MAX_DELIVERY_BYTES {
        verdict.fail(format!(
            "{}: over {} bytes, larger than any Verge document",
            file.display(),
            limits::MAX_DELIVERY_BYTES
        ));
        return Ok(finish(verdict, "the file"));
    }
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            verdict.fail(format!("{}: not JSON: {e}", file.display()));
            return Ok(finish(verdict, "the file"));
        }
    };
    let trust = trust.map(|p| load_anchor(p, "--trust")).transpose()?;
    let previous = previous.map(|p| load_anchor(p, "--previous")).transpose()?;
    for anchor in [&trust, &previous].into_iter().flatten() {
        if let Err(problem) = anchor {
            verdict.fail(problem.clone());
        }
    }
    if !verdict.verified() {
        return Ok(finish(verdict, &file.display().to_string()));
    }
    let trust = trust.and_then(Result::ok);
    let previous = previous.and_then(Result::ok);

    let what = if let Some(kind) = value.get("payloadType").and_then(|t| t.as_str()) {
        match kind {
            trust::payload_type::TRUST_BUNDLE => {
                println!("{}: a signed trust bundle", file.display());
                let anchor = previous.as_ref().or(trust.as_ref());
                verify_bundle(&bytes, anchor, now, &mut verdict);
                "trust bundle"
            }
            trust::payload_type::RELEASE => {
                println!("{}: a signed release", file.display());
                verify_release(&bytes, trust.as_ref(), now, &mut verdict)?;
                "release"
            }
            payload_type::DESIRED_STATE => {
                println!("{}: a signed desired state", file.display());
                verify_desired(&bytes, trust.as_ref(), now, &mut verdict)?;
                "desired state"
            }
            other => {
                verdict.fail(format!(
                    "{}: payloadType: {:?} is not a document this tool checks (trust bundle, release, desired state)",
                    file.display(),
                    other.chars().take(128).collect::<String>()
                ));
                "the envelope"
            }
        }
    } else if value.get("desired").is_some() {
        println!(
            "{}: a delivery (desired state with its releases)",
            file.display()
        );
        verify_delivery(&bytes, trust.as_ref(), now, &mut verdict)?;
        "delivery"
    } else {
        verdict.fail(format!(
            "{}: neither a DSSE envelope (no payloadType) nor a delivery (no desired)",
            file.display()
        ));
        "the file"
    };
    Ok(finish(verdict, what))
}

fn finish(verdict: Verdict, what: &str) -> Verdict {
    if verdict.verified() {
        println!("VERIFIED: the {what} verifies");
    } else {
        println!("NOT VERIFIED: {what}");
        for p in &verdict.problems {
            println!("  - {p}");
        }
    }
    verdict
}

/// Reads a trust bundle given with `flag`. The outer error is I/O; the
/// inner one a bundle that does not verify against its own root keys.
fn load_anchor(path: &Path, flag: &str) -> Result<Result<Anchor, String>> {
    let bytes = files::read_bounded(path, limits::MAX_TRUST_BUNDLE_BYTES as u64)?;
    Ok(match TrustBundle::verify_self_signed(&bytes) {
        Ok(v) => Ok(Anchor {
            name: format!(
                "trust bundle version {} ({})",
                v.bundle.version,
                path.display()
            ),
            bundle: v.bundle,
        }),
        Err(e) => Err(format!(
            "{flag} {}: does not verify against its own root keys: {}",
            path.display(),
            explain(&e, "its own root keys", None)
        )),
    })
}

/// The envelope and its payload read without checking signatures, for
/// showing what a document claims; a problem when it cannot be read.
fn peek<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
    verdict: &mut Verdict,
) -> Option<(Envelope, T)> {
    let parsed = Envelope::parse(bytes, limit).and_then(|e| {
        let doc = e.peek_unverified()?;
        Ok((e, doc))
    });
    parsed
        .map_err(|e| verdict.fail(explain_envelope(&e, "")))
        .ok()
}

fn verify_bundle(bytes: &[u8], anchor: Option<&Anchor>, now: Timestamp, verdict: &mut Verdict) {
    let Some((envelope, claimed)) =
        peek::<TrustBundle>(bytes, limits::MAX_TRUST_BUNDLE_BYTES, verdict)
    else {
        return;
    };
    println!("{}", bundle::describe(&claimed));
    bundle::print_signatures(&envelope, &claimed);
    let own_valid = bundle::valid_signers(&envelope, &claimed.root.keys).len();
    let Some(anchor) = anchor else {
        println!(
            "Checked as a first bundle (against its own root keys); give --previous with the bundle agents hold to check an update."
        );
        if let Err(e) = TrustBundle::verify_initial(bytes, now) {
            verdict.fail(explain(&e, "this bundle's own root keys", None));
        }
        return;
    };
    let prev = &anchor.bundle;
    let prev_valid = bundle::valid_signers(&envelope, &prev.root.keys).len();
    println!(
        "  {prev_valid} of {} required signatures by the root keys of the previous {}",
        prev.root.threshold, anchor.name
    );
    match prev.verify_update(bytes, now) {
        Ok(BundleUpdate::Newer(_)) => println!(
            "A valid successor of version {}: agents holding it move to version {}.",
            prev.version, claimed.version
        ),
        Ok(BundleUpdate::Same) => println!("The same bundle as the previous one."),
        Err(e) => {
            let whose = if prev_valid < prev.root.threshold as usize {
                format!("the root keys of the previous {}", anchor.name)
            } else {
                format!("this bundle's own root keys ({own_valid} valid)")
            };
            verdict.fail(explain(&e, &whose, None));
        }
    }
}

fn verify_release(
    bytes: &[u8],
    trust: Option<&Anchor>,
    now: Timestamp,
    verdict: &mut Verdict,
) -> Result<()> {
    let Some((envelope, claimed)) = peek::<Release>(bytes, limits::MAX_RELEASE_BYTES, verdict)
    else {
        return Ok(());
    };
    println!("{}", release::describe(&claimed));
    println!("release digest: {}", release::digest(&envelope)?);
    let Some(trust) = trust else {
        bail!("a release is checked against a trust bundle: give --trust bundle.json");
    };
    check_trust_current(trust, now, verdict);
    match trust.bundle.verify_release(&envelope) {
        Ok((_, publisher)) => println!(
            "Signed by publisher {:?} (key {}), which may publish {}.",
            publisher.name,
            publisher.key.key_id(),
            claimed.service
        ),
        Err(e) => verdict.fail(explain(&e, "", Some(trust))),
    }
    Ok(())
}

fn check_trust_current(trust: &Anchor, now: Timestamp, verdict: &mut Verdict) {
    if trust.bundle.expires_at <= now {
        verdict.fail(format!(
            "the {} expired at {}: agents holding it accept nothing until they get a newer bundle",
            trust.name, trust.bundle.expires_at
        ));
    }
}

fn verify_desired(
    bytes: &[u8],
    trust: Option<&Anchor>,
    now: Timestamp,
    verdict: &mut Verdict,
) -> Result<()> {
    let Some((envelope, claimed)) =
        peek::<DesiredState>(bytes, limits::MAX_DESIRED_STATE_BYTES, verdict)
    else {
        return Ok(());
    };
    describe_desired(&claimed);
    let Some(trust) = trust else {
        bail!("a desired state is checked against a trust bundle: give --trust bundle.json");
    };
    check_trust_current(trust, now, verdict);
    check_desired(&envelope, &trust.bundle, &trust.name, now, verdict);
    println!(
        "Releases are not checked: a bare desired state does not carry them (verify the delivery)."
    );
    Ok(())
}

fn describe_desired(d: &DesiredState) {
    println!(
        "desired state for agent {}, generation {}, issued {}, expires {}",
        d.agent, d.generation, d.issued_at, d.expires_at
    );
    for (i, w) in d.workloads.iter().enumerate() {
        println!(
            "  workloads[{i}]: {} replica {} release {}{}",
            w.service,
            w.replica,
            w.release,
            if w.rollback { " (rollback)" } else { "" }
        );
    }
}

/// The controller's signature, the document's consistency and its expiry.
fn check_desired(
    envelope: &Envelope,
    trust: &TrustBundle,
    trust_name: &str,
    now: Timestamp,
    verdict: &mut Verdict,
) -> Option<DesiredState> {
    let payload = match envelope.verify_any(payload_type::DESIRED_STATE, &trust.controllers) {
        Ok((payload, key)) => {
            println!("Signed by controller key {}.", key.key_id());
            payload
        }
        Err(e) => {
            verdict.fail(explain_envelope(
                &e,
                &format!("a controller key of the {trust_name}"),
            ));
            return None;
        }
    };
    let doc: DesiredState = match serde_json::from_slice(&payload) {
        Ok(doc) => doc,
        Err(e) => {
            verdict.fail(format!("the signed desired state does not parse: {e}"));
            return None;
        }
    };
    if let Err(e) = doc.validate() {
        verdict.fail(format!("invalid content: {e}"));
    }
    if doc.expires_at <= now {
        verdict.fail(format!("the desired state expired at {}", doc.expires_at));
    }
    Some(doc)
}

fn verify_delivery(
    bytes: &[u8],
    anchor: Option<&Anchor>,
    now: Timestamp,
    verdict: &mut Verdict,
) -> Result<()> {
    let delivery: Delivery = match serde_json::from_slice(bytes) {
        Ok(d) => d,
        Err(e) => {
            verdict.fail(format!("not a delivery: {e}"));
            return Ok(());
        }
    };
    if let Err(e) = check_schema_version(delivery.schema_version) {
        verdict.fail(format!("delivery {e}"));
        return Ok(());
    }
    if delivery.releases.len() > limits::MAX_WORKLOADS_PER_AGENT {
        verdict.fail(format!(
            "releases: {} releases, at most {} per delivery",
            delivery.releases.len(),
            limits::MAX_WORKLOADS_PER_AGENT
        ));
        return Ok(());
    }
    let Some(trust) = delivery_trust(&delivery, anchor, now, verdict)? else {
        return Ok(());
    };
    let desired_bytes = serde_json::to_vec(&delivery.desired)?;
    if desired_bytes.len() > limits::MAX_DESIRED_STATE_BYTES {
        verdict.fail(format!(
            "desired: {} bytes, over the limit of {}",
            desired_bytes.len(),
            limits::MAX_DESIRED_STATE_BYTES
        ));
        return Ok(());
    }
    check_trust_current(&trust, now, verdict);
    let Some(doc) = check_desired(&delivery.desired, &trust.bundle, &trust.name, now, verdict)
    else {
        return Ok(());
    };
    describe_desired(&doc);
    let releases: Vec<(Sha256Digest, &Envelope)> = delivery
        .releases
        .iter()
        .filter_map(|e| e.signed_digest().ok().map(|d| (d, e)))
        .collect();
    for (i, a) in doc.workloads.iter().enumerate() {
        let Some((_, envelope)) = releases.iter().find(|(d, _)| *d == a.release) else {
            verdict.fail(format!(
                "workloads[{i}] ({}): release {} was not delivered with the desired state that names it",
                a.service, a.release
            ));
            continue;
        };
        match trust.bundle.verify_release(envelope) {
            Ok((r, _)) if r.service != a.service => verdict.fail(format!(
                "workloads[{i}] ({}): release {} is of service {}",
                a.service, a.release, r.service
            )),
            Ok((r, p)) => println!(
                "  workloads[{i}]: release {} {} signed by publisher {:?}",
                r.service, r.version, p.name
            ),
            Err(e) => verdict.fail(format!(
                "workloads[{i}] ({}): release {}: {}",
                a.service,
                a.release,
                explain(&e, "", Some(&trust))
            )),
        }
    }
    println!(
        "Not checked here (they depend on the agent's state): the generation against the agent's last accepted one, and release versions against what runs."
    );
    Ok(())
}

/// The trust bundle a delivery is checked against: the one it carries when
/// that is a valid successor of `anchor` (or, without an anchor, valid on
/// its own), else `anchor`.
fn delivery_trust(
    delivery: &Delivery,
    anchor: Option<&Anchor>,
    now: Timestamp,
    verdict: &mut Verdict,
) -> Result<Option<Anchor>> {
    let carried = delivery
        .trust
        .as_ref()
        .map(serde_json::to_vec)
        .transpose()?;
    let carried_name = |b: &TrustBundle| format!("trust bundle version {} it carries", b.version);
    Ok(match (carried, anchor) {
        (None, None) => {
            bail!("the delivery carries no trust bundle: give --trust bundle.json")
        }
        (None, Some(a)) => Some(a.clone()),
        (Some(bytes), None) => match TrustBundle::verify_initial(&bytes, now) {
            Ok(v) => {
                println!(
                    "Checked against the {} alone; give --trust with the bundle agents hold to check it as an update.",
                    carried_name(&v.bundle)
                );
                Some(Anchor {
                    name: carried_name(&v.bundle),
                    bundle: v.bundle,
                })
            }
            Err(e) => {
                verdict.fail(format!(
                    "trust: the bundle it carries: {}",
                    explain(&e, "its own root keys", None)
                ));
                None
            }
        },
        (Some(bytes), Some(a)) => match a.bundle.verify_update(&bytes, now) {
            Ok(BundleUpdate::Newer(v)) => {
                println!(
                    "It carries trust bundle version {}, a valid successor of version {}.",
                    v.bundle.version, a.bundle.version
                );
                Some(Anchor {
                    name: carried_name(&v.bundle),
                    bundle: v.bundle,
                })
            }
            Ok(BundleUpdate::Same) => Some(a.clone()),
            Err(TrustError::Stale { found, .. }) => {
                println!(
                    "It carries an older trust bundle (version {found}); agents keep the {}.",
                    a.name
                );
                Some(a.clone())
            }
            Err(e) => {
                verdict.fail(format!(
                    "trust: the bundle it carries is refused: {}",
                    explain(&e, &format!("the root keys of the {}", a.name), None)
                ));
                Some(a.clone())
            }
        },
    })
}

/// A trust error in plain words. `whose` names the keys a threshold was
/// counted over; `trust` is the bundle a release was checked against.
fn explain(e: &TrustError, whose: &str, trust: Option<&Anchor>) -> String {
    match e {
        TrustError::Envelope(v) => explain_envelope(v, whose),
        TrustError::Invalid(s) => format!("invalid content: {s}"),
        TrustError::Expired(at) => format!("expired at {at}"),
        TrustError::Stale { found, trusted } => format!(
            "older version than the previous bundle: version {found} is older than version {trusted}"
        ),
        TrustError::Conflict(v) => format!(
            "version {v} is the previous bundle's version with different content: a change needs a higher version"
        ),
        TrustError::UnknownPublisher(v) => {
            let which = trust.map_or_else(String::new, |t| format!(" of the {}", t.name));
            match v {
                VerifyError::Unsigned => {
                    "unknown publisher: the release carries no signature".into()
                }
                VerifyError::UnknownKey(id) => format!(
                    "unknown publisher: signed by key {id}, which is not a publisher key{which}"
                ),
                other => format!("unknown publisher{which}: {other}"),
            }
        }
        TrustError::NotAllowed { publisher, service } => {
            let patterns = trust
                .and_then(|t| t.bundle.publishers.iter().find(|p| &p.name == publisher))
                .map_or_else(String::new, |p| {
                    format!(" (it may publish: {})", p.services.join(", "))
                });
            format!("publisher {publisher:?} is not allowed service {service}{patterns}")
        }
    }
}

/// An envelope error in plain words; `whose` names the keys expected.
fn explain_envelope(e: &VerifyError, whose: &str) -> String {
    match e {
        VerifyError::Threshold { valid, threshold } => {
            format!("threshold not met: {valid} of {threshold} required signatures by {whose}")
        }
        VerifyError::BadSignature(id) => format!(
            "the signature by key {id} does not verify: the document was changed after signing, or the signature is damaged"
        ),
        VerifyError::UnknownKey(id) if !whose.is_empty() => {
            format!("not signed by {whose} (signed by key {id})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_shared::SigningKey;
    use verge_shared::trust::{RootRole, payload_type as trust_type};

    fn key() -> SigningKey {
        SigningKey::generate().expect("key").0
    }

    fn bundle(root: &SigningKey, version: u64, expires_in: i64) -> TrustBundle {
        let now = Timestamp::now().unix_millis();
        TrustBundle {
            schema_version: 1,
            version,
            issued_at: Timestamp::from_unix_millis(now - 7_200_000),
            expires_at: Timestamp::from_unix_millis(now.saturating_add_signed(expires_in)),
            root: RootRole {
                keys: vec![root.public_key()],
                threshold: 1,
            },
            controllers: vec![key().public_key()],
            publishers: vec![],
            reset_generations: false,
        }
    }

    fn write(dir: &Path, name: &str, root: &SigningKey, b: &TrustBundle) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, root.sign_json(trust_type::TRUST_BUNDLE, b)).expect("write");
        path
    }

    #[test]
    fn expired_conflicting_and_good_bundles_get_their_reasons() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = key();
        let v1 = write(dir.path(), "v1.json", &root, &bundle(&root, 1, 3_600_000));
        let good = run(&v1, None, None).expect("runs");
        assert!(good.verified(), "{:?}", good.problems);

        let expired = write(dir.path(), "old.json", &root, &bundle(&root, 2, -60_000));
        let verdict = run(&expired, None, None).expect("runs");
        assert!(
            verdict.problems[0].starts_with("expired at "),
            "{:?}",
            verdict.problems
        );

        // Version 1 again, different content: refused against version 1.
        let other = write(
            dir.path(),
            "other.json",
            &root,
            &bundle(&root, 1, 3_600_000),
        );
        let verdict = run(&other, None, Some(&v1)).expect("runs");
        assert!(
            verdict.problems[0]
                .contains("version 1 is the previous bundle's version with different content"),
            "{:?}",
            verdict.problems
        );

        // A --trust bundle that does not verify stops the check, with the reason.
        let mut forged = bundle(&root, 1, 3_600_000);
        forged.root.keys = vec![key().public_key()];
        let forged = write(dir.path(), "forged.json", &root, &forged);
        let verdict = run(&v1, Some(&forged), None).expect("runs");
        assert!(
            verdict.problems[0].contains("--trust")
                && verdict.problems[0].contains("threshold not met: 0 of 1"),
            "{:?}",
            verdict.problems
        );
    }
}
