//! The contexts file: named controllers with their address, CA file and API
//! token, and which one is current. `$VERGE_CONFIG`, else
//! `$XDG_CONFIG_HOME/verge/config.toml`, else `~/.config/verge/config.toml`;
//! written with mode 0600 (it holds tokens), replaced atomically.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::failure::Usage;

/// The largest contexts file read (it holds a few lines per context).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The whole file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One controller and the credentials to use with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The API's base address, `https://host:7700`.
    pub addr: String,
    /// The API token (`verge_<id>.<secret>` or the admin token).
    pub token: String,
    /// The controller's CA certificate, to verify an `https://` address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Who the token is (as `GET /api/v1/whoami` said at sign-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The token's role at sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Where the contexts file is.
pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("VERGE_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => bail!(Usage(
                "cannot find a place for the contexts file: set VERGE_CONFIG, XDG_CONFIG_HOME or HOME"
                    .to_owned()
            )),
        },
    };
    Ok(base.join("verge").join("config.toml"))
}

/// Reads the contexts file; an absent file is an empty one.
pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_CONFIG_BYTES + 1),
        &mut text,
    )
    .with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        bail!("{} is larger than {MAX_CONFIG_BYTES} bytes", path.display());
    }
    toml::from_str(&text)
        .with_context(|| format!("{} is not a valid contexts file", path.display()))
}

/// Writes the contexts file: a new file of mode 0600 next to it, synced,
/// then renamed over it.
pub fn save(path: &Path, config: &ConfigFile) -> anyhow::Result<()> {
    let text = toml::to_string(config).context("writing the contexts file")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().map_or_else(
        || "config.toml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn saved_contexts_read_back_and_only_the_owner_may_read_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("verge/config.toml");
        assert!(load(&path).expect("absent is empty").contexts.is_empty());
        let mut config = ConfigFile::default();
        config.contexts.insert(
            "dev".into(),
            Context {
                addr: "http://127.0.0.1:7700".into(),
                token: "secret".into(),
                ca_file: None,
                user: Some("admin".into()),
                role: Some("admin".into()),
            },
        );
        config.current = Some("dev".into());
        save(&path, &config).expect("save");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = load(&path).expect("load");
        assert_eq!(back.current.as_deref(), Some("dev"));
        assert_eq!(back.contexts["dev"].token, "secret");
    }

    #[test]
    fn a_misspelt_key_is_refused_with_the_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "curent = \"x\"\n").expect("write");
        let e = format!("{:#}", load(&path).expect_err("refused"));
        assert!(e.contains("config.toml") && e.contains("curent"), "{e}");
    }
}
