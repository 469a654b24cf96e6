//! `statiko.v1.DeploymentService`: deployments of app versions to sites (each one a record with
//! its history), optionally waiting until every live edge serves them.

use std::time::Duration;

use statiko_common::ids;
use statiko_common::model::{
    self, AppRef, DeployStrategy, DeploymentRecord, DeploymentState, SiteRecord, now_ms,
};
use statiko_common::store::{Compare, Store, TxnOp};
use statiko_proto::v1 as pb;
use tonic::{Request, Response, Status};

mod flip;
mod previews;
mod progress;

use super::Api;
use crate::auth::Caller;
use crate::convert::{app_ref_from_proto, deployment_to_proto, site_to_proto, strategy_from_proto};
use crate::error::{ControlError, Result, invalid};
use crate::state::{MAX_ATTEMPTS, Versioned};

const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Flips lost to concurrent changes (node records rewritten meanwhile) before a deployment
/// takes the staged path instead.
const MAX_LOST_FLIPS: usize = 3;

/// A deployment just written.
#[derive(Debug)]
struct Created {
    site: SiteRecord,
    /// The site's revision after the write (unchanged by an atomic deployment that stages).
    site_revision: i64,
    deployment: DeploymentRecord,
    /// The revision of the write.
    revision: i64,
}

/// Where a new deployment comes from, besides a plain deploy.
#[derive(Debug, Clone)]
enum Origin {
    Deploy,
    /// A rollback to this deployment.
    Rollback(String),
    /// The promotion of this preview.
    Promoted(String),
}

/// The name of the token a request was authenticated with.
fn author<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.name.clone())
        .unwrap_or_default()
}

fn wait_timeout(field: &str, value: Option<&prost_types::Duration>) -> Result<Duration> {
    match value {
        None => Ok(DEFAULT_WAIT),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(invalid!("{field}: must not be negative")),
        Some(d) => Ok(Duration::new(d.seconds as u64, d.nanos as u32).min(MAX_WAIT)),
    }
}

impl Api {
    async fn deploy(&self, req: pb::DeployRequest, author: String) -> Result<pb::DeployResponse> {
        let lookup = ids::domain("domain", &req.domain)?;
        let app = app_ref_from_proto("app", req.app.as_ref())?;
        let wait = wait_timeout("wait_timeout", req.wait_timeout.as_ref())?;
        let strategy = strategy_from_proto(req.strategy)?;
        let created = self
            .create_deployment(&lookup, &app, strategy, author, Origin::Deploy)
            .await?;
        if !req.wait {
            return Ok(pb::DeployResponse {
                site: Some(site_to_proto(&created.site, created.site_revision)),
                revision: created.revision,
                ready_nodes: Vec::new(),
                deployment: Some(deployment_to_proto(&created.deployment)),
            });
        }
        let (revision, ready_nodes) = self
            .wait_for_deployment(&created.deployment, created.revision, wait)
            .await?;
        let state = &self.ctx.state;
        let site = state.find_site(&created.site.domain).await?;
        let (deployment, _) = self
            .read_deployment(&created.site.domain, &created.deployment.id)
            .await?;
        Ok(pb::DeployResponse {
            site: Some(site_to_proto(&site.record, site.mod_revision)),
            revision,
            ready_nodes,
            deployment: Some(deployment_to_proto(&deployment)),
        })
    }

