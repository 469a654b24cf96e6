//! End-to-end scenarios: real etcd, `statiko-control`, `stk` and edge processes on loopback,
//! driven through `statiko_tests`. This file only declares the scenario modules.

mod control_common;
mod control_sites;
mod harness_smoke;
mod control_auth;
