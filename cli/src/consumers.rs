//! `verge consumer`: read-only consumer identities for the broker.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::args::ConsumerCommand;
use crate::client::{Client, segment};
use crate::output::{self, Format, field, items};

/// Writes `contents` to a new file `path` with `mode`; an existing file is
/// never overwritten.
fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the certificate files of a created consumer into `dir`.
fn write_certificate(reply: &Value, name: &str, dir: &Path) -> anyhow::Result<Vec<String>> {
    let text = |key: &str| reply.get(key).and_then(Value::as_str);
    let mut written = Vec::new();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(key) = text("key_pem") {
        let path = dir.join(format!("{name}.key"));
        write_new(&path, key, 0o600)?;
        written.push(path.display().to_string());
    }
    let cert = text("certificate_pem").context("the reply has no certificate")?;
    let path = dir.join(format!("{name}.pem"));
    write_new(&path, cert, 0o644)?;
    written.push(path.display().to_string());
    let ca = text("ca_pem").context("the reply has no CA certificate")?;
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path.display().to_string());
    Ok(written)
}

const COLUMNS: [(&str, &str); 6] = [
    ("NAME", "name"),
    ("USER", "user"),
    ("CREDENTIAL", "credential"),
    ("REGIONS", "regions"),
    ("EXPIRES", "not_after"),
    ("CREATED", "created_at"),
];

pub async fn run(client: &Client, command: ConsumerCommand, format: Format) -> anyhow::Result<()> {
    match command {
        ConsumerCommand::Create {
            name,
            regions,
            password,
            out_dir,
        } => {
            // Refuse before asking the controller, so no credential is lost.
            for file in [format!("{name}.pem"), format!("{name}.key")] {
                let path = out_dir.join(&file);
                if !password && path.exists() {
                    anyhow::bail!("{} exists; choose another --out-dir", path.display());
                }
            }
            let credential = if password { "password" } else { "certificate" };
            let body = json!({"name": name, "regions": regions, "credential": credential});
            let reply = client
                .call(Method::POST, "/api/v1/consumers", Some(&body))
                .await?;
            let scope = if regions.is_empty() {
                "every region".to_owned()
            } else {
                format!("regions {}", regions.join(", "))
            };
            if password {
                match format {
                    Format::Json => output::print_json(&reply),
                    Format::Table => {
                        eprintln!(
                            "Consumer {name} (broker user {}, {scope}); its password is shown only now:",
                            field(&reply, "user")
                        );
                        println!("{}", field(&reply, "password"));
                    }
                }
            } else {
                let written = write_certificate(&reply, &name, &out_dir)?;
                match format {
                    Format::Json => output::print_json(&json!({
                        "name": field(&reply, "name"),
                        "user": field(&reply, "user"),
                        "serial": field(&reply, "serial"),
                        "not_after": field(&reply, "not_after"),
                        "files": written,
                    })),
                    Format::Table => println!(
                        "Consumer {name} ({scope}), certificate valid until {}: wrote {}.",
                        field(&reply, "not_after"),
                        written.join(", ")
                    ),
                }
            }
        }
        ConsumerCommand::Ls => {
            let reply = client.get("/api/v1/consumers").await?;
            match format {
                Format::Json => output::print_json(&reply),
                Format::Table => {
                    let header: Vec<&str> = COLUMNS.iter().map(|(h, _)| *h).collect();
                    let mut table = output::table(&header);
                    for item in items(&reply, "consumers") {
                        table.add_row(COLUMNS.iter().map(|(_, k)| {
                            match *k {
                                "regions" => match item.get("regions").and_then(Value::as_array) {
                                    Some(r) if !r.is_empty() => r
                                        .iter()
                                        .filter_map(Value::as_str)
                                        .collect::<Vec<_>>()
                                        .join(","),
                                    _ => "all".to_owned(),
                                },
                                k => field(item, k),
                            }
                        }));
                    }
                    output::print_table(&table);
                }
            }
        }
        ConsumerCommand::Rm { name } => {
            client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/consumers/{}", segment(&name)),
                    None,
                )
                .await?;
            match format {
                Format::Json => output::print_json(&Value::Null),
                Format::Table => {
                    println!("Deleted consumer {name}: its credential no longer works.")
                }
            }
        }
    }
    Ok(())
}
