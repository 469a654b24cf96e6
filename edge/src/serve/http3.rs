//! HTTP/3: every site over QUIC on the UDP twin of the HTTPS port (`edge.http3`, on by
//! default), with quinn (QUIC), h3 and h3-quinn (HTTP/3 framing and QPACK over it).
//!
//! Nothing about serving is QUIC-specific: each request goes to the same [`Handler`] as HTTP/1.1
//! and HTTP/2 (routing, manifest rules, `_redirects`/`_headers`, ranges, conditionals,
//! precompressed variants), and its [`ResponseBody`] is copied frame by frame onto the request
//! stream. TLS is the HTTPS listener's: the same [`CertResolver`], so a certificate a deploy
//! swaps in is presented to the next QUIC handshake; TLS 1.3 only (QUIC has no other), ALPN
//! `h3`, 0-RTT off (`max_early_data_size` 0: a replayed GET is harmless for static files, but
//! early data would bypass the per-client request accounting until the handshake ends).
//!
//! Limits, from `edge.limits` as for the TCP listeners:
//! - `maxConnections`: connections at once, handshakes included; above it new connections are
//!   refused (a QUIC `CONNECTION_REFUSED`, no handshake spent on them).
//! - `perClient.maxConnections`: checked once the handshake has proved the client's address
//!   (a spoofed UDP source cannot use up someone else's share); an over-limit connection is
//!   closed with `H3_EXCESSIVE_LOAD`.
//! - `perClient.handshakesPerSecond`: when set, a new connection's address is first proved
//!   with a QUIC Retry (one round trip, which a spoofer cannot answer), then the client's
//!   bucket is taken from; over it the attempt is refused.
//! - `tlsHandshakeTimeout`: the handshake must finish within it.
//! - `headerReadTimeout`: the first request must start within it, and each request's header
//!   block must arrive within it once its stream is open.
//! - `idleTimeout`: a connection with no request in flight for this long is closed, whatever
//!   PINGs it sends; QUIC's own idle timeout (no packet at all) is the same value.
//! - 128 concurrent request streams per connection (as HTTP/2), 3 unidirectional streams (the
//!   peer's control and QPACK streams; QPACK's dynamic table is not used).
//!
//! PROXY protocol does not apply to UDP: with `edge.proxyProtocol` on, the per-client limits of
//! this listener are off (the source address would be the load balancer's).
//!
//! Shutdown: stop taking connections, send GOAWAY on every open one, let requests in flight
//! finish within the grace period, then close what is left.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http_body_util::BodyExt as _;
use quinn::crypto::rustls::QuicServerConfig;
use rustls::crypto::aws_lc_rs;
use statiko_common::listener::{Admission, ConnLimiter, Throttle, now_ms};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::accept::ServerOptions;
use super::handler::{Handler, Scheme};
use super::limits::{ClientAddr, Reason};
use super::response::ResponseBody;
use super::tls::{CertResolver, TlsError};

/// Request streams a client may open at once on one connection (HTTP/2 allows as many).
const MAX_STREAMS: u32 = 128;
/// Unidirectional streams a client may open: its control stream and the two QPACK streams.
const MAX_UNI_STREAMS: u32 = 3;
/// Longest wait for the CONNECTION_CLOSE frames to leave once every connection is closed.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// HTTP/3 application error codes (RFC 9114 section 8.1).
const H3_NO_ERROR: u32 = 0x100;
const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// The `Alt-Svc` value that advertises HTTP/3 on `port` for a day.
pub fn alt_svc(port: u16) -> HeaderValue {
    HeaderValue::try_from(format!("h3=\":{port}\"; ma=86400"))
        .unwrap_or_else(|_| HeaderValue::from_static("clear"))
}

/// The QUIC listener's rustls configuration: the HTTPS listener's certificate resolver,
/// aws-lc-rs, TLS 1.3, ALPN `h3`, stateless tickets for resumption, no early data.
pub fn quic_tls_config(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h3".to_vec()];
    // 0-RTT stays off: QUIC allows only 0 or u32::MAX here.
    config.max_early_data_size = 0;
    config.ticketer = aws_lc_rs::Ticketer::new().map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

/// Why the QUIC endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the TLS configuration has no QUIC initial cipher suite")]
    Suite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("open the QUIC endpoint")]
    Endpoint(#[source] std::io::Error),
}