    /// Writes a new deployment of `app` to the site `lookup` names, in one transaction with the
    /// end of any deployment of the site still staging, the history's garbage collection and,
    /// for an immediate deployment or an atomic one every live edge already retains (a flip,
    /// `flip.rs`), the switch of the site.
    async fn create_deployment(
        &self,
        lookup: &str,
        app: &AppRef,
        strategy: Option<DeployStrategy>,
        author: String,
        origin: Origin,
    ) -> Result<Created> {
        let (rollback_of, promoted_from) = match origin {
            Origin::Deploy => (None, None),
            Origin::Rollback(id) => (Some(id), None),
            Origin::Promoted(id) => (None, Some(id)),
        };
        let state = &self.ctx.state;
        let strategy = match strategy {
            // Unset: the per-edge switch that clients predating the field asked for.
            None | Some(DeployStrategy::Immediate) => DeployStrategy::Immediate,
            // Atomic needs a live edge leader to drive it. Without one (no edge yet, or every
            // edge disallows leadership) there is nothing to cut over: the site switches at once,
            // and the record says so.
            Some(DeployStrategy::Atomic) if self.cutover_driver().await? => DeployStrategy::Atomic,
            Some(DeployStrategy::Atomic) => DeployStrategy::Immediate,
        };
        let mut lost_flips = 0;
        for _ in 0..MAX_ATTEMPTS {
            let current = state.find_site(lookup).await?;
            let Some(app_record) = state.get_app(&app.name, &app.version).await? else {
                return Err(ControlError::NotFound(format!(
                    "app {app} not found; upload it first"
                )));
            };
            let domain = current.record.domain.clone();
            let (history_revision, history) = state.list_deployments(&domain).await?;
            let flip = if strategy == DeployStrategy::Atomic && lost_flips < MAX_LOST_FLIPS {
                self.retained_everywhere(&domain, &app_record.record.digest, &history)
                    .await?
            } else {
                None
            };
            let switch = strategy == DeployStrategy::Immediate || flip.is_some();
            let now = now_ms();
            let id = next_id(&history, now);
            let mut deployment =
                DeploymentRecord::new(id.clone(), domain.clone(), app.clone(), strategy, now);
            deployment.digest = Some(app_record.record.digest);
            deployment.author = author.clone();
            deployment.rollback_of = rollback_of.clone();
            deployment.promoted_from = promoted_from.clone();
            let mut site = current.record.clone();
            let mut ops = Vec::new();
            let mut changed: Vec<DeploymentRecord> = Vec::new();
            for old in &history {
                let mut old = old.record.clone();
                match old.state {
                    // One cutover per site at a time: a newer deployment replaces a staging one.
                    DeploymentState::Staging => {
                        old.state = DeploymentState::Failed;
                        old.reason =
                            Some(format!("replaced by deployment {id} before its cutover"));
                        old.failed_at = Some(now);
                    }
                    DeploymentState::Live if switch => {
                        old.state = DeploymentState::Superseded;
                        old.superseded_at = Some(now);
                    }
                    _ => continue,
                }
                changed.push(old);
            }
            if switch {
                deployment.state = DeploymentState::Live;
                deployment.live_at = Some(now);
                if let Some(flip) = &flip {
                    deployment.staged_nodes = flip.nodes.clone();
                }
                site.app = Some(app.clone());
                site.deployment = Some(id.clone());
                site.deployed_at = Some(now);
                site.updated_at = now;
                ops.extend(state.site_ops(&site, &[]));
            }
            for old in &changed {
                ops.push(TxnOp::put(
                    state.keys.deployment(&domain, &old.id),
                    model::encode(old),
                ));
            }
            ops.push(TxnOp::put(
                state.keys.deployment(&domain, &id),
                model::encode(&deployment),
            ));
            ops.extend(
                expired(&history, &changed, self.ctx.deploy.history as usize)
                    // The deployment rolled back to stays, so the new record's link holds.
                    .filter(|old_id| rollback_of.as_deref() != Some(*old_id))
                    .map(|old_id| TxnOp::delete(state.keys.deployment(&domain, old_id))),
            );
            let mut compares = vec![
                Compare::unchanged_since(state.keys.site(&domain), current.mod_revision),
                Compare::present(state.keys.app(&app.name, &app.version)),
                Compare::prefix_unchanged_since(&state.keys.deployments(&domain), history_revision),
            ];
            if let Some(flip) = &flip {
                // What the node records said is what they say at the switch.
                compares.push(Compare::prefix_unchanged_since(
                    &state.keys.nodes(),
                    flip.revision,
                ));
            }
            let result = state.txn(compares, ops).await?;
            if !result.succeeded {
                lost_flips += usize::from(flip.is_some());
                continue;
            }
            tracing::info!(site = %domain, %app, deployment = %id, strategy = strategy.as_str(),
                flip = flip.is_some(), revision = result.revision, "deployment created");
            let site_revision = if switch {
                result.revision
            } else {
                current.mod_revision
            };
            return Ok(Created {
                site,
                site_revision,
                deployment,
                revision: result.revision,
            });
        }
        Err(ControlError::Conflict(
            "deploy kept losing against concurrent changes; retry".into(),
        ))
    }

