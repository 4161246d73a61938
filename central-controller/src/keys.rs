//! Secrets in the data directory: the controller's Ed25519 signing key and the
//! admin token, both created at first start with owner-only permissions.

use std::io;
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom as _;
use verge_shared::SigningKey;

/// A secret file could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} does not hold a usable key: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("the system random source failed")]
    Random,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the directories above `path`, then writes a new file with `mode`
/// durably ([`verge_durable::create_new`]); fails if it already exists.
pub fn create_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyFileError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    verge_durable::create_new(path, contents, mode).map_err(io_error(path))
}

/// Loads `<data_dir>/keys/controller.pk8`, creating it (and `controller.pub`)
/// at first start.
pub fn load_or_create_signing_key(data_dir: &Path) -> Result<SigningKey, KeyFileError> {
    let path = data_dir.join("keys").join("controller.pk8");
    let key = match std::fs::read(&path) {
        Ok(pkcs8) => SigningKey::from_pkcs8(&pkcs8).map_err(|e| KeyFileError::Invalid {
            path: path.clone(),
            detail: e.to_string(),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let (key, pkcs8) = SigningKey::generate().map_err(|_| KeyFileError::Random)?;
            create_file(&path, &pkcs8, 0o600)?;
            key
        }
        Err(e) => return Err(io_error(&path)(e)),
    };
    // Rewritten every start so that it always matches the private key.
    let public_path = data_dir.join("keys").join("controller.pub");
    verge_durable::write(&public_path, format!("{}\n", key.public_key()).as_bytes())
        .map_err(io_error(&public_path))?;
    Ok(key)
}

/// The admin token: the secret itself only while it is shown; kept as a hash.
pub struct AdminToken {
    /// The token text, for printing.
    pub value: String,
    /// Whether this start created it (it is then shown once).
    pub created: bool,
    pub path: PathBuf,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("path", &self.path)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Loads `<data_dir>/admin-token`, creating 32 random bytes (hex) at first start.
pub fn load_or_create_admin_token(data_dir: &Path) -> Result<AdminToken, KeyFileError> {
    let path = data_dir.join("admin-token");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(AdminToken {
            value: text.trim().to_owned(),
            created: false,
            path,
        }),
        Ok(_) => Err(KeyFileError::Invalid {
            path,
            detail: "the file is empty".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            ring::rand::SystemRandom::new()
                .fill(&mut raw)
                .map_err(|_| KeyFileError::Random)?;
            let value = hex::encode(raw);
            create_file(&path, format!("{value}\n").as_bytes(), 0o600)?;
            Ok(AdminToken {
                value,
                created: true,
                path,
            })
        }
        Err(e) => Err(io_error(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn secrets_are_created_once_with_private_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = load_or_create_signing_key(dir.path()).expect("create");
        let again = load_or_create_signing_key(dir.path()).expect("load");
        assert_eq!(key.public_key(), again.public_key());
        let public = std::fs::read_to_string(dir.path().join("keys/controller.pub")).expect("pub");
        assert_eq!(public.trim(), key.public_key().to_string());
        let mode = std::fs::metadata(dir.path().join("keys/controller.pk8"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let token = load_or_create_admin_token(dir.path()).expect("token");
        assert!(token.created);
        assert_eq!(token.value.len(), 64);
        let token_again = load_or_create_admin_token(dir.path()).expect("token again");
        assert!(!token_again.created);
        assert_eq!(token.value, token_again.value);
        let mode = std::fs::metadata(&token.path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
