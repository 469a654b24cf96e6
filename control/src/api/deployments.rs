//! `statiko.v1.DeploymentService`: point a site at an app version, optionally waiting until every
//! live edge serves it.

use std::time::Duration;

use statiko_common::ids;
use statiko_common::model::{self, NodeStatusRecord, now_ms};
use statiko_common::store::Compare;
use statiko_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Api;
use crate::convert::{app_ref_from_proto, site_to_proto};
use crate::error::{ControlError, Result, invalid};
use crate::state::MAX_ATTEMPTS;

const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(3600);

impl Api {
    async fn deploy(&self, req: pb::DeployRequest) -> Result<pb::DeployResponse> {
        let state = &self.ctx.state;
        let lookup = ids::domain("domain", &req.domain)?;
        let app = app_ref_from_proto("app", req.app.as_ref())?;
        let wait = match &req.wait_timeout {
            None => DEFAULT_WAIT,
            Some(d) if d.seconds < 0 || d.nanos < 0 => {
                return Err(invalid!("wait_timeout: must not be negative"));
            }
            Some(d) => Duration::new(d.seconds as u64, d.nanos as u32).min(MAX_WAIT),
        };
        for _ in 0..MAX_ATTEMPTS {
            let current = state.find_site(&lookup).await?;
            if state.get_app(&app.name, &app.version).await?.is_none() {
                return Err(ControlError::NotFound(format!(
                    "app {app} not found; upload it first"
                )));
            }
            let mut site = current.record.clone();
            site.app = Some(app.clone());
            site.deployed_at = Some(now_ms());
            site.updated_at = now_ms();
            let compares = vec![
                Compare::unchanged_since(state.keys.site(&site.domain), current.mod_revision),
                Compare::present(state.keys.app(&app.name, &app.version)),
            ];
            let result = state.txn(compares, state.site_ops(&site, &[])).await?;
            if !result.succeeded {
                continue;
            }
            tracing::info!(site = %site.domain, %app, revision = result.revision, "deployed");
            let ready_nodes = if req.wait {
                self.wait_for_edges(&site.domain, &app, result.revision, wait)
                    .await?
            } else {
                Vec::new()
            };
            return Ok(pb::DeployResponse {
                site: Some(site_to_proto(&site, result.revision)),
                revision: result.revision,
                ready_nodes,
            });
        }
        Err(ControlError::Aborted(
            "deploy kept losing against concurrent changes; retry".into(),
        ))
    }

    /// Polls the leased node records until every live edge has applied `revision` and serves
    /// `app` for `domain`.
    async fn wait_for_edges(
        &self,
        domain: &str,
        app: &model::AppRef,
        revision: i64,
        timeout: Duration,
    ) -> Result<Vec<String>> {
        let state = &self.ctx.state;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snapshot = state.store.snapshot(&state.keys.nodes()).await?;
            let nodes: Vec<NodeStatusRecord> = snapshot
                .kvs
                .iter()
                .filter_map(|kv| model::decode(&kv.value).ok())
                .collect();
            let mut ready = Vec::new();
            let mut lagging = Vec::new();
            for node in &nodes {
                let site = node.sites.iter().find(|s| s.domain == domain);
                // A record that omits healthy sites lists the site only when it is unhealthy;
                // left out, it serves the desired state at the applied revision.
                let serving = match site {
                    Some(s) => s.app.as_ref() == Some(app),
                    None => node.sites_omitted > 0,
                };
                if node.applied_revision >= revision && serving {
                    ready.push(node.name.clone());
                } else {
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
                    return Err(ControlError::DeadlineExceeded(format!(
                        "deployed {app} to {domain} at revision {revision}, but no live edge is registered to serve it"
                    )));
                }
            } else if lagging.is_empty() {
                return Ok(ready);
            } else if tokio::time::Instant::now() >= deadline {
                return Err(ControlError::DeadlineExceeded(format!(
                    "deployed {app} to {domain} at revision {revision}, but these edges do not serve it yet: {}",
                    lagging.join("; ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tonic::async_trait]
impl pb::deployment_service_server::DeploymentService for Api {
    async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        Ok(Response::new(
            Api::deploy(self, request.into_inner()).await?,
        ))
    }
}
