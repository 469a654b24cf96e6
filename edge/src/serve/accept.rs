//! The accept loops for the HTTP and HTTPS listeners (static-web-server / mini-redis style):
//! connection caps (per listener and per client address), TCP_NODELAY, an optional PROXY
//! protocol header, per-client TLS handshake rates, TLS handshakes bounded in time, HTTP/1.1
//! and HTTP/2 through hyper-util's auto builder, header-read and idle timeouts, and graceful
//! shutdown that stops accepting, drains open connections within a grace period and returns.
//!
//! Timeouts, for operators:
//! - `header_read_timeout`: the first request must start within it (this covers a silent
//!   connection before its first byte and hyper's HTTP/1-vs-HTTP/2 sniff), and on HTTP/1 every
//!   request head must arrive within it (hyper also applies it between keep-alive requests).
//! - `idle_timeout`: a connection with no request in flight for this long, or on which no byte
//!   moved either way for this long, is closed; HTTP/2 PINGs move bytes but are not requests,
//!   so a PING-only connection is closed too ([`statiko_common::listener::Guarded`]).
//! - `tls_handshake_timeout`: the TLS handshake must finish within it.
//! - PROXY protocol: the header must arrive within its own timeout.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use statiko_common::config::Cidr;
use statiko_common::listener::{
    self, Admission, ConnLimiter, Guarded, IdlePolicy, Refused, Throttle, TrackedBody,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::{Handler, Scheme};
use super::limits::{ClientAddr, ClientLimits, Reason};
use super::proxy;
pub use crate::metrics::{ServerStats, StatsSnapshot};

/// Limits and timeouts of one listener.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// HTTP/1: time allowed to receive a complete request head; every connection: time allowed
    /// before its first request starts.
    pub header_read_timeout: Duration,
    /// Close a connection after this long without a request in flight, or without any byte
    /// read or written.
    pub idle_timeout: Duration,
    /// Largest request head: HTTP/1 read buffer (at least 8 KiB, hyper's floor) and HTTP/2
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`. HTTP/1 heads over it get 431.
    pub max_header_bytes: usize,
    /// Open connections at once; above it new connections are accepted and closed at once.
    pub max_connections: usize,
    /// Open connections per client address (IPv6 grouped per `limits`); 0 = no cap.
    pub max_connections_per_client: u64,
    pub tls_handshake_timeout: Duration,
    /// How long open connections may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// Per-client handshake and request buckets, shared with the handler; its stats count
    /// every refusal.
    pub limits: Arc<ClientLimits>,
    /// Require a PROXY protocol header on every connection.
    pub proxy: Option<ProxySettings>,
    /// Counters; share one `Arc` to read them while the server runs.
    pub stats: Arc<ServerStats>,
    /// `Alt-Svc` added to every response (HTTP/3 advertised on the HTTPS listener).
    pub alt_svc: Option<http::HeaderValue>,
}

/// The listeners' options and the handler's limits from `edge.limits` and
/// `edge.proxyProtocol`, counting refusals in `metrics`; also sets the admin listener's limits.
pub fn options_from_config(
    config: &statiko_common::config::Config,
    handler: Handler,
    metrics: &crate::metrics::EdgeMetrics,
) -> (Handler, ServerOptions) {
    let limits = &config.edge.limits;
    let mut client_limits = ClientLimits::new(limits);
    client_limits.stats = metrics.limited.clone();
    let client_limits = Arc::new(client_limits);
    let proxy = &config.edge.proxy_protocol;
    statiko_common::http_admin::configure(statiko_common::http_admin::AdminLimits {
        header_read_timeout: limits.header_read_timeout,
        idle_timeout: limits.idle_timeout,
        ..Default::default()
    });
    let options = ServerOptions {
        header_read_timeout: limits.header_read_timeout,
        idle_timeout: limits.idle_timeout,
        max_connections: usize::try_from(limits.max_connections).unwrap_or(usize::MAX),
        max_connections_per_client: limits.per_client.max_connections,
        tls_handshake_timeout: limits.tls_handshake_timeout,
        limits: client_limits.clone(),
        proxy: proxy.enabled.then(|| ProxySettings {
            trusted: proxy.trusted_proxies.clone(),
            header_timeout: proxy.header_timeout,
        }),
        ..ServerOptions::default()
    };
    (handler.with_limits(client_limits), options)
}

/// `edge.proxyProtocol` when enabled.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Peers allowed to send the header; empty = any.
    pub trusted: Vec<Cidr>,
    /// Time allowed for the header.
    pub header_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            max_connections_per_client: 0,
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            limits: Arc::default(),
            proxy: None,
            stats: Arc::default(),
            alt_svc: None,
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
    limiter: ConnLimiter,
    policy: IdlePolicy,
    /// Handshake failures are logged at most once per second (a client controls them).
    handshake_log: Throttle,
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
    let limiter = ConnLimiter::new(
        opts.max_connections,
        opts.max_connections_per_client,
        opts.limits.ipv6_prefix(),
    );
    let policy = IdlePolicy {
        idle: opts.idle_timeout,
        first_request: opts.header_read_timeout.min(opts.idle_timeout),
    };
    let shared = Arc::new(Shared {
        builder: builder(&opts),
        handler,
        tls,
        opts,
        limiter,
        policy,
        handshake_log: Throttle::new(Duration::from_secs(1)),
        stop_accepting: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
    });
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    tracing::info!(scheme, addr = ?local, "listening");

    while let Some((stream, peer)) = listener::accept(&listener, scheme, &shutdown).await {
        let stats = &shared.opts.stats;
        // Without the PROXY protocol the client is the peer: refuse over-limit clients before
        // spending a task on them. With it, the client is known only after the header.
        let admitted = if shared.opts.proxy.is_some() {
            shared.limiter.admit_total()
        } else {
            shared.limiter.admit(peer.ip())
        };
        let admission = match admitted {
            Ok(admission) => admission,
            Err(refused) => {
                stats.rejected.inc();
                if refused == Refused::PerClient {
                    shared
                        .opts
                        .limits
                        .refused(peer.ip(), Reason::ClientConnections);
                }
                continue;
            }
        };
        if shared.opts.proxy.is_none()
            && shared.tls.is_some()
            && !shared.opts.limits.allow_handshake(peer.ip())
        {
            stats.rejected.inc();
            continue;
        }
        stats.accepted.inc();
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let shared = shared.clone();
        tracker.spawn(async move {
            shared.opts.stats.active.inc();
            connection(stream, peer, admission, &shared, watcher).await;
            shared.opts.stats.active.dec();
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

/// The PROXY protocol header, when required: the client's address and the bytes read past
/// the header; `None` (counted) when the connection must be dropped.
async fn proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    settings: &ProxySettings,
    shared: &Shared,
) -> Option<(SocketAddr, bytes::Bytes)> {
    let limits = &shared.opts.limits;
    if !settings.trusted.is_empty() && !settings.trusted.iter().any(|c| c.contains(peer.ip())) {
        limits.refused(peer.ip(), Reason::ProxyUntrusted);
        return None;
    }
    let read = tokio::time::timeout(settings.header_timeout, proxy::read_header(stream));
    let read = tokio::select! {
        () = shared.stop_accepting.cancelled() => return None,
        read = read => read,
    };
    match read {
        Ok(Ok((header, rest))) => Some((header.source.unwrap_or(peer), rest)),
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "dropping a connection without a valid PROXY header");
            limits.refused(peer.ip(), Reason::ProxyHeader);
            None
        }
        Err(_) => {
            limits.refused(peer.ip(), Reason::ProxyHeader);
            None
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    mut admission: Admission,
    shared: &Shared,
    watcher: Watcher,
) {
    let (client, prefix) = match &shared.opts.proxy {
        None => (peer, bytes::Bytes::new()),
        Some(settings) => {
            let Some((client, prefix)) = proxy_header(&mut stream, peer, settings, shared).await
            else {
                return;
            };
            let limits = &shared.opts.limits;
            if shared
                .limiter
                .admit_client(&mut admission, client.ip())
                .is_err()
            {
                shared.opts.stats.rejected.inc();
                limits.refused(client.ip(), Reason::ClientConnections);
                return;
            }
            if shared.tls.is_some() && !limits.allow_handshake(client.ip()) {
                shared.opts.stats.rejected.inc();
                return;
            }
            (client, prefix)
        }
    };
    let io = Guarded::new(stream, shared.policy, Some(Box::new(admission))).with_prefix(prefix);
    let conn = io.state();
    let client = ClientAddr(client);
    match &shared.tls {
        None => serve_io(io, shared, watcher, Scheme::Http, client, conn).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(shared.opts.tls_handshake_timeout, acceptor.accept(io));
            let stats = &shared.opts.stats;
            let tls = tokio::select! {
                () = shared.stop_accepting.cancelled() => return,
                result = handshake => match result {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        stats.tls_failures.inc();
                        if let Some(suppressed) = shared.handshake_log.ready() {
                            tracing::info!(client = %client.0, error = %err, suppressed, "tls handshake failed (logged at most once per second)");
                        }
                        return;
                    }
                    Err(_) => {
                        stats.tls_failures.inc();
                        tracing::debug!(client = %client.0, "tls handshake timed out");
                        return;
                    }
                },
            };
            stats.tls_handshakes.inc();
            serve_io(tls, shared, watcher, Scheme::Https, client, conn).await;
        }
    }
}

async fn serve_io<I>(
    io: I,
    shared: &Shared,
    watcher: Watcher,
    scheme: Scheme,
    client: ClientAddr,
    conn: Arc<listener::ConnState>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler = shared.handler.clone();
    let alt_svc = shared.opts.alt_svc.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let guard = conn.request();
        let alt_svc = alt_svc.clone();
        req.extensions_mut().insert(client);
        async move {
            let mut response = handler.handle(req, scheme).await;
            if let Some(alt_svc) = alt_svc {
                response
                    .headers_mut()
                    .insert(http::header::ALT_SVC, alt_svc);
            }
            Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, guard)))
        }
    });
    let conn = shared.builder.serve_connection(TokioIo::new(io), service);
    let conn = watcher.watch(conn);
    tokio::select! {
        result = conn => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        () = shared.hard_stop.cancelled() => {}
    }
}
