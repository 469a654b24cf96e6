//! This edge's status: published under its leased node record (`{root}/status/v1/nodes/{node}`) for
//! `stk cluster status` and deploy waits (`node_record`), and served on the admin listener
//! (`/healthz`, `/readyz`, `/status`, `/metrics`; `admin`).

mod admin;
mod node_record;

pub(crate) use self::admin::{AdminState, serve_admin};
pub(crate) use self::node_record::{NodeInfo, Publisher};
