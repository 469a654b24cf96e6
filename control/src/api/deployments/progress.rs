//! Following a deployment: what each live edge reports (staged, failed, serving), the wait of
//! `Deploy`/`Rollback` with `wait`, and the `WatchDeployment` stream.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use statiko_common::model::{
    self, AppRef, DeployStrategy, DeploymentRecord, DeploymentState, NodeStatusRecord,
};
use statiko_common::store::StoreError;
use statiko_proto::v1 as pb;
use tokio::time::Instant;
use tonic::Status;

use crate::api::Api;
use crate::convert::deployment_to_proto;
use crate::error::{ControlError, Result};

/// How often the records are read while waiting or watching.
const POLL: Duration = Duration::from_millis(50);

/// How long `WatchDeployment` rides out a store that does not answer before it ends the stream
/// with the error (the calls that wait have their own deadline instead).
const WATCH_PATIENCE: Duration = Duration::from_secs(15);

/// `Ok(None)` for a store failure worth another try before `deadline` (an etcd member went away
/// and the client moves on to the next one), the result otherwise.
fn unless_transient<T>(result: Result<T>, deadline: Instant) -> Result<Option<T>> {
    match result {
        Err(ControlError::Store(StoreError::Unavailable { .. })) if Instant::now() < deadline => {
            Ok(None)
        }
        other => other.map(Some),
    }
}

/// The stream `WatchDeployment` returns.
pub(crate) type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchDeploymentResponse, Status>> + Send>>;

/// Whether `node` serves `app` for `domain` at `revision` or later. A record that omits healthy
/// sites lists the site only when it is unhealthy; left out, it serves the desired state at the
/// applied revision.
fn serves(node: &NodeStatusRecord, domain: &str, app: &AppRef, revision: i64) -> bool {
    let serving = match node.sites.iter().find(|s| s.domain == domain) {
        Some(s) => s.app.as_ref() == Some(app),
        None => node.sites_omitted > 0,
    };
    node.applied_revision >= revision && serving
}

/// One deployment and what every live edge reports about it.
fn progress(
    deployment: &DeploymentRecord,
    revision: i64,
    nodes: &[NodeStatusRecord],
) -> pb::WatchDeploymentResponse {
    let mut out = pb::WatchDeploymentResponse {
        deployment: Some(deployment_to_proto(deployment)),
        ..Default::default()
    };
    let live = deployment.state == DeploymentState::Live;
    for node in nodes {
        out.nodes.push(node.name.clone());
        match node.staging.get(&deployment.id) {
            Some(report) if report.ok => out.staged_nodes.push(node.name.clone()),
            Some(report) => out.errors.push(pb::DeploymentNodeError {
                node: node.name.clone(),
                error: report.error.clone().unwrap_or_default(),
            }),
            None if live && deployment.staged_nodes.contains(&node.name) => {
                out.staged_nodes.push(node.name.clone());
            }
            None => {}
        }
        if live && serves(node, &deployment.site, &deployment.app, revision) {
            out.serving_nodes.push(node.name.clone());
        }
    }
    out
}

/// Whether a watch is over: failed or superseded, or live and served by every live edge.
fn finished(p: &pb::WatchDeploymentResponse) -> bool {
    match p.deployment.as_ref().map(pb::Deployment::state) {
        Some(pb::DeploymentState::Failed | pb::DeploymentState::Superseded) | None => true,
        // Served by every live edge (or there is none to wait for).
        Some(pb::DeploymentState::Live) => p.serving_nodes.len() == p.nodes.len(),
        // A preview never goes live: done once every live edge staged it, or one failed.
        Some(pb::DeploymentState::Preview) => {
            !p.errors.is_empty() || p.staged_nodes.len() == p.nodes.len()
        }
        _ => false,
    }
}

impl Api {
    pub(super) async fn live_nodes(&self) -> Result<Vec<NodeStatusRecord>> {
        let state = &self.ctx.state;
        let snapshot = state.store.snapshot(&state.keys.nodes()).await?;
        Ok(snapshot
            .kvs
            .iter()
            .filter_map(|kv| model::decode(&kv.value).ok())
            .collect())
    }

