//! Shared pieces of Statiko, used by both the control plane and the edge.
//!
//! # Layout
//!
//! - `ids`: validation of user-chosen names (domains, app names, versions).
//! - `model`: the desired-state records, one per store key, and their JSON codec.
//! - `keys`: the store key schema, the only place key strings are built.
//! - `store`: one store interface, two backends (`etcd`, `file`).
//! - `config`: the shared YAML configuration with environment overrides.
//! - `crypto`: AES-256-GCM sealing of secrets, Ed25519 bundle signatures, certificate parsing.
//! - `backoff`: exponential retry back-off with random jitter.
//! - `grpc`: gRPC pieces shared by the control plane and the CLI (status code names).
//! - `notify`: webhook notifications (failed deploys and issuance, expiry reminders).
//! - `secrets_check`: the start-up check that `secretsEncryptionKey` opens the cluster's secrets.
//! - `manifest`: the app manifest (`_statiko.yaml`): parsing, validation and compiled rules.
//! - `redirects`, `headers_file`: a bundle's `_redirects` and `_headers`, on the
//!   `path_pattern` router; `conventions`: the static-host conventions (404.html, pretty URLs,
//!   caching of content-hashed names and HTML).
//! - `preview`: preview deploys: their host format, TTL bounds and password hashing (argon2id).
//! - `repo`: the bundle repository (local directory, S3, Azure Blob, GCS) via `object_store`.
//! - `http_admin`: the small plain-HTTP server behind the operator endpoints.
//! - `listener`: what every TCP listener shares: accept back-off, connection caps (total and
//!   per client), idle closing that PINGs and silence cannot dodge, log throttling.
//! - `process`: the shared start-up of the server binaries (flags, config, exit codes).
//! - `telemetry`: tracing subscriber set-up.
//! - `tls`: client-side TLS pieces (a verifier that accepts any server certificate).
//! - `shutdown`: signals to a cancellation token.

pub mod archive;
pub mod backoff;
pub mod config;
pub mod conventions;
pub mod crypto;
pub mod demo;
pub mod grpc;
pub mod headers_file;
pub mod http_admin;
pub mod ids;
pub mod keys;
pub mod listener;
pub mod manifest;
pub mod model;
pub mod notify;
pub mod path_pattern;
pub mod preview;
pub mod private_files;
pub mod process;
pub mod redirects;
pub mod repo;
pub mod secrets_check;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls_client;
