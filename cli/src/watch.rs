//! `verge watch`: prints `GET /api/v1/watch` (Server-Sent Events) as it
//! comes, and when the stream breaks reconnects with `Last-Event-ID` so
//! that nothing is lost or repeated (a `relist` says when changes were).

use std::time::Duration;

use anyhow::bail;
use reqwest::Method;
use serde_json::Value;

use crate::args::WatchArgs;
use crate::client::{Client, with_query};
use crate::failure::ApiError;
use crate::output::{Format, field};

/// The longest SSE line accepted (an event's data is one JSON line).
const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;
/// The longest wait between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One event of the stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Splits an SSE byte stream into events; bounded line length.
#[derive(Default)]
pub struct Parser {
    line: Vec<u8>,
    current: Event,
    has_data: bool,
}

impl Parser {
    /// Feeds bytes; returns the events completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<Event>> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.line.len() >= MAX_LINE_BYTES {
                    bail!("the watch stream sent a line longer than {MAX_LINE_BYTES} bytes");
                }
                self.line.push(b);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if self.has_data || self.current.event.is_some() {
                    out.push(std::mem::take(&mut self.current));
                }
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match name {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// What an object is, in a few words, for the table output.
fn describe(kind: &str, object: &Value) -> String {
    match kind {
        "node" => field(object, "id"),
        "service" | "user" => field(object, "name"),
        "replica" => {
            let mut text = format!("{}/{}", field(object, "service"), field(object, "index"));
            if let Some(node) = object.get("node").and_then(Value::as_str) {
                text.push_str(&format!(" on {node}"));
            }
            if let Some(from) = object.get("previous_node").and_then(Value::as_str) {
                text.push_str(&format!(" (from {from})"));
            }
            if let Some(reason) = object.get("reason").and_then(Value::as_str) {
                text.push_str(&format!(": {reason}"));
            }
            text
        }
        "release" => format!(
            "{} {} {}",
            field(object, "service"),
            field(object, "version"),
            field(object, "digest")
        ),
        "token" => format!("{} region {}", field(object, "id"), field(object, "region")),
        "api_token" => format!(
            "{} {} of {}",
            field(object, "id"),
            field(object, "name"),
            field(object, "user")
        ),
        _ => object.to_string(),
    }
}

/// Prints one event; returns whether it was the stream's `dropped` end.
fn print(event: &Event, format: Format) -> bool {
    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    let kind = event.event.clone().unwrap_or_else(|| field(&data, "kind"));
    match kind.as_str() {
        "sync" | "relist" | "dropped" => {
            let message = field(&data, "message");
            if kind == "relist" {
                eprintln!("relist ({}): {message}", field(&data, "reason"));
            } else {
                eprintln!("{kind}: {message}");
            }
            if format == Format::Json {
                println!("{}", event.data);
            }
            return kind == "dropped";
        }
        _ => {}
    }
    match format {
        Format::Json => println!("{}", event.data),
        Format::Table => println!(
            "{}  {:<8} {:<10} {}",
            field(&data, "at"),
            kind,
            field(&data, "action"),
            describe(&kind, data.get("object").unwrap_or(&Value::Null))
        ),
    }
    false
}

pub async fn run(client: &Client, args: WatchArgs, format: Format) -> anyhow::Result<()> {
    let path = with_query(
        "/api/v1/watch",
        &[
            ("kind", args.kind),
            ("service", args.service),
            ("region", args.region),
        ],
    );
    let mut last_id: Option<String> = args.since.map(|s| s.to_string());
    let mut backoff = Duration::from_secs(1);
    loop {
        let mut request = client.authed(Method::GET, &path)?;
        if let Some(id) = &last_id {
            request = request.header("Last-Event-ID", id);
        }
        let broke = match request.send().await {
            Err(e) => format!("cannot reach {}: {e}", client.target().addr),
            Ok(response) if !response.status().is_success() => {
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                let error = ApiError::from_body(status, &body);
                // Busy (503) or throttled (429): try again; anything else is final.
                if status != 503 && status != 429 {
                    return Err(error.into());
                }
                error.to_string()
            }
            Ok(mut response) => {
                let mut parser = Parser::default();
                loop {
                    match response.chunk().await {
                        Ok(Some(bytes)) => {
                            let mut dropped = false;
                            for event in parser.feed(&bytes)? {
                                if let Some(id) = &event.id {
                                    last_id = Some(id.clone());
                                }
                                dropped |= print(&event, format);
                            }
                            backoff = Duration::from_secs(1);
                            if dropped {
                                break "the controller dropped this watcher".to_owned();
                            }
                        }
                        Ok(None) => break "the stream ended".to_owned(),
                        Err(e) => break format!("the stream broke: {e}"),
                    }
                }
            }
        };
        eprintln!(
            "{broke}; reconnecting in {}{}",
            humantime::format_duration(backoff),
            last_id
                .as_ref()
                .map(|id| format!(" from change {id}"))
                .unwrap_or_default()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_chunks_and_comments_skipped() {
        let mut parser = Parser::default();
        let mut events = parser
            .feed(b"id: 7\nevent: node\ndata: {\"a\":")
            .expect("feed");
        assert!(events.is_empty());
        events.extend(
            parser
                .feed(b"1}\n\n: keep-alive\n\nid: 8\r\nevent: sync\r\ndata: {}\r\n\r\n")
                .expect("feed"),
        );
        assert_eq!(
            events,
            [
                Event {
                    id: Some("7".into()),
                    event: Some("node".into()),
                    data: "{\"a\":1}".into()
                },
                Event {
                    id: Some("8".into()),
                    event: Some("sync".into()),
                    data: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = Parser::default();
        let chunk = vec![b'x'; 1024 * 1024];
        let mut outcome = Ok(Vec::new());
        for _ in 0..5 {
            outcome = parser.feed(&chunk);
            if outcome.is_err() {
                break;
            }
        }
        assert!(outcome.is_err());
    }
}
