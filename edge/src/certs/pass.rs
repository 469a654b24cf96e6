//! One pass of the leader's certificate jobs: self-signed certificates for every site, an ACME
//! task for every `--tls acme` site that needs one, then (in a full pass) garbage and reminders.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use statiko_common::crypto;
use statiko_common::model::{
    self, AcmeOrderRecord, CertificateKind, CertificateRecord, ChallengeRecord, ReminderRecord,
    SiteRecord, TlsChoice,
};
use statiko_common::store::{Compare, StoreError, TxnOp};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::policy::{SELF_SIGNED_DAYS, acme_fresh, self_signed_fresh, site_domains};
use super::{CertJobs, Certs, IssueError};
use crate::desired::{Changed, Desired};
use crate::leader::Leadership;

/// The sites a pass after `changes` must look at, or `None` when that takes a full pass (a
/// certificate record went and the sites that wanted it are not known).
pub(super) fn changed_sites(
    desired: &Desired,
    changes: HashSet<Changed>,
) -> Option<HashSet<String>> {
    let mut sites = HashSet::new();
    for change in changes {
        match change {
            Changed::Site(domain) | Changed::AcmeOrder(domain) => {
                sites.insert(domain);
            }
            Changed::Certificate(name) => match desired.certificates.get(&name) {
                Some(record) => sites.extend(record.site.clone()),
                None => return None,
            },
            // A preview's certificate is named by its host; a preview gone is found in a full
            // pass (its certificate is garbage then).
            Changed::Preview(id) => {
                let host = desired.previews.get(&id)?.preview.as_ref()?.host.clone();
                sites.insert(host);
            }
            Changed::App(_) | Changed::Challenge(_) => {}
        }
    }
    Some(sites)
}

/// One ACME task on the leader.
#[derive(Debug)]
pub(super) struct AcmeTask {
    pub(super) domains: Vec<String>,
    pub(super) token: CancellationToken,
    pub(super) handle: JoinHandle<()>,
}

/// The ACME records a pass reads from the store, with their revisions.
#[derive(Debug, Default)]
pub(super) struct AcmeRecords {
    pub(super) orders: HashMap<String, (AcmeOrderRecord, i64)>,
    /// Challenges by key.
    pub(super) challenges: Vec<(String, ChallengeRecord, i64)>,
    pub(super) reminders: HashMap<String, (ReminderRecord, i64)>,
}

impl CertJobs {
    /// One pass over every site and every leader-made record, or, with `scope`, over those sites
    /// only (no garbage collection, no reminders). Sites and certificates come from
    /// the edge's synced copy of the store (`desired`, the state that triggered the pass), not
    /// from a fresh read: at 10,000 sites a read is 15 MB. Acting on it is safe because every
    /// write compares the records it depends on at the revisions that copy holds; a write based
    /// on a copy a few milliseconds old fails its compare and the next pass redoes it.
    pub(super) async fn pass(
        self: &Arc<Self>,
        lead: &Leadership,
        tasks: &mut HashMap<String, AcmeTask>,
        desired: &Desired,
        scope: Option<&HashSet<String>>,
    ) -> Result<(), StoreError> {
        // Forget finished tasks before reading, so one finishing meanwhile is not started again.
        tasks.retain(|_, t| !t.handle.is_finished());
        let now = model::now_ms();
        // Previews get certificates for their hosts as sites do for their domains.
        let previews = crate::previews::preview_sites(desired, now);
        let preview = |host: &str| previews.iter().find(|p| p.domain == host);
        let sites: Vec<&SiteRecord> = match scope {
            None => desired.sites.values().chain(previews.iter()).collect(),
            Some(scope) => scope
                .iter()
                .filter_map(|d| desired.sites.get(d).or_else(|| preview(d)))
                .collect(),
        };
        let cert = |name: &str| {
            let record = desired.certificates.get(name)?;
            let revision = desired.revisions.get(&self.keys.certificate(name));
            Some((record, revision.copied().unwrap_or(0)))
        };
        let acme = self.read_acme_records().await?;
        let orders = &acme.orders;

        let mut wanted: HashSet<String> = HashSet::new();
        for site in sites.iter().copied() {
            if matches!(site.tls, TlsChoice::Imported { .. }) {
                continue;
            }
            let domains = site_domains(site);
            let name = model::leader_certificate_name(CertificateKind::SelfSigned, &site.domain);
            wanted.insert(name.clone());
            let existing = cert(&name);
            if !existing.is_some_and(|(r, _)| self_signed_fresh(r, site, &domains, now)) {
                if existing.is_some_and(|(r, _)| r.kind == CertificateKind::Imported) {
                    tracing::warn!(name = %name, "an imported certificate holds the self-signed name");
                } else if let Err(err) = self
                    .make_self_signed(
                        lead,
                        site,
                        &domains,
                        existing.map(|(_, rev)| rev),
                        desired
                            .revisions
                            .get(&self.keys.site(&site.domain))
                            .copied(),
                    )
                    .await
                {
                    tracing::warn!(site = %site.domain, error = %err, "self-signed certificate not made");
                }
            }

            if site.tls != TlsChoice::Acme {
                continue;
            }
            let name = model::leader_certificate_name(CertificateKind::Acme, &site.domain);
            wanted.insert(name.clone());
            if cert(&name).is_some_and(|(r, _)| acme_fresh(r, site, now)) {
                if let Some(task) = tasks.remove(&site.domain) {
                    task.token.cancel();
                }
                continue;
            }
            match tasks.get(&site.domain) {
                Some(task) if task.domains == domains => continue,
                Some(_) => {
                    // The names changed under a running order: start over for the new set.
                    if let Some(task) = tasks.remove(&site.domain) {
                        task.token.cancel();
                    }
                }
                None => {}
            }
            if orders
                .get(&site.domain)
                .is_some_and(|(o, _)| o.domains == domains && o.next_attempt_at > now)
            {
                continue; // backing off after a failure
            }
            let token = lead.token.child_token();
            let handle = tokio::spawn(self.clone().acme_task(
                lead.clone(),
                token.clone(),
                site.domain.clone(),
                domains.clone(),
            ));
            tasks.insert(
                site.domain.clone(),
                AcmeTask {
                    domains,
                    token,
                    handle,
                },
            );
        }
        if let Some(scope) = scope {
            // Orders of the changed sites that no longer want ACME stop now; their records go
            // in the next full pass.
            for domain in scope {
                let acme = desired
                    .sites
                    .get(domain)
                    .or_else(|| preview(domain))
                    .is_some_and(|s| s.tls == TlsChoice::Acme);
                if !acme && let Some(task) = tasks.remove(domain) {
                    task.token.cancel();
                }
            }
            return Ok(());
        }
        let acme_sites: HashSet<&str> = sites
            .iter()
            .filter(|s| s.tls == TlsChoice::Acme)
            .map(|s| s.domain.as_str())
            .collect();
        tasks.retain(|site, task| {
            let keep = acme_sites.contains(site.as_str());
            if !keep {
                task.token.cancel();
            }
            keep
        });

        let certs: Certs<'_> = desired
            .certificates
            .keys()
            .filter_map(|name| Some((name.as_str(), cert(name)?)))
            .collect();
        self.collect_garbage(
            lead,
            desired,
            &certs,
            &acme,
            (&wanted, &acme_sites, tasks),
            now,
        )
        .await?;
        self.remind(lead, &sites, &certs, &acme.reminders, now)
            .await
    }

