//! A TCP fault proxy on loopback: a client (an agent, say) reaches its
//! upstream (the broker) through it, and a test injects network faults on
//! that one link while the upstream and every other client keep running.
//!
//! Faults, each on the connections already open and on new ones:
//! - [`Proxy::cut`]: every connection is reset (RST) and new ones are
//!   refused with a reset until [`Proxy::restore`] (a dead uplink).
//! - [`Proxy::reset`]: every connection is reset once; new ones are accepted
//!   (a NAT or load balancer dropping its state).
//! - [`Fault::BlackHole`]: connections stay open and bytes vanish in both
//!   directions, without RST or FIN (a partition: only timeouts notice it).
//! - [`Fault::HalfOpen`]: bytes in one direction vanish, the other flows.
//! - [`Fault::Delay`]: every chunk waits a fixed time before it is forwarded.
//! - [`Fault::Throttle`]: at most so many bytes per second in each direction.
//!
//! It counts the bytes forwarded in each direction and the bytes dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Which way bytes travel through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the upstream.
    ToUpstream,
    /// From the upstream back to the client.
    ToClient,
}

/// What the proxy does to the bytes it carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    #[default]
    None,
    /// Drop every byte in both directions; connections stay open.
    BlackHole,
    /// Drop every byte travelling this way; the other direction flows.
    HalfOpen(Direction),
    /// Hold every chunk this long before forwarding it.
    Delay(Duration),
    /// Forward at most this many bytes per second in each direction.
    Throttle { bytes_per_sec: u64 },
}

