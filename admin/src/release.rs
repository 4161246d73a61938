//! Releases: building one from `release.toml` (the artifact hashed by
//! streaming it) and signing it with a publisher key (`release sign`).

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;
use verge_shared::messages::{Resources, RunSpec, SCHEMA_VERSION};
use verge_shared::trust::{MediaType, Release, ReleaseArtifact, payload_type};
use verge_shared::{Envelope, ServiceName, Sha256Digest, Timestamp, limits};

use crate::{files, keys};

/// `release.toml`. `run` and `resources` are the wire types themselves.
#[derive(Debug, Deserialize)]
pub struct ReleaseSpec {
    pub service: ServiceName,
    pub version: semver::Version,
    pub artifact: ArtifactSpec,
    #[serde(default)]
    pub run: RunSpec,
    #[serde(default)]
    pub resources: Resources,
}

/// The artifact: a file to hash, or its digest and size given outright
/// (both at once: the file must match them).
#[derive(Debug, Deserialize)]
pub struct ArtifactSpec {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub sha256: Option<Sha256Digest>,
    #[serde(default)]
    pub size: Option<u64>,
    pub media_type: MediaTypeSpec,
}

/// The short media type names of the spec file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum MediaTypeSpec {
    #[serde(rename = "executable", alias = "application/vnd.verge.executable")]
    Executable,
    #[serde(rename = "tar+gzip", alias = "application/vnd.verge.archive.tar+gzip")]
    TarGzip,
}

impl From<MediaTypeSpec> for MediaType {
    fn from(m: MediaTypeSpec) -> Self {
        match m {
            MediaTypeSpec::Executable => MediaType::Executable,
            MediaTypeSpec::TarGzip => MediaType::TarGzip,
        }
    }
}

/// The SHA-256 and length of a file, read in chunks (never whole).
pub fn hash_file(path: &Path) -> Result<(Sha256Digest, u64)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    Ok((Sha256Digest::from_ring(ctx.finish()), size))
}

impl ArtifactSpec {
    fn resolve(&self, spec_path: &Path) -> Result<ReleaseArtifact> {
        let (sha256, size) = match (&self.path, self.sha256, self.size) {
            (Some(path), given_sha, given_size) => {
                let file = files::relative_to(spec_path, path);
                let (sha256, size) = hash_file(&file).context("artifact.path")?;
                if given_sha.is_some_and(|g| g != sha256) {
                    bail!(
                        "artifact.sha256: {} does not match the file {} ({sha256})",
                        given_sha.map(|g| g.to_string()).unwrap_or_default(),
                        file.display()
                    );
                }
                if given_size.is_some_and(|g| g != size) {
                    bail!(
                        "artifact.size: {} does not match the file {} ({size} bytes)",
                        given_size.unwrap_or_default(),
                        file.display()
                    );
                }
                (sha256, size)
            }
            (None, Some(sha256), Some(size)) => (sha256, size),
            (None, _, _) => {
                bail!(
                    "artifact.path: give the artifact file, or both artifact.sha256 and artifact.size"
                )
            }
        };
        if size == 0 {
            bail!("artifact.size: an empty artifact cannot be run");
        }
        Ok(ReleaseArtifact {
            sha256,
            size,
            media_type: self.media_type.into(),
        })
    }
}

impl ReleaseSpec {
    /// The release this spec describes, issued at `now`.
    pub fn build(&self, spec_path: &Path, now: Timestamp) -> Result<Release> {
        let release = Release {
            schema_version: SCHEMA_VERSION,
            service: self.service.clone(),
            version: self.version.clone(),
            issued_at: now,
            artifacts: vec![self.artifact.resolve(spec_path)?],
            run: self.run.clone(),
            resources: self.resources,
        };
        release.validate().map_err(anyhow::Error::msg)?;
        Ok(release)
    }
}

/// `release sign`: builds the release, signs it, writes the envelope and
/// prints the digest operators deploy by.
pub fn sign(spec_path: &Path, key_path: &Path, out: &Path) -> Result<()> {
    let spec: ReleaseSpec = files::read_spec(spec_path)?;
    let release = spec
        .build(spec_path, Timestamp::now())
        .with_context(|| spec_path.display().to_string())?;
    let key = keys::load_signing(key_path)?;
    let payload = serde_json::to_vec(&release).context("cannot encode the release")?;
    let envelope = key.sign(payload_type::RELEASE, &payload);
    let mut bytes = serde_json::to_vec_pretty(&envelope).context("cannot encode the envelope")?;
    bytes.push(b'\n');
    if bytes.len() > limits::MAX_RELEASE_BYTES {
        bail!(
            "{}: the signed release would be {} bytes, over the limit of {} (run.args, run.env?)",
            spec_path.display(),
            bytes.len(),
            limits::MAX_RELEASE_BYTES
        );
    }
    files::write_atomic(out, &bytes)?;
    println!("Signed {}", describe(&release));
    println!("  signed by publisher key {}", key.key_id());
    println!("Wrote {}", out.display());
    println!("release digest: {}", digest(&envelope)?);
    Ok(())
}

