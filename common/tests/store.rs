//! One test suite for the store interface, run against both backends (file and a real etcd).
//!
//! Each etcd case starts its own etcd (`STATIKO_ETCD_BIN` or `etcd` from `PATH`) in a temp
//! directory. Without etcd the etcd cases print a notice and pass, unless `CI` is set.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use statiko_common::config::{EtcdConfig, EtcdTlsConfig};
use statiko_common::store::{
    Compare, EtcdStore, FileStore, Store, StoreError, TxnOp, WatchBatch, WatchEvent, WatchStream,
};
use tempfile::TempDir;
use tokio::process::{Child, Command};

type TestResult = anyhow::Result<()>;

const P: &str = "/t/";
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A store backend under test.
enum Harness {
    File { dir: TempDir },
    Etcd { server: Box<EtcdServer> },
}

impl Harness {
    fn file() -> anyhow::Result<Self> {
        Ok(Self::File {
            dir: tempfile::tempdir()?,
        })
    }

    /// `None` when etcd is not installed (and `CI` is not set).
    async fn etcd() -> anyhow::Result<Option<Self>> {
        let Some(bin) = etcd_bin() else {
            return Ok(None);
        };
        Ok(Some(Self::Etcd {
            server: Box::new(EtcdServer::start(&bin, None).await?),
        }))
    }

    /// A new handle on the store (for the file store a separate `FileStore` instance on the same
    /// directory, as another process would have; for etcd a separate client).
    async fn store(&self) -> anyhow::Result<Store> {
        Ok(match self {
            Self::File { dir } => Store::File(FileStore::open(dir.path())?),
            Self::Etcd { server } => Store::Etcd(EtcdStore::connect(&server.config()).await?),
        })
    }

    /// Makes every revision before `revision` unavailable to watchers.
    async fn compact(&self, revision: i64) -> TestResult {
        match self {
            Self::File { dir } => {
                // A writer with a one-entry change log drops everything older than its write.
                let store = Store::File(FileStore::open(dir.path())?.with_change_log_limit(1));
                let r = store
                    .txn(
                        vec![],
                        vec![TxnOp::put("/compaction-filler", b"x".to_vec())],
                    )
                    .await?;
                anyhow::ensure!(r.succeeded && r.revision >= revision);
            }
            Self::Etcd { server } => {
                let mut client = etcd_client::Client::connect([&server.endpoint], None).await?;
                client.compact(revision, None).await?;
            }
        }
        Ok(())
    }
}

/// Generates `file_<case>` and `etcd_<case>` tests from `async fn <case>(&Harness)`.
macro_rules! store_tests {
    ($($case:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> super::TestResult {
                    let harness = super::Harness::file()?;
                    super::$case(&harness).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> super::TestResult {
                    let Some(harness) = super::Harness::etcd().await? else { return Ok(()) };
                    super::$case(&harness).await
                }
            )*
        }
    };
}

store_tests!(
    put_get_snapshot,
    create_if_absent,
    cas_on_mod_revision,
    range_compare,
    delete_prefix,
    txn_is_atomic,
    watch_batches_per_revision,
    watch_resumes_from_old_revision,
    watch_reports_compaction,
    lease_revoke_deletes_keys,
    lease_expiry_deletes_keys,
    put_on_unknown_lease_is_rejected,
    concurrent_cas_loses_no_update,
);

// ---------------------------------------------------------------------------------------------
// Cases run against both backends
// ---------------------------------------------------------------------------------------------

async fn put_get_snapshot(h: &Harness) -> TestResult {
    let store = h.store().await?;
    assert_eq!(store.get("/t/a").await?, None);
    let empty = store.snapshot(P).await?;
    assert!(empty.kvs.is_empty());

    let rb = put(&store, "/t/b", "2").await?;
    let ra = put(&store, "/t/a", "1").await?;
    put(&store, "/u/outside", "x").await?;
    let rc = put(&store, "/t/c", "3").await?;
    assert!(empty.revision < rb && rb < ra && ra < rc);

    let snap = store.snapshot(P).await?;
    assert_eq!(snap.revision, rc);
    let keys: Vec<&str> = snap.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b", "/t/c"]);
    assert_eq!(snap.kvs[0].value, b"1");

    let a = store.get("/t/a").await?.expect("a exists");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, a.lease),
        (ra, ra, 1, 0)
    );

    let ra2 = put(&store, "/t/a", "1b").await?;
    let a = store.get("/t/a").await?.expect("a exists");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (ra, ra2, 2));
    assert_eq!(a.value, b"1b");
    Ok(())
}

