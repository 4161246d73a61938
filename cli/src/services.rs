//! `verge service apply|ls|show|rm`: declarative apply (the whole service
//! is `PUT`, conditional on the revision read, after showing what changes)
//! and `--wait`, which follows the replicas until they run or fail.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::args::{ApplyArgs, ServiceCommand};
use crate::client::{Client, segment};
use crate::failure::{ApiError, Usage};
use crate::output::{self, Format, field, items};

/// The largest service file read (the API takes at most 64 KiB).
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// How often `--wait` looks at the service.
const POLL: Duration = Duration::from_secs(1);

/// A replica state `--wait` takes as final failure.
fn failed(state: &str) -> bool {
    matches!(state, "failed" | "crash_loop" | "exited")
}

/// Reads a service file: TOML, or JSON when it ends in `.json` (standard
/// input: JSON if it parses as JSON, else TOML). Returns its `name` (if
/// any) and the rest, the PUT body.
pub fn read_service_file(path: &Path) -> anyhow::Result<(Option<String>, Map<String, Value>)> {
    let mut text = String::new();
    let from_stdin = path == Path::new("-");
    if from_stdin {
        std::io::stdin()
            .take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .context("reading the service from standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!(Usage(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    let json = path.extension().is_some_and(|e| e == "json")
        || (from_stdin && text.trim_start().starts_with('{'));
    let value: Value = if json {
        serde_json::from_str(&text)
            .map_err(|e| Usage(format!("{} is not valid JSON: {e}", path.display())))?
    } else {
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| Usage(format!("{} is not valid TOML: {e}", path.display())))?;
        serde_json::to_value(table).context("converting TOML")?
    };
    let Value::Object(mut body) = value else {
        bail!(Usage(format!(
            "{} must hold a table (an object)",
            path.display()
        )));
    };
    let name = match body.remove("name") {
        None => None,
        Some(Value::String(name)) => Some(name),
        Some(other) => bail!(Usage(format!(
            "{}: `name` must be a string, not {other}",
            path.display()
        ))),
    };
    Ok((name, body))
}

/// Paths of the leaves of a spec (`placement.latency.to`), arrays kept whole.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

/// Whether an absent field and `value` mean the same (the API's defaults).
fn is_default(path: &str, value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => path == "placement.spread" && s == "zone",
        Value::Number(n) => path == "placement.priority" && n.as_u64() == Some(0),
    }
}

