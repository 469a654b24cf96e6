//! The accept loops for the HTTP and HTTPS listeners (static-web-server / mini-redis style):
//! a connection cap, TCP_NODELAY, TLS handshakes bounded in time, HTTP/1.1 and HTTP/2 through
//! hyper-util's auto builder, header-read and idle timeouts, and graceful shutdown that stops
//! accepting, drains open connections within a grace period and then returns.
//!
//! Timeouts, for operators:
//! - `header_read_timeout` (HTTP/1): the whole request head must arrive within it. hyper also
//!   starts this timer while an idle keep-alive connection waits for its next request, so on
//!   HTTP/1 it is the keep-alive timeout too when it is shorter than `idle_timeout`.
//! - `idle_timeout`: a connection on which no byte moved either way for this long is closed;
//!   it covers idle HTTP/2 connections and clients that stop reading a response.
//! - `tls_handshake_timeout`: the TLS handshake must finish within it.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::{Handler, Scheme};
pub use crate::metrics::{ServerStats, StatsSnapshot};

/// How long to pause accepting after an accept error such as EMFILE.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Limits and timeouts of one listener.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// HTTP/1: time allowed to receive a complete request head (also bounds keep-alive idle).
    pub header_read_timeout: Duration,
    /// Close a connection after this long without any byte read or written.
    pub idle_timeout: Duration,
    /// Largest request head: HTTP/1 read buffer (at least 8 KiB, hyper's floor) and HTTP/2
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`. HTTP/1 heads over it get 431.
    pub max_header_bytes: usize,
    /// Open connections at once; above it new connections are accepted and closed at once.
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    /// How long open connections may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// Counters; share one `Arc` to read them while the server runs.
    pub stats: Arc<ServerStats>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            stats: Arc::default(),
        }
    }
}

/// Serves plain HTTP on `listener` until `shutdown` is cancelled, then drains and returns.
pub async fn serve_http(
    listener: TcpListener,
    handler: Handler,
    opts: ServerOptions,
    shutdown: CancellationToken,
) {
    serve(listener, None, handler, opts, shutdown).await;
}

/// Serves HTTPS on `listener` until `shutdown` is cancelled, then drains and returns.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: Handler,
    opts: ServerOptions,
    shutdown: CancellationToken,
) {
    serve(
        listener,
        Some(TlsAcceptor::from(tls)),
        handler,
        opts,
        shutdown,
    )
    .await;
}

/// What every connection task of one listener shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    handler: Handler,
    tls: Option<TlsAcceptor>,
    opts: ServerOptions,
    /// Cancelled when accepting stops: connections still in their TLS handshake give up.
    stop_accepting: CancellationToken,
    /// Cancelled when the grace period is over: remaining connections are dropped.
    hard_stop: CancellationToken,
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Handler,
    opts: ServerOptions,
    shutdown: CancellationToken,
) {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let local = listener.local_addr().ok();
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let shared = Arc::new(Shared {
        builder: builder(&opts),
        handler,
        tls,
        opts,
        stop_accepting: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
    });
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    tracing::info!(scheme, addr = ?local, "listening");

    loop {
        let (stream, _peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    if !is_per_connection_error(&err) {
                        tracing::warn!(scheme, error = %err, "accept failed");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                        }
                    }
                    continue;
                }
            },
        };
        let stats = &shared.opts.stats;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let shared = shared.clone();
        tracker.spawn(async move {
            shared.opts.stats.active.fetch_add(1, Ordering::Relaxed);
            connection(stream, &shared, watcher).await;
            shared.opts.stats.active.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }

    drop(listener);
    shared.stop_accepting.cancel();
    tracker.close();
    let open = graceful.count();
    tracing::info!(scheme, open, "stopped accepting, draining connections");
    let drain = async {
        graceful.shutdown().await;
        tracker.wait().await;
    };
    if tokio::time::timeout(shared.opts.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            scheme,
            grace = ?shared.opts.shutdown_grace,
            "connections still open after the grace period, closing them"
        );
        shared.hard_stop.cancel();
        tracker.wait().await;
    }
    tracing::info!(scheme, "server stopped");
}

/// Errors that concern one failed connection, not the listener.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn builder(opts: &ServerOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(opts.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(128);
    builder
}

async fn connection(stream: TcpStream, shared: &Shared, watcher: Watcher) {
    let activity = Arc::new(AtomicU64::new(0));
    let io = Tracked {
        inner: stream,
        activity: activity.clone(),
    };
    match &shared.tls {
        None => serve_io(io, shared, watcher, Scheme::Http, &activity).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(shared.opts.tls_handshake_timeout, acceptor.accept(io));
            let stats = &shared.opts.stats;
            let tls = tokio::select! {
                () = shared.stop_accepting.cancelled() => return,
                result = handshake => match result {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %err, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("tls handshake timed out");
                        return;
                    }
                },
            };
            stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            serve_io(tls, shared, watcher, Scheme::Https, &activity).await;
        }
    }
}

async fn serve_io<I>(io: I, shared: &Shared, watcher: Watcher, scheme: Scheme, activity: &AtomicU64)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = shared.handler.clone();
    let service = service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(req, scheme).await) }
    });
    let conn = shared.builder.serve_connection(TokioIo::new(io), service);
    let conn = watcher.watch(conn);
    tokio::select! {
        result = conn => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        () = idle(activity, shared.opts.idle_timeout) => {
            tracing::debug!("idle connection closed");
        }
        () = shared.hard_stop.cancelled() => {}
    }
}

/// Resolves once no byte has moved for `timeout` (checked four times per period).
async fn idle(activity: &AtomicU64, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(10));
    let mut seen = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            quiet += tick;
            if quiet >= timeout {
                return;
            }
        } else {
            seen = now;
            quiet = Duration::ZERO;
        }
    }
}

/// A socket that counts its successful reads and writes, for the idle timeout.
struct Tracked<T> {
    inner: T,
    activity: Arc<AtomicU64>,
}

impl<T> Tracked<T> {
    fn bump<R>(&self, poll: &Poll<io::Result<R>>) {
        if let Poll::Ready(Ok(_)) = poll {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.bump(&poll);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bump(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bump(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