async fn create_if_absent(h: &Harness) -> TestResult {
    let store = h.store().await?;
    let first = store
        .txn(
            vec![Compare::absent("/t/k")],
            vec![TxnOp::put("/t/k", b"one".to_vec())],
        )
        .await?;
    assert!(first.succeeded);
    let second = store
        .txn(
            vec![Compare::absent("/t/k")],
            vec![TxnOp::put("/t/k", b"two".to_vec())],
        )
        .await?;
    assert!(!second.succeeded);
    assert_eq!(
        second.revision, first.revision,
        "a failed txn writes nothing"
    );
    assert_eq!(value(&store, "/t/k").await?.as_deref(), Some("one"));
    let present = store
        .txn(
            vec![Compare::present("/t/k")],
            vec![TxnOp::put("/t/k", b"three".to_vec())],
        )
        .await?;
    assert!(present.succeeded);
    Ok(())
}

async fn cas_on_mod_revision(h: &Harness) -> TestResult {
    let store = h.store().await?;
    let r1 = put(&store, "/t/k", "v1").await?;
    let ok = store
        .txn(
            vec![Compare::unchanged_since("/t/k", r1)],
            vec![TxnOp::put("/t/k", b"v2".to_vec())],
        )
        .await?;
    assert!(ok.succeeded);
    let stale = store
        .txn(
            vec![Compare::unchanged_since("/t/k", r1)],
            vec![TxnOp::put("/t/k", b"v3".to_vec())],
        )
        .await?;
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, ok.revision);
    assert_eq!(value(&store, "/t/k").await?.as_deref(), Some("v2"));
    Ok(())
}

async fn range_compare(h: &Harness) -> TestResult {
    let store = h.store().await?;
    put(&store, "/u/other", "x").await?;
    let snap = store.snapshot("/t/r/").await?;
    assert!(snap.kvs.is_empty());
    // Empty range: compares as one absent key (mod revision 0 < R + 1).
    let r = store
        .txn(
            vec![Compare::prefix_unchanged_since("/t/r/", snap.revision)],
            vec![TxnOp::put("/t/r/a", b"1".to_vec())],
        )
        .await?;
    assert!(r.succeeded);
    // Nothing under the prefix changed after r.
    assert!(
        store
            .txn(
                vec![Compare::prefix_unchanged_since("/t/r/", r.revision)],
                vec![]
            )
            .await?
            .succeeded
    );
    // A key outside the prefix (sharing its start) does not count.
    put(&store, "/t/rx", "x").await?;
    assert!(
        store
            .txn(
                vec![Compare::prefix_unchanged_since("/t/r/", r.revision)],
                vec![]
            )
            .await?
            .succeeded
    );
    // A new key under the prefix does.
    let r2 = put(&store, "/t/r/b", "2").await?;
    let stale = store
        .txn(
            vec![Compare::prefix_unchanged_since("/t/r/", r.revision)],
            vec![TxnOp::put("/t/r/c", b"3".to_vec())],
        )
        .await?;
    assert!(!stale.succeeded);
    assert_eq!(store.get("/t/r/c").await?, None);
    assert!(
        store
            .txn(vec![Compare::prefix_unchanged_since("/t/r/", r2)], vec![])
            .await?
            .succeeded
    );
    Ok(())
}

async fn delete_prefix(h: &Harness) -> TestResult {
    let store = h.store().await?;
    for key in ["/t/d/a", "/t/d/b", "/t/d/c/d", "/t/dx", "/t/e"] {
        put(&store, key, "v").await?;
    }
    let r = store
        .txn(
            vec![],
            vec![TxnOp::DeletePrefix {
                prefix: "/t/d/".into(),
            }],
        )
        .await?;
    assert!(r.succeeded);
    let keys: Vec<String> = store
        .snapshot(P)
        .await?
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["/t/dx", "/t/e"]);
    store.txn(vec![], vec![TxnOp::delete("/t/e")]).await?;
    assert_eq!(store.get("/t/e").await?, None);
    Ok(())
}