    /// The deployment as stored now, with its revision.
    pub(super) async fn read_deployment(
        &self,
        domain: &str,
        id: &str,
    ) -> Result<(DeploymentRecord, i64)> {
        let found = self
            .ctx
            .state
            .get_deployment(domain, id)
            .await?
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "deployment {id} of site {domain:?} no longer exists"
                ))
            })?;
        Ok((found.record, found.mod_revision))
    }

    /// Waits until deployment `id` is live (returns the revision it went live at), failing with
    /// FAILED_PRECONDITION when it failed and DEADLINE_EXCEEDED naming the edges that have not
    /// staged it when `deadline` passes first.
    pub(super) async fn wait_for_cutover(
        &self,
        domain: &str,
        id: &str,
        deadline: Instant,
    ) -> Result<i64> {
        loop {
            let Some((deployment, revision)) =
                unless_transient(self.read_deployment(domain, id).await, deadline)?
            else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            match deployment.state {
                DeploymentState::Live | DeploymentState::Superseded => return Ok(revision),
                DeploymentState::Failed => {
                    return Err(ControlError::Refused(format!(
                        "deployment {id} of {} to {domain} failed: {}",
                        deployment.app,
                        deployment.reason.as_deref().unwrap_or("no reason recorded")
                    )));
                }
                DeploymentState::Staging => {}
                DeploymentState::Preview => {
                    return Err(ControlError::Refused(format!(
                        "deployment {id} of {domain} is a preview; it never goes live (promote it)"
                    )));
                }
            }
            if Instant::now() >= deadline {
                let nodes = self.live_nodes().await?;
                let p = progress(&deployment, revision, &nodes);
                let pending: Vec<&str> = p
                    .nodes
                    .iter()
                    .filter(|n| !p.staged_nodes.contains(n))
                    .map(String::as_str)
                    .collect();
                return Err(ControlError::TimedOut(format!(
                    "deployment {id} of {} to {domain} is still staging (the leader edge cuts it over or fails it); not staged yet by: {}",
                    deployment.app,
                    if pending.is_empty() {
                        "-".to_owned()
                    } else {
                        pending.join(", ")
                    }
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// With `wait`: waits for the cutover of an atomic deployment, then until every live edge
    /// serves its app. Returns the revision to report and the edges that serve it.
    pub(super) async fn wait_for_deployment(
        &self,
        deployment: &DeploymentRecord,
        revision: i64,
        timeout: Duration,
    ) -> Result<(i64, Vec<String>)> {
        let started = Instant::now();
        let revision = if deployment.strategy == DeployStrategy::Atomic {
            self.wait_for_cutover(&deployment.site, &deployment.id, started + timeout)
                .await?
        } else {
            revision
        };
        let left = timeout.saturating_sub(started.elapsed());
        let ready = self
            .wait_for_edges(&deployment.site, &deployment.app, revision, left)
            .await?;
        Ok((revision, ready))
    }

    /// The `WatchDeployment` stream: a message whenever the progress changes, until finished.
    pub(super) fn watch_deployment(&self, domain: String, id: String) -> WatchStream {
        let api = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last: Option<pb::WatchDeploymentResponse> = None;
            let mut patience = Instant::now() + WATCH_PATIENCE;
            loop {
                let next = async {
                    let (deployment, revision) = api.read_deployment(&domain, &id).await?;
                    let nodes = api.live_nodes().await?;
                    Ok::<_, ControlError>(progress(&deployment, revision, &nodes))
                };
                let p = match unless_transient(next.await, patience) {
                    Ok(Some(p)) => {
                        patience = Instant::now() + WATCH_PATIENCE;
                        p
                    }
                    Ok(None) => {
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                };
                let done = finished(&p);
                if last.as_ref() != Some(&p) {
                    last = Some(p.clone());
                    if tx.send(Ok(p)).await.is_err() {
                        return; // The client went away.
                    }
                }
                if done {
                    return;
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// Polls the leased node records until every live edge has applied `revision` and serves
    /// `app` for `domain`.
    pub(super) async fn wait_for_edges(
        &self,
        domain: &str,
        app: &model::AppRef,
        revision: i64,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(nodes) = unless_transient(self.live_nodes().await, deadline)? else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            let mut ready = Vec::new();
            let mut lagging = Vec::new();
            for node in &nodes {
                if serves(node, domain, app, revision) {
                    ready.push(node.name.clone());
                } else {
                    let site = node.sites.iter().find(|s| s.domain == domain);
                    let why = match site {
                        Some(s) if s.error.is_some() => {
                            format!("error: {}", s.error.as_deref().unwrap_or_default())
                        }
                        Some(s) => match &s.app {
                            Some(a) => {
                                format!("serving {a}, applied revision {}", node.applied_revision)
                            }
                            None => {
                                format!("no app yet, applied revision {}", node.applied_revision)
                            }
                        },
                        None => format!("applied revision {}", node.applied_revision),
                    };
                    lagging.push(format!("{} ({why})", node.name));
                }
            }
            if nodes.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ControlError::TimedOut(format!(
                        "deployed {app} to {domain} at revision {revision}, but no live edge is registered to serve it"
                    )));
                }
            } else if lagging.is_empty() {
                return Ok(ready);
            } else if tokio::time::Instant::now() >= deadline {
                return Err(ControlError::TimedOut(format!(
                    "deployed {app} to {domain} at revision {revision}, but these edges do not serve it yet: {}",
                    lagging.join("; ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
