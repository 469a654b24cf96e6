//! `statiko.v1.SiteService`.

use statiko_common::ids;
use statiko_common::model::{SiteRecord, TlsChoice, now_ms};
use statiko_common::store::{Compare, TxnOp};
use statiko_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Api;
use crate::auth::{Caller, site_visible};
use crate::convert::{site_to_proto, skew_protection_from_proto, tls_from_proto};
use crate::error::{ControlError, Result, invalid};
use crate::state::MAX_ATTEMPTS;

/// Most aliases one site may have: a site and all its domain index entries are written (and
/// each domain guarded) in one transaction, which must stay within etcd's default 128
/// operations; ACME certificates cover at most 100 names too.
pub(crate) const MAX_ALIASES: usize = 100;

/// Validates a list of aliases: each a valid domain, no duplicates, never the primary domain.
fn validate_aliases(field: &str, primary: &str, aliases: &[String]) -> Result<Vec<String>> {
    if aliases.len() > MAX_ALIASES {
        return Err(invalid!(
            "{field}: {} aliases, at most {MAX_ALIASES}",
            aliases.len()
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(aliases.len());
    for (i, raw) in aliases.iter().enumerate() {
        let alias = ids::domain(&format!("{field}[{i}]"), raw)?;
        if alias == primary {
            return Err(invalid!("{field}[{i}]: {alias:?} is the primary domain"));
        }
        if out.contains(&alias) {
            return Err(invalid!("{field}[{i}]: {alias:?} is listed twice"));
        }
        out.push(alias);
    }
    Ok(out)
}

/// Names under `previews.domain` belong to previews: a site there could take a preview's host.
fn outside_previews<'a>(
    previews_domain: &str,
    domains: impl Iterator<Item = (String, &'a str)>,
) -> Result<()> {
    if previews_domain.is_empty() {
        return Ok(());
    }
    for (field, domain) in domains {
        let under = domain
            .strip_suffix(previews_domain)
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'));
        if under {
            return Err(invalid!(
                "{field}: {domain} is under previews.domain ({previews_domain}), which is reserved for preview hosts"
            ));
        }
    }
    Ok(())
}

fn imported_name(tls: &TlsChoice) -> Option<&str> {
    match tls {
        TlsChoice::Imported { certificate } => Some(certificate),
        _ => None,
    }
}

impl Api {
    async fn create_site(&self, req: pb::CreateSiteRequest) -> Result<pb::Site> {
        let state = &self.ctx.state;
        let domain = ids::domain("domain", &req.domain)?;
        let aliases = validate_aliases("aliases", &domain, &req.aliases)?;
        outside_previews(
            &self.ctx.previews.domain,
            std::iter::once(("domain".to_owned(), domain.as_str())).chain(
                aliases
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (format!("aliases[{i}]"), a.as_str())),
            ),
        )?;
        let tls = tls_from_proto("tls", req.tls.as_ref())?;
        let skew_protection_ms =
            skew_protection_from_proto("skew_protection", req.skew_protection.as_ref())?;
        let now = now_ms();
        let site = SiteRecord {
            domain: domain.clone(),
            aliases,
            tls,
            app: None,
            created_at: now,
            updated_at: now,
            deployed_at: None,
            deployment: None,
            skew_protection_ms,
        };
        let domains: Vec<String> = site.all_domains().map(str::to_owned).collect();
        let cert = imported_name(&site.tls).map(|n| state.keys.certificate(n));
        for _ in 0..MAX_ATTEMPTS {
            let mut compares = vec![Compare::absent(state.keys.site(&domain))];
            compares.extend(
                domains
                    .iter()
                    .map(|d| Compare::absent(state.keys.domain(d))),
            );
            compares.extend(cert.iter().map(Compare::present));
            let result = state.txn(compares, state.site_ops(&site, &domains)).await?;
            if result.succeeded {
                tracing::info!(site = %domain, revision = result.revision, "site created");
                return Ok(site_to_proto(&site, result.revision));
            }
            if let Some(err) = state.domain_conflict(&domains, None).await? {
                return Err(err);
            }
            if let Some(err) = state.missing_certificate(imported_name(&site.tls)).await? {
                return Err(err);
            }
        }
        Err(ControlError::Conflict(
            "site creation kept losing against concurrent changes; retry".into(),
        ))
    }

    async fn update_site(&self, req: pb::UpdateSiteRequest) -> Result<pb::Site> {
        let state = &self.ctx.state;
        let lookup = ids::domain("domain", &req.domain)?;
        let tls = req
            .tls
            .as_ref()
            .map(|t| tls_from_proto("tls", Some(t)))
            .transpose()?;
        let skew_protection_ms =
            skew_protection_from_proto("skew_protection", req.skew_protection.as_ref())?;
        for _ in 0..MAX_ATTEMPTS {
            let current = state.find_site(&lookup).await?;
            if req.expected_revision != 0 && req.expected_revision != current.mod_revision {
                return Err(ControlError::Conflict(format!(
                    "site {:?} changed: expected revision {}, current revision {}",
                    current.record.domain, req.expected_revision, current.mod_revision
                )));
            }
            let mut site = current.record.clone();
            if let Some(list) = &req.aliases {
                site.aliases = validate_aliases("aliases.aliases", &site.domain, &list.aliases)?;
                outside_previews(
                    &self.ctx.previews.domain,
                    site.aliases
                        .iter()
                        .enumerate()
                        .map(|(i, a)| (format!("aliases.aliases[{i}]"), a.as_str())),
                )?;
            }
            for (i, raw) in req.add_aliases.iter().enumerate() {
                let alias = ids::domain(&format!("add_aliases[{i}]"), raw)?;
                if alias == site.domain {
                    return Err(invalid!(
                        "add_aliases[{i}]: {alias:?} is the primary domain"
                    ));
                }
                if !site.aliases.contains(&alias) {
                    site.aliases.push(alias);
                }
            }
            for (i, raw) in req.remove_aliases.iter().enumerate() {
                let alias = ids::domain(&format!("remove_aliases[{i}]"), raw)?;
                site.aliases.retain(|a| *a != alias);
            }
            if let Some(tls) = &tls {
                site.tls = tls.clone();
            }
            if let Some(ms) = skew_protection_ms {
                site.skew_protection_ms = Some(ms);
            }
            if site == current.record {
                return Ok(site_to_proto(&site, current.mod_revision));
            }
            site.updated_at = now_ms();

            let added: Vec<String> = site
                .aliases
                .iter()
                .filter(|a| !current.record.aliases.contains(a))
                .cloned()
                .collect();
            let removed: Vec<&String> = current
                .record
                .aliases
                .iter()
                .filter(|a| !site.aliases.contains(a))
                .collect();
            let mut compares = vec![Compare::unchanged_since(
                state.keys.site(&site.domain),
                current.mod_revision,
            )];
            compares.extend(added.iter().map(|d| Compare::absent(state.keys.domain(d))));
            if let Some(name) = imported_name(&site.tls) {
                compares.push(Compare::present(state.keys.certificate(name)));
            }
            let mut ops = state.site_ops(&site, &added);
            ops.extend(removed.iter().map(|d| TxnOp::delete(state.keys.domain(d))));
            let result = state.txn(compares, ops).await?;
            if result.succeeded {
                tracing::info!(site = %site.domain, revision = result.revision, "site updated");
                return Ok(site_to_proto(&site, result.revision));
            }
            if let Some(err) = state.domain_conflict(&added, Some(&site.domain)).await? {
                return Err(err);
            }
            if let Some(err) = state.missing_certificate(imported_name(&site.tls)).await? {
                return Err(err);
            }
            if req.expected_revision != 0 {
                return Err(ControlError::Conflict(format!(
                    "site {:?} changed concurrently; read it again and retry",
                    site.domain
                )));
            }
            // Another writer changed the site in between: re-read and re-apply this change.
        }
        Err(ControlError::Conflict(
            "site update kept losing against concurrent changes; retry".into(),
        ))
    }

    async fn delete_site(&self, req: pb::DeleteSiteRequest) -> Result<()> {
        let state = &self.ctx.state;
        let lookup = ids::domain("domain", &req.domain)?;
        for _ in 0..MAX_ATTEMPTS {
            let current = state.find_site(&lookup).await?;
            let site = &current.record;
            let mut ops = vec![TxnOp::delete(state.keys.site(&site.domain))];
            ops.extend(
                site.all_domains()
                    .map(|d| TxnOp::delete(state.keys.domain(d))),
            );
            // The site's deployment history goes with it, previews included (and their index
            // entries: guarded by "no deployment of the site changed since they were read").
            let (history_revision, history) = state.list_deployments(&site.domain).await?;
            ops.push(TxnOp::DeletePrefix {
                prefix: state.keys.deployments(&site.domain),
            });
            ops.extend(
                history
                    .iter()
                    .filter(|d| d.record.preview.is_some())
                    .map(|d| TxnOp::delete(state.keys.preview(&d.record.id))),
            );
            let compares = vec![
                Compare::unchanged_since(state.keys.site(&site.domain), current.mod_revision),
                Compare::prefix_unchanged_since(
                    &state.keys.deployments(&site.domain),
                    history_revision,
                ),
            ];
            let result = state.txn(compares, ops).await?;
            if result.succeeded {
                tracing::info!(site = %site.domain, revision = result.revision, "site deleted");
                return Ok(());
            }
        }
        Err(ControlError::Conflict(
            "site deletion kept losing against concurrent changes; retry".into(),
        ))
    }
}

#[tonic::async_trait]
impl pb::site_service_server::SiteService for Api {
    async fn create_site(
        &self,
        request: Request<pb::CreateSiteRequest>,
    ) -> Result<Response<pb::CreateSiteResponse>, Status> {
        let site = Api::create_site(self, request.into_inner()).await?;
        Ok(Response::new(pb::CreateSiteResponse { site: Some(site) }))
    }

    async fn get_site(
        &self,
        request: Request<pb::GetSiteRequest>,
    ) -> Result<Response<pb::GetSiteResponse>, Status> {
        let domain =
            ids::domain("domain", &request.get_ref().domain).map_err(ControlError::from)?;
        let site = self.ctx.state.find_site(&domain).await?;
        Ok(Response::new(pb::GetSiteResponse {
            site: Some(site_to_proto(&site.record, site.mod_revision)),
        }))
    }

    async fn list_sites(
        &self,
        request: Request<pb::ListSitesRequest>,
    ) -> Result<Response<pb::ListSitesResponse>, Status> {
        let (_, sites) = self.ctx.state.list_sites().await?;
        let caller = request.extensions().get::<Caller>();
        Ok(Response::new(pb::ListSitesResponse {
            sites: sites
                .iter()
                .filter(|s| site_visible(caller, s.record.all_domains()))
                .map(|s| site_to_proto(&s.record, s.mod_revision))
                .collect(),
        }))
    }

    async fn update_site(
        &self,
        request: Request<pb::UpdateSiteRequest>,
    ) -> Result<Response<pb::UpdateSiteResponse>, Status> {
        let site = Api::update_site(self, request.into_inner()).await?;
        Ok(Response::new(pb::UpdateSiteResponse { site: Some(site) }))
    }

    async fn delete_site(
        &self,
        request: Request<pb::DeleteSiteRequest>,
    ) -> Result<Response<pb::DeleteSiteResponse>, Status> {
        Api::delete_site(self, request.into_inner()).await?;
        Ok(Response::new(pb::DeleteSiteResponse {}))
    }
}
