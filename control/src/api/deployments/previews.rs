//! Preview deploys: `DeployPreview`, `ListPreviews`, `DeletePreview`, `PromotePreview`.
//!
//! A preview is a deployment record in state `preview` under `deployments/{site}/{id}` (so it
//! shows in the site's history and goes with the site), with its host, expiry, optional
//! password hash and certificate, plus an index entry `previews/{id}` created only when absent
//! in the same transaction (a preview id, and so its host, is unique in the cluster; a preview
//! is found by id alone). Every edge stages it like a deployment in `staging` (reporting under
//! `staging` in its node record) and serves it at its host; the leader edge deletes it once
//! expired (`edge/src/previews.rs`). Promotion is a new atomic deployment of the same app.

use std::time::Duration;

use statiko_common::ids;
use statiko_common::model::{
    self, DeployStrategy, DeploymentRecord, DeploymentState, PreviewIndexRecord, PreviewInfo,
    now_ms,
};
use statiko_common::preview;
use statiko_common::store::{Compare, TxnOp};
use statiko_proto::v1 as pb;
use tokio::time::Instant;

use super::{next_id, wait_timeout};
use crate::api::Api;
use crate::auth::{Caller, site_visible};
use crate::convert::{app_ref_from_proto, deployment_to_proto};
use crate::error::{ControlError, Result};
use crate::state::{MAX_ATTEMPTS, Versioned};

/// How often node reports are read while waiting for a preview to be staged.
const POLL: Duration = Duration::from_millis(50);

fn duration(field: &str, value: Option<&prost_types::Duration>) -> Result<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(ControlError::Invalid(format!(
            "{field}: must not be negative"
        ))),
        Some(d) => Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32))),
    }
}

impl Api {
    pub(super) async fn deploy_preview(
        &self,
        req: pb::DeployPreviewRequest,
        author: String,
    ) -> Result<pb::DeployPreviewResponse> {
        let lookup = ids::domain("domain", &req.domain)?;
        let app = app_ref_from_proto("app", req.app.as_ref())?;
        let ttl = preview::ttl("ttl", duration("ttl", req.ttl.as_ref())?)?;
        preview::password("password", &req.password)?;
        let wait = wait_timeout("wait_timeout", req.wait_timeout.as_ref())?;
        let config = &self.ctx.previews;
        if config.domain.is_empty() {
            return Err(ControlError::Refused(
                "previews are off: set previews.domain in the control's config (a wildcard DNS name pointing at the edges)".into(),
            ));
        }
        let certificate = (!config.certificate.is_empty()).then(|| config.certificate.clone());
        let password_hash = match req.password.as_str() {
            "" => None,
            password => {
                let password = password.to_owned();
                let hashed = tokio::task::spawn_blocking(move || preview::hash_password(&password))
                    .await
                    .map_err(|err| ControlError::Internal(err.into()))?
                    .map_err(|err| ControlError::Internal(err.into()))?;
                Some(hashed)
            }
        };
        let state = &self.ctx.state;
        for _ in 0..MAX_ATTEMPTS {
            let site = state.find_site(&lookup).await?;
            let Some(app_record) = state.get_app(&app.name, &app.version).await? else {
                return Err(ControlError::NotFound(format!(
                    "app {app} not found; upload it first"
                )));
            };
            let domain = site.record.domain.clone();
            let (history_revision, history) = state.list_deployments(&domain).await?;
            let now = now_ms();
            let id = next_id(&history, now);
            let host = preview::host(&id, &domain, &config.domain);
            if let Some(name) = &certificate {
                self.check_preview_certificate(name, &host).await?;
            }
            let mut record = DeploymentRecord::new(
                id.clone(),
                domain.clone(),
                app.clone(),
                DeployStrategy::Atomic,
                now,
            );
            record.state = DeploymentState::Preview;
            record.digest = Some(app_record.record.digest);
            record.author = author.clone();
            record.preview = Some(PreviewInfo {
                host,
                expires_at: now.saturating_add(ttl.as_millis() as i64),
                password_hash: password_hash.clone(),
                certificate: certificate.clone(),
            });
            let ops = vec![
                TxnOp::put(state.keys.deployment(&domain, &id), model::encode(&record)),
                TxnOp::put(
                    state.keys.preview(&id),
                    model::encode(&PreviewIndexRecord {
                        site: domain.clone(),
                    }),
                ),
            ];
            let compares = vec![
                Compare::unchanged_since(state.keys.site(&domain), site.mod_revision),
                Compare::present(state.keys.app(&app.name, &app.version)),
                Compare::prefix_unchanged_since(&state.keys.deployments(&domain), history_revision),
                Compare::absent(state.keys.preview(&id)),
            ];
            let result = state.txn(compares, ops).await?;
            if !result.succeeded {
                continue;
            }
            tracing::info!(site = %domain, %app, preview = %id, revision = result.revision,
                "preview created");
            let ready_nodes = if req.wait {
                self.wait_for_preview(&domain, &id, Instant::now() + wait)
                    .await?
            } else {
                Vec::new()
            };
            return Ok(pb::DeployPreviewResponse {
                deployment: Some(deployment_to_proto(&record)),
                ready_nodes,
            });
        }
        Err(ControlError::Conflict(
            "preview kept losing against concurrent changes; retry".into(),
        ))
    }

