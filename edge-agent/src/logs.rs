//! Workload logs: size-bounded rotation of `stdout.log`/`stderr.log` and
//! reading their tail for a log request.
//!
//! The workload writes straight into its log files (opened `O_APPEND` by the
//! agent and inherited), not through a pipe, so it keeps running and
//! logging while the agent restarts and can be adopted afterwards. Rotation
//! is therefore copy-then-truncate, checked at a [`Pace`]: every second
//! while the logs grow, backing off to every [`CHECK_MAX`] while they do not,
//! so quiet workloads do not wake the agent every second. A file is bounded
//! by [`MAX_LOG_BYTES`] plus what the workload writes between two checks
//! (one second's worth while it keeps writing, at most [`CHECK_MAX`]'s worth
//! right after a quiet spell), and [`KEPT_FILES`] older copies are kept
//! (`stdout.log.1`, …).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::time::Duration;

use verge_shared::logs::{
    LogRequest, LogResponse, LogStream, MAX_LOG_REQUEST_BYTES, MAX_LOG_TAIL_BYTES,
    REQUEST_PAYLOAD_TYPE,
};
use verge_shared::messages::SCHEMA_VERSION;
use verge_shared::{AgentId, Envelope, PublicKey, Timestamp};

/// A log file is rotated once it is larger than this.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;
/// Rotated copies kept per stream.
pub const KEPT_FILES: u32 = 2;

/// The pace of rotation checks while a workload's logs grow.
pub const CHECK_MIN: Duration = Duration::from_secs(1);
/// The slowest pace, reached after a few checks that found nothing new.
pub const CHECK_MAX: Duration = Duration::from_secs(30);

/// When to look at one workload's logs next: after [`CHECK_MIN`] while they
/// grow, doubling up to [`CHECK_MAX`] while they stay the same size (or
/// cannot be checked).
#[derive(Clone, Debug)]
pub struct Pace {
    last_len: Option<u64>,
    delay: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            last_len: None,
            delay: CHECK_MIN,
        }
    }
}

impl Pace {
    /// Rotates what is due in `dir`; [`Pace::delay`] then says when to check again.
    pub fn check(&mut self, dir: &Path) -> std::io::Result<()> {
        let result = rotate(dir, MAX_LOG_BYTES);
        self.note(result.as_ref().ok().copied());
        result.map(|_| ())
    }

    /// Records the logs' total size at a check (`None`: it failed).
    fn note(&mut self, len: Option<u64>) {
        self.delay = if len.is_some() && len != self.last_len {
            CHECK_MIN
        } else {
            (self.delay * 2).min(CHECK_MAX)
        };
        self.last_len = len;
    }

    /// How long to wait before the next check.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

/// Rotates each stream's log in `dir` that grew over `max_bytes`; returns
/// the streams' total size before rotating.
pub fn rotate(dir: &Path, max_bytes: u64) -> std::io::Result<u64> {
    let mut total = 0u64;
    for stream in [LogStream::Stdout, LogStream::Stderr] {
        let name = stream.file_name();
        let path = dir.join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        total = total.saturating_add(meta.len());
        if meta.len() <= max_bytes {
            continue;
        }
        for n in (1..KEPT_FILES).rev() {
            let from = dir.join(format!("{name}.{n}"));
            if from.exists() {
                std::fs::rename(&from, dir.join(format!("{name}.{}", n + 1)))?;
            }
        }
        // Copy, then truncate: the workload's O_APPEND descriptor keeps
        // writing at the (new) end of the same file.
        std::fs::copy(&path, dir.join(format!("{name}.1")))?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)?
            .set_len(0)?;
    }
    Ok(total)
}

