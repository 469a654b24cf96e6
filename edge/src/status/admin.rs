//! The admin listener: `/healthz`, `/readyz`, `/status` and `/metrics` over plain HTTP/1.1.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::node_record::{NodeInfo, record};
use crate::desired::Desired;
use crate::metrics::{EdgeMetrics, Gauges};
use crate::reconcile::Applied;

/// What the admin listener reports.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub(crate) info: NodeInfo,
    pub(crate) applied: watch::Receiver<Option<Applied>>,
    pub(crate) store_connected: watch::Receiver<bool>,
    pub(crate) leader: watch::Receiver<bool>,
    /// The newest desired state from the store sync (for the sync lag).
    pub(crate) desired: watch::Receiver<Arc<Desired>>,
    pub(crate) metrics: Arc<EdgeMetrics>,
}

/// Serves `/healthz`, `/readyz`, `/status` and `/metrics` (HTTP/1.1, no TLS: bind it to
/// loopback).
pub(crate) async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) {
    statiko_common::http_admin::serve(
        listener,
        "admin",
        move |req| admin_response(&state, req),
        shutdown,
    )
    .await;
}

fn admin_response(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"method not allowed\n".to_vec(),
        );
    }
    let applied = state.applied.borrow().clone();
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        "/readyz" => match applied {
            Some(_) => reply(StatusCode::OK, "text/plain", b"ready\n".to_vec()),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"no state applied yet\n".to_vec(),
            ),
        },
        "/status" => {
            let leader = *state.leader.borrow();
            let node = applied
                .as_ref()
                .map(|a| record(&state.info, a, leader, usize::MAX));
            let body = serde_json::json!({
                "node": node,
                "ready": applied.is_some(),
                "storeConnected": *state.store_connected.borrow(),
            });
            reply(
                StatusCode::OK,
                "application/json",
                body.to_string().into_bytes(),
            )
        }
        "/metrics" => {
            let applied = applied.as_ref();
            let gauges = Gauges {
                applied_revision: applied.map(|a| a.revision),
                desired_revision: state.desired.borrow().revision,
                leader: *state.leader.borrow(),
                store_connected: *state.store_connected.borrow(),
                sites: applied.map_or(0, |a| a.sites.len()),
                unhealthy_sites: applied.map_or(0, |a| a.unhealthy().count()),
                certificates: applied.map(|a| &a.certificates),
            };
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.render(&gauges).into_bytes(),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    }
}
