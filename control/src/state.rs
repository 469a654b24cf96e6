//! Desired-state operations over the store: every write is one transaction guarded by compares,
//! so a lost race is detected (and retried or reported), never a lost update.

use statiko_common::ids;
use statiko_common::keys::KeySchema;
use statiko_common::model::{
    self, AppRecord, CertificateRecord, DeploymentRecord, DeploymentState, DomainRecord,
    PreviewIndexRecord, SiteRecord,
};
use statiko_common::store::{Compare, KeyValue, Store, TxnOp, TxnResult};

use crate::error::{ControlError, Result};

/// How often a transaction that lost a race against an unrelated concurrent change is retried.
pub(crate) const MAX_ATTEMPTS: usize = 16;

/// A record with the store revision it was read at.
#[derive(Debug, Clone)]
pub(crate) struct Versioned<T> {
    pub(crate) record: T,
    pub(crate) mod_revision: i64,
}

/// Typed reads and transactional writes of the desired state in the store (not a copy of the
/// state: the edge's followed copy is its `desired::Desired`).
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    pub(crate) store: Store,
    pub(crate) keys: KeySchema,
}

fn decode<T: for<'de> serde::Deserialize<'de>>(kv: &KeyValue) -> Result<Versioned<T>> {
    let record = model::decode(&kv.value).map_err(|err| {
        ControlError::Internal(anyhow::anyhow!("corrupt record at {}: {err}", kv.key))
    })?;
    Ok(Versioned {
        record,
        mod_revision: kv.mod_revision,
    })
}

impl StateStore {
    pub(crate) fn new(store: Store, keys: KeySchema) -> Self {
        Self { store, keys }
    }

    /// Runs a desired-state transaction. It also touches `meta/state`, whose revision edges
    /// report as the desired-state revision they applied, and is refused while a state import
    /// is being written (`meta/import` exists; see `import.rs`) with `UNAVAILABLE`.
    pub(crate) async fn txn(
        &self,
        mut compares: Vec<Compare>,
        mut ops: Vec<TxnOp>,
    ) -> Result<TxnResult> {
        let marker = self.keys.meta_import();
        compares.push(Compare::absent(marker.clone()));
        ops.push(TxnOp::put(self.keys.meta_state(), Vec::new()));
        let result = self.store.txn(compares, ops).await?;
        if !result.succeeded && self.store.get(&marker).await?.is_some() {
            return Err(ControlError::ImportInProgress {
                retry: "retry when it has finished (if an import was interrupted, run `stk state set` again)",
            });
        }
        Ok(result)
    }

