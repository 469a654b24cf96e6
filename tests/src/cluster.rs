//! A whole cluster for fault tests: one etcd, one control and N edges, each edge reaching etcd
//! through its own [`TcpProxy`] so any edge can be partitioned from etcd and healed; and the
//! convergence check [`assert_converged`] that every fault scenario ends with.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;
use statiko_proto::v1::{DeployResponse, ListNodesRequest};

use crate::control::{Control, ControlOptions, EtcdStore, StateStore};
use crate::edge::{Edge, EdgeOptions};
use crate::etcd::Etcd;
use crate::proxy::TcpProxy;
use crate::secs;
use crate::wait::wait_until;

/// The key prefix every cluster component uses.
pub const KEY_PREFIX: &str = "/statiko";

/// etcd, a control and edges `edge-0`, `edge-1`, … sharing the store and the bundle repository.
///
/// Field order is drop order: edges stop before the proxies, control and etcd go away.
#[derive(Debug)]
pub struct Cluster {
    /// The edges, `edges[i]` named `edge-{i}`.
    pub edges: Vec<Edge>,
    /// `proxies[i]` carries `edges[i]`'s etcd traffic: cut it to partition that edge.
    pub proxies: Vec<TcpProxy>,
    /// The control plane (talks to etcd directly).
    pub control: Control,
    /// The store.
    pub etcd: Etcd,
}

impl Cluster {
    /// Starts etcd, a control and `edges` edges with the default options.
    pub async fn start(edges: usize) -> Result<Self> {
        Self::start_with(edges, |options| options).await
    }

    /// Like [`Cluster::start`], with a hook to adjust each edge's options.
    pub async fn start_with(
        edges: usize,
        edge_options: impl FnMut(EdgeOptions) -> EdgeOptions,
    ) -> Result<Self> {
        Self::start_with_control(edges, |options| options, edge_options).await
    }

    /// Like [`Cluster::start_with`], with a hook to adjust the control's options too (its store
    /// is set to the cluster's etcd before the hook runs).
    pub async fn start_with_control(
        edges: usize,
        control_options: impl FnOnce(ControlOptions) -> ControlOptions,
        mut edge_options: impl FnMut(EdgeOptions) -> EdgeOptions,
    ) -> Result<Self> {
        crate::init();
        let etcd = Etcd::start().await?;
        let control = Control::start(control_options(
            ControlOptions::default().store(StateStore::etcd(&etcd)),
        ))
        .await
        .context("start control")?;
        let mut cluster = Self {
            edges: Vec::new(),
            proxies: Vec::new(),
            control,
            etcd,
        };
        for i in 0..edges {
            let proxy = TcpProxy::for_url(&cluster.etcd.endpoint()).await?;
            let store = StateStore::Etcd(EtcdStore {
                endpoint: proxy.url(),
                key_prefix: KEY_PREFIX.to_owned(),
                tls: None,
            });
            let options = edge_options(EdgeOptions::new(
                &format!("edge-{i}"),
                store,
                &cluster.control.repo_dir(),
            ));
            let edge = Edge::start(options)
                .await
                .with_context(|| format!("start edge-{i}"))?;
            cluster.proxies.push(proxy);
            cluster.edges.push(edge);
        }
        Ok(cluster)
    }

    /// Every edge, for [`assert_converged`].
    pub fn edge_refs(&self) -> Vec<&Edge> {
        self.edges.iter().collect()
    }

