//! Trust bundles: building one from `bundle.toml`, signing it with one or
//! more root keys (`trust sign`), adding a signature on another offline
//! machine (`trust add-signature`), and describing its signatures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use verge_shared::messages::SCHEMA_VERSION;
use verge_shared::trust::{Publisher, RootRole, TrustBundle, payload_type};
use verge_shared::{Envelope, PublicKey, SigningKey, Timestamp, limits};

use crate::{files, keys};

/// The longest lifetime `expires_in_days` may give a bundle.
const MAX_EXPIRES_IN_DAYS: u32 = 3650;

/// `bundle.toml`: what the root key holders sign.
#[derive(Debug, Deserialize)]
pub struct BundleSpec {
    pub version: u64,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
    #[serde(default)]
    pub expires_at: Option<toml::value::Datetime>,
    #[serde(default)]
    pub reset_generations: bool,
    pub controllers: Vec<String>,
    pub root: RootSpec,
    #[serde(default)]
    pub publishers: Vec<PublisherSpec>,
}

#[derive(Debug, Deserialize)]
pub struct RootSpec {
    pub keys: Vec<String>,
    pub threshold: u32,
}

#[derive(Debug, Deserialize)]
pub struct PublisherSpec {
    pub name: String,
    pub key: String,
    pub services: Vec<String>,
}