    /// `previews.certificate` must exist and cover `host`.
    async fn check_preview_certificate(&self, name: &str, host: &str) -> Result<()> {
        let Some(cert) = self.ctx.state.get_certificate(name).await? else {
            return Err(ControlError::Refused(format!(
                "previews.certificate names certificate {name:?}, which does not exist; import it (a wildcard for *.{}) first",
                self.ctx.previews.domain
            )));
        };
        if !cert.record.covers(std::iter::once(host)) {
            return Err(ControlError::Refused(format!(
                "previews.certificate {name:?} does not cover {host} (it names {}); import a wildcard certificate for *.{}",
                cert.record.domains.join(", "),
                self.ctx.previews.domain
            )));
        }
        Ok(())
    }

    /// Waits until every live edge reports preview `id` staged; FAILED_PRECONDITION naming the
    /// edges that failed, DEADLINE_EXCEEDED naming those that did not report.
    async fn wait_for_preview(
        &self,
        domain: &str,
        id: &str,
        deadline: Instant,
    ) -> Result<Vec<String>> {
        loop {
            let nodes = self.live_nodes().await?;
            let mut staged = Vec::new();
            let mut failed = Vec::new();
            let mut pending = Vec::new();
            for node in &nodes {
                match node.staging.get(id) {
                    Some(report) if report.ok => staged.push(node.name.clone()),
                    Some(report) => failed.push(format!(
                        "edge {}: {}",
                        node.name,
                        report.error.as_deref().unwrap_or("unknown error")
                    )),
                    None => pending.push(node.name.clone()),
                }
            }
            if !failed.is_empty() {
                return Err(ControlError::Refused(format!(
                    "preview {id} of {domain} failed to stage: {}",
                    failed.join("; ")
                )));
            }
            if !nodes.is_empty() && pending.is_empty() {
                return Ok(staged);
            }
            if Instant::now() >= deadline {
                return Err(ControlError::TimedOut(format!(
                    "preview {id} of {domain} is not staged yet by: {}",
                    if pending.is_empty() {
                        "- (no live edge)".to_owned()
                    } else {
                        pending.join(", ")
                    }
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The preview `id` of the site `lookup` names: NOT_FOUND when it is gone, FAILED_PRECONDITION
    /// when the deployment is not a preview.
    async fn find_preview(&self, lookup: &str, id: &str) -> Result<Versioned<DeploymentRecord>> {
        let state = &self.ctx.state;
        let site = state.find_site(lookup).await?;
        let found = state
            .get_deployment(&site.record.domain, id)
            .await?
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "id: preview {id:?} of site {:?} not found: deleted, or expired and collected (see `stk preview list`)",
                    site.record.domain
                ))
            })?;
        if found.record.state != DeploymentState::Preview {
            return Err(ControlError::Refused(format!(
                "id: deployment {id} of {} is {}, not a preview",
                site.record.domain,
                found.record.state.as_str()
            )));
        }
        Ok(found)
    }

    pub(super) async fn list_previews(
        &self,
        req: pb::ListPreviewsRequest,
        caller: Option<&Caller>,
    ) -> Result<pb::ListPreviewsResponse> {
        let state = &self.ctx.state;
        let mut previews: Vec<DeploymentRecord> = Vec::new();
        if req.domain.trim().is_empty() {
            // Every site the caller may see.
            let (_, all) = state.list_previews().await?;
            let mut visible: std::collections::BTreeMap<String, bool> = Default::default();
            for preview in all {
                let shown = match visible.get(&preview.site) {
                    Some(&shown) => shown,
                    None => {
                        let shown = match state.find_site(&preview.site).await {
                            Ok(site) => site_visible(caller, site.record.all_domains()),
                            Err(ControlError::NotFound(_)) => false,
                            Err(err) => return Err(err),
                        };
                        visible.insert(preview.site.clone(), shown);
                        shown
                    }
                };
                if shown {
                    previews.push(preview);
                }
            }
        } else {
            let lookup = ids::domain("domain", &req.domain)?;
            let site = state.find_site(&lookup).await?;
            let (_, history) = state.list_deployments(&site.record.domain).await?;
            previews.extend(
                history
                    .into_iter()
                    .map(|d| d.record)
                    .filter(|d| d.state == DeploymentState::Preview),
            );
        }
        previews.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(pb::ListPreviewsResponse {
            previews: previews.iter().map(deployment_to_proto).collect(),
        })
    }

    pub(super) async fn delete_preview(&self, req: pb::DeletePreviewRequest) -> Result<()> {
        let lookup = ids::domain("domain", &req.domain)?;
        let id = ids::deployment_id("id", &req.id)?;
        let state = &self.ctx.state;
        for _ in 0..MAX_ATTEMPTS {
            let found = self.find_preview(&lookup, &id).await?;
            let key = state.keys.deployment(&found.record.site, &id);
            let compares = vec![Compare::unchanged_since(key.clone(), found.mod_revision)];
            let ops = vec![TxnOp::delete(key), TxnOp::delete(state.keys.preview(&id))];
            if state.txn(compares, ops).await?.succeeded {
                tracing::info!(site = %found.record.site, preview = %id, "preview deleted");
                return Ok(());
            }
        }
        Err(ControlError::Conflict(
            "preview deletion kept losing against concurrent changes; retry".into(),
        ))
    }

    pub(super) async fn promote_preview(
        &self,
        req: pb::PromotePreviewRequest,
        author: String,
    ) -> Result<pb::PromotePreviewResponse> {
        let lookup = ids::domain("domain", &req.domain)?;
        let id = ids::deployment_id("id", &req.id)?;
        let wait = wait_timeout("wait_timeout", req.wait_timeout.as_ref())?;
        let found = self.find_preview(&lookup, &id).await?.record;
        if found.preview_expired(now_ms()) {
            let expired_at = found
                .preview
                .as_ref()
                .and_then(|p| crate::convert::timestamp(p.expires_at))
                .map_or_else(String::new, |t| format!(" at {t}"));
            return Err(ControlError::Refused(format!(
                "id: preview {id} of {} expired{expired_at}; deploy {} again (as a preview or live)",
                found.site, found.app
            )));
        }
        let created = self
            .create_deployment(
                &found.site,
                &found.app,
                Some(DeployStrategy::Atomic),
                author,
                super::Origin::Promoted(id.clone()),
            )
            .await?;
        let (deployment, ready_nodes) = self.settle(created, req.wait.then_some(wait)).await?;
        Ok(pb::PromotePreviewResponse {
            deployment: Some(deployment),
            ready_nodes,
        })
    }
}
