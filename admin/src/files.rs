//! Reading and writing the operator's files: bounded reads, spec files with
//! unknown fields refused, atomic replacement of outputs, and private key
//! files created with mode 0600 that never overwrite anything.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde::de::DeserializeOwned;

/// Largest spec file (`bundle.toml`, `release.toml`) read.
pub const MAX_SPEC_BYTES: u64 = 1024 * 1024;

/// Reads at most `limit` bytes of `path`; a longer file is an error that
/// names it, and nothing past the limit is read.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let bytes = read_prefix(path, limit.saturating_add(1))?;
    if bytes.len() as u64 > limit {
        bail!("{}: larger than the limit of {limit} bytes", path.display());
    }
    Ok(bytes)
}

/// Reads the first `n` bytes of `path` (all of it when shorter).
pub fn read_prefix(path: &Path, n: u64) -> Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut bytes = Vec::new();
    file.take(n)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(bytes)
}

/// Reads a TOML spec file into `T`. Every key `T` does not know is refused
/// with its path, so that a misspelt field is never silently dropped.
pub fn read_spec<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_bounded(path, MAX_SPEC_BYTES)?;
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("{}: not UTF-8 text", path.display()))?;
    parse_spec(text).with_context(|| path.display().to_string())
}

/// Parses TOML `text` into `T`, refusing unknown keys (see [`read_spec`]).
pub fn parse_spec<T: DeserializeOwned>(text: &str) -> Result<T> {
    let de = toml::Deserializer::parse(text)?;
    let mut unknown = Vec::new();
    let spec = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))?;
    if !unknown.is_empty() {
        bail!("unknown field(s): {}", unknown.join(", "));
    }
    Ok(spec)
}

/// A path written in a spec file, taken relative to the spec's directory.
pub fn relative_to(spec: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    match spec.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// Writes `bytes` to `path` by `verge_durable`'s rule (temporary file,
/// fsync, rename, fsync the directory), so `path` is never half-written
/// (and may be the input).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    verge_durable::write(path, bytes).with_context(|| format!("{}: cannot write", path.display()))
}

/// Creates `path` with `bytes` and mode `mode`, refusing an existing file.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    verge_durable::create_new(path, bytes, mode).map_err(|e| {
        let context = if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{}: already exists; not overwriting it", path.display())
        } else {
            format!("{}: cannot create", path.display())
        };
        anyhow::Error::new(e).context(context)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Spec {
        name: String,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        size: u32,
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let spec: Spec = parse_spec("name = \"a\"\n[inner]\nsize = 1\n").expect("valid");
        assert_eq!(
            spec,
            Spec {
                name: "a".into(),
                inner: Inner { size: 1 }
            }
        );
        let err = parse_spec::<Spec>("name = \"a\"\nnmae = 1\n[inner]\nsise = 1\n")
            .expect_err("unknown keys");
        let text = format!("{err:#}");
        assert!(
            text.contains("nmae") && text.contains("inner.sise"),
            "{text}"
        );
    }

    #[test]
    fn bounded_reads_refuse_longer_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        fs::write(&path, [0u8; 10]).expect("write");
        assert_eq!(read_bounded(&path, 10).expect("fits").len(), 10);
        let err = read_bounded(&path, 9).expect_err("too long");
        assert!(format!("{err:#}").contains("limit of 9"), "{err:#}");
    }

    #[test]
    fn create_new_never_overwrites_and_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        create_new(&path, b"secret", 0o600).expect("create");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = create_new(&path, b"other", 0o600).expect_err("exists");
        assert!(format!("{err:#}").contains("already exists"), "{err:#}");
        assert_eq!(fs::read(&path).expect("read"), b"secret");
    }

    #[test]
    fn spec_paths_are_relative_to_the_spec() {
        let spec = Path::new("/etc/verge/bundle.toml");
        assert_eq!(relative_to(spec, "k.pub"), Path::new("/etc/verge/k.pub"));
        assert_eq!(relative_to(spec, "/keys/k.pub"), Path::new("/keys/k.pub"));
        assert_eq!(
            relative_to(Path::new("b.toml"), "k.pub"),
            Path::new("k.pub")
        );
    }
}
