//! The gRPC listener's own accept loop, fed to tonic as its incoming stream
//! (`serve_with_incoming_shutdown`): `control.limits` caps connections in total and per client
//! address, accept backs off after EMFILE instead of spinning, TLS handshakes run in their own
//! tasks bounded by `tlsHandshakeTimeout`, and every socket is a
//! [`statiko_common::listener::Guarded`] that closes itself once no call has been in flight
//! (or no byte moved) for `idleTimeout`; [`ConnTrackLayer`] tells it about calls, so HTTP/2
//! PINGs alone do not keep a connection open. Nothing runs for an idle connection but one
//! timer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use statiko_common::config::ControlLimitsConfig;
use statiko_common::listener::{
    self, ConnLimiter, ConnState, Guarded, IdlePolicy, Throttle, TrackedBody,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

/// Connections ready for tonic (handshake done) not yet taken by it.
const READY_QUEUE: usize = 64;

/// One accepted connection, TLS or not.
#[derive(Debug)]
pub(crate) struct Conn {
    io: ConnIo,
    state: Arc<ConnState>,
}

#[derive(Debug)]
enum ConnIo {
    Plain(Box<Guarded<TcpStream>>),
    Tls(Box<TlsStream<Guarded<TcpStream>>>),
}

/// The connection's request counters, in every request's extensions (tonic puts
/// [`tonic::transport::server::Connected::connect_info`] there).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo(Arc<ConnState>);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo(self.state.clone())
    }
}

/// The connection caps of `control.limits`, shared by the gRPC and console listeners (each
/// listener counts its own connections).
pub(crate) fn limiter(limits: &ControlLimitsConfig) -> ConnLimiter {
    ConnLimiter::new(
        usize::try_from(limits.max_connections).unwrap_or(usize::MAX),
        limits.max_connections_per_client,
        64,
    )
}

/// Accepts on `listener` until `shutdown` is cancelled; the stream ends then.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: &ControlLimitsConfig,
    shutdown: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let limiter = limiter(limits);
    let policy = IdlePolicy {
        idle: limits.idle_timeout,
        first_request: limits.idle_timeout,
    };
    let handshake_timeout = limits.tls_handshake_timeout;
    tokio::spawn(async move {
        let refused_log = Throttle::new(Duration::from_secs(10));
        while let Some((stream, peer)) = listener::accept(&listener, "control", &shutdown).await {
            let Some(admission) = limiter.admit_or_log(peer, "control", &refused_log) else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let io = Guarded::new(stream, policy, Some(Box::new(admission)));
            let state = io.state();
            match &tls {
                None => {
                    let conn = Conn {
                        io: ConnIo::Plain(Box::new(io)),
                        state,
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(io);
                    let (tx, shutdown) = (tx.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        handshake_then_send(
                            handshake,
                            handshake_timeout,
                            peer,
                            state,
                            tx,
                            shutdown,
                        )
                        .await;
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake_then_send(
    handshake: tokio_rustls::Accept<Guarded<TcpStream>>,
    timeout: Duration,
    peer: SocketAddr,
    state: Arc<ConnState>,
    tx: mpsc::Sender<io::Result<Conn>>,
    shutdown: CancellationToken,
) {
    let result = tokio::select! {
        () = shutdown.cancelled() => return,
        result = tokio::time::timeout(timeout, handshake) => result,
    };
    match result {
        Ok(Ok(tls)) => {
            let conn = Conn {
                io: ConnIo::Tls(Box::new(tls)),
                state,
            };
            let _ = tx.send(Ok(conn)).await;
        }
        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "tls handshake failed"),
        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(io) => Pin::new(io.as_mut()).poll_flush(cx),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            ConnIo::Plain(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
            ConnIo::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The outermost tower layer: counts each call on its connection from the request until the
/// response body ends (see [`ConnState::request`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnTrackLayer;

impl<S> Layer<S> for ConnTrackLayer {
    type Service = ConnTrack<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnTrack { inner }
    }
}

/// The service made by [`ConnTrackLayer`].
#[derive(Debug, Clone)]
pub(crate) struct ConnTrack<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for ConnTrack<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| info.0.request());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| TrackedBody::new(body, guard)))
        })
    }
}
