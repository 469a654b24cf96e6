//! The edge's HTTP and HTTPS servers: the accept loops (`accept`), per-client and per-site
//! limits (`limits`), the PROXY protocol (`proxy`), the SNI certificate resolver and rustls
//! configuration (`tls`), the request handler (`handler`), preview hosts (`preview`: noindex,
//! basic auth), safe path resolution and HTTP semantics as pure functions (`files`), response
//! bodies and built-in pages (`response`), and HTTP/3 over QUIC on the same handler (`http3`).
//!
//! Wiring, in `main`:
//!
//! ```text
//! let resolver = Arc::new(CertResolver::new()?);
//! let tls = server_config(resolver.clone())?;
//! let handler = Handler::new(table).with_https_port(8443);
//! tracker.spawn(serve_http(http_listener, handler.clone(), opts.clone(), token.child_token()));
//! tracker.spawn(serve_https(https_listener, tls, handler, opts, token.child_token()));
//! ```

pub mod accept;
pub mod files;
pub mod handler;
pub mod http3;
pub mod limits;
pub mod preview;
pub mod proxy;
pub mod response;
mod site;
pub mod tls;

pub use accept::{
    ProxySettings, ServerOptions, ServerStats, StatsSnapshot, serve_http, serve_https,
};
pub use handler::{Handler, Scheme};
pub use http3::serve_http3;
pub use limits::{ClientAddr, ClientLimits, LimitStats};
pub use response::ResponseBody;
pub use tls::{CertResolver, TlsError, certified_key_from_pem, server_config};
