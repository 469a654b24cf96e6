//! The console's HTTPS listener, hardened like the others with `common::listener`: accept backs
//! off after EMFILE, `control.limits` caps connections in total and per client, the TLS
//! handshake runs in the connection's task under `tlsHandshakeTimeout`, and every socket is a
//! [`Guarded`] that closes once no request has been in flight for `idleTimeout` (or the first
//! request does not come within the header-read timeout). HTTP/1.1 and HTTP/2 (ALPN) on hyper.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use statiko_common::config::ControlLimitsConfig;
use statiko_common::listener::{self, Guarded, IdlePolicy, Throttle, TrackedBody};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Console;

/// Time allowed for a request head, and for the first request of a connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (a browser's cookies and headers are a few KiB).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The rustls configuration for the console: control's own, with ALPN `h2` and `http/1.1`
/// (browsers) instead of gRPC's `h2` only.
pub(crate) fn tls_config(grpc: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut config = grpc.clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Serves the console on `listener` until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    console: Arc<Console>,
    limits: &ControlLimitsConfig,
    shutdown: CancellationToken,
) {
    let limiter = crate::listen::limiter(limits);
    let policy = IdlePolicy {
        idle: limits.idle_timeout,
        first_request: HEADER_READ_TIMEOUT.min(limits.idle_timeout),
    };
    let handshake_timeout = limits.tls_handshake_timeout;
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .max_concurrent_streams(32);
    let builder = Arc::new(builder);
    let refused_log = Throttle::new(Duration::from_secs(10));
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "console serving");
    }
    while let Some((stream, peer)) = listener::accept(&listener, "console", &shutdown).await {
        let Some(admission) = limiter.admit_or_log(peer, "console", &refused_log) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, builder, console, shutdown) = (
            acceptor.clone(),
            builder.clone(),
            console.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            let io = Guarded::new(stream, policy, Some(Box::new(admission)));
            let state = io.state();
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(io));
            let tls = tokio::select! {
                () = shutdown.cancelled() => return,
                result = handshake => match result {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "console tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "console tls handshake timed out");
                        return;
                    }
                },
            };
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let guard = state.request();
                let console = console.clone();
                async move {
                    let response = super::routes::handle(&console, request).await;
                    Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, guard)))
                }
            });
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                result = conn => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "console connection ended");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    tracing::info!("console stopped");
}
