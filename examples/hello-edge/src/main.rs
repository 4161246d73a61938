//! Example Verge workload: a tiny HTTP server that says where it runs.
//!
//! It listens on the port the agent assigns (`VERGE_PORT_HTTP`, or `--port N`)
//! and answers every request with one JSON line naming its node, region,
//! service, replica and the `--greeting` it was started with. It uses only the
//! standard library (and `nix` to block a signal) so that the artifact stays
//! small and builds anywhere.
//!
//! For supervision tests it can misbehave on purpose: `--exit-after SECS`
//! exits after that long with `--exit-code N` (default 0), and
//! `--ignore-sigterm` blocks SIGTERM so that only SIGKILL ends it.
//!
//! Tests ask a workload itself (not only the API) whether it runs: this
//! answer is that evidence.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// The largest request head read before answering; the rest is ignored.
const MAX_REQUEST_HEAD_BYTES: u64 = 8 * 1024;

struct Identity {
    body: String,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// Escapes a string for a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn handle(mut stream: TcpStream, identity: &Identity) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    // Read the request head (bounded) so the client sees a clean response.
    let mut reader = BufReader::new(stream.try_clone()?.take(MAX_REQUEST_HEAD_BYTES));
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        identity.body.len(),
        identity.body
    );
    stream.write_all(response.as_bytes())
}

/// Parses a numeric flag value or exits with a usage error.
fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> T {
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        eprintln!("hello-edge: {flag} needs a number");
        std::process::exit(64);
    })
}

fn main() {
    let mut port = env("VERGE_PORT_HTTP");
    let mut greeting = String::from("hello");
    let mut exit_after: Option<u64> = None;
    let mut exit_code: i32 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().unwrap_or_default(),
            "--greeting" => greeting = args.next().unwrap_or_default(),
            "--exit-after" => exit_after = Some(number("--exit-after", args.next())),
            "--exit-code" => exit_code = number("--exit-code", args.next()),
            "--ignore-sigterm" => {
                // Blocked before any thread exists, so no thread takes it.
                let mut set = nix::sys::signal::SigSet::empty();
                set.add(nix::sys::signal::Signal::SIGTERM);
                if let Err(e) = set.thread_block() {
                    eprintln!("hello-edge: cannot block SIGTERM: {e}");
                    std::process::exit(71);
                }
                eprintln!("hello-edge: ignoring SIGTERM");
            }
            other => {
                eprintln!(
                    "hello-edge: unknown argument {other:?} (expected --port N, --greeting TEXT, \
                     --exit-after SECS, --exit-code N, --ignore-sigterm)"
                );
                std::process::exit(64);
            }
        }
    }
    if let Some(secs) = exit_after {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            eprintln!("hello-edge: exiting with code {exit_code} as asked (--exit-after {secs})");
            std::process::exit(exit_code);
        });
    }
    let port: u16 = match port.parse() {
        Ok(p) => p,
        Err(_) => {
            eprintln!("hello-edge: no port: set VERGE_PORT_HTTP or pass --port N");
            std::process::exit(64);
        }
    };
    let body = format!(
        "{{\"agent\":{},\"region\":{},\"service\":{},\"replica\":{},\"greeting\":{},\"pid\":{}}}\n",
        json_string(&env("VERGE_AGENT_ID")),
        json_string(&env("VERGE_REGION")),
        json_string(&env("VERGE_SERVICE")),
        json_string(&env("VERGE_REPLICA")),
        json_string(&greeting),
        std::process::id()
    );
    let identity = Identity { body };
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello-edge: cannot listen on port {port}: {e}");
            std::process::exit(69);
        }
    };
    eprintln!("hello-edge: listening on port {port}");
    for stream in listener.incoming().flatten() {
        if let Err(e) = handle(stream, &identity) {
            eprintln!("hello-edge: request failed: {e}");
        }
    }
}
