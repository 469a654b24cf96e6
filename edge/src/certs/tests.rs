//! Unit tests of the certificate jobs' policy: reminder thresholds, backoff and freshness.

use statiko_common::model::{CertificateKind, CertificateRecord, SiteRecord, TlsChoice};

use super::policy::*;

#[test]
fn thresholds_and_backoff() {
    assert_eq!(reminder_threshold(40 * DAY_MS), None);
    assert_eq!(reminder_threshold(30 * DAY_MS), Some(30));
    assert_eq!(reminder_threshold(10 * DAY_MS), Some(14));
    assert_eq!(reminder_threshold(DAY_MS / 2), Some(1));
    assert_eq!(reminder_threshold(-5), Some(0));
    assert_eq!(backoff_ms(1), 5_000);
    assert_eq!(backoff_ms(2), 10_000);
    assert_eq!(backoff_ms(40), MAX_BACKOFF_MS);
}

#[test]
fn freshness() {
    let site = SiteRecord {
        domain: "a.test".into(),
        aliases: vec!["www.a.test".into()],
        tls: TlsChoice::Acme,
        app: None,
        created_at: 0,
        updated_at: 0,
        deployed_at: None,
        deployment: None,
        skew_protection_ms: None,
    };
    let mut record = CertificateRecord {
        name: "acme-x".into(),
        kind: CertificateKind::Acme,
        certificate_pem: String::new(),
        key: String::new(),
        domains: vec!["a.test".into(), "www.a.test".into()],
        not_before: 0,
        not_after: 90 * DAY_MS,
        fingerprint: String::new(),
        created_at: 0,
        site: Some("a.test".into()),
    };
    assert!(acme_fresh(&record, &site, 50 * DAY_MS));
    assert!(
        !acme_fresh(&record, &site, 61 * DAY_MS),
        "a third left: renew"
    );
    record.domains.pop();
    assert!(!acme_fresh(&record, &site, DAY_MS), "an alias not covered");
    record.kind = CertificateKind::SelfSigned;
    record.domains = vec!["www.a.test".into(), "a.test".into()];
    assert!(self_signed_fresh(
        &record,
        &site,
        &site_domains(&site),
        DAY_MS
    ));
    assert!(!self_signed_fresh(
        &record,
        &site,
        &site_domains(&site),
        80 * DAY_MS
    ));
    assert!(!self_signed_fresh(
        &record,
        &site,
        &["a.test".into()],
        DAY_MS
    ));
}
