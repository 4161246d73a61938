//! A Server-Sent Events reader over an HTTP response body, as a watch
//! client would parse `GET /api/v1/watch`: events split on blank lines,
//! `id:`, `event:` and `data:` fields, comment lines counted.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::api::{Api, Reply};

/// One event as sent.
#[derive(Clone, Debug)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// An open event stream.
pub struct SseStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// Comment lines seen so far (keep-alives).
    pub comments: usize,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream")
            .field("comments", &self.comments)
            .finish_non_exhaustive()
    }
}

/// Opens `GET /api/v1/watch<query>`, with `Last-Event-ID` when given. A
/// refusal is the error reply.
pub async fn watch(
    api: &Api,
    query: &str,
    last_event_id: Option<u64>,
) -> Result<Result<SseStream, Reply>> {
    let id = last_event_id.map(|id| id.to_string());
    let headers: Vec<(&str, &str)> = id.iter().map(|id| ("last-event-id", id.as_str())).collect();
    let response = api.open(&format!("/api/v1/watch{query}"), &headers).await?;
    let status = response.status();
    if !status.is_success() {
        let body = response.json().await.unwrap_or(Value::Null);
        return Ok(Err(Reply { status, body }));
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("text/event-stream") {
        bail!("the watch answered with content-type {content_type:?}");
    }
    Ok(Ok(SseStream {
        response,
        buffer: Vec::new(),
        comments: 0,
    }))
}

impl SseStream {
    /// The next event within `timeout`; `None` when the server ended the
    /// stream. Comment lines are counted, not returned.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<SseEvent>> {
        tokio::time::timeout(timeout, self.next_event())
            .await
            .with_context(|| format!("no event within {timeout:?}"))?
    }

    async fn next_event(&mut self) -> Result<Option<SseEvent>> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                if let Some(event) = self.parse(&block)? {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.response.chunk().await? {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }

    /// One block of lines: an event, or `None` for comments only.
    fn parse(&mut self, block: &[u8]) -> Result<Option<SseEvent>> {
        let text = std::str::from_utf8(block).context("the stream is not UTF-8")?;
        let (mut id, mut event, mut data) = (None, None, Vec::new());
        for line in text.lines().filter(|l| !l.is_empty()) {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.parse().with_context(|| format!("id {value:?}"))?),
                "event" => event = Some(value.to_owned()),
                "data" => data.push(value),
                _ => {}
            }
        }
        if event.is_none() && data.is_empty() {
            return Ok(None);
        }
        let data = data.join("\n");
        Ok(Some(SseEvent {
            id,
            event: event.unwrap_or_else(|| "message".to_owned()),
            data: serde_json::from_str(&data).with_context(|| format!("data {data:?}"))?,
        }))
    }
}