impl Fault {
    /// What happens to a chunk of `len` bytes travelling `direction`:
    /// `None` to drop it, otherwise how long to hold it first.
    fn hold(self, direction: Direction, len: usize) -> Option<Duration> {
        match self {
            Fault::None => Some(Duration::ZERO),
            Fault::BlackHole => None,
            Fault::HalfOpen(stopped) if stopped == direction => None,
            Fault::HalfOpen(_) => Some(Duration::ZERO),
            Fault::Delay(latency) => Some(latency),
            Fault::Throttle { bytes_per_sec } => Some(Duration::from_secs_f64(
                len as f64 / bytes_per_sec.max(1) as f64,
            )),
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// False while cut: new connections are reset at once.
    up: AtomicBool,
    fault: watch::Sender<Fault>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    upstream_bytes: AtomicU64,
    downstream_bytes: AtomicU64,
    dropped_bytes: AtomicU64,
    accepted: AtomicU64,
}

impl Shared {
    fn forwarded(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ToUpstream => &self.upstream_bytes,
            Direction::ToClient => &self.downstream_bytes,
        }
    }
}

/// A running proxy to one upstream address; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            fault: watch::channel(Fault::None).0,
            resets: watch::channel(0).0,
            upstream_bytes: AtomicU64::new(0),
            downstream_bytes: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !s.up.load(Ordering::SeqCst) {
                    // Refused while cut: the client sees a reset.
                    abort(client);
                    continue;
                }
                s.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(forward(client, upstream, s.clone()));
            }
        });
        Ok(Proxy { addr, shared, task })
    }

    /// Resets every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        self.reset();
    }

    /// Accepts connections again after [`Proxy::cut`].
    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
    }

    /// Resets every open connection; new ones are accepted as before.
    pub fn reset(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Applies `fault` to every connection, open or new, from now on.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// Ends every fault: no cut, and bytes flow unchanged again.
    pub fn heal(&self) {
        self.set_fault(Fault::None);
        self.restore();
    }

    /// Bytes carried client → upstream and upstream → client so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.upstream_bytes.load(Ordering::SeqCst),
            self.shared.downstream_bytes.load(Ordering::SeqCst),
        )
    }

    /// Bytes read and then dropped by a black hole or a half-open link.
    pub fn dropped_bytes(&self) -> u64 {
        self.shared.dropped_bytes.load(Ordering::SeqCst)
    }

    /// Connections accepted and forwarded so far (not those refused while cut).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// Closes `stream` with a reset (RST) rather than an orderly FIN.
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn forward(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut resets = shared.resets.subscribe();
    let server = tokio::select! {
        server = TcpStream::connect(upstream) => server,
        _ = resets.changed() => Err(std::io::ErrorKind::ConnectionReset.into()),
    };
    let Ok(server) = server else {
        abort(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let reset = tokio::select! {
        _ = pump(&mut cr, &mut sw, Direction::ToUpstream, &shared) => false,
        _ = pump(&mut sr, &mut cw, Direction::ToClient, &shared) => false,
        _ = resets.changed() => true,
    };
    if reset {
        for stream in [cr.reunite(cw), sr.reunite(sw)].into_iter().flatten() {
            abort(stream);
        }
    }
}

/// Copies chunks one way until EOF or an error, applying the current fault
/// to each chunk and counting bytes.
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, dir: Direction, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let fault = *shared.fault.borrow();
        let Some(hold) = fault.hold(dir, n) else {
            shared.dropped_bytes.fetch_add(n as u64, Ordering::SeqCst);
            continue;
        };
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        shared.forwarded(dir).fetch_add(n as u64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::wait::wait_for;

    /// A proxy in front of a listener the test owns, and one connection
    /// through it: the client's end and the upstream's end.
    struct Link {
        proxy: Proxy,
        upstream: TcpListener,
        client: TcpStream,
        server: TcpStream,
    }

    impl Link {
        async fn open() -> Link {
            let upstream = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind upstream");
            let proxy = Proxy::start(upstream.local_addr().expect("addr"))
                .await
                .expect("proxy starts");
            let (client, server) = connect(&proxy, &upstream).await;
            Link {
                proxy,
                upstream,
                client,
                server,
            }
        }
    }

    /// A new connection through `proxy`, with the upstream's end of it.
    async fn connect(proxy: &Proxy, upstream: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(proxy.addr).await.expect("connect proxy");
        let (server, _) = tokio::time::timeout(Duration::from_secs(30), upstream.accept())
            .await
            .expect("the proxy connects upstream within 30 s")
            .expect("accept");
        (client, server)
    }

    /// Writes `data` on `from` and reads exactly that many bytes from `to`.
    async fn send(from: &mut TcpStream, to: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        from.write_all(data).await.expect("write");
        let mut got = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(30), to.read_exact(&mut got))
            .await
            .expect("bytes arrive within 30 s")
            .expect("read");
        got
    }

    /// Waits until the proxy has dropped `n` bytes.
    async fn dropped(proxy: &Proxy, n: u64) {
        wait_for("bytes dropped", Duration::from_secs(30), || async {
            match proxy.dropped_bytes() {
                d if d == n => Ok(()),
                d => Err(format!("{d} dropped")),
            }
        })
        .await;
    }

    /// Nothing is readable on `stream` and it is still open.
    fn nothing_arrived(stream: &TcpStream) {
        let mut buf = [0u8; 64];
        match stream.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("expected an open, silent connection, got {other:?}"),
        }
    }

    /// The connection ends with a reset (or, read after the reset was
    /// consumed, an EOF) within 30 s.
    async fn closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("the connection ends within 30 s");
        match read {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected a closed connection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn forwards_both_ways_and_counts() {
        let Link {
            proxy,
            mut client,
            mut server,
            ..
        } = Link::open().await;
        assert_eq!(send(&mut client, &mut server, b"ping").await, b"ping");
        assert_eq!(send(&mut server, &mut client, b"pong!").await, b"pong!");
        assert_eq!(proxy.bytes(), (4, 5));
        assert_eq!(proxy.dropped_bytes(), 0);
        assert_eq!(proxy.connections(), 1);
    }

    #[tokio::test]
    async fn cut_resets_open_connections_and_refuses_new_ones_until_restored() {
        let Link {
            proxy,
            upstream,
            mut client,
            mut server,
        } = Link::open().await;
        proxy.cut();
        closed(&mut client).await;
        closed(&mut server).await;
        // A new connection is accepted by the kernel and reset at once,
        // and never reaches the upstream.
        let mut refused = TcpStream::connect(proxy.addr).await.expect("connect");
        closed(&mut refused).await;
        assert_eq!(proxy.connections(), 1);
        proxy.restore();
        let (mut client, mut server) = connect(&proxy, &upstream).await;
        assert_eq!(send(&mut client, &mut server, b"back").await, b"back");
        assert_eq!(proxy.connections(), 2);
    }

    #[tokio::test]
    async fn reset_closes_open_connections_and_accepts_new_ones() {
        let Link {
            proxy,
            upstream,
            mut client,
            mut server,
        } = Link::open().await;
        proxy.reset();
        closed(&mut client).await;
        closed(&mut server).await;
        let (mut client, mut server) = connect(&proxy, &upstream).await;
        assert_eq!(send(&mut client, &mut server, b"again").await, b"again");
    }

    #[tokio::test]
    async fn black_hole_keeps_connections_open_and_drops_every_byte() {
        let Link {
            proxy,
            upstream,
            mut client,
            mut server,
        } = Link::open().await;
        proxy.set_fault(Fault::BlackHole);
        client.write_all(b"into the void").await.expect("write");
        dropped(&proxy, 13).await;
        server.write_all(b"back").await.expect("write");
        dropped(&proxy, 17).await;
        nothing_arrived(&client);
        nothing_arrived(&server);
        // A new connection is accepted, and silent too.
        let (mut new_client, new_server) = connect(&proxy, &upstream).await;
        new_client.write_all(b"x").await.expect("write");
        dropped(&proxy, 18).await;
        nothing_arrived(&new_server);
        assert_eq!(proxy.bytes(), (0, 0));
        // Healed, the same connection carries bytes again.
        proxy.heal();
        assert_eq!(send(&mut client, &mut server, b"later").await, b"later");
    }

    #[tokio::test]
    async fn half_open_stops_one_direction_only() {
        let Link {
            proxy,
            mut client,
            mut server,
            ..
        } = Link::open().await;
        proxy.set_fault(Fault::HalfOpen(Direction::ToUpstream));
        client.write_all(b"lost").await.expect("write");
        dropped(&proxy, 4).await;
        assert_eq!(
            send(&mut server, &mut client, b"still here").await,
            b"still here"
        );
        nothing_arrived(&server);
        proxy.set_fault(Fault::HalfOpen(Direction::ToClient));
        server.write_all(b"gone").await.expect("write");
        dropped(&proxy, 8).await;
        assert_eq!(send(&mut client, &mut server, b"up").await, b"up");
        nothing_arrived(&client);
        assert_eq!(proxy.bytes(), (2, 10));
    }

    #[tokio::test]
    async fn delay_holds_every_chunk() {
        let Link {
            proxy,
            mut client,
            mut server,
            ..
        } = Link::open().await;
        let latency = Duration::from_millis(300);
        proxy.set_fault(Fault::Delay(latency));
        for direction in ["up", "down"] {
            let started = Instant::now();
            let got = if direction == "up" {
                send(&mut client, &mut server, b"slow").await
            } else {
                send(&mut server, &mut client, b"slow").await
            };
            assert_eq!(got, b"slow");
            // A lower bound only: the proxy may never deliver early.
            assert!(started.elapsed() >= latency, "{direction}: delivered early");
        }
    }

    #[tokio::test]
    async fn throttle_limits_bytes_per_second() {
        let Link {
            proxy,
            mut client,
            mut server,
            ..
        } = Link::open().await;
        let rate = 32 * 1024;
        proxy.set_fault(Fault::Throttle {
            bytes_per_sec: rate,
        });
        let data = vec![7u8; 48 * 1024];
        let started = Instant::now();
        assert_eq!(send(&mut client, &mut server, &data).await, data);
        // 48 KiB at 32 KiB/s cannot arrive in less than 1.5 s (a lower
        // bound only: every chunk waits its share before it is forwarded).
        let least = Duration::from_secs_f64(data.len() as f64 / rate as f64);
        assert!(
            started.elapsed() >= least,
            "48 KiB arrived in {:?}",
            started.elapsed()
        );
        assert_eq!(proxy.bytes(), (data.len() as u64, 0));
    }
}