/// A QUIC endpoint on `socket` (already bound, usually to the HTTPS listener's address) that
/// presents the certificates of `resolver`. Call within a Tokio runtime.
pub fn endpoint(
    socket: UdpSocket,
    resolver: Arc<CertResolver>,
    opts: &ServerOptions,
) -> Result<quinn::Endpoint, QuicError> {
    let crypto = QuicServerConfig::try_from(quic_tls_config(resolver)?)?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(MAX_UNI_STREAMS.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(opts.idle_timeout).ok());
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server
        .transport_config(Arc::new(transport))
        // Connections not yet accepted by the loop below (each holds a little state).
        .max_incoming(opts.max_connections.clamp(1, 65_536));
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(QuicError::Endpoint)
}

/// What every connection task of the listener shares.
struct Shared {
    handler: Handler,
    opts: ServerOptions,
    limiter: ConnLimiter,
    /// Per-client limits apply (not behind the PROXY protocol).
    per_client: bool,
    handshake_log: Throttle,
    /// Cancelled when accepting stops: handshakes give up, open connections send GOAWAY.
    stop_accepting: CancellationToken,
    /// Cancelled when the grace period is over: remaining connections are closed.
    hard_stop: CancellationToken,
}

/// Serves HTTP/3 on `endpoint` until `shutdown` is cancelled, then drains and returns.
pub async fn serve_http3(
    endpoint: quinn::Endpoint,
    handler: Handler,
    opts: ServerOptions,
    shutdown: CancellationToken,
) {
    let local = endpoint.local_addr().ok();
    let per_client = opts.proxy.is_none();
    if !per_client {
        tracing::info!(
            "http3: the PROXY protocol does not apply to UDP, so this listener's per-client limits are off"
        );
    }
    let shared = Arc::new(Shared {
        limiter: ConnLimiter::new(
            opts.max_connections,
            if per_client {
                opts.max_connections_per_client
            } else {
                0
            },
            opts.limits.ipv6_prefix(),
        ),
        handler,
        opts,
        per_client,
        handshake_log: Throttle::new(Duration::from_secs(1)),
        stop_accepting: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
    });
    let tracker = TaskTracker::new();
    tracing::info!(scheme = "h3", addr = ?local, "listening");
    loop {
        let incoming = tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        let Some((incoming, admission)) = admit(incoming, &shared) else {
            continue;
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            shared.opts.stats.active.inc();
            connection(incoming, admission, &shared).await;
            shared.opts.stats.active.dec();
        });
    }

    // New connection attempts are refused from here on.
    endpoint.set_server_config(None);
    shared.stop_accepting.cancel();
    tracker.close();
    tracing::info!(
        scheme = "h3",
        open = tracker.len(),
        "stopped accepting, draining connections"
    );
    if tokio::time::timeout(shared.opts.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(scheme = "h3", grace = ?shared.opts.shutdown_grace, "connections still open after the grace period, closing them");
        shared.hard_stop.cancel();
        tracker.wait().await;
    }
    endpoint.close(H3_NO_ERROR.into(), b"");
    let _ = tokio::time::timeout(CLOSE_FLUSH, endpoint.wait_idle()).await;
    tracing::info!(scheme = "h3", "server stopped");
}

