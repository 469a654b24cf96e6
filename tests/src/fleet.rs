//! A fleet: one etcd, one control and N edges talking to etcd directly (no proxies), started
//! in parallel, each as small as the config allows; and [`Prober`], a keep-alive HTTP/1.1
//! connection per edge that asks "do you serve these bytes yet?" cheaply enough to poll
//! hundreds of edges. Used by the fleet benchmark (`statiko-bench`, `fleet`) and its e2e test.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

use crate::cluster::KEY_PREFIX;
use crate::control::{Control, ControlOptions, EtcdStore, StateStore};
use crate::edge::{Edge, EdgeOptions};
use crate::etcd::Etcd;

/// Edges started at the same time (each start is a process spawn and a ready file to wait for).
const START_PARALLEL: usize = 16;

/// etcd, a control and edges `edge-0`, `edge-1`, … on the same store and bundle repository.
///
/// Field order is drop order: edges stop first, then control, then etcd.
#[derive(Debug)]
pub struct Fleet {
    /// `edges[i]` is `edge-{i}`.
    pub edges: Vec<Edge>,
    pub control: Control,
    pub etcd: Etcd,
}

impl Fleet {
    /// Starts etcd, a control and `n` edges, [`START_PARALLEL`] at a time. `edge_options` adjusts
    /// each edge's options after [`Fleet::edge_options`].
    pub async fn start(
        n: usize,
        edge_options: impl Fn(EdgeOptions) -> EdgeOptions,
    ) -> Result<Self> {
        crate::init();
        let etcd = Etcd::start().await?;
        let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd)))
            .await
            .context("start control")?;
        let options: Vec<EdgeOptions> = (0..n)
            .map(|i| edge_options(Self::edge_options(&etcd, &control, i)))
            .collect();
        let mut started: Vec<(usize, Edge)> =
            futures::stream::iter(options.into_iter().enumerate())
                .map(|(i, options)| async move {
                    let edge = Edge::start(options)
                        .await
                        .with_context(|| format!("start edge-{i}"))?;
                    anyhow::Ok((i, edge))
                })
                .buffer_unordered(START_PARALLEL)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_>>()?;
        started.sort_by_key(|(i, _)| *i);
        Ok(Self {
            edges: started.into_iter().map(|(_, edge)| edge).collect(),
            control,
            etcd,
        })
    }

    /// The options of `edge-{i}`: straight to etcd, plain HTTP served (no redirect, so a
    /// [`Prober`] can read pages without TLS), one runtime worker, warnings-only logs.
    pub fn edge_options(etcd: &Etcd, control: &Control, i: usize) -> EdgeOptions {
        let store = StateStore::Etcd(EtcdStore {
            endpoint: etcd.endpoint(),
            key_prefix: KEY_PREFIX.to_owned(),
            tls: None,
        });
        EdgeOptions::new(&format!("edge-{i}"), store, &control.repo_dir())
            .config(json!({"edge": {"redirectHttp": false, "workerThreads": 1}}))
            .env("RUST_LOG", "warn")
    }

    /// Restarts the edges at `indices` (which must not be running), [`START_PARALLEL`] at a
    /// time, each waiting for its ready file.
    pub async fn restart(&mut self, indices: &[usize]) -> Result<()> {
        let mut edges: Vec<&mut Edge> = self
            .edges
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| indices.contains(i))
            .map(|(_, edge)| edge)
            .collect();
        futures::stream::iter(edges.iter_mut())
            .map(|edge| async move {
                let name = edge.name().to_owned();
                edge.restart()
                    .await
                    .with_context(|| format!("restart {name}"))
            })
            .buffer_unordered(START_PARALLEL)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<()>>>()?;
        Ok(())
    }
}

/// One keep-alive plain-HTTP/1.1 connection to an edge, reconnecting when it breaks, for
/// polling whether it serves the expected bytes (about a tenth of a fresh connection's cost).
#[derive(Debug)]
pub struct Prober {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Prober {
    /// A prober of the plain-HTTP listener at `addr` (connects on first use).
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    /// `GET http://{host}/`: whether the answer is 200 with exactly `expected` as its body.
    /// Connection errors count as "no" (the edge may be restarting).
    pub async fn serves(&mut self, host: &str, expected: &[u8]) -> bool {
        match self.get(host).await {
            Ok(body) => body == expected,
            Err(_) => {
                self.sender = None;
                false
            }
        }
    }

    async fn get(&mut self, host: &str) -> Result<Bytes> {
        if !self.sender.as_ref().is_some_and(SendRequest::is_ready) {
            self.sender = None;
        }
        let sender = match &mut self.sender {
            Some(sender) => sender,
            None => {
                let tcp = TcpStream::connect(self.addr).await?;
                tcp.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(connection);
                self.sender.insert(sender)
            }
        };
        let request = http::Request::get("/")
            .header(http::header::HOST, host)
            .body(Empty::new())?;
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
            .await
            .context("probe timed out")??;
        anyhow::ensure!(
            response.status() == http::StatusCode::OK,
            "status {}",
            response.status()
        );
        Ok(response.into_body().collect().await?.to_bytes())
    }
}