    /// The ACME orders, challenges and reminders in the store.
    async fn read_acme_records(&self) -> Result<AcmeRecords, StoreError> {
        let acme = self.store.snapshot(&self.keys.acme()).await?;
        let mut records = AcmeRecords::default();
        for kv in &acme.kvs {
            if let Some(name) = kv.key.strip_prefix(&self.keys.reminders()) {
                if let Ok(r) = model::decode(&kv.value) {
                    records
                        .reminders
                        .insert(name.to_owned(), (r, kv.mod_revision));
                }
            } else if let Some(site) = kv.key.strip_prefix(&self.keys.acme_orders()) {
                if let Ok(o) = model::decode(&kv.value) {
                    records.orders.insert(site.to_owned(), (o, kv.mod_revision));
                }
            } else if kv.key.starts_with(&self.keys.acme_challenges())
                && let Ok(c) = model::decode(&kv.value)
            {
                records
                    .challenges
                    .push((kv.key.clone(), c, kv.mod_revision));
            }
        }
        Ok(records)
    }

    async fn make_self_signed(
        &self,
        lead: &Leadership,
        site: &SiteRecord,
        domains: &[String],
        revision: Option<i64>,
        site_revision: Option<i64>,
    ) -> Result<(), IssueError> {
        let secrets = self.secrets()?;
        let (cert_pem, key_pem) = crypto::self_signed(domains, SELF_SIGNED_DAYS)?;
        let parsed = crypto::parse_certificate_and_key(&cert_pem, &key_pem)?;
        let name = model::leader_certificate_name(CertificateKind::SelfSigned, &site.domain);
        let record = CertificateRecord::new(
            name.clone(),
            CertificateKind::SelfSigned,
            parsed,
            secrets.seal(key_pem.as_bytes()),
            Some(site.domain.clone()),
            model::now_ms(),
        );
        let key = self.keys.certificate(&name);
        let mut compares = lead.compares();
        compares.push(match revision {
            Some(rev) => Compare::unchanged_since(key.clone(), rev),
            None => Compare::absent(key.clone()),
        });
        // Made for the site as it was read: not for one deleted or renamed meanwhile.
        if let Some(rev) = site_revision {
            compares.push(Compare::unchanged_since(self.keys.site(&site.domain), rev));
        }
        let ops = vec![TxnOp::put(key, model::encode(&record)), self.meta_state()];
        if self.store.txn(compares, ops).await?.succeeded {
            tracing::info!(site = %site.domain, name = %name, "made a self-signed certificate");
        }
        Ok(())
    }
}