/// The first-packet checks: the connection cap, then the per-client handshake rate, applied
/// to proved addresses only. `None` when the attempt was refused or sent a Retry.
fn admit(incoming: quinn::Incoming, shared: &Shared) -> Option<(quinn::Incoming, Admission)> {
    let stats = &shared.opts.stats;
    let Ok(admission) = shared.limiter.admit_total() else {
        stats.rejected.inc();
        incoming.refuse();
        return None;
    };
    let limits = &shared.opts.limits;
    if shared.per_client && limits.limits_handshakes() {
        // A Retry proves the address in one round trip (a spoofer cannot answer it), so that
        // packets sent in someone else's name cannot spend that client's handshakes.
        if !incoming.remote_address_validated() && incoming.may_retry() {
            let _ = incoming.retry();
            return None;
        }
        if !limits.allow_handshake(incoming.remote_address().ip()) {
            stats.rejected.inc();
            incoming.refuse();
            return None;
        }
    }
    stats.accepted.inc();
    Some((incoming, admission))
}

/// One admitted connection: its handshake, the per-client cap, then its HTTP/3 session.
async fn connection(incoming: quinn::Incoming, mut admission: Admission, shared: &Shared) {
    let stats = &shared.opts.stats;
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => {
            tracing::debug!(error = %err, "quic connection refused before its handshake");
            return;
        }
    };
    let handshake = tokio::time::timeout(shared.opts.tls_handshake_timeout, connecting);
    let conn = tokio::select! {
        () = shared.stop_accepting.cancelled() => return,
        result = handshake => match result {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => {
                stats.tls_failures.inc();
                if let Some(suppressed) = shared.handshake_log.ready() {
                    tracing::info!(error = %err, suppressed, "quic handshake failed (logged at most once per second)");
                }
                return;
            }
            Err(_) => {
                stats.tls_failures.inc();
                tracing::debug!("quic handshake timed out");
                return;
            }
        },
    };
    stats.tls_handshakes.inc();
    let client = conn.remote_address();
    if shared.per_client
        && shared
            .limiter
            .admit_client(&mut admission, client.ip())
            .is_err()
    {
        stats.rejected.inc();
        shared
            .opts
            .limits
            .refused(client.ip(), Reason::ClientConnections);
        conn.close(H3_EXCESSIVE_LOAD.into(), b"too many connections");
        return;
    }
    serve_connection(conn.clone(), client, shared).await;
    drop(admission);
}

/// Requests in flight on one connection, and when the last one started or ended.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    last_ms: AtomicU64,
    /// Woken when the count falls to zero.
    idle: Notify,
}

/// One request in flight; dropped when its response has been sent (or failed).
struct RequestGuard(Arc<InFlight>);

impl InFlight {
    fn start(self: &Arc<Self>) -> RequestGuard {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last_ms.store(now_ms(), Ordering::Relaxed);
        RequestGuard(self.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
        if self.0.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

type H3Connection = h3::server::Connection<h3_quinn::Connection, Bytes>;

/// The HTTP/3 session of one established QUIC connection: accept request streams until the
/// client goes away, the connection idles out, or shutdown.
async fn serve_connection(conn: quinn::Connection, client: SocketAddr, shared: &Shared) {
    let opts = &shared.opts;
    let mut builder = h3::server::builder();
    builder.max_field_section_size(opts.max_header_bytes as u64);
    let built = builder.build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()));
    let mut h3: H3Connection = tokio::select! {
        () = shared.hard_stop.cancelled() => return,
        built = built => match built {
            Ok(h3) => h3,
            Err(err) => {
                tracing::debug!(error = %err, "http3 session failed to start");
                return;
            }
        },
    };
    let in_flight = Arc::new(InFlight::default());
    in_flight.last_ms.store(now_ms(), Ordering::Relaxed);
    let requests = TaskTracker::new();
    let mut closing = false;
    let mut first = true;
    loop {
        // The first request must come within the header timeout, later ones within the idle
        // timeout of the last request's end; a request in flight keeps the connection.
        let allowed = if first {
            opts.header_read_timeout.min(opts.idle_timeout)
        } else {
            opts.idle_timeout
        };
        let since = now_ms().saturating_sub(in_flight.last_ms.load(Ordering::Relaxed));
        let wait = allowed.saturating_sub(Duration::from_millis(since));
        // Registered before the count is read, so a request ending in between still wakes it.
        let ended = in_flight.idle.notified();
        let busy = in_flight.count.load(Ordering::Relaxed) > 0;
        let idle_wait = async move {
            if busy {
                ended.await;
            } else {
                tokio::time::sleep(wait).await;
            }
        };
        tokio::select! {
            () = shared.hard_stop.cancelled() => break,
            () = shared.stop_accepting.cancelled(), if !closing => {
                closing = true;
                // GOAWAY: the client finishes what it asked and opens no more streams here.
                let _ = h3.shutdown(0).await;
            }
            () = idle_wait => {
                let busy = in_flight.count.load(Ordering::Relaxed) > 0;
                let since = now_ms().saturating_sub(in_flight.last_ms.load(Ordering::Relaxed));
                if closing && !busy {
                    break;
                }
                if !busy && Duration::from_millis(since) >= allowed {
                    tracing::debug!(%client, "closing an idle http3 connection");
                    break;
                }
            }
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => {
                    first = false;
                    let guard = in_flight.start();
                    let handler = shared.handler.clone();
                    let stats = opts.stats.clone();
                    let timeout = opts.header_read_timeout;
                    requests.spawn(async move {
                        if request(resolver, handler, client, timeout).await {
                            stats.requests.inc();
                        }
                        drop(guard);
                    });
                }
                Ok(None) => break,
                Err(err) => {
                    if !err.is_h3_no_error() {
                        tracing::debug!(%client, error = %err, "http3 connection ended with an error");
                    }
                    break;
                }
            },
        }
    }
    requests.close();
    if shared.hard_stop.is_cancelled() {
        conn.close(H3_NO_ERROR.into(), b"shutting down");
    } else {
        tokio::select! {
            () = requests.wait() => {}
            () = shared.hard_stop.cancelled() => {}
        }
        conn.close(H3_NO_ERROR.into(), b"");
    }
}

