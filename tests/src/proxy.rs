//! A loopback TCP proxy that a test can cut and heal: the partition between one edge and etcd.
//!
//! Why a proxy and not network namespaces: the link being cut is the edge ↔ etcd link, and the
//! edge reaches etcd only through the address in its config. Pointing that address at a proxy
//! and making the proxy go silent cuts exactly that link (the edge still serves on its
//! listeners, control still reaches etcd directly), needs no root, and works on any machine
//! that runs the rest of the e2e tests. The proxy *blackholes* rather than refuses: while cut,
//! open connections stay open and carry nothing and new connections are accepted and then
//! carry nothing, as packets lost in a real partition would; the client has to notice on its
//! own (timeouts, keep-alives). Healing closes every connection held during the cut, as a
//! real peer's TCP stack would once it answered again (with a reset for a connection it has
//! forgotten), so clients reconnect at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward both ways.
    Open,
    /// Forward nothing; hold every connection open.
    Cut,
    /// The proxy was dropped: close everything.
    Closed,
}

/// A TCP proxy from `127.0.0.1:<free port>` to a target address. Stops on drop.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicU64>,
    accept_task: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the proxy")?;
        let addr = listener.local_addr().context("proxy address")?;
        let (mode, _) = watch::channel(Mode::Open);
        let accepted = Arc::new(AtomicU64::new(0));
        let accept_task = tokio::spawn(accept_loop(
            listener,
            target,
            mode.clone(),
            accepted.clone(),
        ));
        Ok(Self {
            addr,
            target,
            mode,
            accepted,
            accept_task,
        })
    }

    /// Starts a proxy in front of an etcd client URL such as `http://127.0.0.1:2379`.
    pub async fn for_url(url: &str) -> Result<Self> {
        let authority = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .trim_end_matches('/');
        let target: SocketAddr = authority
            .parse()
            .with_context(|| format!("{url} is not http://IP:PORT"))?;
        Self::start(target).await
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for a config's etcd address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the traffic goes.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// How many connections the proxy has accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Cuts the link: from now on nothing passes either way, in open or new connections.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Heals the link: the connections held during the cut are closed and new ones forward.
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Open);
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        *self.mode.borrow() == Mode::Cut
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Closed);
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((inbound, _peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(inbound, target, mode.subscribe()));
    }
}

/// One proxied connection: forwards while open; when cut, holds both sockets silent until the
/// link heals (then closes them) or the proxy goes away.
async fn connection(mut inbound: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let current = *mode.borrow_and_update();
    match current {
        Mode::Closed => return,
        Mode::Cut => {
            // Accepted during the cut: the SYN was "lost" as far as the client can tell
            // anything; hold it silently, then drop it when the link heals.
            let _ = mode.wait_for(|mode| *mode != Mode::Cut).await;
            return;
        }
        Mode::Open => {}
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let stopped = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => None,
        changed = mode.wait_for(|mode| *mode != Mode::Open) => changed.ok().map(|mode| *mode),
    };
    if stopped == Some(Mode::Cut) {
        let _ = mode.wait_for(|mode| *mode != Mode::Cut).await;
    }
    // Dropping both sockets closes them.
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut buffer = vec![0u8; text.len()];
        stream.read_exact(&mut buffer).await?;
        Ok(buffer)
    }

    #[tokio::test]
    async fn forwards_blackholes_and_heals() {
        let proxy = TcpProxy::start(echo_server().await).await.unwrap();
        let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut before, b"hello").await.unwrap(), b"hello");

        proxy.cut();
        assert!(proxy.is_cut());
        // An open connection carries nothing (and is not closed).
        let silent = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            round_trip(&mut before, b"lost"),
        )
        .await;
        assert!(silent.is_err(), "traffic passed a cut link: {silent:?}");
        // A new connection is accepted but carries nothing either.
        let mut during = TcpStream::connect(proxy.addr()).await.unwrap();
        let silent = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            round_trip(&mut during, b"lost"),
        )
        .await;
        assert!(silent.is_err(), "traffic passed a cut link: {silent:?}");

        proxy.heal();
        // Connections held during the cut are closed...
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            before.read_to_end(&mut rest),
        )
        .await;
        assert!(closed.is_ok(), "a held connection was not closed on heal");
        // ...and new ones forward again.
        let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut after, b"again").await.unwrap(), b"again");
        assert!(proxy.accepted() >= 3);
    }
}