/// The digest a desired state names the release by.
pub fn digest(envelope: &Envelope) -> Result<Sha256Digest> {
    envelope
        .signed_digest()
        .map_err(|e| anyhow::anyhow!("payload: {e}"))
}

/// A multi-line description of a release.
pub fn describe(release: &Release) -> String {
    let mut out = format!(
        "release of service {} version {}, issued {}",
        release.service, release.version, release.issued_at
    );
    for a in &release.artifacts {
        let kind = match a.media_type {
            MediaType::Executable => "executable",
            MediaType::TarGzip => "tar+gzip archive",
        };
        out.push_str(&format!(
            "\n  artifact sha256 {} ({} bytes, {kind})",
            a.sha256, a.size
        ));
    }
    if let Some(entry) = &release.run.entrypoint {
        out.push_str(&format!("\n  entrypoint {entry}"));
    }
    out.push_str(&format!(
        "\n  args {:?}, {} env var(s), {} port(s), {} mCPU, {} MiB",
        release.run.args,
        release.run.env.len(),
        release.run.ports.len(),
        release.resources.cpu_millis,
        release.resources.memory_mb
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
service = "web-eu"
version = "1.4.0"
[artifact]
path = "app"
media_type = "executable"
[run]
args = ["--port", "8080"]
ports = [{ name = "http" }]
[run.health]
probe = { type = "http", port = "http", path = "/healthz" }
[resources]
memory_mb = 64
"#;

    fn build(text: &str, dir: &Path) -> Result<Release> {
        let spec: ReleaseSpec = files::parse_spec(text)?;
        spec.build(&dir.join("release.toml"), Timestamp::now())
    }

    #[test]
    fn the_artifact_is_hashed_and_the_run_spec_is_the_wire_type() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("app"), &data).expect("write");
        let r = build(SPEC, dir.path()).expect("builds");
        assert_eq!(r.artifacts[0].sha256, Sha256Digest::of(&data));
        assert_eq!(r.artifacts[0].size, data.len() as u64);
        assert_eq!(r.run.args, ["--port", "8080"]);
        assert!(r.run.health.is_some());
        assert_eq!(r.resources.memory_mb, 64);

        // Given digest and size must match the file.
        let pinned = SPEC.replace(
            "path = \"app\"",
            &format!(
                "path = \"app\"\nsha256 = \"{}\"",
                Sha256Digest::of(b"other")
            ),
        );
        let err = build(&pinned, dir.path()).expect_err("mismatch");
        assert!(format!("{err:#}").starts_with("artifact.sha256"), "{err:#}");
        // Or without the file at all.
        let by_digest = SPEC.replace(
            "path = \"app\"",
            &format!("sha256 = \"{}\"\nsize = 5", Sha256Digest::of(b"other")),
        );
        assert_eq!(
            build(&by_digest, dir.path()).expect("digest").artifacts[0].size,
            5
        );
    }

    #[test]
    fn spec_errors_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("app"), b"code").expect("write");
        let cases = [
            (SPEC.replace("\"1.4.0\"", "\"1.4\""), "version"),
            (SPEC.replace("web-eu", "Web EU"), "service"),
            (
                SPEC.replace("path = \"app\"", "path = \"nope\""),
                "artifact.path",
            ),
            (SPEC.replace("path = \"app\"", ""), "artifact.path"),
            (
                SPEC.replace("\"executable\"", "\"zip\""),
                "media_type = \"zip\"",
            ),
            (
                SPEC.replace("\"executable\"", "\"tar+gzip\""),
                "run.entrypoint",
            ),
            (
                SPEC.replace("port = \"http\",", "port = \"admin\","),
                "run.health.probe.port",
            ),
            (
                SPEC.replace("memory_mb", "memory_mib"),
                "resources.memory_mib",
            ),
        ];
        for (text, field) in cases {
            let err = build(&text, dir.path()).expect_err(field);
            assert!(format!("{err:#}").contains(field), "{field}: {err:#}");
        }
    }
}