/// One request: its header block within `header_timeout`, the handler's answer, and the body
/// copied onto the stream frame by frame (a large file is read as the stream takes it). True
/// when the handler answered it.
async fn request(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    handler: Handler,
    client: SocketAddr,
    header_timeout: Duration,
) -> bool {
    let (mut req, mut stream) =
        match tokio::time::timeout(header_timeout, resolver.resolve_request()).await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(err)) => {
                tracing::debug!(%client, error = %err, "http3 request head refused");
                return false;
            }
            Err(_) => {
                tracing::debug!(%client, "http3 request head timed out");
                return false;
            }
        };
    req.extensions_mut().insert(ClientAddr(client));
    let response = handler.handle(req, Scheme::Https).await;
    let (parts, mut body) = response.into_parts();
    if let Err(err) = stream
        .send_response(http::Response::from_parts(parts, ()))
        .await
    {
        tracing::debug!(%client, error = %err, "http3 response head not sent");
        return true;
    }
    if let Err(err) = send_body(&mut body, &mut stream).await {
        tracing::debug!(%client, error = %err, "http3 response body not sent");
        stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
    }
    true
}

/// Copies `body` onto `stream`, then finishes it.
async fn send_body(
    body: &mut ResponseBody,
    stream: &mut h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) -> anyhow::Result<()> {
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            stream.send_data(data).await?;
        }
    }
    stream.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_names_the_port() {
        assert_eq!(alt_svc(8443), "h3=\":8443\"; ma=86400");
    }

    #[test]
    fn quic_tls_is_tls13_h3_without_early_data() {
        let resolver = Arc::new(CertResolver::new().unwrap());
        let config = quic_tls_config(resolver).unwrap();
        assert_eq!(config.alpn_protocols, [b"h3".to_vec()]);
        assert_eq!(config.max_early_data_size, 0);
        assert!(config.ticketer.enabled());
        assert!(QuicServerConfig::try_from(config).is_ok());
    }

    #[tokio::test]
    async fn endpoint_binds_the_given_socket() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let address = socket.local_addr().unwrap();
        let resolver = Arc::new(CertResolver::new().unwrap());
        let endpoint = endpoint(socket, resolver, &ServerOptions::default()).unwrap();
        assert_eq!(endpoint.local_addr().unwrap(), address);
    }
}
