//! A tiny plain HTTP/1.1 server for operator endpoints (the edge's admin listener, control's
//! `/metrics`): each request is answered synchronously from in-memory state.
//!
//! Bounded like the public listeners ([`crate::listener`]): a connection cap, accept back-off,
//! a header-read timeout and an idle timeout, set once per process with [`configure`] (the
//! edge from `edge.limits`, control from `control.limits`), else [`AdminLimits::default`].

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listener::{ConnLimiter, Guarded, IdlePolicy, TrackedBody};

/// Limits of the operator listeners.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Open connections at once; more are closed at once. Scrapers and probes need few.
    pub max_connections: usize,
    /// Time allowed for a request head (and for the first request of a connection).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

static LIMITS: OnceLock<AdminLimits> = OnceLock::new();

/// Sets the limits of every operator listener of this process (the first call wins).
pub fn configure(limits: AdminLimits) {
    let _ = LIMITS.set(limits);
}

/// Serves `respond` on `listener` until `shutdown` is cancelled, then waits for the open
/// connections (which are closed by the same cancellation). `name` labels accept errors.
pub async fn serve<F>(
    listener: TcpListener,
    name: &'static str,
    respond: F,
    shutdown: CancellationToken,
) where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let limits = LIMITS.get().copied().unwrap_or_default();
    let limiter = ConnLimiter::new(limits.max_connections, 0, 128);
    let policy = IdlePolicy {
        idle: limits.idle_timeout,
        first_request: limits.header_read_timeout.min(limits.idle_timeout),
    };
    let tracker = TaskTracker::new();
    while let Some((stream, peer)) = crate::listener::accept(&listener, name, &shutdown).await {
        let Ok(admission) = limiter.admit(peer.ip()) else {
            continue;
        };
        let respond = respond.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let io = Guarded::new(stream, policy, Some(Box::new(admission)));
            let state = io.state();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let guard = state.request();
                let response = respond(&req).map(|body| TrackedBody::new(body, guard));
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(io), service);
            tokio::select! {
                _ = conn => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}