    async fn get<T: for<'de> serde::Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    async fn list<T: for<'de> serde::Deserialize<'de>>(
        &self,
        prefix: &str,
    ) -> Result<(i64, Vec<Versioned<T>>)> {
        let snapshot = self.store.snapshot(prefix).await?;
        let records = snapshot
            .kvs
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>>>()?;
        Ok((snapshot.revision, records))
    }

    /// Which site owns a domain or alias.
    pub(crate) async fn domain_owner(&self, domain: &str) -> Result<Option<String>> {
        Ok(self
            .get::<DomainRecord>(&self.keys.domain(domain))
            .await?
            .map(|d| d.record.site))
    }

    /// A site by primary domain or alias.
    pub(crate) async fn find_site(&self, domain: &str) -> Result<Versioned<SiteRecord>> {
        let not_found =
            || ControlError::NotFound(format!("site {} not found", ids::quoted(domain)));
        let primary = self.domain_owner(domain).await?.ok_or_else(not_found)?;
        self.get::<SiteRecord>(&self.keys.site(&primary))
            .await?
            .ok_or_else(not_found)
    }

    pub(crate) async fn list_sites(&self) -> Result<(i64, Vec<Versioned<SiteRecord>>)> {
        self.list(&self.keys.sites()).await
    }

    pub(crate) async fn get_app(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<Versioned<AppRecord>>> {
        self.get(&self.keys.app(name, version)).await
    }

    pub(crate) async fn list_apps(
        &self,
        name: Option<&str>,
    ) -> Result<(i64, Vec<Versioned<AppRecord>>)> {
        let prefix = match name {
            Some(name) => self.keys.app_versions(name),
            None => self.keys.apps(),
        };
        self.list(&prefix).await
    }

    pub(crate) async fn get_certificate(
        &self,
        name: &str,
    ) -> Result<Option<Versioned<CertificateRecord>>> {
        self.get(&self.keys.certificate(name)).await
    }

    pub(crate) async fn list_certificates(
        &self,
    ) -> Result<(i64, Vec<Versioned<CertificateRecord>>)> {
        self.list(&self.keys.certificates()).await
    }

    /// The deployments of site `domain` (its primary domain), oldest first, with the revision
    /// they were read at.
    pub(crate) async fn list_deployments(
        &self,
        domain: &str,
    ) -> Result<(i64, Vec<Versioned<DeploymentRecord>>)> {
        self.list(&self.keys.deployments(domain)).await
    }

    pub(crate) async fn get_deployment(
        &self,
        domain: &str,
        id: &str,
    ) -> Result<Option<Versioned<DeploymentRecord>>> {
        self.get(&self.keys.deployment(domain, id)).await
    }

    /// Every preview (deployment records in state `preview`, found through the index
    /// `previews/`), with the revision the index was read at: a write compared on
    /// `previews/` unchanged since then loses to any preview made or deleted meanwhile.
    pub(crate) async fn list_previews(&self) -> Result<(i64, Vec<DeploymentRecord>)> {
        let index = self.store.snapshot(&self.keys.previews()).await?;
        let mut previews = Vec::new();
        for kv in &index.kvs {
            let Some(id) = kv.key.strip_prefix(&self.keys.previews()) else {
                continue;
            };
            let Ok(entry) = model::decode::<PreviewIndexRecord>(&kv.value) else {
                continue;
            };
            if let Some(d) = self.get_deployment(&entry.site, id).await?
                && d.record.state == DeploymentState::Preview
            {
                previews.push(d.record);
            }
        }
        Ok((index.revision, previews))
    }

    /// Explains why a write that claimed `domains` lost: the first domain owned by another site.
    pub(crate) async fn domain_conflict(
        &self,
        domains: &[String],
        own_site: Option<&str>,
    ) -> Result<Option<ControlError>> {
        for domain in domains {
            if let Some(owner) = self.domain_owner(domain).await?
                && Some(owner.as_str()) != own_site
            {
                return Ok(Some(ControlError::Exists(format!(
                    "domain {domain:?} is already used by site {owner:?}"
                ))));
            }
        }
        Ok(None)
    }

    /// Explains why a write that needs certificate `name` lost: it does not exist.
    pub(crate) async fn missing_certificate(
        &self,
        name: Option<&str>,
    ) -> Result<Option<ControlError>> {
        let Some(name) = name else { return Ok(None) };
        if self.get_certificate(name).await?.is_none() {
            return Ok(Some(ControlError::Refused(format!(
                "certificate {name:?} does not exist; import it first"
            ))));
        }
        Ok(None)
    }

    /// Puts for a site record and its domain index entries.
    pub(crate) fn site_ops(&self, site: &SiteRecord, new_domains: &[String]) -> Vec<TxnOp> {
        let mut ops = vec![TxnOp::put(
            self.keys.site(&site.domain),
            model::encode(site),
        )];
        let owner = model::encode(&DomainRecord {
            site: site.domain.clone(),
        });
        ops.extend(
            new_domains
                .iter()
                .map(|d| TxnOp::put(self.keys.domain(d), owner.clone())),
        );
        ops
    }
}

/// Site names used by anything that references `predicate`.
pub(crate) fn sites_using<'a>(
    sites: &'a [Versioned<SiteRecord>],
    predicate: impl Fn(&SiteRecord) -> bool + 'a,
) -> Vec<String> {
    sites
        .iter()
        .filter(|s| predicate(&s.record))
        .map(|s| s.record.domain.clone())
        .collect()
}
