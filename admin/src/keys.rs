//! Key files: Ed25519 private keys as PKCS#8 (mode 0600) and public keys as
//! one line of base64 in a `.pub` file next to them.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use verge_shared::{PublicKey, SigningKey};

use crate::files;

/// Largest key file read; an Ed25519 PKCS#8 document is 85 bytes.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// The public key file of a private key file: `root1.pk8` → `root1.pub`,
/// any other name gets `.pub` appended.
pub fn pub_path(private: &Path) -> PathBuf {
    let stem = if private.extension().is_some_and(|e| e == "pk8") {
        private.with_extension("")
    } else {
        private.to_owned()
    };
    let mut name = stem.into_os_string();
    name.push(".pub");
    PathBuf::from(name)
}

/// Creates a new key: the private key at `out` (mode 0600) and its public
/// key next to it. Neither file may exist yet.
pub fn create(out: &Path) -> Result<(PublicKey, PathBuf)> {
    let public_path = pub_path(out);
    for path in [out, public_path.as_path()] {
        if path.try_exists().unwrap_or(true) {
            bail!(
                "{}: already exists (or cannot be checked); not overwriting it",
                path.display()
            );
        }
    }
    let (key, pkcs8) = SigningKey::generate().context("cannot generate a key")?;
    files::create_new(out, &pkcs8, 0o600)?;
    let public = key.public_key();
    files::create_new(&public_path, format!("{public}\n").as_bytes(), 0o644)?;
    Ok((public, public_path))
}

/// Loads a private key for signing. A file others can read is used, with
/// a warning: the key should be treated as exposed.
pub fn load_signing(path: &Path) -> Result<SigningKey> {
    let bytes = files::read_bounded(path, MAX_KEY_FILE_BYTES)?;
    let key = SigningKey::from_pkcs8(&bytes).map_err(|e| {
        if public_from_text(&bytes).is_ok() {
            anyhow::anyhow!(
                "{}: this is a public key; signing needs the private key file",
                path.display()
            )
        } else {
            anyhow::anyhow!("{}: {e}", path.display())
        }
    })?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} can be read by other users (mode {:o}); treat key {} as exposed",
            path.display(),
            meta.permissions().mode() & 0o777,
            key.key_id()
        );
    }
    Ok(key)
}

/// The public key in a key file: a `.pub` file, or a private key file.
pub fn load_any(path: &Path) -> Result<PublicKey> {
    let bytes = files::read_bounded(path, MAX_KEY_FILE_BYTES)?;
    if let Ok(key) = SigningKey::from_pkcs8(&bytes) {
        return Ok(key.public_key());
    }
    public_from_text(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{}: neither an Ed25519 PKCS#8 private key nor a public key file ({e})",
            path.display()
        )
    })
}

/// A public key as written in a spec file: base64 of the key itself, or
/// the path of a `.pub` file relative to the spec.
pub fn from_spec(spec: &Path, value: &str) -> Result<PublicKey> {
    if let Ok(key) = PublicKey::from_base64(value) {
        return Ok(key);
    }
    let path = files::relative_to(spec, value);
    let bytes = files::read_bounded(&path, MAX_KEY_FILE_BYTES)?;
    public_from_text(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{value:?} is neither a base64 public key nor a readable .pub file ({}: {e})",
            path.display()
        )
    })
}

fn public_from_text(bytes: &[u8]) -> Result<PublicKey, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_owned())?;
    PublicKey::from_base64(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_file_names() {
        assert_eq!(pub_path(Path::new("k/root1.pk8")), Path::new("k/root1.pub"));
        assert_eq!(pub_path(Path::new("root1")), Path::new("root1.pub"));
        assert_eq!(pub_path(Path::new("a.key")), Path::new("a.key.pub"));
    }

    #[test]
    fn created_keys_load_back_as_the_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("p.pk8");
        let (public, public_path) = create(&private).expect("create");
        assert_eq!(load_signing(&private).expect("load").public_key(), public);
        assert_eq!(load_any(&private).expect("private"), public);
        assert_eq!(load_any(&public_path).expect("public"), public);
        let spec = dir.path().join("bundle.toml");
        assert_eq!(from_spec(&spec, "p.pub").expect("path"), public);
        assert_eq!(from_spec(&spec, &public.to_string()).expect("b64"), public);
        // Never over an existing key.
        assert!(create(&private).is_err());
        // A public key is not a signing key, and the error says so.
        let err = load_signing(&public_path).expect_err("public");
        assert!(format!("{err:#}").contains("public key"), "{err:#}");
        let err = from_spec(&spec, "missing.pub").expect_err("missing");
        assert!(format!("{err:#}").contains("missing.pub"), "{err:#}");
    }
}