async fn txn_is_atomic(h: &Harness) -> TestResult {
    let store = h.store().await?;
    let r = put(&store, "/t/exists", "v").await?;
    put(&store, "/t/z", "z").await?;
    let failed = store
        .txn(
            vec![Compare::absent("/t/w"), Compare::absent("/t/exists")],
            vec![
                TxnOp::put("/t/x", b"x".to_vec()),
                TxnOp::put("/t/y", b"y".to_vec()),
                TxnOp::delete("/t/z"),
            ],
        )
        .await?;
    assert!(!failed.succeeded);
    assert_eq!(store.get("/t/x").await?, None);
    assert_eq!(store.get("/t/y").await?, None);
    assert!(store.get("/t/z").await?.is_some());

    let ok = store
        .txn(
            vec![Compare::unchanged_since("/t/exists", r)],
            vec![
                TxnOp::put("/t/x", b"x".to_vec()),
                TxnOp::put("/t/y", b"y".to_vec()),
                TxnOp::delete("/t/z"),
            ],
        )
        .await?;
    assert!(ok.succeeded);
    let x = store.get("/t/x").await?.expect("x exists");
    let y = store.get("/t/y").await?.expect("y exists");
    assert_eq!((x.mod_revision, y.mod_revision), (ok.revision, ok.revision));
    assert_eq!(store.get("/t/z").await?, None);
    Ok(())
}

async fn watch_batches_per_revision(h: &Harness) -> TestResult {
    let store = h.store().await?;
    let writer = h.store().await?;
    put(&store, "/t/z", "z").await?;
    let snap = store.snapshot(P).await?;
    let mut watch = store.watch(P, snap.revision + 1).await?;

    let r1 = put(&writer, "/t/a", "1").await?;
    put(&writer, "/u/outside", "x").await?;
    let r2 = writer
        .txn(
            vec![],
            vec![
                TxnOp::put("/t/b", b"2".to_vec()),
                TxnOp::put("/t/c", b"3".to_vec()),
                TxnOp::delete("/t/z"),
            ],
        )
        .await?
        .revision;

    let b1 = next_batch(&mut watch).await?;
    assert_eq!(b1.revision, r1);
    assert_eq!(event_keys(&b1), ["put /t/a"]);
    let b2 = next_batch(&mut watch).await?;
    assert_eq!(b2.revision, r2);
    assert_eq!(event_keys(&b2), ["put /t/b", "put /t/c", "delete /t/z"]);
    match &b2.events[0] {
        WatchEvent::Put(kv) => {
            assert_eq!(
                (kv.value.as_slice(), kv.mod_revision, kv.version),
                (&b"2"[..], r2, 1)
            );
        }
        other => panic!("unexpected event {other:?}"),
    }
    match &b2.events[2] {
        WatchEvent::Delete { mod_revision, .. } => assert_eq!(*mod_revision, r2),
        other => panic!("unexpected event {other:?}"),
    }
    Ok(())
}

async fn watch_resumes_from_old_revision(h: &Harness) -> TestResult {
    let store = h.store().await?;
    let r1 = put(&store, "/t/a", "1").await?;
    let r2 = put(&store, "/t/b", "2").await?;
    let r3 = put(&store, "/t/a", "3").await?;
    let mut watch = store.watch(P, r1).await?;
    let r4 = put(&store, "/t/c", "4").await?;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let batch = next_batch(&mut watch).await?;
        assert_eq!(batch.events.len(), 1);
        seen.push(batch.revision);
    }
    assert_eq!(seen, [r1, r2, r3, r4]);

    // From the middle.
    let mut watch = store.watch(P, r3).await?;
    assert_eq!(next_batch(&mut watch).await?.revision, r3);
    assert_eq!(next_batch(&mut watch).await?.revision, r4);
    Ok(())
}