impl BundleSpec {
    /// The bundle this spec describes, issued at `now`. Errors name the
    /// spec field (`root.keys[1]`, `expires_at`, ...).
    pub fn build(&self, spec_path: &Path, now: Timestamp) -> Result<TrustBundle> {
        if self.version == 0 {
            bail!("version: must be 1 or more");
        }
        let key =
            |field: String, value: &str| keys::from_spec(spec_path, value).with_context(|| field);
        let root_keys = self
            .root
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| key(format!("root.keys[{i}]"), k))
            .collect::<Result<Vec<_>>>()?;
        let controllers = self
            .controllers
            .iter()
            .enumerate()
            .map(|(i, k)| key(format!("controllers[{i}]"), k))
            .collect::<Result<Vec<_>>>()?;
        let publishers = self
            .publishers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(Publisher {
                    name: p.name.clone(),
                    key: key(format!("publishers[{i}].key"), &p.key)?,
                    services: p.services.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bundle = TrustBundle {
            schema_version: SCHEMA_VERSION,
            version: self.version,
            issued_at: now,
            expires_at: self.expires_at(now)?,
            root: RootRole {
                keys: root_keys,
                threshold: self.root.threshold,
            },
            controllers,
            publishers,
            reset_generations: self.reset_generations,
        };
        bundle.validate().map_err(anyhow::Error::msg)?;
        Ok(bundle)
    }

    fn expires_at(&self, now: Timestamp) -> Result<Timestamp> {
        let at = match (self.expires_in_days, &self.expires_at) {
            (Some(_), Some(_)) => bail!("expires_in_days, expires_at: give one of them, not both"),
            (None, None) => bail!("expires_in_days: give it (or expires_at)"),
            (Some(days), None) => {
                if !(1..=MAX_EXPIRES_IN_DAYS).contains(&days) {
                    bail!("expires_in_days: {days} is outside 1..={MAX_EXPIRES_IN_DAYS}");
                }
                now.saturating_add(Duration::from_secs(u64::from(days) * 86_400))
            }
            (None, Some(at)) => parse_datetime(at).context("expires_at")?,
        };
        if at <= now {
            bail!("expires_at: {at} is not in the future");
        }
        Ok(at)
    }
}

/// A TOML date-time with a date, a time and an offset, as a timestamp.
fn parse_datetime(at: &toml::value::Datetime) -> Result<Timestamp> {
    let (Some(date), Some(time), Some(offset)) = (at.date, at.time, at.offset) else {
        bail!("{at} needs a date, a time and an offset, e.g. 2027-06-30T00:00:00Z");
    };
    let offset_minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0))
        - offset_minutes * 60;
    let millis = secs * 1000 + i64::from(time.nanosecond.unwrap_or(0) / 1_000_000);
    u64::try_from(millis)
        .map(Timestamp::from_unix_millis)
        .map_err(|_| anyhow::anyhow!("{at} is before 1970"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`); the TOML parser has already checked the ranges.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `trust sign`: builds the bundle from the spec and signs it with `keys`.
pub fn sign(spec_path: &Path, key_paths: &[PathBuf], out: &Path) -> Result<()> {
    let (envelope, bundle) = sign_quietly(spec_path, key_paths, out)?;
    println!("Signed {}", describe(&bundle));
    print_signatures(&envelope, &bundle);
    println!("Wrote {}", out.display());
    Ok(())
}

/// Builds the bundle from the spec, signs it with `keys` and writes it to
/// `out`, printing nothing.
pub fn sign_quietly(
    spec_path: &Path,
    key_paths: &[PathBuf],
    out: &Path,
) -> Result<(Envelope, TrustBundle)> {
    let spec: BundleSpec = files::read_spec(spec_path)?;
    let bundle = spec
        .build(spec_path, Timestamp::now())
        .with_context(|| spec_path.display().to_string())?;
    let signers = key_paths
        .iter()
        .map(|p| keys::load_signing(p))
        .collect::<Result<Vec<_>>>()?;
    let Some((first, rest)) = signers.split_first() else {
        bail!("--key: at least one root key is needed");
    };
    for (key, path) in signers.iter().zip(key_paths) {
        check_signer(&bundle, key, path)?;
    }
    let payload = serde_json::to_vec(&bundle).context("cannot encode the bundle")?;
    let mut envelope = first.sign(payload_type::TRUST_BUNDLE, &payload);
    for key in rest {
        envelope
            .add_signature(key)
            .context("cannot add a signature")?;
    }
    write_envelope(out, &envelope)?;
    Ok((envelope, bundle))
}

/// `trust add-signature`: adds one root key's signature to a signed bundle,
/// after showing what it signs.
pub fn add_signature(input: &Path, key_path: &Path, out: &Path) -> Result<()> {
    let (mut envelope, bundle) = read_unverified(input)?;
    bundle
        .validate()
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{}: the signed bundle", input.display()))?;
    if bundle.expires_at <= Timestamp::now() {
        bail!(
            "{}: expires_at: the bundle expired at {}; sign a new one instead",
            input.display(),
            bundle.expires_at
        );
    }
    let key = keys::load_signing(key_path)?;
    check_signer(&bundle, &key, key_path)?;
    println!("Signing {}", describe(&bundle));
    envelope
        .add_signature(&key)
        .with_context(|| format!("{}: payload", input.display()))?;
    write_envelope(out, &envelope)?;
    print_signatures(&envelope, &bundle);
    println!("Wrote {}", out.display());
    Ok(())
}

/// Reads a trust bundle envelope and its payload without checking any
/// signature (to show it, or to add one).
pub fn read_unverified(path: &Path) -> Result<(Envelope, TrustBundle)> {
    let bytes = files::read_bounded(path, limits::MAX_TRUST_BUNDLE_BYTES as u64)?;
    let envelope = Envelope::parse(&bytes, limits::MAX_TRUST_BUNDLE_BYTES)
        .with_context(|| path.display().to_string())?;
    if envelope.payload_type != payload_type::TRUST_BUNDLE {
        bail!(
            "{}: payloadType: {:?} is not a trust bundle ({})",
            path.display(),
            envelope.payload_type.chars().take(128).collect::<String>(),
            payload_type::TRUST_BUNDLE
        );
    }
    let bundle = envelope
        .peek_unverified()
        .with_context(|| format!("{}: payload", path.display()))?;
    Ok((envelope, bundle))
}

/// A root signature must not come from a key the bundle gives another role.
fn check_signer(bundle: &TrustBundle, key: &SigningKey, path: &Path) -> Result<()> {
    let public = key.public_key();
    if bundle.controllers.contains(&public) {
        bail!(
            "{}: key {} is a controller key of this bundle, not a root key",
            path.display(),
            public.key_id()
        );
    }
    if bundle.publishers.iter().any(|p| p.key == public) {
        bail!(
            "{}: key {} is a publisher key of this bundle, not a root key",
            path.display(),
            public.key_id()
        );
    }
    if !bundle.root.keys.contains(&public) {
        println!(
            "Note: key {} ({}) is not a root key of this bundle; its signature counts only for agents that trust it now (root rotation).",
            public.key_id(),
            path.display()
        );
    }
    Ok(())
}

fn write_envelope(out: &Path, envelope: &Envelope) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(envelope).context("cannot encode the envelope")?;
    bytes.push(b'\n');
    if bytes.len() > limits::MAX_TRUST_BUNDLE_BYTES {
        bail!(
            "{}: the signed bundle is {} bytes, over the limit of {}",
            out.display(),
            bytes.len(),
            limits::MAX_TRUST_BUNDLE_BYTES
        );
    }
    files::write_atomic(out, &bytes)
}

/// How many distinct keys of `keys` have a valid signature on `envelope`.
pub fn valid_signers(envelope: &Envelope, keys: &[PublicKey]) -> Vec<PublicKey> {
    keys.iter()
        .filter(|k| {
            envelope
                .verify_threshold(payload_type::TRUST_BUNDLE, &[**k], 1)
                .is_ok()
        })
        .copied()
        .collect()
}

/// A multi-line description of a bundle's contents.
pub fn describe(bundle: &TrustBundle) -> String {
    let mut out = format!(
        "trust bundle version {}, issued {}, expires {}\n  root: {} of {} keys must sign\n",
        bundle.version,
        bundle.issued_at,
        bundle.expires_at,
        bundle.root.threshold,
        bundle.root.keys.len()
    );
    for k in &bundle.root.keys {
        out.push_str(&format!("    root key {}\n", k.key_id()));
    }
    for k in &bundle.controllers {
        out.push_str(&format!("  controller key {}\n", k.key_id()));
    }
    if bundle.publishers.is_empty() {
        out.push_str("  no publishers\n");
    }
    for p in &bundle.publishers {
        out.push_str(&format!(
            "  publisher {:?} key {} may publish: {}\n",
            p.name,
            p.key.key_id(),
            p.services.join(", ")
        ));
    }
    if bundle.reset_generations {
        out.push_str(
            "  reset_generations: agents forget their highest accepted generation once, on accepting this version\n",
        );
    }
    out.pop();
    out
}

/// Prints each signature's key and how many of the bundle's root keys signed.
pub fn print_signatures(envelope: &Envelope, bundle: &TrustBundle) {
    let valid = valid_signers(envelope, &bundle.root.keys);
    for s in &envelope.signatures {
        let id: String = s.keyid.chars().take(64).collect();
        let listed = bundle.root.keys.iter().find(|k| k.key_id().as_str() == id);
        let state = match listed {
            Some(k) if valid.contains(k) => "root key of this bundle, valid",
            Some(_) => "root key of this bundle, DOES NOT VERIFY",
            None => "not a root key of this bundle",
        };
        println!("  signature by {id}: {state}");
    }
    let needed = bundle.root.threshold as usize;
    if valid.len() >= needed {
        println!(
            "  {} of {} required root signatures: complete",
            valid.len(),
            needed
        );
    } else {
        println!(
            "  {} of {} required root signatures: {} more needed (verge-admin trust add-signature)",
            valid.len(),
            needed,
            needed - valid.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> BundleSpec {
        files::parse_spec(text).expect("spec parses")
    }

    fn write_keys(dir: &Path, names: &[&str]) {
        for name in names {
            keys::create(&dir.join(format!("{name}.pk8"))).expect("key");
        }
    }

    const SPEC: &str = r#"
version = 3
expires_in_days = 30
controllers = ["c.pub"]
[root]
keys = ["r1.pub", "r2.pub"]
threshold = 2
[[publishers]]
name = "web"
key = "p.pub"
services = ["web-*"]
"#;

    #[test]
    fn a_spec_builds_the_bundle_it_describes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_keys(dir.path(), &["r1", "r2", "c", "p"]);
        let path = dir.path().join("bundle.toml");
        let now = Timestamp::from_unix_millis(1_800_000_000_000);
        let b = spec(SPEC).build(&path, now).expect("builds");
        assert_eq!((b.version, b.root.threshold, b.root.keys.len()), (3, 2, 2));
        assert_eq!(
            b.expires_at.saturating_since(now),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(b.publishers[0].services, ["web-*"]);
        assert!(!b.reset_generations);
    }

    #[test]
    fn spec_errors_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_keys(dir.path(), &["r1", "r2", "c", "p"]);
        let path = dir.path().join("bundle.toml");
        let now = Timestamp::from_unix_millis(1_800_000_000_000);
        let cases = [
            (SPEC.replace("\"r2.pub\"", "\"r9.pub\""), "root.keys[1]"),
            (
                SPEC.replace("threshold = 2", "threshold = 3"),
                "root.threshold",
            ),
            (SPEC.replace("expires_in_days = 30", ""), "expires_in_days"),
            (
                SPEC.replace("expires_in_days = 30", "expires_at = 2001-01-01T00:00:00Z"),
                "expires_at",
            ),
            (
                SPEC.replace("expires_in_days = 30", "expires_at = 2099-01-01"),
                "expires_at",
            ),
            (SPEC.replace("\"p.pub\"", "\"c.pub\""), "publishers[0].key"),
            (SPEC.replace("web-*", "Web"), "publishers[0].services"),
            (SPEC.replace("version = 3", "version = 0"), "version"),
        ];
        for (text, field) in cases {
            let err = spec(&text).build(&path, now).expect_err(field);
            assert!(format!("{err:#}").starts_with(field), "{field}: {err:#}");
        }
        let fixed = SPEC.replace("expires_in_days = 30", "expires_at = 2099-01-01T00:00:00Z");
        let b = spec(&fixed).build(&path, now).expect("explicit expiry");
        assert_eq!(b.expires_at.to_string(), "2099-01-01T00:00:00.000Z");
    }

    #[test]
    fn toml_datetimes_with_offsets_are_instants() {
        let at = |text: &str| {
            parse_datetime(&text.parse::<toml::value::Datetime>().expect("datetime"))
                .map(|t| t.to_string())
        };
        assert_eq!(
            at("1970-01-01T00:00:00Z").expect("epoch"),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            at("2000-03-01T00:00:00Z").expect("leap"),
            "2000-03-01T00:00:00.000Z"
        );
        assert_eq!(
            at("2027-06-30T02:00:00.250+02:00").expect("offset"),
            "2027-06-30T00:00:00.250Z"
        );
        assert_eq!(
            at("2027-01-01T00:30:00-01:00").expect("west"),
            "2027-01-01T01:30:00.000Z"
        );
        assert!(at("1969-12-31T23:59:59Z").is_err());
        assert!(at("2027-01-01T00:00:00").is_err(), "no offset");
    }
}
