//! Process-level test harness for Statiko: real `etcd`, `statiko-control`, `stk` and helper
//! servers (moto for S3) started as child processes on loopback, each in its own temp dir.
//!
//! # Layout
//!
//! - [`bins`]: where the workspace binaries and external tools are, and skipping without them.
//! - [`browser`]: headless Chromium over the DevTools protocol, for the web console.
//! - [`process`]: a child process with its output in a log file, SIGTERM, readiness polling.
//! - [`wait`]: [`wait_until`] and the `STATIKO_TEST_PATIENCE_MS` scale for every deadline.
//! - [`certs`]: a throwaway PKI ([`Pki`]) written as PEM files.
//! - [`etcd`]: one etcd per test, plain or TLS with client-certificate auth ([`Etcd`]).
//! - [`edge`]: a `statiko-edge` process sharing a control's store and repository ([`Edge`]).
//! - [`control`]: a `statiko-control` process with a generated config ([`Control`]).
//! - [`client`]: tonic channels and the `statiko.v1` clients with a bearer token ([`Api`]).
//! - [`cmd`]: one-shot runs of a binary such as `stk` ([`run_stk`]).
//! - [`h3`]: an independent HTTP/3 client (aioquic, `tests/h3_client.py`) ([`h3::h3_fetch`]).
//! - [`moto`]: an S3-compatible server from PyPI `moto[server]` ([`Moto`]).
//! - [`pebble`]: the ACME test server with a mock DNS ([`Pebble`]).
//! - [`net`]: free ports and a tiny HTTP(S)/1.1 client for probing servers.
//! - [`proxy`]: a loopback TCP proxy that can be cut and healed ([`TcpProxy`]), for partitions.
//! - [`cluster`]: etcd + control + N edges behind proxies, and [`cluster::assert_converged`].
//! - [`fleet`]: etcd + control + N small edges started in parallel ([`Fleet`]), and a cheap
//!   keep-alive probe of what an edge serves ([`fleet::Prober`]).
//!
//! Every test calls [`init`] first.

pub mod bins;
pub mod browser;
pub mod certs;
pub mod client;
pub mod cluster;
pub mod cmd;
pub mod control;
pub mod edge;
pub mod etcd;
pub mod fixtures;
pub mod fleet;
pub mod h3;
pub mod moto;
pub mod net;
pub mod pebble;
pub mod process;
pub mod proxy;
pub mod wait;

use std::time::Duration;

pub use crate::bins::{bin_path, require_tool, tool_path};
pub use crate::certs::{CertFiles, CertUsage, Pki};
pub use crate::client::{Api, AuthChannel, BearerToken, channel, plain_channel};
pub use crate::cmd::{OutputExt, run_bin, run_stk};
pub use crate::control::{
    ADMIN_TOKEN, Control, ControlOptions, EtcdStore, READONLY_TOKEN, Role, StateStore,
    TEST_SECRETS_ENCRYPTION_KEY, TokenSpec,
};
pub use crate::edge::{Edge, EdgeAddrs, EdgeOptions};
pub use crate::etcd::{Etcd, EtcdTls};
pub use crate::fleet::{Fleet, Prober};
pub use crate::moto::Moto;
pub use crate::net::{
    HttpResponse, TlsTarget, free_port, http_get, http_request, https_get_unverified,
};
pub use crate::pebble::Pebble;
pub use crate::process::ChildProcess;
pub use crate::proxy::TcpProxy;
pub use crate::wait::{patience, wait_until};

/// Once-per-test setup: installs aws-lc-rs as the process-wide rustls crypto provider.
///
/// Installing twice is harmless; the second attempt's error is ignored on purpose.
pub fn init() {
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// `Duration::from_secs`, short enough for test bodies.
pub const fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// `Duration::from_millis`, short enough for test bodies.
pub const fn millis(milliseconds: u64) -> Duration {
    Duration::from_millis(milliseconds)
}