/// What changes from `current` to `new`, one line per field:
/// `~ replicas: 1 -> 2`, `+ config.MODE: "edge"`, `- regions: ["x"]`.
pub fn diff(current: &Value, new: &Value) -> Vec<String> {
    let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
    flatten("", current, &mut before);
    flatten("", new, &mut after);
    let mut paths: Vec<&String> = before.keys().chain(after.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut lines = Vec::new();
    for path in paths {
        match (before.get(path), after.get(path)) {
            (Some(b), Some(a)) if b == a => {}
            (Some(b), Some(a)) => lines.push(format!("~ {path}: {b} -> {a}")),
            (Some(b), None) if !is_default(path, b) => lines.push(format!("- {path}: {b}")),
            (None, Some(a)) if !is_default(path, a) => lines.push(format!("+ {path}: {a}")),
            _ => {}
        }
    }
    lines
}

/// Whether the replica's node has not been heard from since the controller
/// started (its state is the stored one, not yet confirmed).
fn unconfirmed(r: &Value) -> bool {
    r.get("unconfirmed").and_then(Value::as_bool) == Some(true)
}

/// The replica's state, marked when it is not yet confirmed.
fn shown_state(r: &Value) -> String {
    let state = field(r, "state");
    if unconfirmed(r) {
        format!("{state} (unconfirmed)")
    } else {
        state
    }
}

fn replica_line(r: &Value) -> String {
    let state = field(r, "state");
    let mut line = format!("replica {}: {}", field(r, "index"), shown_state(r));
    if let Some(node) = r.get("node").and_then(Value::as_str) {
        line.push_str(&format!(" on {node}"));
    }
    if state == "running" {
        line.push_str(&format!(" (pid {}", field(r, "pid")));
        let ports = field(r, "ports");
        if ports != "-" {
            line.push_str(&format!(", ports {ports}"));
        }
        if let Some(health) = r.get("health").filter(|h| !h.is_null()) {
            line.push_str(&format!(", health {}", output::cell(health)));
        }
        line.push(')');
    }
    for key in ["reason", "message"] {
        if let Some(text) = r.get(key).and_then(Value::as_str) {
            line.push_str(&format!(": {text}"));
        }
    }
    if failed(&state)
        && let Some(exit) = r.get("last_exit").filter(|e| !e.is_null())
    {
        line.push_str(&format!(" (last exit: {})", output::cell(exit)));
    }
    line
}

fn show(service: &Value) {
    output::print_fields(service, &["name", "version", "revision", "updated_at"]);
    let spec = service.get("spec").unwrap_or(&Value::Null);
    println!("{:<10}  {}", "release", field(spec, "release"));
    println!("{:<10}  {}", "replicas", field(spec, "replicas"));
    println!("{:<10}  {}", "regions", field(spec, "regions"));
    let list = items(service, "replicas");
    if list.is_empty() {
        return;
    }
    println!();
    let mut table = output::table(&[
        "REPLICA", "NODE", "REGION", "STATE", "PID", "PORTS", "RESTARTS", "HEALTH", "REASON",
    ]);
    for r in list {
        let reason = match (
            r.get("reason").and_then(Value::as_str),
            r.get("message").and_then(Value::as_str),
        ) {
            (Some(a), Some(b)) => format!("{a}; {b}"),
            (Some(a), None) | (None, Some(a)) => a.to_owned(),
            (None, None) => "-".into(),
        };
        table.add_row(vec![
            field(r, "index"),
            field(r, "node"),
            field(r, "region"),
            shown_state(r),
            field(r, "pid"),
            field(r, "ports"),
            field(r, "restarts"),
            field(r, "health"),
            reason,
        ]);
    }
    output::print_table(&table);
}

fn summary(service: &Value) -> String {
    let list = items(service, "replicas");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in list {
        *counts.entry(field(r, "state")).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The service, or `None` when there is none of that name.
async fn current(client: &Client, name: &str) -> anyhow::Result<Option<(Value, Option<String>)>> {
    let path = format!("/api/v1/services/{}", segment(name));
    let request = client.authed(Method::GET, &path)?;
    match client.send(request, &format!("GET {path}")).await {
        Ok((_, headers, body)) => {
            let etag = headers
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok(Some((crate::client::json_of(&body, &path)?, etag)))
        }
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 404) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn apply(client: &Client, args: ApplyArgs, format: Format) -> anyhow::Result<()> {
    let (file_name, mut body) = read_service_file(&args.file)?;
    let Some(name) = args.name.or(file_name) else {
        bail!(Usage(format!(
            "{} has no `name`; add one or pass --name",
            args.file.display()
        )));
    };
    if let Some(release) = args.release {
        body.insert("release".into(), json!(release));
    }
    let body = Value::Object(body);
    let existing = current(client, &name).await?;
    // In JSON mode stdout carries only the API's JSON; the diff goes to stderr.
    let say = |line: &str| match format {
        Format::Table => println!("{line}"),
        Format::Json => eprintln!("{line}"),
    };
    let changes = match &existing {
        None => {
            say(&format!("service {name}: new"));
            diff(&Value::Null, &body)
        }
        Some((view, _)) => diff(view.get("spec").unwrap_or(&Value::Null), &body),
    };
    if existing.is_some() {
        say(&format!(
            "service {name}: {}",
            if changes.is_empty() {
                "no change"
            } else {
                "changes"
            }
        ));
    }
    for line in &changes {
        say(&format!("  {line}"));
    }
    if args.dry_run {
        if format == Format::Json {
            output::print_json(&json!({"name": name, "changes": changes}));
        }
        return Ok(());
    }
    let path = format!("/api/v1/services/{}", segment(&name));
    let mut view = match &existing {
        Some((view, _)) if changes.is_empty() => view.clone(),
        _ => {
            let mut request = client.authed(Method::PUT, &path)?.json(&body);
            request = match &existing {
                Some((_, Some(etag))) => request.header(reqwest::header::IF_MATCH, etag),
                Some((_, None)) => request,
                None => request.header(reqwest::header::IF_NONE_MATCH, "*"),
            };
            let (status, _, reply) = client.send(request, &format!("PUT {path}")).await?;
            let view = crate::client::json_of(&reply, &path)?;
            say(&format!(
                "service {name}: {} (revision {})",
                if status == reqwest::StatusCode::CREATED {
                    "created"
                } else {
                    "updated"
                },
                field(&view, "revision")
            ));
            view
        }
    };
    if args.wait {
        view = wait(client, &name, &path, args.timeout, format).await?;
    }
    if format == Format::Json {
        output::print_json(&view);
    }
    Ok(())
}

/// Follows the service until every replica runs (Ok) or one fails, or the
/// time is up (Err), printing each replica's state when it changes.
async fn wait(
    client: &Client,
    name: &str,
    path: &str,
    timeout: Duration,
    format: Format,
) -> anyhow::Result<Value> {
    let say = |line: &str| match format {
        Format::Table => println!("{line}"),
        Format::Json => eprintln!("{line}"),
    };
    let deadline = Instant::now() + timeout;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let view = client.get(path).await?;
        let replicas = items(&view, "replicas");
        let mut all_running = true;
        let mut failures = Vec::new();
        for r in replicas {
            let line = replica_line(r);
            let index = field(r, "index");
            if seen.get(&index) != Some(&line) {
                say(&line);
                seen.insert(index, line.clone());
            }
            let state = field(r, "state");
            // A state from before the controller started does not count.
            all_running &= state == "running" && !unconfirmed(r);
            if failed(&state) {
                failures.push(line);
            }
        }
        if !failures.is_empty() {
            bail!(
                "service {name}: {} of {} replica(s) failed: {}",
                failures.len(),
                replicas.len(),
                failures.join("; ")
            );
        }
        if all_running {
            say(&format!(
                "service {name}: {} replica(s) running",
                replicas.len()
            ));
            return Ok(view);
        }
        if Instant::now() >= deadline {
            bail!(
                "service {name}: not every replica runs after {} ({})",
                humantime::format_duration(timeout),
                summary(&view)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

pub async fn run(client: &Client, command: ServiceCommand, format: Format) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Apply(args) => apply(client, args, format).await?,
        ServiceCommand::Ls => {
            let reply = client.get("/api/v1/services").await?;
            match format {
                Format::Json => output::print_json(&reply),
                Format::Table => {
                    let mut table = output::table(&[
                        "NAME", "VERSION", "REVISION", "REPLICAS", "STATES", "UPDATED",
                    ]);
                    for s in items(&reply, "services") {
                        let spec = s.get("spec").unwrap_or(&Value::Null);
                        table.add_row(vec![
                            field(s, "name"),
                            field(s, "version"),
                            field(s, "revision"),
                            field(spec, "replicas"),
                            summary(s),
                            field(s, "updated_at"),
                        ]);
                    }
                    output::print_table(&table);
                }
            }
        }
        ServiceCommand::Show { name } => {
            let view = client
                .get(&format!("/api/v1/services/{}", segment(&name)))
                .await?;
            match format {
                Format::Json => output::print_json(&view),
                Format::Table => show(&view),
            }
        }
        ServiceCommand::Rm { name } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/services/{}", segment(&name)),
                    None,
                )
                .await?;
            match format {
                Format::Json => output::print_json(&Value::Null),
                Format::Table => println!("Removed service {name}; its workloads are stopped."),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_names_each_changed_field_and_ignores_defaults() {
        let current = json!({"release": "aa", "replicas": 1, "regions": ["local"],
                             "placement": {"spread": "zone", "priority": 0}});
        let new = json!({"release": "bb", "replicas": 1, "regions": ["local"],
                         "config": {"MODE": "edge"}, "rollback": false});
        assert_eq!(
            diff(&current, &new),
            ["+ config.MODE: \"edge\"", "~ release: \"aa\" -> \"bb\""]
        );
        assert!(diff(&current, &current).is_empty());
        let fewer = json!({"release": "aa", "replicas": 1});
        assert_eq!(diff(&current, &fewer), ["- regions: [\"local\"]"]);
        assert_eq!(
            diff(&Value::Null, &json!({"release": "aa", "replicas": 2})),
            ["+ release: \"aa\"", "+ replicas: 2"]
        );
    }

    #[test]
    fn a_service_file_is_toml_or_json_with_a_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml_path = dir.path().join("svc.toml");
        std::fs::write(
            &toml_path,
            "name = \"hello\"\nreplicas = 2\nregions = [\"local\"]\n[config]\nMODE = \"edge\"\n",
        )
        .expect("write");
        let (name, body) = read_service_file(&toml_path).expect("TOML");
        assert_eq!(name.as_deref(), Some("hello"));
        assert_eq!(
            Value::Object(body),
            json!({"replicas": 2, "regions": ["local"], "config": {"MODE": "edge"}})
        );
        let json_path = dir.path().join("svc.json");
        std::fs::write(&json_path, r#"{"replicas": 1}"#).expect("write");
        let (name, body) = read_service_file(&json_path).expect("JSON");
        assert_eq!((name, Value::Object(body)), (None, json!({"replicas": 1})));
        std::fs::write(&json_path, "replicas = 1").expect("write");
        let e = read_service_file(&json_path).expect_err("not JSON");
        assert!(e.downcast_ref::<Usage>().is_some(), "{e:#}");
    }

    #[test]
    fn a_failed_replica_line_says_why() {
        let r = json!({"index": 0, "node": "edge-a", "state": "crash_loop", "reason": null,
                       "message": "exited 5 times in 10 s", "last_exit": {"code": 64}});
        assert_eq!(
            replica_line(&r),
            "replica 0: crash_loop on edge-a: exited 5 times in 10 s (last exit: code=64)"
        );
        let r = json!({"index": 1, "node": null, "state": "unplaced",
                       "reason": "0/3 nodes: 3 offline"});
        assert_eq!(
            replica_line(&r),
            "replica 1: unplaced: 0/3 nodes: 3 offline"
        );
    }
}