/// The last `lines` lines of a stream's current log file, oldest first,
/// reading at most [`MAX_LOG_TAIL_BYTES`]; `true` when older text exists
/// that is not returned. Invalid UTF-8 is replaced, not refused.
pub fn tail(dir: &Path, stream: LogStream, lines: usize) -> std::io::Result<(Vec<String>, bool)> {
    let mut file = std::fs::File::open(dir.join(stream.file_name()))?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(MAX_LOG_TAIL_BYTES as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
    file.take(MAX_LOG_TAIL_BYTES as u64)
        .read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    // A read starting mid-file begins with a partial line: drop it.
    let mut truncated = start > 0;
    if truncated && !all.is_empty() {
        all.remove(0);
    }
    if all.len() > lines {
        truncated = true;
        all.drain(..all.len() - lines);
    }
    Ok((all.into_iter().map(str::to_owned).collect(), truncated))
}

/// The last non-empty line of a stream's log, shortened, for status messages.
pub fn last_line(dir: &Path, stream: LogStream) -> Option<String> {
    let (lines, _) = tail(dir, stream, 5).ok()?;
    let line = lines.into_iter().rev().find(|l| !l.trim().is_empty())?;
    Some(line.chars().take(300).collect())
}

/// Checks a log request (size, controller signature, schema, this agent,
/// not expired) and reads the answer from the workload's directory under
/// `workloads_dir`. `Err` names why the request is not answered at all; a
/// request that is fine but finds no log gets an answer with `error` set.
pub fn answer(
    bytes: &[u8],
    controller_keys: &[PublicKey],
    agent: &AgentId,
    workloads_dir: &Path,
    now: Timestamp,
) -> Result<LogResponse, String> {
    let request: LogRequest = Envelope::parse(bytes, MAX_LOG_REQUEST_BYTES)
        .and_then(|e| e.open_any(REQUEST_PAYLOAD_TYPE, controller_keys))
        .map_err(|e| e.to_string())?;
    request.validate()?;
    if &request.agent != agent {
        return Err(format!("the request is for agent {}", request.agent));
    }
    if request.expires_at <= now {
        return Err(format!("the request expired at {}", request.expires_at));
    }
    let mut response = LogResponse {
        schema_version: SCHEMA_VERSION,
        agent: agent.clone(),
        request_id: request.request_id,
        service: request.service.clone(),
        stream: request.stream,
        lines: Vec::new(),
        truncated: false,
        error: None,
    };
    let dir = workloads_dir.join(request.service.as_str());
    match tail(&dir, request.stream, request.lines as usize) {
        Ok((lines, truncated)) => {
            response.lines = lines;
            response.truncated = truncated;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            response.error = Some(format!(
                "no {} log for workload {} on this node",
                request.stream.file_name(),
                request.service
            ));
        }
        Err(e) => response.error = Some(format!("cannot read the log: {e}")),
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_shared::logs::LogRequest;
    use verge_shared::{ServiceName, SigningKey};

    #[test]
    fn only_signed_current_requests_for_this_agent_are_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("hello")).expect("dir");
        std::fs::write(dir.path().join("hello/stdout.log"), "a\nb\nc\n").expect("write");
        let (controller, _) = SigningKey::generate().expect("key");
        let (stranger, _) = SigningKey::generate().expect("key");
        let agent = AgentId::new("edge-1").expect("valid");
        let now = Timestamp::from_unix_millis(1_000_000);
        let request = |service: &str| LogRequest {
            schema_version: SCHEMA_VERSION,
            agent: agent.clone(),
            request_id: "r1".into(),
            service: ServiceName::new(service).expect("valid"),
            stream: LogStream::Stdout,
            lines: 2,
            issued_at: now,
            expires_at: now.saturating_add(std::time::Duration::from_secs(10)),
        };
        let key = controller.public_key();
        let signed = controller.sign_json(REQUEST_PAYLOAD_TYPE, &request("hello"));
        let ok = answer(&signed, &[key], &agent, dir.path(), now).expect("answered");
        assert_eq!(ok.lines, ["b", "c"]);
        assert!(ok.truncated);
        assert_eq!(ok.request_id, "r1");

        let missing = controller.sign_json(REQUEST_PAYLOAD_TYPE, &request("other"));
        let none = answer(&missing, &[key], &agent, dir.path(), now).expect("answered");
        assert!(none.error.is_some_and(|e| e.contains("no stdout.log")));

        let forged = stranger.sign_json(REQUEST_PAYLOAD_TYPE, &request("hello"));
        assert!(answer(&forged, &[key], &agent, dir.path(), now).is_err());
        let later = now.saturating_add(std::time::Duration::from_secs(11));
        assert!(answer(&signed, &[key], &agent, dir.path(), later).is_err());
        let other = AgentId::new("edge-2").expect("valid");
        assert!(answer(&signed, &[key], &other, dir.path(), now).is_err());
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_copies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stdout.log");
        for round in 0..4 {
            std::fs::write(&log, format!("round {round}\n").repeat(20)).expect("write");
            rotate(dir.path(), 50).expect("rotate");
            assert_eq!(std::fs::metadata(&log).expect("log").len(), 0);
        }
        let newest = std::fs::read_to_string(dir.path().join("stdout.log.1")).expect("copy");
        assert!(newest.starts_with("round 3"), "{newest}");
        assert!(dir.path().join("stdout.log.2").exists());
        assert!(!dir.path().join("stdout.log.3").exists());
        // Small files are left alone.
        std::fs::write(&log, "short\n").expect("write");
        rotate(dir.path(), 50).expect("rotate");
        assert_eq!(std::fs::read_to_string(&log).expect("log"), "short\n");
    }

    #[test]
    fn checks_slow_down_while_logs_are_quiet_and_speed_up_when_they_grow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("stdout.log");
        std::fs::write(&log, "hello\n").expect("write");
        let mut pace = Pace::default();
        pace.check(dir.path()).expect("check");
        assert_eq!(pace.delay(), CHECK_MIN, "a first look counts as growth");
        let mut delays = Vec::new();
        for _ in 0..7 {
            pace.check(dir.path()).expect("check");
            delays.push(pace.delay().as_secs());
        }
        assert_eq!(delays, [2, 4, 8, 16, 30, 30, 30]);
        std::fs::write(&log, "hello\nagain\n").expect("write");
        pace.check(dir.path()).expect("check");
        assert_eq!(pace.delay(), CHECK_MIN);
        // A failed check backs off too, instead of failing every second.
        pace.note(None);
        assert_eq!(pace.delay(), 2 * CHECK_MIN);
    }

    #[test]
    fn tail_returns_the_last_lines_and_says_when_more_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text: String = (0..10).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.path().join("stderr.log"), text).expect("write");
        let (lines, truncated) = tail(dir.path(), LogStream::Stderr, 3).expect("tail");
        assert_eq!(lines, ["line 7", "line 8", "line 9"]);
        assert!(truncated);
        let (lines, truncated) = tail(dir.path(), LogStream::Stderr, 100).expect("tail");
        assert_eq!(lines.len(), 10);
        assert!(!truncated);
        assert_eq!(
            last_line(dir.path(), LogStream::Stderr).as_deref(),
            Some("line 9")
        );
        assert!(tail(dir.path(), LogStream::Stdout, 3).is_err());
    }

    #[test]
    fn tail_reads_a_bounded_amount_of_a_large_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "x".repeat(99) + "\n";
        std::fs::write(dir.path().join("stdout.log"), text.repeat(2000)).expect("write");
        let (lines, truncated) = tail(dir.path(), LogStream::Stdout, 1000).expect("tail");
        assert!(truncated);
        assert!(lines.len() < MAX_LOG_TAIL_BYTES / 100 + 1);
        assert!(lines.iter().all(|l| l.len() == 99));
    }
}