    async fn rollback(
        &self,
        req: pb::RollbackRequest,
        author: String,
    ) -> Result<pb::RollbackResponse> {
        let lookup = ids::domain("domain", &req.domain)?;
        let to = match req.to.trim() {
            "" => None,
            id => Some(ids::deployment_id("to", id)?),
        };
        let wait = wait_timeout("wait_timeout", req.wait_timeout.as_ref())?;
        let state = &self.ctx.state;
        let site = state.find_site(&lookup).await?.record;
        let (_, history) = state.list_deployments(&site.domain).await?;
        let target = match &to {
            Some(id) => {
                let found = history.iter().find(|d| &d.record.id == id).ok_or_else(|| {
                    ControlError::NotFound(format!(
                        "to: deployment {id:?} of site {:?} not found (see `stk deploy history`)",
                        site.domain
                    ))
                })?;
                if found.record.state != DeploymentState::Superseded {
                    return Err(ControlError::Refused(format!(
                        "to: deployment {id} is {}; only a deployment that was live and was replaced can be rolled back to",
                        found.record.state.as_str()
                    )));
                }
                &found.record
            }
            None => history
                .iter()
                .rev()
                .map(|d| &d.record)
                .find(|d| d.state == DeploymentState::Superseded)
                .ok_or_else(|| {
                    ControlError::Refused(format!(
                        "site {:?} has no previous deployment to roll back to",
                        site.domain
                    ))
                })?,
        };
        let created = self
            .create_deployment(
                &site.domain,
                &target.app,
                Some(DeployStrategy::Atomic),
                author,
                Origin::Rollback(target.id.clone()),
            )
            .await?;
        let (deployment, ready_nodes) = self.settle(created, req.wait.then_some(wait)).await?;
        Ok(pb::RollbackResponse {
            deployment: Some(deployment),
            ready_nodes,
        })
    }

    /// A deployment just made by a rollback or a promotion, as the response reports it: with
    /// `wait`, once every live edge serves it (with those edges), else as written.
    async fn settle(
        &self,
        created: Created,
        wait: Option<Duration>,
    ) -> Result<(pb::Deployment, Vec<String>)> {
        let Some(wait) = wait else {
            return Ok((deployment_to_proto(&created.deployment), Vec::new()));
        };
        let (_, ready_nodes) = self
            .wait_for_deployment(&created.deployment, created.revision, wait)
            .await?;
        let (deployment, _) = self
            .read_deployment(&created.deployment.site, &created.deployment.id)
            .await?;
        Ok((deployment_to_proto(&deployment), ready_nodes))
    }

    /// Whether an edge can drive an atomic cutover: an elected leader (etcd), or a live edge on
    /// the single-node file store (where the one edge is always the leader).
    async fn cutover_driver(&self) -> Result<bool> {
        let state = &self.ctx.state;
        Ok(match &state.store {
            Store::File(_) => !state
                .store
                .snapshot(&state.keys.nodes())
                .await?
                .kvs
                .is_empty(),
            Store::Etcd(_) => state.store.get(&state.keys.leader()).await?.is_some(),
        })
    }

    /// The deployment `id` of the site `lookup` names.
    async fn find_deployment(&self, lookup: &str, id: &str) -> Result<Versioned<DeploymentRecord>> {
        let state = &self.ctx.state;
        let site = state.find_site(lookup).await?;
        state
            .get_deployment(&site.record.domain, id)
            .await?
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "id: deployment {id:?} of site {:?} not found (see `stk deploy history`)",
                    site.record.domain
                ))
            })
    }
}

