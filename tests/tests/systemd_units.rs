//! The systemd units in `configs/systemd/` pass `systemd-analyze verify`,
//! with their `ExecStart` pointed at the binaries just built: every setting
//! parses (a misspelt one is only a warning there, so warnings fail here
//! too) and every command exists.

use std::path::PathBuf;
use std::process::Command;

use verge_tests::require::{Tool, missing};

#[test]
fn the_shipped_units_verify() {
    if missing(Tool::SystemdAnalyze) {
        return;
    }
    let Some(analyze) = Tool::SystemdAnalyze.path() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/systemd");
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&shipped).expect("configs/systemd") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read unit");
        let mut local = text.clone();
        for binary in ["central-controller", "edge-agent"] {
            let built = verge_tests::cluster::binary(binary);
            local = local.replace(
                &format!("/usr/local/bin/{binary} "),
                &format!("{} ", built.display()),
            );
        }
        assert_ne!(local, text, "{} starts no Verge binary", path.display());
        let name = path.file_name().expect("file name").to_owned();
        let copy = dir.path().join(&name);
        std::fs::write(&copy, local).expect("write unit");
        units.push(copy);
    }
    units.sort();
    assert_eq!(
        units.len(),
        2,
        "the controller's and the agent's: {units:?}"
    );
    let output = Command::new(analyze)
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let about_ours: Vec<&str> = stderr.lines().filter(|l| l.contains("verge-")).collect();
    assert!(about_ours.is_empty(), "warnings: {about_ours:?}");
}
