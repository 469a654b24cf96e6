//! End-to-end scenarios: real etcd, `statiko-control`, `stk` and edge processes on loopback,
//! driven through `statiko_tests`. This file only declares the scenario modules.

mod archive_bombs;
mod config_examples;
mod console;
mod control_apps;
mod control_auth;
mod control_certs;
mod control_cli;
mod control_common;
mod control_deploy;
mod control_etcd;
mod control_releases;
mod control_sites;
mod control_state;
mod control_tokens;
mod edge_certs;
mod edge_cluster;
mod edge_conventions;
mod edge_http3;
mod edge_manifest;
mod edge_start;
mod faults;
mod fleet;
mod hardening;
mod harness_smoke;
mod observability;
mod previews;
mod previews_tls;
mod releases;
mod releases_flip;
mod releases_skew;
mod safe_defaults;
mod sdk_python;
mod state_import_large;