async fn watch_reports_compaction(h: &Harness) -> TestResult {
    let store = h.store().await?;
    let r1 = put(&store, "/t/a", "1").await?;
    put(&store, "/t/b", "2").await?;
    let r3 = put(&store, "/t/c", "3").await?;
    h.compact(r3).await?;
    match store.watch(P, r1).await {
        Err(StoreError::Compacted { requested, .. }) => assert_eq!(requested, r1),
        Err(e) => return Err(e.into()),
        Ok(mut watch) => match tokio::time::timeout(WAIT, watch.next()).await? {
            Some(Err(StoreError::Compacted {
                requested,
                compact_revision,
            })) => {
                assert_eq!(requested, r1);
                assert!(compact_revision > r1);
            }
            other => panic!("expected Compacted, got {other:?}"),
        },
    }
    // A snapshot and a watch from its revision still work.
    let snap = store.snapshot(P).await?;
    assert_eq!(snap.kvs.len(), 3);
    let mut watch = store.watch(P, snap.revision + 1).await?;
    let r = put(&store, "/t/d", "4").await?;
    assert_eq!(next_batch(&mut watch).await?.revision, r);
    Ok(())
}

async fn lease_revoke_deletes_keys(h: &Harness) -> TestResult {
    let store = h.store().await?;
    let lease = store.grant_lease(Duration::from_secs(30)).await?;
    assert!(store.keep_alive(lease).await?);
    let r = store
        .txn(
            vec![],
            vec![TxnOp::Put {
                key: "/t/node".into(),
                value: b"up".to_vec(),
                lease,
            }],
        )
        .await?;
    assert!(r.succeeded);
    assert_eq!(store.get("/t/node").await?.map(|kv| kv.lease), Some(lease));
    let mut watch = store.watch(P, r.revision + 1).await?;

    store.revoke_lease(lease).await?;
    assert_eq!(store.get("/t/node").await?, None);
    assert!(!store.keep_alive(lease).await?);
    let batch = next_batch(&mut watch).await?;
    assert_eq!(event_keys(&batch), ["delete /t/node"]);
    // Revoking again is not an error.
    store.revoke_lease(lease).await?;
    Ok(())
}

async fn lease_expiry_deletes_keys(h: &Harness) -> TestResult {
    let store = h.store().await?;
    let lease = store.grant_lease(Duration::from_secs(1)).await?;
    let r = store
        .txn(
            vec![],
            vec![TxnOp::Put {
                key: "/t/node".into(),
                value: b"up".to_vec(),
                lease,
            }],
        )
        .await?;
    let mut watch = store.watch(P, r.revision + 1).await?;
    assert!(store.keep_alive(lease).await?);
    assert!(store.get("/t/node").await?.is_some());

    let start = Instant::now();
    poll(|| async { Ok(store.get("/t/node").await?.is_none()) }).await?;
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "expired too early"
    );
    let batch = next_batch(&mut watch).await?;
    assert_eq!(event_keys(&batch), ["delete /t/node"]);
    assert!(!store.keep_alive(lease).await?);
    Ok(())
}

async fn put_on_unknown_lease_is_rejected(h: &Harness) -> TestResult {
    let store = h.store().await?;
    let result = store
        .txn(
            vec![],
            vec![
                TxnOp::put("/t/a", b"a".to_vec()),
                TxnOp::Put {
                    key: "/t/b".into(),
                    value: b"b".to_vec(),
                    lease: 0x7777_7777,
                },
            ],
        )
        .await;
    assert!(matches!(result, Err(StoreError::Rejected(_))), "{result:?}");
    assert_eq!(store.get("/t/a").await?, None, "nothing half-applied");
    Ok(())
}

async fn concurrent_cas_loses_no_update(h: &Harness) -> TestResult {
    let one = h.store().await?;
    let two = h.store().await?;
    let a = tokio::spawn(increment(one.clone(), 25));
    let b = tokio::spawn(increment(two, 25));
    let retries = a.await?? + b.await??;
    assert_eq!(value(&one, "/t/counter").await?.as_deref(), Some("50"));
    let kv = one.get("/t/counter").await?.expect("counter exists");
    assert_eq!(kv.version, 50);
    // Not asserted, but useful when it fails: how often the CAS lost.
    let _ = retries;
    Ok(())
}

/// Increments `/t/counter` `times` times with a CAS retry loop; returns the number of retries.
async fn increment(store: Store, times: usize) -> anyhow::Result<usize> {
    let key = "/t/counter";
    let mut retries = 0;
    for _ in 0..times {
        loop {
            let (n, guard) = match store.get(key).await? {
                Some(kv) => (
                    String::from_utf8(kv.value)?.parse::<u64>()?,
                    Compare::unchanged_since(key, kv.mod_revision),
                ),
                None => (0, Compare::absent(key)),
            };
            let r = store
                .txn(
                    vec![guard],
                    vec![TxnOp::put(key, (n + 1).to_string().into_bytes())],
                )
                .await?;
            if r.succeeded {
                break;
            }
            retries += 1;
            tokio::task::yield_now().await;
        }
    }
    Ok(retries)
}