#[tonic::async_trait]
impl pb::deployment_service_server::DeploymentService for Api {
    async fn deploy(
        &self,
        request: Request<pb::DeployRequest>,
    ) -> Result<Response<pb::DeployResponse>, Status> {
        let author = author(&request);
        Ok(Response::new(
            Api::deploy(self, request.into_inner(), author).await?,
        ))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::GetDeploymentResponse>, Status> {
        let req = request.into_inner();
        let lookup = ids::domain("domain", &req.domain).map_err(ControlError::from)?;
        let id = ids::deployment_id("id", &req.id).map_err(ControlError::from)?;
        let found = self.find_deployment(&lookup, &id).await?;
        Ok(Response::new(pb::GetDeploymentResponse {
            deployment: Some(deployment_to_proto(&found.record)),
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let author = author(&request);
        Ok(Response::new(
            Api::rollback(self, request.into_inner(), author).await?,
        ))
    }

    type WatchDeploymentStream = progress::WatchStream;

    async fn watch_deployment(
        &self,
        request: Request<pb::WatchDeploymentRequest>,
    ) -> Result<Response<Self::WatchDeploymentStream>, Status> {
        let req = request.into_inner();
        let lookup = ids::domain("domain", &req.domain).map_err(ControlError::from)?;
        let id = ids::deployment_id("id", &req.id).map_err(ControlError::from)?;
        let found = self.find_deployment(&lookup, &id).await?;
        Ok(Response::new(
            self.watch_deployment(found.record.site, found.record.id),
        ))
    }

    async fn deploy_preview(
        &self,
        request: Request<pb::DeployPreviewRequest>,
    ) -> Result<Response<pb::DeployPreviewResponse>, Status> {
        let author = author(&request);
        Ok(Response::new(
            Api::deploy_preview(self, request.into_inner(), author).await?,
        ))
    }

    async fn list_previews(
        &self,
        request: Request<pb::ListPreviewsRequest>,
    ) -> Result<Response<pb::ListPreviewsResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        Ok(Response::new(
            Api::list_previews(self, request.into_inner(), caller.as_ref()).await?,
        ))
    }

    async fn delete_preview(
        &self,
        request: Request<pb::DeletePreviewRequest>,
    ) -> Result<Response<pb::DeletePreviewResponse>, Status> {
        Api::delete_preview(self, request.into_inner()).await?;
        Ok(Response::new(pb::DeletePreviewResponse {}))
    }

    async fn promote_preview(
        &self,
        request: Request<pb::PromotePreviewRequest>,
    ) -> Result<Response<pb::PromotePreviewResponse>, Status> {
        let author = author(&request);
        Ok(Response::new(
            Api::promote_preview(self, request.into_inner(), author).await?,
        ))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let lookup =
            ids::domain("domain", &request.get_ref().domain).map_err(ControlError::from)?;
        let state = &self.ctx.state;
        let site = state.find_site(&lookup).await?;
        let (_, history) = state.list_deployments(&site.record.domain).await?;
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments: history
                .iter()
                .rev()
                .map(|d| deployment_to_proto(&d.record))
                .collect(),
        }))
    }
}

/// An id for a deployment made at `now` that sorts after every id in `history` (even if the
/// clock went back).
fn next_id(history: &[Versioned<DeploymentRecord>], now: i64) -> String {
    let newest = history
        .last()
        .and_then(|d| d.record.id.get(1..14))
        .and_then(|ms| ms.parse::<i64>().ok())
        .unwrap_or(0);
    ids::new_deployment_id(now.max(newest + 1))
}

/// The ids (oldest first in `history`) to delete so that, with the new deployment, at most `keep`
/// records remain; live and staging ones (after `changed`) are never deleted. Previews neither
/// count nor go: their TTL bounds them (the leader edge deletes them once expired).
fn expired<'a>(
    history: &'a [Versioned<DeploymentRecord>],
    changed: &'a [DeploymentRecord],
    keep: usize,
) -> impl Iterator<Item = &'a str> {
    let releases = history.iter().filter(|d| d.record.preview.is_none());
    let excess = (releases.clone().count() + 1).saturating_sub(keep.max(1));
    releases
        .map(move |d| {
            changed
                .iter()
                .find(|c| c.id == d.record.id)
                .unwrap_or(&d.record)
        })
        .filter(|d| {
            !matches!(
                d.state,
                DeploymentState::Live | DeploymentState::Staging | DeploymentState::Preview
            )
        })
        .take(excess)
        .map(|d| d.id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, state: DeploymentState) -> Versioned<DeploymentRecord> {
        Versioned {
            record: DeploymentRecord {
                state,
                ..DeploymentRecord::new(
                    id.into(),
                    "a.test".into(),
                    AppRef {
                        name: "web".into(),
                        version: "1".into(),
                    },
                    DeployStrategy::Immediate,
                    0,
                )
            },
            mod_revision: 1,
        }
    }

    #[test]
    fn history_keeps_the_newest_and_the_live_one() {
        use DeploymentState::*;
        let history = vec![
            record("d0000000000001aaaa", Live),
            record("d0000000000002aaaa", Failed),
            record("d0000000000003aaaa", Superseded),
            record("d0000000000004aaaa", Superseded),
        ];
        // keep 3: the new one plus two old ones; the live one is never deleted.
        let gone: Vec<&str> = expired(&history, &[], 3).collect();
        assert_eq!(gone, ["d0000000000002aaaa", "d0000000000003aaaa"]);
        // The live one superseded in the same transaction may go.
        let mut superseded = history[0].record.clone();
        superseded.state = Superseded;
        let changed = [superseded];
        let gone: Vec<&str> = expired(&history, &changed, 3).collect();
        assert_eq!(gone, ["d0000000000001aaaa", "d0000000000002aaaa"]);
        assert_eq!(expired(&history, &[], 20).count(), 0);
        // Ids sort after the newest even when the clock went back.
        let id = next_id(&history, 1);
        assert!(id.as_str() > "d0000000000004aaaa", "{id}");
    }
}
