//! Statiko edge: follows the desired state, stages app bundles and serves every site over HTTPS.
//!
//! # Layout
//!
//! - `bundle`: a staged bundle and its per-file serving metadata.
//! - `table`: the routing table, swapped atomically.
//! - `stage`: fetch, verify, unpack and precompute bundles.
//! - `serve`: the hyper + rustls server and the request handler.

pub mod bundle;
pub mod table;
