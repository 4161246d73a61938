//! `verge release push|ls|show`: the artifact is streamed up with a
//! progress bar (on a terminal), then the publisher-signed release.

use std::path::Path;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::Value;

use crate::args::ReleaseCommand;
use crate::client::{Client, json_of, segment};
use crate::output::{self, Format, field, items};

/// The largest release envelope the API takes.
const MAX_RELEASE_BYTES: u64 = 64 * 1024;

/// Streams `path` to `POST /api/v1/artifacts`; its `{"sha256", "size"}`.
async fn upload(client: &Client, path: &Path) -> anyhow::Result<Value> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening the artifact {}", path.display()))?;
    let size = file
        .metadata()
        .await
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    let bar = ProgressBar::new(size).with_style(
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!(
        "uploading {}",
        path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        )
    ));
    let counted = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            counted.inc(chunk.len() as u64);
        }
    });
    let request = client
        .authed(Method::POST, "/api/v1/artifacts")?
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream));
    let outcome = client.send(request, "POST /api/v1/artifacts").await;
    bar.finish_and_clear();
    let (status, _, body) = outcome?;
    let reply = json_of(&body, "POST /api/v1/artifacts")?;
    eprintln!(
        "artifact {} ({} bytes) {}",
        field(&reply, "sha256"),
        field(&reply, "size"),
        if status == reqwest::StatusCode::CREATED {
            "uploaded"
        } else {
            "was already stored"
        }
    );
    Ok(reply)
}

async fn push(
    client: &Client,
    artifact: &Path,
    release: &Path,
    format: Format,
) -> anyhow::Result<()> {
    // Read the release first: a wrong path fails before a long upload.
    let envelope = tokio::fs::read(release)
        .await
        .with_context(|| format!("reading the release {}", release.display()))?;
    if envelope.len() as u64 > MAX_RELEASE_BYTES {
        anyhow::bail!(
            "{} is larger than the {MAX_RELEASE_BYTES} bytes a release may be",
            release.display()
        );
    }
    upload(client, artifact).await?;
    let request = client
        .authed(Method::POST, "/api/v1/releases")?
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(envelope);
    let (status, _, body) = client.send(request, "POST /api/v1/releases").await?;
    let reply = json_of(&body, "POST /api/v1/releases")?;
    match format {
        Format::Json => output::print_json(&reply),
        Format::Table => {
            eprintln!(
                "release {} {} by {} {}",
                field(&reply, "service"),
                field(&reply, "version"),
                field(&reply, "publisher"),
                if status == reqwest::StatusCode::CREATED {
                    "stored"
                } else {
                    "was already stored"
                }
            );
            // The digest alone on stdout: REL=$(verge release push ...).
            println!("{}", field(&reply, "digest"));
        }
    }
    Ok(())
}

pub async fn run(client: &Client, command: ReleaseCommand, format: Format) -> anyhow::Result<()> {
    match command {
        ReleaseCommand::Push { artifact, release } => {
            push(client, &artifact, &release, format).await
        }
        ReleaseCommand::Ls => {
            let reply = client.get("/api/v1/releases").await?;
            match format {
                Format::Json => output::print_json(&reply),
                Format::Table => {
                    let mut table =
                        output::table(&["DIGEST", "SERVICE", "VERSION", "PUBLISHER", "CREATED"]);
                    for r in items(&reply, "releases") {
                        table.add_row(vec![
                            field(r, "digest"),
                            field(r, "service"),
                            field(r, "version"),
                            field(r, "publisher"),
                            field(r, "created_at"),
                        ]);
                    }
                    output::print_table(&table);
                }
            }
            Ok(())
        }
        ReleaseCommand::Show { digest } => {
            let reply = client
                .get(&format!("/api/v1/releases/{}", segment(&digest)))
                .await?;
            match format {
                Format::Json => output::print_json(&reply),
                Format::Table => {
                    output::print_fields(
                        &reply,
                        &["digest", "service", "version", "publisher", "created_at"],
                    );
                    for a in items(&reply, "artifacts") {
                        println!(
                            "{:<10}  {} ({} bytes, {})",
                            "artifact",
                            field(a, "sha256"),
                            field(a, "size"),
                            field(a, "media_type")
                        );
                    }
                    if let Some(run) = reply.get("run") {
                        println!("{:<10}  {}", "run", run);
                    }
                    if let Some(resources) = reply.get("resources") {
                        println!("{:<10}  {}", "resources", output::cell(resources));
                    }
                }
            }
            Ok(())
        }
    }
}
