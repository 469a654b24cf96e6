//! Timing and freshness policy of the certificate jobs: pass intervals, renewal thresholds,
//! reminder days and the ACME failure backoff.

use std::time::Duration;

use statiko_common::backoff::Backoff;
use statiko_common::model::{CertificateKind, CertificateRecord, SiteRecord};

pub(super) const DAY_MS: i64 = 86_400_000;
/// Validity of a self-signed certificate.
pub(super) const SELF_SIGNED_DAYS: u32 = 365;
/// A self-signed certificate is re-made when less than this is left.
const SELF_SIGNED_RENEW_MS: i64 = 14 * DAY_MS;
/// How often the leader re-checks everything even without a change.
pub(crate) const PASS_INTERVAL: Duration = Duration::from_secs(5);
/// A pass triggered by a change waits this many times the last pass's duration after it.
pub(super) const PASS_GAP_FACTOR: u32 = 4;
/// Expiry reminders, in days before `notAfter` (0: expired).
const REMINDER_DAYS: [i64; 6] = [30, 14, 7, 3, 1, 0];
/// Challenge records older than this with no order running are deleted.
pub(super) const STALE_CHALLENGE_MS: i64 = 10 * 60_000;
/// How long the leader waits for the edges to apply stored challenges.
pub(super) const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling of the ACME server for authorization and issuance.
pub(super) const ACME_POLL_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
pub(super) const MAX_BACKOFF_MS: i64 = MAX_BACKOFF.as_millis() as i64;
/// Failed issuance: 5 s doubling up to an hour, by the attempts counted in the order record.
const ISSUE_RETRY: Backoff = Backoff::new(Duration::from_secs(5), MAX_BACKOFF);

/// The primary domain followed by the aliases, as ordered.
pub(super) fn site_domains(site: &SiteRecord) -> Vec<String> {
    site.all_domains().map(str::to_owned).collect()
}

fn same_names(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut b: Vec<&str> = b.iter().map(String::as_str).collect();
    a.sort_unstable();
    a.dedup();
    b.sort_unstable();
    b.dedup();
    a == b
}

/// A self-signed record is kept while it names exactly the site's domains and has 14 days left.
pub(super) fn self_signed_fresh(
    record: &CertificateRecord,
    site: &SiteRecord,
    domains: &[String],
    now: i64,
) -> bool {
    record.kind == CertificateKind::SelfSigned
        && record.site.as_deref() == Some(site.domain.as_str())
        && same_names(&record.domains, domains)
        && record.not_before <= now
        && record.not_after - now > SELF_SIGNED_RENEW_MS
}

/// An ACME certificate is renewed when a third of its lifetime remains, or when it does not
/// cover every domain of the site any more.
pub(super) fn acme_fresh(record: &CertificateRecord, site: &SiteRecord, now: i64) -> bool {
    let lifetime = record.not_after - record.not_before;
    record.kind == CertificateKind::Acme
        && record.site.as_deref() == Some(site.domain.as_str())
        && record.covers(site.all_domains())
        && now < record.not_after - lifetime / 3
}

/// The reminder threshold reached with `left_ms` of validity left, if any.
pub(super) fn reminder_threshold(left_ms: i64) -> Option<i64> {
    REMINDER_DAYS
        .iter()
        .copied()
        .filter(|days| left_ms <= days * DAY_MS)
        .min()
}

/// The delay before the next attempt after `attempts` failures (ms). No jitter: the next
/// attempt time is stored, and only the leader retries.
pub(super) fn backoff_ms(attempts: u32) -> i64 {
    i64::try_from(ISSUE_RETRY.base(attempts).as_millis()).unwrap_or(MAX_BACKOFF_MS)
}
