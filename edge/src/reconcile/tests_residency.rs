//! Tests of `residency.rs`: a retained-only bundle goes cold (its bodies released), and a flip
//! back to it serves it from disk at once, then resident again after the settle.

use std::sync::Arc;

use arc_swap::ArcSwap;
use statiko_common::config::{LimitsConfig, RepoConfig};
use statiko_common::crypto::{format_digest, hex, sha256};
use statiko_common::keys::KeySchema;
use statiko_common::model::{self, AppRecord, AppRef, BundleFormat, SiteRecord, TlsChoice};
use statiko_common::repo::BundleRepo;
use statiko_common::store::{KeyValue, Snapshot, WatchBatch, WatchEvent};

use super::Reconciler;
use crate::bundle::Body;
use crate::desired::Desired;
use crate::serve::tls::CertResolver;
use crate::stage::Stager;
use crate::table::{Route, RoutingTable, SharedTable};

fn kv(key: String, value: Vec<u8>, revision: i64) -> KeyValue {
    KeyValue {
        key,
        value,
        create_revision: revision,
        mod_revision: revision,
        version: 1,
        lease: 0,
    }
}

fn site(version: &str, deployment: &str) -> SiteRecord {
    SiteRecord {
        domain: "a.test".into(),
        aliases: Vec::new(),
        tls: TlsChoice::SelfSigned,
        app: Some(AppRef {
            name: "web".into(),
            version: version.into(),
        }),
        created_at: 0,
        updated_at: 0,
        deployed_at: Some(1),
        deployment: Some(deployment.into()),
        skew_protection_ms: None,
    }
}

/// Publishes `web@version` (one page) to the repository; its record.
async fn publish(repo: &BundleRepo, dir: &std::path::Path, version: &str) -> AppRecord {
    let page = format!("<h1>web@{version}</h1>").repeat(50);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(page.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "index.html", page.as_bytes())
        .unwrap();
    let bytes = zstd::encode_all(&builder.into_inner().unwrap()[..], 3).unwrap();
    let digest = sha256(&bytes);
    let path = dir.join(format!("upload-{version}"));
    std::fs::write(&path, &bytes).unwrap();
    repo.put_file(&hex(&digest), &path).await.unwrap();
    AppRecord {
        name: "web".into(),
        version: version.into(),
        digest: format_digest(&digest),
        size: bytes.len() as u64,
        format: BundleFormat::TarZst,
        signature: None,
        created_at: 0,
    }
}

/// Whether the site's live bundle, and each retained one, keeps its page in memory.
fn residency(table: &SharedTable) -> (bool, Vec<bool>) {
    let table = table.load_full();
    let Some(Route::Site(route)) = table.route("a.test") else {
        panic!("a.test is routed");
    };
    let live = route.bundle.as_ref().expect("a live bundle");
    let in_memory = |bundle: &crate::bundle::StagedBundle| {
        let memory = matches!(bundle.files["/index.html"].body, Body::Memory(_));
        assert_eq!(memory, bundle.resident);
        memory
    };
    (
        in_memory(live),
        route.retired.iter().map(|r| in_memory(&r.bundle)).collect(),
    )
}

#[tokio::test]
async fn retained_bundles_are_cold_and_a_flip_makes_them_resident_after_the_swap() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RepoConfig::default();
    config.local.path = dir.path().join("repo");
    let repo = BundleRepo::from_config(&config).unwrap();
    let stager = Stager::new(
        &dir.path().join("data"),
        repo.clone(),
        LimitsConfig::default(),
        None,
        false,
    );
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let certs = Arc::new(CertResolver::new().unwrap());
    let mut reconciler = Reconciler::new(stager.clone(), table.clone(), certs, None)
        .with_retention(3, u64::MAX, None);
    let keys = KeySchema::new("/statiko");
    let v1 = publish(&repo, dir.path(), "1").await;
    let v2 = publish(&repo, dir.path(), "2").await;
    let snapshot = Snapshot {
        revision: 2,
        kvs: vec![
            kv(keys.app("web", "1"), model::encode(&v1), 2),
            kv(keys.app("web", "2"), model::encode(&v2), 2),
            kv(keys.site("a.test"), model::encode(&site("1", "d1")), 2),
        ],
    };
    let mut desired = Desired::from_snapshot(&keys, &snapshot);
    reconciler.apply(&desired).await;
    reconciler.settle(&desired).await;
    assert_eq!(residency(&table), (true, vec![]));
    let hot_v1 = Arc::downgrade(&stager.cached(&v1.digest).unwrap());

    // web@2 goes live: web@1, retained only, goes cold; its resident copy is released.
    let switch = |desired: &mut Desired, version: &str, deployment: &str, revision: i64| {
        desired.apply(
            &keys,
            &WatchBatch {
                revision,
                events: vec![WatchEvent::Put(kv(
                    keys.site("a.test"),
                    model::encode(&site(version, deployment)),
                    revision,
                ))],
            },
        );
    };
    switch(&mut desired, "2", "d2", 3);
    let applied = reconciler.apply(&desired).await;
    assert_eq!(applied.sites["a.test"].retained, ["d1"]);
    reconciler.settle(&desired).await;
    assert_eq!(residency(&table), (true, vec![false]));
    assert!(!stager.cached(&v1.digest).unwrap().resident);
    assert!(hot_v1.upgrade().is_none(), "web@1's bodies are released");

    // The flip back: served at once from the cold copy (from disk), resident after the settle;
    // web@2 goes cold in turn.
    switch(&mut desired, "1", "d3", 4);
    let applied = reconciler.apply(&desired).await;
    assert_eq!(applied.sites["a.test"].retained, ["d2"]);
    assert!(!residency(&table).0, "served from the cold copy");
    reconciler.settle(&desired).await;
    assert_eq!(residency(&table), (true, vec![false]));
    assert!(stager.cached(&v1.digest).unwrap().resident);
}