    /// The names of the nodes control lists (live node records).
    pub async fn listed_nodes(&self) -> Result<BTreeSet<String>> {
        let api = self.control.admin().await?;
        let nodes = api
            .cluster()
            .list_nodes(ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        Ok(nodes.into_iter().map(|node| node.name).collect())
    }

    /// Waits until every edge has registered its node record (an edge's ready file is written
    /// once it listens, its record after its first snapshot; deploys with `wait` wait for the
    /// registered edges).
    pub async fn wait_registered(&self) -> Result<()> {
        let want = self.edges.len();
        wait_until(secs(20), async || {
            anyhow::Ok(self.listed_nodes().await?.len() == want)
        })
        .await
        .with_context(|| format!("every edge registers its node record\n{}", self.logs()))
    }

    /// Deploys `name@version` to `domain` as admin (see [`crate::fixtures::deploy`]), a `wait`
    /// bounded at 30 s.
    pub async fn deploy(
        &self,
        domain: &str,
        name: &str,
        version: &str,
        wait: bool,
    ) -> Result<DeployResponse> {
        self.deploy_within(domain, name, version, wait, secs(30))
            .await
    }

    /// [`Cluster::deploy`] with the server-side wait bounded at `wait_timeout`.
    pub async fn deploy_within(
        &self,
        domain: &str,
        name: &str,
        version: &str,
        wait: bool,
        wait_timeout: std::time::Duration,
    ) -> Result<DeployResponse> {
        let api = self.control.admin().await?;
        crate::fixtures::deploy(&api, domain, name, version, wait, wait_timeout).await
    }

    /// The names of the edges whose `/status` says `leader: true` (unreachable edges are
    /// skipped).
    pub async fn leaders(&self) -> Vec<String> {
        let mut leaders = Vec::new();
        for edge in &self.edges {
            if let Ok(status) = edge.status().await
                && status["node"]["leader"] == Value::Bool(true)
            {
                leaders.push(edge.name().to_owned());
            }
        }
        leaders
    }

    /// Waits (up to 30 s) until control lists every edge and exactly one of them leads (what an
    /// atomic deploy or a rollback needs); returns the leader's name.
    pub async fn settled(&self) -> Result<String> {
        let api = self.control.admin().await?;
        let want = self.edges.len();
        wait_until(secs(30), async || {
            let nodes = api
                .cluster()
                .list_nodes(statiko_proto::v1::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            let leaders = self.leaders().await;
            anyhow::Ok((nodes.len() == want && leaders.len() == 1).then(|| leaders[0].clone()))
        })
        .await
        .with_context(|| self.logs())
    }

    /// The tails of every process log, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "---- etcd ----\n{}", self.etcd.log_tail());
        let _ = writeln!(text, "---- control ----\n{}", self.control.log_tail());
        for edge in &self.edges {
            let _ = writeln!(text, "---- {} ----\n{}", edge.name(), edge.log_tail());
        }
        text
    }
}

/// What every edge agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converged {
    /// The applied revision every edge reports in `/status` (`node.appliedRevision`).
    pub revision: i64,
    /// Per site: the HTTP status and body of `GET https://<site>/`, identical on every edge.
    pub pages: BTreeMap<String, (u16, Vec<u8>)>,
}

impl Converged {
    /// The body served for `site` at `/`, as text.
    pub fn page(&self, site: &str) -> String {
        self.pages
            .get(site)
            .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
            .unwrap_or_default()
    }
}

/// Waits (up to 30 s, scaled by patience) until every edge reports the same applied revision
/// and serves the same status and bytes at `https://<site>/` for every one of `sites`; fails
/// with the last difference seen. The caller checks that the pages are the expected ones.
pub async fn assert_converged(edges: &[&Edge], sites: &[&str]) -> Result<Converged> {
    assert_converged_at(edges, sites, 0).await
}

/// Like [`assert_converged`], and the agreed revision must be at least `min_revision` (e.g. the
/// revision of the last write), so edges agreeing on an older state do not count.
pub async fn assert_converged_at(
    edges: &[&Edge],
    sites: &[&str],
    min_revision: i64,
) -> Result<Converged> {
    wait_until(secs(30), async || {
        converged_now(edges, sites, min_revision).await.map(Some)
    })
    .await
    .context("the edges did not converge")
}

async fn converged_now(edges: &[&Edge], sites: &[&str], min_revision: i64) -> Result<Converged> {
    let mut agreed: Option<(String, Converged)> = None;
    for edge in edges {
        let status = edge
            .status()
            .await
            .with_context(|| format!("{}: /status", edge.name()))?;
        let revision = status["node"]["appliedRevision"]
            .as_i64()
            .ok_or_else(|| anyhow!("{}: no applied revision yet: {status}", edge.name()))?;
        if revision < min_revision {
            return Err(anyhow!(
                "{} applied revision {revision}, older than {min_revision}",
                edge.name()
            ));
        }
        let mut pages = BTreeMap::new();
        for site in sites {
            let response = edge
                .https_get(site, "/")
                .await
                .with_context(|| format!("{}: GET https://{site}/", edge.name()))?;
            pages.insert(
                (*site).to_owned(),
                (response.status.as_u16(), response.body.to_vec()),
            );
        }
        let this = Converged { revision, pages };
        match &agreed {
            None => agreed = Some((edge.name().to_owned(), this)),
            Some((first, expected)) => {
                if expected.revision != this.revision {
                    return Err(anyhow!(
                        "{first} applied revision {}, {} applied {}",
                        expected.revision,
                        edge.name(),
                        this.revision
                    ));
                }
                for site in sites {
                    let (a, b) = (&expected.pages[*site], &this.pages[*site]);
                    if a != b {
                        return Err(anyhow!(
                            "{site}: {first} serves {} {:?}, {} serves {} {:?}",
                            a.0,
                            String::from_utf8_lossy(&a.1),
                            edge.name(),
                            b.0,
                            String::from_utf8_lossy(&b.1)
                        ));
                    }
                }
            }
        }
    }
    agreed
        .map(|(_, converged)| converged)
        .ok_or_else(|| anyhow!("no edges to compare"))
}
