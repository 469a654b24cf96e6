//! End-to-end scenarios: real etcd, `statiko-control`, `stk` and edge processes on loopback,
//! driven through `statiko_tests`. This file only declares the scenario modules.

mod harness_smoke;
