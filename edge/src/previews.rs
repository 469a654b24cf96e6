//! Previews on the edge, beyond serving them (`reconcile/previews.rs`, `serve/preview.rs`):
//! the site-like view the certificate jobs and the reconciler share, and the leader's garbage
//! collection of expired previews.
//!
//! Expiry: every edge stops serving a preview the moment its `expiresAt` passes (the handler
//! checks it per request); the leader then deletes its record and index entry (one fenced
//! transaction each, compared on the record as read), and the next certificate pass deletes its
//! certificate (a leader-made certificate no site or preview wants is garbage). Index entries
//! whose record is gone (a site deleted while its preview was being made elsewhere) are swept
//! every [`SWEEP_INTERVAL`].

use std::sync::Arc;
use std::time::Duration;

use statiko_common::keys::KeySchema;
use statiko_common::model::{
    self, DeploymentRecord, DeploymentState, SiteRecord, TlsChoice, now_ms,
};
use statiko_common::store::{Compare, Store, StoreError, TxnOp};
use tokio::sync::watch;

use crate::desired::Desired;
use crate::leader::Leadership;

/// The longest the collector sleeps with no preview expiring sooner.
const IDLE: Duration = Duration::from_secs(5);
/// How often orphaned index entries are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A preview as the certificate jobs and the reconciler see it: a site whose one domain is its
/// host. Its TLS: the imported certificate fixed at creation (`previews.certificate`), else ACME
/// when its site uses ACME, else self-signed; the leader's certificates for it are named and
/// tagged by its host, like a site's by its primary domain.
pub(crate) fn preview_site(desired: &Desired, record: &DeploymentRecord) -> Option<SiteRecord> {
    let info = record.preview.as_ref()?;
    let tls = match &info.certificate {
        Some(certificate) => TlsChoice::Imported {
            certificate: certificate.clone(),
        },
        None => match desired.sites.get(&record.site) {
            Some(site) if site.tls == TlsChoice::Acme => TlsChoice::Acme,
            _ => TlsChoice::SelfSigned,
        },
    };
    Some(SiteRecord {
        domain: info.host.clone(),
        aliases: Vec::new(),
        tls,
        app: Some(record.app.clone()),
        created_at: record.created_at,
        updated_at: record.created_at,
        deployed_at: None,
        deployment: Some(record.id.clone()),
        // A preview serves one deployment: nothing older to protect.
        skew_protection_ms: Some(0),
    })
}

/// Every preview as a site (see [`preview_site`]), expired ones left out.
pub(crate) fn preview_sites(desired: &Desired, now: i64) -> Vec<SiteRecord> {
    desired
        .previews
        .values()
        .filter(|p| !p.preview_expired(now))
        .filter_map(|p| preview_site(desired, p))
        .collect()
}

/// The leader's collector of expired previews.
#[derive(Debug, Clone)]
pub(crate) struct Collector {
    pub(crate) store: Store,
    pub(crate) keys: KeySchema,
}

impl Collector {
    /// Runs while `lead` lasts.
    pub(crate) async fn run(self, lead: Leadership, mut desired: watch::Receiver<Arc<Desired>>) {
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            let state = desired.borrow_and_update().clone();
            let now = now_ms();
            if state.synced() {
                for preview in state.previews.values().filter(|p| p.preview_expired(now)) {
                    if let Err(err) = self.delete(&lead, preview).await {
                        tracing::warn!(preview = %preview.id, error = %err, "expired preview not deleted; retrying");
                    }
                }
                if last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_INTERVAL) {
                    match self.sweep(&lead).await {
                        Ok(()) => last_sweep = Some(tokio::time::Instant::now()),
                        Err(err) => tracing::warn!(error = %err, "preview index sweep failed"),
                    }
                }
            }
            // Wake for the next expiry (or a change, or the idle tick).
            let next = state
                .previews
                .values()
                .filter_map(|p| p.preview.as_ref())
                .map(|p| p.expires_at)
                .filter(|&at| at > now)
                .min()
                .map_or(IDLE, |at| {
                    Duration::from_millis((at - now) as u64 + 10).min(IDLE)
                });
            tokio::select! {
                () = lead.token.cancelled() => return,
                changed = desired.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(next) => {}
            }
        }
    }

    /// Deletes an expired preview and its index entry, if the record is still that preview.
    async fn delete(
        &self,
        lead: &Leadership,
        preview: &DeploymentRecord,
    ) -> Result<(), StoreError> {
        let key = self.keys.deployment(&preview.site, &preview.id);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(());
        };
        let Ok(current) = model::decode::<DeploymentRecord>(&kv.value) else {
            return Ok(());
        };
        if current.state != DeploymentState::Preview || !current.preview_expired(now_ms()) {
            return Ok(());
        }
        let mut compares = lead.compares();
        compares.push(Compare::absent(self.keys.meta_import()));
        compares.push(Compare::unchanged_since(key.clone(), kv.mod_revision));
        let ops = vec![
            TxnOp::delete(key),
            TxnOp::delete(self.keys.preview(&preview.id)),
            TxnOp::put(self.keys.meta_state(), Vec::new()),
        ];
        if self.store.txn(compares, ops).await?.succeeded {
            tracing::info!(site = %preview.site, preview = %preview.id, "expired preview deleted");
        }
        Ok(())
    }

    /// Deletes index entries whose preview record is gone.
    async fn sweep(&self, lead: &Leadership) -> Result<(), StoreError> {
        let index = self.store.snapshot(&self.keys.previews()).await?;
        for kv in &index.kvs {
            let Some(id) = kv.key.strip_prefix(&self.keys.previews()) else {
                continue;
            };
            let Ok(entry) = model::decode::<model::PreviewIndexRecord>(&kv.value) else {
                continue;
            };
            let record = self.keys.deployment(&entry.site, id);
            if self.store.get(&record).await?.is_some() {
                continue;
            }
            let mut compares = lead.compares();
            compares.push(Compare::unchanged_since(kv.key.clone(), kv.mod_revision));
            compares.push(Compare::absent(record));
            if self
                .store
                .txn(compares, vec![TxnOp::delete(kv.key.clone())])
                .await?
                .succeeded
            {
                tracing::info!(preview = %id, "deleted an orphaned preview index entry");
            }
        }
        Ok(())
    }
}
