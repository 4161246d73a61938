//! Every example file in `configs/` loads with the real config loaders, so
//! the documented examples cannot drift from what the binaries accept.

use std::path::PathBuf;

fn example(name: &str) -> (String, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("example config is readable");
    (path.display().to_string(), text)
}

#[test]
fn example_controller_config_loads() {
    let (name, text) = example("controller.toml");
    let config = central_controller::config::Config::parse(&text, &name, |_| None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/verge"));
}

#[test]
fn example_agent_config_loads() {
    let (name, text) = example("agent.toml");
    let config = edge_agent::Config::from_toml(&text, |_| None)
        .unwrap_or_else(|e| panic!("{name}: {}", e.join("; ")));
    assert_eq!(config.id.as_str(), "edge-01");
    assert_eq!(config.region.as_str(), "eu-west");
}

#[test]
fn example_regions_file_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/regions.toml");
    let regions = central_controller::regions::Regions::load(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let seoul = verge_shared::RegionId::new("ap-seoul").expect("region");
    let busan = verge_shared::RegionId::new("ap-busan").expect("region");
    assert_eq!(regions.hint(&busan, &seoul), Some(9.0));
    assert_eq!(regions.zone(&seoul), Some("kr-north"));
}

#[test]
fn example_configs_cover_every_file_in_configs() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("configs/ exists")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["agent.toml", "controller.toml", "regions.toml"],
        "add a load test for each new example"
    );
}

#[test]
fn the_agent_names_a_log_filter_it_cannot_read_and_every_config_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "id = \"Not An Id\"\nregion = \"\"\n").expect("write");
    let output = std::process::Command::new(verge_tests::cluster::binary("edge-agent"))
        .arg("--config")
        .arg(&config)
        .env("VERGE_LOG", "edge_agent=loudly")
        .output()
        .expect("the agent runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("Ignored a log filter"), "{stderr}");
    assert!(
        stderr.contains("VERGE_LOG") && stderr.contains("edge_agent=loudly"),
        "{stderr}"
    );
    for field in ["id", "region", "data_dir"] {
        assert!(stderr.contains(field), "{field} not named: {stderr}");
    }
}

#[test]
fn the_controller_without_a_usable_trust_bundle_exits_78_and_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("controller.toml");
    std::fs::write(
        &config,
        "data_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n[broker]\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write");
    let output = std::process::Command::new(verge_tests::cluster::binary("central-controller"))
        .args(["run", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .expect("the controller runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    for hint in ["trust.bundle_file", "verge-admin init"] {
        assert!(stderr.contains(hint), "{hint} not named: {stderr}");
    }
}

/// The JSON lines among a binary's stderr (other lines are config errors,
/// which are printed before or without the logger).
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn both_binaries_log_json_lines_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(&agent_config, "id = \"Not An Id\"\n").expect("write");
    let agent = std::process::Command::new(verge_tests::cluster::binary("edge-agent"))
        .arg("--config")
        .arg(&agent_config)
        .env("VERGE_LOG", "edge_agent=loudly")
        .env("VERGE_LOG_FORMAT", "json")
        .output()
        .expect("the agent runs");
    let controller = std::process::Command::new(verge_tests::cluster::binary("central-controller"))
        .args(["run", "--config"])
        .arg(dir.path().join("missing.toml"))
        .env("VERGE_LOG", "central_controller=loudly")
        .env("VERGE_LOG_FORMAT", "json")
        .output()
        .expect("the controller runs");
    for (name, output) in [("agent", agent), ("controller", controller)] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{name}: {stderr}");
        let lines = json_lines(&stderr);
        let warning = lines
            .iter()
            .find(|l| l["fields"]["variable"] == "VERGE_LOG")
            .unwrap_or_else(|| panic!("{name}: no JSON line names VERGE_LOG: {stderr}"));
        assert_eq!(warning["level"], "WARN", "{name}: {warning}");
        assert!(warning["timestamp"].is_string(), "{name}: {warning}");
        assert!(
            warning["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Ignored a log filter")),
            "{name}: {warning}"
        );
    }

    // An unknown format is named, and text is written.
    let output = std::process::Command::new(verge_tests::cluster::binary("edge-agent"))
        .arg("--config")
        .arg(&agent_config)
        .env("VERGE_LOG_FORMAT", "yaml")
        .output()
        .expect("the agent runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(json_lines(&stderr).is_empty(), "{stderr}");
    assert!(
        stderr.contains("Ignored a log format") && stderr.contains("yaml"),
        "{stderr}"
    );
}

/// The fields a loader knows in `section` ("" for the top level), read from
/// its error for an unknown one (serde lists every field it expected); none
/// for a table of free keys such as `[labels]`.
fn known_fields(load: &dyn Fn(&str) -> String, section: &str) -> Vec<String> {
    let probe = if section.is_empty() {
        "zz_unknown_field = 1\n".to_owned()
    } else {
        format!("[{section}]\nzz_unknown_field = 1\n")
    };
    let message = load(&probe);
    if !message.contains("unknown field `zz_unknown_field`") {
        return Vec::new();
    }
    let (_, expected) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("no list of fields in {message}"));
    let line = expected.lines().next().unwrap_or_default();
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The keys a shipped file shows per section, set or commented out
/// (`# url = ...` documents `url`), and its section headers.
fn shown_keys(text: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut shown = std::collections::BTreeMap::<String, Vec<String>>::new();
    let mut section = String::new();
    shown.insert(section.clone(), Vec::new());
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim_matches(['[', ']']).to_owned();
            shown.entry(section.clone()).or_default();
            continue;
        }
        let line = line.trim_start_matches('#').trim();
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                shown
                    .entry(section.clone())
                    .or_default()
                    .push(key.to_owned());
            }
        }
    }
    shown
}

/// Every field the loader accepts appears in the shipped file, in its
/// section, so that the file stays the complete reference it claims to be.
fn assert_documents_every_field(file: &str, load: &dyn Fn(&str) -> String) {
    let (name, text) = example(file);
    let shown = shown_keys(&text);
    let mut missing = Vec::new();
    for field in known_fields(load, "") {
        if shown.contains_key(&field) {
            for key in known_fields(load, &field) {
                if !shown[&field].contains(&key) {
                    missing.push(format!("{field}.{key}"));
                }
            }
        } else if !shown[""].contains(&field) {
            missing.push(field);
        }
    }
    assert!(
        missing.is_empty(),
        "{name} does not document {missing:?}: add each with a comment saying what it does"
    );
}

#[test]
fn shipped_configs_document_every_field() {
    assert_documents_every_field("controller.toml", &|text| {
        central_controller::config::Config::parse(text, "probe", |_| None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    });
    assert_documents_every_field("agent.toml", &|text| {
        edge_agent::Config::from_toml(text, |_| None)
            .err()
            .map(|e| e.join("\n"))
            .unwrap_or_default()
    });
}
