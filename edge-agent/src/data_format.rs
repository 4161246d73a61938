//! The agent's data directory format (`<data_dir>/FORMAT`) and its
//! migrations (docs/storage.md, "Data directory format").
//!
//! Format 1 is the layout of the releases before `FORMAT` existed:
//! `node.key`, `state/` (sled: the desired state, the `outbox` and `alarms`
//! trees), `artifacts/` (`sha256/`, `unpacked/` with manifests, `tmp/`),
//! `workloads/<name>/` (`workload.json`, `pid`), `tls/` and `trust/`.
//! Format 2 is the same layout with `FORMAT`.

use std::path::Path;

use tracing::info;
use verge_durable::format::{DataFormat, FormatError, Migration, Opened};

/// The format this agent reads and writes.
pub const FORMAT: DataFormat = DataFormat {
    program: "edge-agent",
    current: 2,
    migrations: &[Migration {
        from: 1,
        describe: "format 1 to 2: the layout is unchanged; FORMAT is written",
        run: |_| Ok(()),
    }],
};

/// Brings the data directory `dir` (which exists) to [`FORMAT`], or
/// refuses it (written by a newer release, or by another program).
pub fn open(dir: &Path) -> Result<(), FormatError> {
    match FORMAT.open(dir)? {
        Opened::Created | Opened::Current => {}
        Opened::Migrated { from, steps } => info!(
            data_dir = %dir.display(),
            from,
            to = FORMAT.current,
            ?steps,
            "Migrated the data directory."
        ),
    }
    Ok(())
}
