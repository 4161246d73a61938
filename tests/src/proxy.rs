//! A TCP proxy on loopback that a test can cut and restore, and that counts
//! the bytes it carries: an agent behind it loses its broker (an uplink
//! outage) while the broker and every other client keep running.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug)]
struct Shared {
    up: AtomicBool,
    /// Bumped on every cut; connection tasks end when it changes.
    cuts: watch::Sender<u64>,
    upstream_bytes: AtomicU64,
    downstream_bytes: AtomicU64,
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
            cuts: watch::channel(0).0,
            upstream_bytes: AtomicU64::new(0),
            downstream_bytes: AtomicU64::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !s.up.load(Ordering::SeqCst) {
                    // Refused while cut: the client sees a dropped connection.
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, upstream, s.clone()));
            }
        });
        Ok(Proxy { addr, shared, task })
    }

    /// Drops every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
    }

    /// Bytes carried client → upstream and upstream → client so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.upstream_bytes.load(Ordering::SeqCst),
            self.shared.downstream_bytes.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut cut = shared.cuts.subscribe();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = copy(&mut cr, &mut sw, &shared.upstream_bytes);
    let down = copy(&mut sr, &mut cw, &shared.downstream_bytes);
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.changed() => {}
    }
}

/// Copies until EOF or an error, counting bytes.
async fn copy(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
    counter: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                counter.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
}
