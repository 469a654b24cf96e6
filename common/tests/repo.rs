//! Bundle repository tests: the local backend, and S3 against a real S3-compatible server
//! (moto's server mode: `pip install 'moto[server]'`, which provides `moto_server`).
//!
//! Without `moto_server` on `PATH` the S3 tests print a notice and pass, unless `CI` is set,
//! in which case they fail.

#![expect(clippy::unwrap_used, clippy::print_stderr)]

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use statiko_common::config::{RepoConfig, RepoKind};
use statiko_common::crypto::{Sha256Hasher, hex, sha256};
use statiko_common::repo::{BundleRepo, MULTIPART_THRESHOLD, RepoError};

/// Deterministic pseudo-random bytes (xorshift), so content is not trivially compressible.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> (PathBuf, String) {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    (path, hex(&sha256(data)))
}

fn file_sha256(path: &Path) -> [u8; 32] {
    let mut h = Sha256Hasher::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish()
}

/// The same round trip for every backend: put, exists, download + hash, list, idempotent
/// put, delete, delete missing, not-found download, multipart (10 MiB) upload.
async fn round_trip(repo: &BundleRepo) {
    let work = tempfile::tempdir().unwrap();
    assert!(
        repo.list_digests().await.unwrap().is_empty(),
        "fresh repo is empty"
    );

    // Small bundle: plain put.
    let small = pseudo_random(100_000, 1);
    let (small_path, small_hex) = write_file(work.path(), "small.tar.gz", &small);
    assert!(!repo.exists(&small_hex).await.unwrap());
    repo.put_file(&small_hex, &small_path).await.unwrap();
    assert!(repo.exists(&small_hex).await.unwrap());
    // With the `sha256:` prefix and in upper case it is the same bundle.
    assert!(
        repo.exists(&format!("sha256:{}", small_hex.to_uppercase()))
            .await
            .unwrap()
    );
    // Idempotent: a second upload of the same digest succeeds (and is skipped).
    repo.put_file(&small_hex, &small_path).await.unwrap();

    let dest = work.path().join("downloaded-small");
    let hash = repo.download_to(&small_hex, &dest).await.unwrap();
    assert_eq!(hex(&hash), small_hex);
    assert_eq!(std::fs::read(&dest).unwrap(), small);
    assert!(!work.path().join("downloaded-small.partial").exists());

    // Large bundle: multipart upload (over the 8 MiB threshold).
    let large_len = 10 * 1024 * 1024 + 123;
    assert!(large_len as u64 > MULTIPART_THRESHOLD);
    let large = pseudo_random(large_len, 2);
    let (large_path, large_hex) = write_file(work.path(), "large.tar.gz", &large);
    drop(large);
    repo.put_file(&large_hex, &large_path).await.unwrap();
    assert!(repo.exists(&large_hex).await.unwrap());
    let dest_large = work.path().join("downloaded-large");
    let hash = repo.download_to(&large_hex, &dest_large).await.unwrap();
    assert_eq!(hex(&hash), large_hex);
    assert_eq!(file_sha256(&dest_large), hash);
    assert_eq!(
        std::fs::metadata(&dest_large).unwrap().len(),
        large_len as u64
    );

    let mut expected = vec![small_hex.clone(), large_hex.clone()];
    expected.sort();
    assert_eq!(repo.list_digests().await.unwrap(), expected);

    // Download of a missing bundle: NotFound, and no partial file left behind.
    let missing = hex(&sha256(b"not uploaded"));
    let dest_missing = work.path().join("missing");
    let err = repo.download_to(&missing, &dest_missing).await.unwrap_err();
    assert!(matches!(err, RepoError::NotFound { .. }), "{err}");
    assert!(err.is_not_found());
    assert!(!dest_missing.exists());
    assert!(!work.path().join("missing.partial").exists());

    // Delete, then delete again (missing is fine).
    repo.delete(&small_hex).await.unwrap();
    assert!(!repo.exists(&small_hex).await.unwrap());
    repo.delete(&small_hex).await.unwrap();
    repo.delete(&missing).await.unwrap();
    assert_eq!(repo.list_digests().await.unwrap(), vec![large_hex.clone()]);
    repo.delete(&large_hex).await.unwrap();
    assert!(repo.list_digests().await.unwrap().is_empty());

    // Invalid digests are rejected before any request.
    for bad in ["", "abc", "sha256:xyz", &"g".repeat(64)] {
        let err = repo.exists(bad).await.unwrap_err();
        assert!(matches!(err, RepoError::InvalidDigest(_)), "{bad:?}: {err}");
    }
}

fn local_config(dir: &Path) -> RepoConfig {
    let mut config = RepoConfig {
        kind: RepoKind::Local,
        ..RepoConfig::default()
    };
    config.local.path = dir.to_path_buf();
    config
}

#[tokio::test]
async fn local_round_trip() {
    let root = tempfile::tempdir().unwrap();
    // The directory is created when missing.
    let dir = root.path().join("nested").join("repo");
    let repo = BundleRepo::from_config(&local_config(&dir)).unwrap();
    assert!(dir.is_dir());
    round_trip(&repo).await;
}

