//! Garbage collection in a full pass: leader-made certificates no site needs, and ACME orders,
//! challenges and reminders that nothing refers to any more.

use std::collections::{HashMap, HashSet};

use statiko_common::model::CertificateKind;
use statiko_common::store::{Compare, StoreError, TxnOp};

use super::pass::{AcmeRecords, AcmeTask};
use super::policy::STALE_CHALLENGE_MS;
use super::{CertJobs, Certs};
use crate::desired::Desired;
use crate::leader::Leadership;

/// What a full pass keeps: the certificates it wants, the sites that want ACME and the ACME
/// tasks running.
type Keep<'a> = (
    &'a HashSet<String>,
    &'a HashSet<&'a str>,
    &'a HashMap<String, AcmeTask>,
);

impl CertJobs {
    /// Deletes the records no site needs. Each delete carries the leadership fence and compares
    /// the record at the revision it was judged on.
    pub(super) async fn collect_garbage(
        &self,
        lead: &Leadership,
        desired: &Desired,
        certs: &Certs<'_>,
        acme: &AcmeRecords,
        (wanted, acme_sites, tasks): Keep<'_>,
        now: i64,
    ) -> Result<(), StoreError> {
        // Garbage: leader-made certificates no site needs, orders and challenges of no order.
        // Each delete also compares the site it was made for as this copy has it, so a site
        // created or changed meanwhile keeps its certificate.
        let mut garbage: Vec<(String, i64, Option<&str>)> = Vec::new();
        for (name, (record, rev)) in certs {
            if record.kind != CertificateKind::Imported
                && !wanted.contains(*name)
                && let Some(site) = &record.site
            {
                garbage.push((self.keys.certificate(name), *rev, Some(site.as_str())));
            }
        }
        for (site, (_, rev)) in &acme.orders {
            if !acme_sites.contains(site.as_str()) {
                garbage.push((self.keys.acme_order(site), *rev, None));
            }
        }
        for (key, challenge, rev) in &acme.challenges {
            if !tasks.contains_key(&challenge.site)
                && (!acme_sites.contains(challenge.site.as_str())
                    || challenge.created_at + STALE_CHALLENGE_MS < now)
            {
                garbage.push((key.clone(), *rev, None));
            }
        }
        for (name, (_, rev)) in &acme.reminders {
            if !certs.contains_key(name.as_str()) {
                garbage.push((self.keys.reminder(name), *rev, None));
            }
        }
        for (key, rev, site) in garbage {
            let mut compares = lead.compares();
            compares.push(Compare::unchanged_since(key.clone(), rev));
            if let Some(site) = site {
                let site_key = self.keys.site(site);
                compares.push(match desired.revisions.get(&site_key) {
                    Some(site_rev) => Compare::unchanged_since(site_key, *site_rev),
                    None => Compare::absent(site_key),
                });
            }
            let ops = vec![TxnOp::delete(key.clone()), self.meta_state()];
            if self.store.txn(compares, ops).await?.succeeded {
                tracing::info!(key = %key, "deleted an unused leader record");
            }
        }
        Ok(())
    }
}