// ---------------------------------------------------------------------------------------------
// File-store only
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_persists_and_sees_other_instances() -> TestResult {
    let dir = tempfile::tempdir()?;
    let a = Store::File(FileStore::open(&dir.path().join("nested/state"))?);
    let b = Store::File(FileStore::open(&dir.path().join("nested/state"))?);
    let start = a.snapshot(P).await?.revision;
    let mut watch = a.watch(P, start + 1).await?;
    let r = put(&b, "/t/from-b", "hello").await?;
    let batch = next_batch(&mut watch).await?;
    assert_eq!(
        (batch.revision, event_keys(&batch)),
        (r, vec!["put /t/from-b".to_owned()])
    );
    drop((a, b));

    let reopened = Store::File(FileStore::open(&dir.path().join("nested/state"))?);
    assert_eq!(
        value(&reopened, "/t/from-b").await?.as_deref(),
        Some("hello")
    );
    assert_eq!(reopened.snapshot(P).await?.revision, r);
    assert!(dir.path().join("nested/state/state.json").is_file());
    Ok(())
}

/// Set in the child process of `file_store_two_processes` to the store directory.
const CHILD_DIR_ENV: &str = "STATIKO_STORE_TEST_CHILD_DIR";

/// Two processes (this test binary re-run as a child) race CAS increments on one directory,
/// and a watcher in the parent sees every one of the child's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_two_processes() -> TestResult {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        let store = Store::File(FileStore::open(Path::new(&dir))?);
        increment(store, 25).await?;
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let store = Store::File(FileStore::open(dir.path())?);
    let mut watch = store.watch(P, 1).await?;
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "file_store_two_processes",
            "--test-threads=1",
            "--quiet",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    increment(store.clone(), 25).await?;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
    assert!(status.success(), "child process failed: {status}");
    assert_eq!(value(&store, "/t/counter").await?.as_deref(), Some("50"));

    let mut seen = Vec::new();
    while seen.len() < 50 {
        let batch = next_batch(&mut watch).await?;
        seen.push(batch.revision);
    }
    assert_eq!(
        seen,
        (1..=50).collect::<Vec<i64>>(),
        "one batch per revision, in order"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_watch_from_zero_starts_at_next_revision() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::File(FileStore::open(dir.path())?);
    put(&store, "/t/old", "x").await?;
    let mut watch = store.watch(P, 0).await?;
    let r = put(&store, "/t/new", "y").await?;
    let batch = next_batch(&mut watch).await?;
    assert_eq!(
        (batch.revision, event_keys(&batch)),
        (r, vec!["put /t/new".to_owned()])
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// etcd only
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_mutual_tls() -> TestResult {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(bin) = etcd_bin() else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let pki = Pki::generate(tmp.path())?;
    let server = EtcdServer::start(&bin, Some(&pki)).await?;

    let store = Store::Etcd(EtcdStore::connect(&server.config()).await?);
    let r = put(&store, "/t/tls", "ok").await?;
    assert_eq!(
        store.get("/t/tls").await?.map(|kv| kv.mod_revision),
        Some(r)
    );

    // Without the client certificate the server refuses the connection.
    let mut no_client_cert = server.config();
    no_client_cert.tls_configuration.client_certificate.clear();
    no_client_cert.tls_configuration.client_key.clear();
    no_client_cert.timeout = Duration::from_millis(2000);
    let anonymous = Store::Etcd(EtcdStore::connect(&no_client_cert).await?);
    let result = anonymous.get("/t/tls").await;
    assert!(
        matches!(
            result,
            Err(StoreError::Unavailable { .. } | StoreError::Rejected(_))
        ),
        "{result:?}"
    );

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tls_skip_verify() -> TestResult {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(bin) = etcd_bin() else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let pki = Pki::generate(tmp.path())?;
    let server = EtcdServer::start(&bin, Some(&pki)).await?;

    // The client does not know the CA that signed the etcd certificate.
    let mut unknown_ca = server.config();
    unknown_ca.tls_configuration.ca.clear();
    unknown_ca.timeout = Duration::from_millis(2000);

    // Verifying, the handshake fails.
    let verifying = Store::Etcd(EtcdStore::connect(&unknown_ca).await?);
    let result = verifying.get("/t/skip").await;
    assert!(
        matches!(
            result,
            Err(StoreError::Unavailable { .. } | StoreError::Rejected(_))
        ),
        "{result:?}"
    );

    // Skipping verification, the store works (client certificate still presented).
    let mut skip = unknown_ca.clone();
    skip.tls_skip_verify = true;
    let store = Store::Etcd(EtcdStore::connect(&skip).await?);
    let mut watch = store.watch(P, 1).await?;
    let r = put(&store, "/t/skip", "ok").await?;
    assert_eq!(value(&store, "/t/skip").await?.as_deref(), Some("ok"));
    let batch = next_batch(&mut watch).await?;
    assert_eq!(batch.revision, r);
    assert_eq!(event_keys(&batch), ["put /t/skip"]);

    // Skipping verification does not skip client authentication.
    let mut anonymous = skip.clone();
    anonymous.tls_configuration.client_certificate.clear();
    anonymous.tls_configuration.client_key.clear();
    let anonymous = Store::Etcd(EtcdStore::connect(&anonymous).await?);
    let result = anonymous.get("/t/skip").await;
    assert!(
        matches!(
            result,
            Err(StoreError::Unavailable { .. } | StoreError::Rejected(_))
        ),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tls_fails_over_to_a_live_endpoint() -> TestResult {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let Some(bin) = etcd_bin() else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let pki = Pki::generate(tmp.path())?;
    let server = EtcdServer::start(&bin, Some(&pki)).await?;

    // A dead endpoint first: calls move on to the live one.
    let mut config = server.config();
    config.address = format!("https://127.0.0.1:{},{}", free_port()?, server.endpoint);
    config.timeout = Duration::from_millis(2000);
    let store = Store::Etcd(EtcdStore::connect(&config).await?);
    poll(|| async { Ok(store.get("/t/a").await.is_ok()) }).await?;
    for i in 0..5 {
        put(&store, "/t/a", &i.to_string()).await?;
    }
    assert_eq!(value(&store, "/t/a").await?.as_deref(), Some("4"));
    Ok(())
}

/// A member the client was using dies: one call may fail, every later one goes to the next
/// endpoint. (etcd-client's balanced channel kept the dead member in rotation and failed a
/// share of all calls until it came back: the docker-compose fault test caught it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_dead_member_costs_at_most_one_failed_call() -> TestResult {
    let Some(bin) = etcd_bin() else { return Ok(()) };
    // Two single-member clusters stand in for two members of one: which data a call sees does
    // not matter here, only whether it is answered.
    let mut first = EtcdServer::start(&bin, None).await?;
    let second = EtcdServer::start(&bin, None).await?;
    let mut config = first.config();
    config.address = format!("{},{}", first.endpoint, second.endpoint);
    config.timeout = Duration::from_millis(2000);
    let store = Store::Etcd(EtcdStore::connect(&config).await?);
    for i in 0..5 {
        put(&store, "/t/a", &i.to_string()).await?;
    }
    first.kill().await?;
    let mut failed = Vec::new();
    for i in 0..30 {
        if let Err(e) = store.get("/t/a").await {
            failed.push(format!("call {i}: {e}"));
        }
    }
    assert!(
        failed.len() <= 1,
        "{} of 30 calls failed: {failed:?}",
        failed.len()
    );
    put(&store, "/t/b", "after").await?;
    assert_eq!(value(&store, "/t/b").await?.as_deref(), Some("after"));
    Ok(())
}

/// A watch whose member dies breaks with a transport error after its response began; the next
/// call must go to another member at once, not dial the dead one again (where a dead address
/// does not even refuse, that costs the whole connect timeout: a lease TTL's worth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_broken_watch_moves_calls_to_the_next_member() -> TestResult {
    let Some(bin) = etcd_bin() else { return Ok(()) };
    // Two single-member clusters, each holding its own name under /t/who: a read says which
    // member answered.
    let mut members = [
        EtcdServer::start(&bin, None).await?,
        EtcdServer::start(&bin, None).await?,
    ];
    for (i, member) in members.iter().enumerate() {
        let alone = Store::Etcd(EtcdStore::connect(&member.config()).await?);
        put(&alone, "/t/who", &i.to_string()).await?;
    }
    let mut config = members[0].config();
    config.address = format!("{},{}", members[0].endpoint, members[1].endpoint);
    config.timeout = Duration::from_millis(2000);
    let store = Store::Etcd(EtcdStore::connect(&config).await?);
    let current: usize = value(&store, "/t/who")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no /t/who"))?
        .parse()?;
    let mut watch = store.watch(P, 1).await?;
    assert!(next_batch(&mut watch).await.is_ok(), "the watch delivers");

    members[current].kill().await?;
    let broken = next_batch(&mut watch).await;
    assert!(
        broken.is_err(),
        "the watch on the killed member ends: {broken:?}"
    );
    // The very next call is answered, by the other member.
    let answered = value(&store, "/t/who").await;
    assert_eq!(
        answered.ok().flatten(),
        Some((1 - current).to_string()),
        "the first call after the broken watch went to the dead member"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_is_unavailable_within_timeout() -> TestResult {
    let Some(bin) = etcd_bin() else { return Ok(()) };

    // Creating the store works while nothing listens, and it answers Unavailable in time.
    let port = free_port()?;
    let config = EtcdConfig {
        address: format!("http://127.0.0.1:{port}"),
        timeout: Duration::from_millis(2000),
        ..EtcdConfig::default()
    };
    let started = Instant::now();
    let store = Store::Etcd(EtcdStore::connect(&config).await?);
    let result = store.get("/t/a").await;
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    // Once etcd is up on that address, the same store works.
    let mut server = EtcdServer::start_on(&bin, None, port).await?;
    poll(|| async { Ok(store.get("/t/a").await.is_ok()) }).await?;
    put(&store, "/t/a", "1").await?;
    let mut watch = store.watch(P, 1).await?;
    assert!(next_batch(&mut watch).await.is_ok());

    server.kill().await?;
    let started = Instant::now();
    let result = store
        .txn(vec![], vec![TxnOp::put("/t/b", b"2".to_vec())])
        .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{result:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    // The watch ends with an error rather than hanging.
    match tokio::time::timeout(WAIT, watch.next()).await? {
        Some(Err(StoreError::Unavailable { .. })) | None => {}
        other => panic!("expected the watch to break, got {other:?}"),
    }

    // After a restart the same store reconnects and nothing was half-written.
    server.restart().await?;
    poll(|| async { Ok(store.get("/t/a").await.is_ok()) }).await?;
    assert_eq!(value(&store, "/t/a").await?.as_deref(), Some("1"));
    put(&store, "/t/c", "3").await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn put(store: &Store, key: &str, value: &str) -> anyhow::Result<i64> {
    let r = store
        .txn(vec![], vec![TxnOp::put(key, value.as_bytes().to_vec())])
        .await?;
    anyhow::ensure!(r.succeeded, "unconditional put failed");
    Ok(r.revision)
}

async fn value(store: &Store, key: &str) -> anyhow::Result<Option<String>> {
    Ok(match store.get(key).await? {
        Some(kv) => Some(String::from_utf8(kv.value)?),
        None => None,
    })
}

async fn next_batch(watch: &mut WatchStream) -> anyhow::Result<WatchBatch> {
    match tokio::time::timeout(WAIT, watch.next()).await {
        Ok(Some(Ok(batch))) => Ok(batch),
        Ok(Some(Err(e))) => Err(anyhow::anyhow!("watch failed: {e}")),
        Ok(None) => Err(anyhow::anyhow!("watch ended")),
        Err(_) => Err(anyhow::anyhow!("no watch batch within {WAIT:?}")),
    }
}

fn event_keys(batch: &WatchBatch) -> Vec<String> {
    batch
        .events
        .iter()
        .map(|e| match e {
            WatchEvent::Put(kv) => format!("put {}", kv.key),
            WatchEvent::Delete { key, .. } => format!("delete {key}"),
        })
        .collect()
}

/// Polls `check` every 50 ms until it returns true, for at most `WAIT`.
async fn poll<F, Fut>(mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await? {
        anyhow::ensure!(
            Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The etcd binary, or `None` (with a notice) to skip; panics when `CI` is set.
#[expect(clippy::print_stderr)]
fn etcd_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("STATIKO_ETCD_BIN") {
        return Some(PathBuf::from(bin));
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "etcd is not installed (set STATIKO_ETCD_BIN or put etcd on PATH)"
        );
        eprintln!("notice: etcd not found on PATH; skipping etcd store test");
    }
    found
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A CA, an etcd server certificate for 127.0.0.1/localhost and a client certificate, as PEM
/// files in a directory.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "statiko test ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, cn: &str, eku: Vec<ExtendedKeyUsagePurpose>| {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = eku;
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "etcd",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        let (client_cert, client_key) =
            leaf(vec![], "statiko", vec![ExtendedKeyUsagePurpose::ClientAuth])?;

        let write = |name: &str, pem: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };
        Ok(Self {
            ca: write("ca.pem", &ca_cert.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server-key.pem", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
        })
    }
}

/// A single-node etcd in a temp directory, killed on drop.
struct EtcdServer {
    child: Child,
    dir: TempDir,
    bin: PathBuf,
    args: Vec<OsString>,
    endpoint: String,
    tls: Option<EtcdTlsConfig>,
}

impl EtcdServer {
    async fn start(bin: &Path, pki: Option<&Pki>) -> anyhow::Result<Self> {
        // A reserved port can be taken by someone else before etcd binds it: retry once.
        match Self::start_on(bin, pki, free_port()?).await {
            Ok(server) => Ok(server),
            Err(_) => Self::start_on(bin, pki, free_port()?).await,
        }
    }

    /// Starts etcd serving clients on `client_port`.
    async fn start_on(bin: &Path, pki: Option<&Pki>, client_port: u16) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let peer_port = free_port()?;
        let scheme = if pki.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut args: Vec<OsString> = vec![
            "--name".into(),
            "t".into(),
            "--data-dir".into(),
            dir.path().join("data").into(),
            "--listen-client-urls".into(),
            endpoint.clone().into(),
            "--advertise-client-urls".into(),
            endpoint.clone().into(),
            "--listen-peer-urls".into(),
            peer.clone().into(),
            "--initial-advertise-peer-urls".into(),
            peer.clone().into(),
            "--initial-cluster".into(),
            format!("t={peer}").into(),
            "--logger".into(),
            "zap".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        let mut tls = None;
        if let Some(pki) = pki {
            args.extend([
                "--cert-file".into(),
                pki.server_cert.clone().into(),
                "--key-file".into(),
                pki.server_key.clone().into(),
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                pki.ca.clone().into(),
            ]);
            tls = Some(EtcdTlsConfig {
                ca: pki.ca.display().to_string(),
                client_certificate: pki.client_cert.display().to_string(),
                client_key: pki.client_key.display().to_string(),
            });
        }
        let child = spawn_etcd(bin, &args, dir.path())?;
        let mut server = Self {
            child,
            dir,
            bin: bin.to_owned(),
            args,
            endpoint,
            tls,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Starts the killed etcd again, on the same ports and data.
    async fn restart(&mut self) -> TestResult {
        self.child = spawn_etcd(&self.bin, &self.args, self.dir.path())?;
        self.wait_ready().await
    }

    fn config(&self) -> EtcdConfig {
        EtcdConfig {
            address: self.endpoint.clone(),
            timeout: Duration::from_millis(5000),
            tls_configuration: self.tls.clone().unwrap_or_default(),
            ..EtcdConfig::default()
        }
    }

    async fn wait_ready(&mut self) -> TestResult {
        let mut config = self.config();
        config.timeout = Duration::from_millis(1000);
        let store = EtcdStore::connect(&config).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("etcd exited with {status}: {}", self.log_tail());
            }
            // A status call for plaintext, as documented; the store itself for TLS.
            let ready = if self.tls.is_none() {
                match etcd_client::Client::connect([&self.endpoint], None).await {
                    Ok(mut client) => tokio::time::timeout(Duration::from_secs(1), client.status())
                        .await
                        .is_ok_and(|r| r.is_ok()),
                    Err(_) => false,
                }
            } else {
                store.snapshot("/").await.is_ok()
            };
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "etcd not ready within 30 s: {}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn kill(&mut self) -> TestResult {
        self.child.kill().await?;
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn spawn_etcd(bin: &Path, args: &[OsString], dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))?;
    Ok(Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}