#[tokio::test]
async fn local_layout_is_content_addressed() {
    let root = tempfile::tempdir().unwrap();
    let repo = BundleRepo::from_config(&local_config(root.path())).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (path, digest) = write_file(work.path(), "b", b"hello bundle");
    repo.put_file(&digest, &path).await.unwrap();
    let stored = root.path().join("bundles").join("sha256").join(&digest);
    assert_eq!(std::fs::read(stored).unwrap(), b"hello bundle");
    assert_eq!(
        repo.object_key(&digest).unwrap(),
        format!("bundles/sha256/{digest}")
    );
    // Stray files under the prefix are not digests and are not listed.
    std::fs::write(root.path().join("bundles/sha256/README"), b"x").unwrap();
    assert_eq!(repo.list_digests().await.unwrap(), vec![digest]);
    let dbg = format!("{repo:?}");
    assert!(dbg.contains("local"), "{dbg}");
}

#[test]
fn config_errors() {
    let mut config = RepoConfig {
        kind: RepoKind::S3,
        ..RepoConfig::default()
    };
    let err = BundleRepo::from_config(&config).unwrap_err();
    assert!(
        err.to_string().contains("repo.s3.bucket is required"),
        "{err}"
    );
    config.s3.bucket = "b".into();
    config.s3.access_key_id = "AKIDEXAMPLE".into();
    let err = BundleRepo::from_config(&config).unwrap_err();
    assert!(matches!(err, RepoError::Config(_)), "{err}");
    config.kind = RepoKind::Azure;
    assert!(BundleRepo::from_config(&config).is_err());
    config.kind = RepoKind::Gcs;
    assert!(BundleRepo::from_config(&config).is_err());
}

// -------------------------------------------------------------------------------------------
// S3 against moto
// -------------------------------------------------------------------------------------------

struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `moto_server` on a free port, or returns `None` (after a notice) when it is not
/// installed. Panics when it is missing and `CI` is set.
async fn start_moto() -> Option<Moto> {
    let port = free_port();
    let spawned = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "moto_server not found on PATH (CI is set); install it with: pip install 'moto[server]'"
            );
            eprintln!(
                "NOTICE: skipping S3 repository test: moto_server not found \
                 (pip install 'moto[server]')"
            );
            return None;
        }
        Err(e) => panic!("starting moto_server: {e}"),
    };
    let moto = Moto { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if http_request(port, "GET", "/").await.is_ok() {
            return Some(moto);
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not start within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal HTTP/1.1 request; returns the status code.
async fn http_request(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("http request timed out"))??;
    let response = String::from_utf8_lossy(&response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad http response: {response:?}")))
}

fn s3_config(port: u16, bucket: &str, prefix: &str, secret: &str) -> RepoConfig {
    let mut config = RepoConfig {
        kind: RepoKind::S3,
        ..RepoConfig::default()
    };
    config.s3.bucket = bucket.into();
    config.s3.endpoint = format!("http://127.0.0.1:{port}");
    config.s3.access_key_id = "AKIDTESTING".into();
    config.s3.secret_access_key = secret.into();
    config.s3.prefix = prefix.into();
    config
}

#[tokio::test]
async fn s3_round_trip_against_moto() {
    let Some(moto) = start_moto().await else {
        return;
    };
    let status = http_request(moto.port, "PUT", "/statiko-bundles")
        .await
        .unwrap();
    assert_eq!(status, 200, "creating the bucket");

    let repo = BundleRepo::from_config(&s3_config(
        moto.port,
        "statiko-bundles",
        "/cluster-a/",
        "testing-secret-value",
    ))
    .unwrap();
    assert!(repo.location().contains("s3://statiko-bundles"));
    assert!(!format!("{repo:?}").contains("testing-secret-value"));
    round_trip(&repo).await;

    // The prefix is honoured: another prefix in the same bucket sees nothing.
    let work = tempfile::tempdir().unwrap();
    let (path, digest) = write_file(work.path(), "b", b"prefixed");
    repo.put_file(&digest, &path).await.unwrap();
    assert_eq!(
        repo.object_key(&digest).unwrap(),
        format!("cluster-a/bundles/sha256/{digest}")
    );
    let other = BundleRepo::from_config(&s3_config(
        moto.port,
        "statiko-bundles",
        "cluster-b",
        "testing-secret-value",
    ))
    .unwrap();
    assert!(!other.exists(&digest).await.unwrap());
    assert!(other.list_digests().await.unwrap().is_empty());
    assert_eq!(repo.list_digests().await.unwrap(), vec![digest]);
}

#[tokio::test]
async fn s3_missing_bucket_error_has_no_credentials() {
    let Some(moto) = start_moto().await else {
        return;
    };
    let secret = "very-secret-access-key-123";
    let repo =
        BundleRepo::from_config(&s3_config(moto.port, "no-such-bucket", "", secret)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (path, digest) = write_file(work.path(), "b", b"data");
    let err = repo.put_file(&digest, &path).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(secret), "{text}");
    assert!(!text.contains("AKIDTESTING"), "{text}");
    assert!(!err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn s3_unreachable_is_unavailable() {
    // Nothing listens on this port.
    let port = free_port();
    let secret = "another-secret-value-456";
    let repo = BundleRepo::from_config(&s3_config(port, "bucket", "", secret)).unwrap();
    let digest = hex(&sha256(b"x"));
    let err = repo.exists(&digest).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(!err.to_string().contains(secret));
}
