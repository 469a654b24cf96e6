//! The web console (`control.console`): server-rendered HTML pages over HTTPS on a listener of
//! its own, with control's certificate. A browser signs in with an API token; the session is a
//! record in the store (so every control replica knows it) and the browser's `HttpOnly; Secure;
//! SameSite=Strict` cookie holds its id and the token sealed with the session's key
//! ([`session`]).
//!
//! **Same code path:** the console reads no desired state from the store (its own session
//! records are all it keeps there) and implements no rule. Every page
//! and every action is a call of the `statiko.v1` API, made in-process through the gRPC
//! listener's own tower stack (metrics, auth, the tonic services) with the session's token as
//! its bearer token ([`grpc`]), so roles, deployer scopes, validation and their error messages
//! are the API's, and a token does in the console exactly what it may do over gRPC.
//!
//! By file: `grpc.rs` (the in-process clients), `session.rs` (sessions, cookie, CSRF tokens),
//! `listen.rs` (the hardened HTTPS listener), `routes.rs` (routing, forms, HTTP answers),
//! `pages.rs` (what each page asks the API, and its template in `control/templates/console/`),
//! `format.rs` (times and sizes for people),
//! `static/` (the stylesheet and the few lines of refresh script).

mod format;
mod grpc;
mod listen;
mod pages;
mod routes;
mod session;

use std::sync::Arc;

use statiko_common::config::{ConsoleConfig, ControlLimitsConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::auth::AuthLayer;
use crate::metrics::MetricsLayer;

/// What every console request shares.
#[derive(Debug)]
pub(crate) struct Console {
    grpc: grpc::InProcess,
    sessions: session::Sessions,
}

/// Serves the console on `listener` (HTTPS with `tls`, control's identity) until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: &rustls::ServerConfig,
    stack: (&Api, AuthLayer, MetricsLayer),
    config: &ConsoleConfig,
    limits: &ControlLimitsConfig,
    shutdown: CancellationToken,
) {
    let (api, auth, metrics) = stack;
    let console = Arc::new(Console {
        grpc: grpc::InProcess::new(api, auth, metrics),
        sessions: session::Sessions::new(
            config.session_lifetime,
            api.ctx.state.store.clone(),
            api.ctx.state.keys.clone(),
        ),
    });
    listen::serve(listener, listen::tls_config(tls), console, limits, shutdown).await;
}
