//! Expiry reminders for imported certificates: one notification per threshold crossed, recorded
//! under `acme/reminders/` so a new leader does not send it again.

use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use statiko_common::model::{self, CertificateKind, ReminderRecord, SiteRecord, TlsChoice};
use statiko_common::store::{Compare, StoreError, TxnOp};

use super::policy::{DAY_MS, reminder_threshold};
use super::{CertJobs, Certs};
use crate::leader::Leadership;

impl CertJobs {
    /// Expiry reminders for imported certificates in use: once per threshold crossed.
    pub(super) async fn remind(
        &self,
        lead: &Leadership,
        sites: &[&SiteRecord],
        certs: &Certs<'_>,
        reminders: &HashMap<String, (ReminderRecord, i64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut users_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for site in sites {
            if let TlsChoice::Imported { certificate } = &site.tls {
                users_of
                    .entry(certificate.as_str())
                    .or_default()
                    .push(site.domain.as_str());
            }
        }
        for (name, (record, _)) in certs {
            if record.kind != CertificateKind::Imported {
                continue;
            }
            let Some(days) = reminder_threshold(record.not_after - now) else {
                continue;
            };
            let Some(users) = users_of.get(name) else {
                continue;
            };
            let previous = reminders.get(*name);
            if previous.is_some_and(|(r, _)| r.fingerprint == record.fingerprint && r.days <= days)
            {
                continue;
            }
            let key = self.keys.reminder(name);
            let reminder = ReminderRecord {
                fingerprint: record.fingerprint.clone(),
                days,
                sent_at: now,
            };
            let mut compares = lead.compares();
            compares.push(match previous {
                Some((_, rev)) => Compare::unchanged_since(key.clone(), *rev),
                None => Compare::absent(key.clone()),
            });
            let put = TxnOp::put(key, model::encode(&reminder));
            if !self.store.txn(compares, vec![put]).await?.succeeded {
                continue;
            }
            let when = httpdate::fmt_http_date(
                UNIX_EPOCH + Duration::from_millis(u64::try_from(record.not_after).unwrap_or(0)),
            );
            let message = if record.not_after <= now {
                format!(
                    "certificate {name} (used by {}) has expired ({when})",
                    users.join(", ")
                )
            } else {
                format!(
                    "certificate {name} (used by {}) expires in {} days ({when})",
                    users.join(", "),
                    (record.not_after - now).div_euclid(DAY_MS)
                )
            };
            self.notifier.send(message);
        }
        Ok(())
    }
}
