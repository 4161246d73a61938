//! Health checks of running workloads: TCP connect, HTTP GET with a status
//! range, and exec, each with a timeout; thresholds turn single results into
//! a [`HealthState`] that goes into the workload's status.
//!
//! Probes go to `127.0.0.1` only. The HTTP probe is a hand-written
//! `GET` that reads at most one small status line, so a misbehaving
//! workload cannot make the agent read without bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use verge_shared::ServiceName;
use verge_shared::messages::{HealthCheck, HealthState, Probe};

use crate::report::Board;
use crate::ticks::Ticks;

/// Most bytes of an HTTP answer the probe reads to find the status code.
const MAX_STATUS_LINE_BYTES: usize = 256;

/// Counts consecutive results and decides the health state.
#[derive(Clone, Debug)]
pub struct Verdict {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    successes: u32,
    failures: u32,
    state: HealthState,
}

impl Verdict {
    pub fn new(check: &HealthCheck) -> Self {
        Self {
            healthy_threshold: check.healthy_threshold,
            unhealthy_threshold: check.unhealthy_threshold,
            successes: 0,
            failures: 0,
            state: HealthState::Unknown,
        }
    }

    /// Records one probe result and returns the (possibly unchanged) state.
    pub fn record(&mut self, ok: bool) -> HealthState {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.healthy_threshold {
                self.state = HealthState::Healthy;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.unhealthy_threshold {
                self.state = HealthState::Unhealthy;
            }
        }
        self.state
    }
}

/// How the exec probe starts its command (as the workload's user, with its
/// environment, in its directory).
pub type ExecCommand = Arc<dyn Fn(&[String]) -> tokio::process::Command + Send + Sync>;

/// Probes until `cancel`, writing each change of state to the board.
pub async fn run(
    service: ServiceName,
    check: HealthCheck,
    ports: BTreeMap<String, u16>,
    exec: ExecCommand,
    board: Arc<Board>,
    cancel: CancellationToken,
) {
    let mut verdict = Verdict::new(&check);
    let timeout = Duration::from_secs(check.timeout_secs.into());
    let mut ticks = Ticks::every(Duration::from_secs(check.interval_secs.into()));
    board.set_health(&service, HealthState::Unknown);
    let mut last = HealthState::Unknown;
    while ticks.next(&cancel).await {
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            result = tokio::time::timeout(timeout, probe(&check.probe, &ports, &exec)) => {
                result.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
            }
        };
        let state = verdict.record(result.is_ok());
        if state != last {
            match &result {
                Ok(()) => info!(service = %service, health = ?state, "Workload health changed."),
                Err(detail) => {
                    warn!(service = %service, health = ?state, detail = %detail, "Workload health changed.");
                }
            }
            board.set_health(&service, state);
            last = state;
        }
    }
}

/// One probe; `Err` says what failed.
async fn probe(
    probe: &Probe,
    ports: &BTreeMap<String, u16>,
    exec: &ExecCommand,
) -> Result<(), String> {
    let port_of = |name: &str| {
        ports
            .get(name)
            .copied()
            .ok_or_else(|| format!("no port named {name:?}"))
    };
    match probe {
        Probe::Tcp { port } => {
            let port = port_of(port)?;
            TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| format!("connect to port {port}: {e}"))
        }
        Probe::Http {
            port,
            path,
            status_min,
            status_max,
        } => {
            let port = port_of(port)?;
            let status = http_status(port, path).await?;
            if (*status_min..=*status_max).contains(&status) {
                Ok(())
            } else {
                Err(format!(
                    "GET {path} on port {port} answered {status}, outside {status_min}..={status_max}"
                ))
            }
        }
        Probe::Exec { command } => {
            let status = exec(command)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("cannot run {:?}: {e}", command[0]))?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("{:?} {status}", command[0]))
            }
        }
    }
}

/// The status code of `GET path` on `127.0.0.1:port`.
async fn http_status(port: u16, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect to port {port}: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send to port {port}: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    while head.len() < MAX_STATUS_LINE_BYTES && !head.contains(&b'\n') {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read from port {port}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&head).ok_or_else(|| {
        format!(
            "port {port} did not answer with an HTTP status line: {:?}",
            String::from_utf8_lossy(&head[..head.len().min(80)])
        )
    })
}

/// `HTTP/1.x NNN ...` → NNN.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp {
                port: "http".into(),
            },
            interval_secs: 1,
            timeout_secs: 1,
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        }
    }

    #[test]
    fn thresholds_turn_results_into_states() {
        let mut v = Verdict::new(&check(2, 3));
        assert_eq!(v.record(true), HealthState::Unknown);
        assert_eq!(v.record(true), HealthState::Healthy);
        assert_eq!(v.record(false), HealthState::Healthy);
        assert_eq!(v.record(false), HealthState::Healthy);
        assert_eq!(v.record(true), HealthState::Healthy, "a success resets");
        for _ in 0..2 {
            v.record(false);
        }
        assert_eq!(v.record(false), HealthState::Unhealthy);
        assert_eq!(v.record(true), HealthState::Unhealthy);
        assert_eq!(v.record(true), HealthState::Healthy);
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500"), Some(500));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[tokio::test]
    async fn probes_answer_for_live_and_dead_ports() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 503 Busy\r\n\r\n").await;
            }
        });
        let ports = BTreeMap::from([("http".to_owned(), port), ("dead".to_owned(), 1)]);
        let exec: ExecCommand = Arc::new(|argv: &[String]| {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        });
        let tcp = Probe::Tcp {
            port: "http".into(),
        };
        assert_eq!(probe(&tcp, &ports, &exec).await, Ok(()));
        let dead = Probe::Tcp {
            port: "dead".into(),
        };
        assert!(probe(&dead, &ports, &exec).await.is_err());
        let http = |min, max| Probe::Http {
            port: "http".into(),
            path: "/".into(),
            status_min: min,
            status_max: max,
        };
        assert!(probe(&http(200, 399), &ports, &exec).await.is_err());
        assert_eq!(probe(&http(500, 599), &ports, &exec).await, Ok(()));
        let ok = Probe::Exec {
            command: vec!["true".into()],
        };
        assert_eq!(probe(&ok, &ports, &exec).await, Ok(()));
        let bad = Probe::Exec {
            command: vec!["false".into()],
        };
        assert!(probe(&bad, &ports, &exec).await.is_err());
    }

    #[test]
    fn a_threshold_of_one_decides_on_the_first_result() {
        let mut v = Verdict::new(&check(1, 1));
        assert_eq!(v.record(false), HealthState::Unhealthy);
        assert_eq!(v.record(true), HealthState::Healthy);
        assert_eq!(v.record(false), HealthState::Unhealthy);
    }

    #[test]
    fn only_consecutive_results_count_towards_a_threshold() {
        let mut v = Verdict::new(&check(3, 3));
        for ok in [true, true, false, true, true] {
            assert_eq!(v.record(ok), HealthState::Unknown, "interrupted run");
        }
        assert_eq!(v.record(true), HealthState::Healthy);
        for ok in [false, false, true, false, false] {
            assert_eq!(v.record(ok), HealthState::Healthy, "interrupted run");
        }
        assert_eq!(v.record(false), HealthState::Unhealthy);
    }
}
