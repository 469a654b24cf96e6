//! Tests of `reconcile.rs`.

use super::*;
use arc_swap::ArcSwap;
use statiko_common::config::{LimitsConfig, RepoConfig};
use statiko_common::keys::KeySchema;
use statiko_common::repo::BundleRepo;
use statiko_common::store::{KeyValue, Snapshot, WatchBatch, WatchEvent};

fn site(domain: &str, aliases: &[&str]) -> SiteRecord {
    SiteRecord {
        domain: domain.into(),
        aliases: aliases.iter().map(|a| (*a).to_owned()).collect(),
        tls: TlsChoice::SelfSigned,
        app: None,
        created_at: 0,
        updated_at: 0,
        deployed_at: None,
        deployment: None,
        skew_protection_ms: None,
    }
}

fn put(keys: &KeySchema, site: &SiteRecord, revision: i64) -> WatchEvent {
    WatchEvent::Put(KeyValue {
        key: keys.site(&site.domain),
        value: model::encode(site),
        create_revision: revision,
        mod_revision: revision,
        version: 1,
        lease: 0,
    })
}

fn route<'a>(table: &'a RoutingTable, host: &str) -> &'a Arc<SiteRoute> {
    match table.route(host) {
        Some(Route::Site(route)) => route,
        other => panic!("{host}: {other:?}"),
    }
}

#[tokio::test]
async fn applies_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let mut repo = RepoConfig::default();
    repo.local.path = dir.path().join("repo");
    let stager = Stager::new(
        dir.path(),
        BundleRepo::from_config(&repo).unwrap(),
        LimitsConfig::default(),
        None,
        false,
    );
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let certs = Arc::new(CertResolver::new().unwrap());
    let metrics = Arc::new(EdgeMetrics::default());
    let mut reconciler =
        Reconciler::new(stager, table.clone(), certs.clone(), None).with_metrics(metrics.clone());
    let keys = KeySchema::new("/statiko");

    let snapshot = Snapshot {
        revision: 2,
        kvs: [
            site("a.test", &["www.a.test"]),
            site("b.test", &[]),
            site("c.test", &[]),
        ]
        .iter()
        .map(|s| match put(&keys, s, 2) {
            WatchEvent::Put(kv) => kv,
            WatchEvent::Delete { .. } => unreachable!(),
        })
        .collect(),
    };
    let mut desired = Desired::from_snapshot(&keys, &snapshot);
    let applied = reconciler.apply(&desired).await;
    assert_eq!(applied.revision, 2);
    assert_eq!(applied.sites.len(), 3);
    assert!(applied.sites.values().all(|s| s.healthy));
    let before = table.load_full();
    assert_eq!(before.hosts.len(), 4);
    assert!(matches!(
        before.route("www.a.test"),
        Some(Route::Alias { primary }) if primary == "a.test"
    ));
    let a_key = certs.lookup(Some("www.a.test"));
    assert!(!Arc::ptr_eq(&a_key, certs.default_key()));
    assert!(Arc::ptr_eq(&a_key, &certs.lookup(Some("a.test"))));
    let c_key = certs.lookup(Some("c.test"));

    // a.test drops its alias, b.test goes, d.test comes; c.test is untouched.
    desired.apply(
        &keys,
        &WatchBatch {
            revision: 3,
            events: vec![
                put(&keys, &site("a.test", &[]), 3),
                WatchEvent::Delete {
                    key: keys.site("b.test"),
                    mod_revision: 3,
                },
                put(&keys, &site("d.test", &["www.d.test"]), 3),
            ],
        },
    );
    let applied = reconciler.apply(&desired).await;
    assert_eq!(applied.revision, 3);
    assert_eq!(
        applied.sites.keys().collect::<Vec<_>>(),
        ["a.test", "c.test", "d.test"]
    );
    let after = table.load_full();
    assert_eq!(after.revision, 3);
    let mut hosts: Vec<&String> = after.hosts.keys().collect();
    hosts.sort();
    assert_eq!(hosts, ["a.test", "c.test", "d.test", "www.d.test"]);
    // The untouched site kept its route object and its certificate.
    assert!(Arc::ptr_eq(
        route(&before, "c.test"),
        route(&after, "c.test")
    ));
    assert!(Arc::ptr_eq(&c_key, &certs.lookup(Some("c.test"))));
    // The gone names fall back to the default certificate.
    assert!(Arc::ptr_eq(
        &certs.lookup(Some("www.a.test")),
        certs.default_key()
    ));
    assert!(Arc::ptr_eq(
        &certs.lookup(Some("b.test")),
        certs.default_key()
    ));
    assert!(!Arc::ptr_eq(
        &certs.lookup(Some("www.d.test")),
        certs.default_key()
    ));
    // The old certificate of a.test (for a.test + www.a.test) is no longer cached.
    assert_eq!(reconciler.cert_cache.len(), 3);

    // Another lineage (a reload) recomputes everything and lands on the same result.
    let reloaded = Desired::from_snapshot(
        &keys,
        &Snapshot {
            revision: 3,
            kvs: [site("a.test", &[]), site("c.test", &[])]
                .iter()
                .map(|s| match put(&keys, s, 3) {
                    WatchEvent::Put(kv) => kv,
                    WatchEvent::Delete { .. } => unreachable!(),
                })
                .collect(),
        },
    );
    let applied = reconciler.apply(&reloaded).await;
    assert_eq!(
        applied.sites.keys().collect::<Vec<_>>(),
        ["a.test", "c.test"]
    );
    assert_eq!(table.load().hosts.len(), 2);
    assert_eq!(reconciler.cert_cache.len(), 2);
    assert_eq!(reconciler.cert_refs.0.len(), 2);
    assert!(reconciler.app_users.is_empty());
    assert_eq!(reconciler.cert_users.len(), 2);
    let text = metrics.render(&crate::metrics::Gauges::default());
    assert!(!text.contains("site=\"b.test\""), "{text}");
    assert!(!text.contains("site=\"d.test\""), "{text}");
    assert!(text.contains("site=\"c.test\""), "{text}");
}
