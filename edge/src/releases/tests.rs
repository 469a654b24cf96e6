//! Tests of `releases.rs`: retention limits, the disk budget and the persisted copy.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use statiko_common::crypto::Digest;

use super::{Releases, Retained};
use crate::bundle::StagedBundle;

/// A digest that spells `label` (up to 32 bytes), so the tests read with short names.
fn d(label: &str) -> Digest {
    let mut bytes = [0u8; 32];
    bytes[..label.len()].copy_from_slice(label.as_bytes());
    Digest::from(bytes)
}

/// The label [`d`] made `digest` from.
fn label(digest: &Digest) -> String {
    let bytes: Vec<u8> = digest
        .bytes()
        .iter()
        .copied()
        .take_while(|b| *b != 0)
        .collect();
    String::from_utf8(bytes).expect("a label")
}

fn labels(digests: Vec<Digest>) -> Vec<String> {
    digests.iter().map(label).collect()
}

fn retired(digest: &str, retired_at: i64, bytes: u64) -> Retained {
    Retained {
        bundle: Arc::new(StagedBundle {
            digest: d(digest),
            root: "/nonexistent".into(),
            files: HashMap::new(),
            dirs: HashSet::new(),
            manifest: None,
            rules: Default::default(),
        }),
        deployment: format!("d-{digest}"),
        retired_at,
        bytes,
    }
}

fn kept(releases: &Releases, domain: &str) -> Vec<String> {
    releases
        .retained(domain)
        .map(|r| label(&r.bundle.digest))
        .collect()
}

#[test]
fn per_site_limit_keeps_the_newest() {
    let mut releases = Releases::new(3);
    assert!(
        releases
            .retain("a.test", retired("1", 1, 10), Some(d("2")))
            .is_empty()
    );
    assert!(
        releases
            .retain("a.test", retired("2", 2, 10), Some(d("3")))
            .is_empty()
    );
    // Over `retainDeployments - 1`: the oldest goes.
    assert_eq!(
        labels(releases.retain("a.test", retired("3", 3, 10), Some(d("4")))),
        ["1"]
    );
    assert_eq!(kept(&releases, "a.test"), ["3", "2"]);
    // A rollback to 2 makes it live: it is no longer retained.
    assert_eq!(
        labels(releases.retain("a.test", retired("4", 4, 10), Some(d("2")))),
        ["2"]
    );
    assert_eq!(kept(&releases, "a.test"), ["4", "3"]);
    assert_eq!(labels(releases.forget("a.test")), ["4", "3"]);
    assert!(kept(&releases, "a.test").is_empty());
}

#[test]
fn the_disk_budget_drops_the_oldest_retired_first() {
    let mut releases = Releases::new(3).with_budget(250);
    releases.retain("a.test", retired("a1", 1, 100), Some(d("a2")));
    releases.retain("b.test", retired("b1", 2, 100), Some(d("b2")));
    assert!(releases.enforce_budget().is_empty(), "200 bytes fit");
    releases.retain("a.test", retired("a2", 3, 100), Some(d("a3")));
    assert_eq!(releases.retained_bytes(), 300);
    // a1, retired first, goes, whatever its site.
    assert_eq!(releases.enforce_budget(), [("a.test".to_owned(), d("a1"))]);
    assert_eq!(kept(&releases, "a.test"), ["a2"]);
    assert_eq!(kept(&releases, "b.test"), ["b1"]);
    assert_eq!(releases.retained_bytes(), 200);

    // A bundle two sites retain counts once.
    let mut shared = Releases::new(3).with_budget(150);
    shared.retain("a.test", retired("x", 1, 100), Some(d("y")));
    shared.retain("b.test", retired("x", 2, 100), Some(d("z")));
    assert_eq!(shared.retained_bytes(), 100);
    assert!(shared.enforce_budget().is_empty());

    // A zero budget keeps nothing retained.
    let mut none = Releases::new(3).with_budget(0);
    none.retain("a.test", retired("1", 1, 1), Some(d("2")));
    assert_eq!(none.enforce_budget().len(), 1);
    assert!(kept(&none, "a.test").is_empty());
}

#[tokio::test]
async fn what_is_retained_is_persisted_for_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut releases = Releases::new(3).persisted_in(dir.path());
    assert!(releases.restore.is_none(), "nothing persisted yet");
    releases.retain("a.test", retired("sha256:01", 7, 10), Some(d("sha256:02")));
    releases.retain("a.test", retired("sha256:02", 9, 10), Some(d("sha256:03")));
    releases.save().await;

    let next = Releases::new(3).persisted_in(dir.path());
    let persisted = next.restore.expect("the persisted copy");
    let entries = &persisted.sites["a.test"];
    let summary: Vec<(String, &str, i64)> = entries
        .iter()
        .map(|e| (label(&e.digest), e.deployment.as_str(), e.retired_at))
        .collect();
    assert_eq!(
        summary,
        [
            ("sha256:02".to_owned(), "d-sha256:02", 9),
            ("sha256:01".to_owned(), "d-sha256:01", 7)
        ]
    );
    // A file from elsewhere is ignored, not an error at start.
    std::fs::write(Releases::file_path(dir.path()), b"{not json").unwrap();
    assert!(Releases::new(3).persisted_in(dir.path()).restore.is_none());
}
