//! Statiko edge: follows the desired state, stages app bundles and serves every site over HTTPS.
//!
//! # Layout
//!
//! - `run`: wiring and shutdown order.
//! - `sync`: snapshot + watch of the store; `desired`: the state it builds and persists.
//! - `reconcile`: stage bundles, then swap certificates and the routing table atomically.
//! - `stage`: fetch, verify, unpack and precompute bundles; `bundle`: the staged result.
//! - `table`: the routing table.
//! - `serve`: the hyper + rustls servers and the request handler.
//! - `leader`: leader election on a leased key; `certs`: the leader's certificate jobs
//!   (self-signed, ACME HTTP-01, renewal, expiry reminders); `cutover`: the leader's switch of
//!   atomic deployments; `releases`: staging deployments ahead of their cutover (and previews);
//!   `previews`: previews as sites for the certificate jobs, the leader's expiry collector.
//! - `status`: the leased node record and the admin listener; `metrics`: the Prometheus
//!   counters it serves on `/metrics`.

pub mod bundle;
pub(crate) mod certs;
pub(crate) mod cutover;
pub mod desired;
pub mod leader;
pub mod metrics;
pub(crate) mod previews;
pub mod reconcile;
pub(crate) mod releases;
pub mod run;
pub mod serve;
pub mod stage;
pub(crate) mod status;
pub mod sync;
pub mod table;

pub use crate::run::{Listeners, run};
