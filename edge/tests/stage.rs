//! Staging against a local bundle repository: fetch, verify, unpack, precompute, cache, evict.

#![expect(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{Cursor, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use statiko_common::archive::ArchiveError;
use statiko_common::config::{LimitsConfig, RepoConfig, RepoKind};
use statiko_common::crypto::{
    Digest, encode_signature, generate_ed25519_key, hex, sha256, sign_bundle_digest,
};
use statiko_common::model::{AppRecord, BundleFormat};
use statiko_common::repo::BundleRepo;
use statiko_edge::bundle::{Body, HOT_FILE_MAX, StagedBundle, StaticFile};
use statiko_edge::stage::{StageError, Stager, manifest_path};

const MTIME: u64 = 1_600_000_000;

struct Env {
    tmp: tempfile::TempDir,
    repo: BundleRepo,
    data: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = RepoConfig {
        kind: RepoKind::Local,
        ..RepoConfig::default()
    };
    config.local.path = tmp.path().join("repo");
    let repo = BundleRepo::from_config(&config).unwrap();
    let data = tmp.path().join("data");
    Env { tmp, repo, data }
}

impl Env {
    fn stager(&self) -> Stager {
        self.stager_with(LimitsConfig::default(), None, false)
    }

    fn stager_with(&self, limits: LimitsConfig, key: Option<[u8; 32]>, required: bool) -> Stager {
        Stager::new(&self.data, self.repo.clone(), limits, key, required)
    }

    /// Uploads `bytes` under `digest_of` (their own digest unless given) and returns a record.
    async fn publish_as(
        &self,
        bytes: &[u8],
        format: BundleFormat,
        digest_of: Option<&[u8]>,
    ) -> AppRecord {
        let digest = sha256(digest_of.unwrap_or(bytes));
        let path = self.tmp.path().join(format!("upload-{}", hex(&digest)));
        std::fs::write(&path, bytes).unwrap();
        self.repo.put_file(&hex(&digest), &path).await.unwrap();
        AppRecord {
            name: "app".into(),
            version: "1".into(),
            digest: Digest::from(digest),
            size: bytes.len() as u64,
            format,
            signature: None,
            created_at: 0,
        }
    }

    async fn publish(&self, bytes: &[u8], format: BundleFormat) -> AppRecord {
        self.publish_as(bytes, format, None).await
    }

    fn bundle_dir(&self, record: &AppRecord) -> PathBuf {
        self.data.join("bundles").join(record.digest.hex())
    }
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(MTIME);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    gz(&tar_of(entries))
}

/// A tar entry with a raw name (the builder refuses `..`) and a given type.
fn raw_tar(name: &[u8], kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut ok = tar::Header::new_gnu();
    ok.set_size(1);
    builder
        .append_data(&mut ok, "index.html", &b"x"[..])
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(kind);
    if kind == tar::EntryType::Symlink {
        header.set_link_name_literal("/etc/passwd").unwrap();
    }
    header.set_cksum();
    builder.append(&header, data).unwrap();
    gz(&builder.into_inner().unwrap())
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Pseudo-random, incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn html(len: usize) -> Vec<u8> {
    let mut s = String::from("<!doctype html><title>t</title>");
    let mut i = 0;
    while s.len() < len {
        s.push_str(&format!("<p class=\"row\">row {i}</p>\n"));
        i += 1;
    }
    s.into_bytes()
}

fn body_bytes(body: &Body) -> Vec<u8> {
    match body {
        Body::Memory(bytes) => bytes.to_vec(),
        Body::Disk(path) => std::fs::read(path).unwrap(),
    }
}

fn file<'a>(bundle: &'a StagedBundle, path: &str) -> &'a StaticFile {
    bundle
        .files
        .get(path)
        .unwrap_or_else(|| panic!("{path} missing from {:?}", bundle.files.keys()))
}

fn expected_etag(content: &[u8]) -> String {
    format!("\"{}\"", &hex(&sha256(content))[..32])
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            } else {
                let rel = e.path().strip_prefix(base).unwrap().to_owned();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn tmp_is_empty(env: &Env) -> bool {
    match std::fs::read_dir(env.data.join("tmp")) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => true,
    }
}

#[tokio::test]
async fn stages_files_with_metadata_and_variants() {
    let env = env();
    let index = html(4000);
    let css = b"body { color: red; }\n".repeat(100);
    let png = noise(2000, 1);
    let big_js = b"function f(){return 42;}\n".repeat(12_000);
    let tiny = b"<p>small</p>".to_vec();
    let rand_txt = noise(1000, 2);
    // Text that compresses by about half: its variants are too large for memory.
    let hex_txt = hex(&noise(300 * 1024, 5)).into_bytes();
    let bytes = tar_gz(&[
        ("index.html", &index),
        ("css/site.css", &css),
        ("img/logo.png", &png),
        ("js/app.js", &big_js),
        ("tiny.html", &tiny),
        ("noise.txt", &rand_txt),
        ("hex.txt", &hex_txt),
        ("docs/a b.html", b"space"),
        ("_statiko.yaml", b"rules: []\n"),
    ]);
    let record = env.publish(&bytes, BundleFormat::TarGz).await;
    let stager = env.stager();
    let bundle = stager.stage(&record).await.unwrap();

    assert_eq!(bundle.digest, record.digest);
    let mut keys: Vec<&str> = bundle.files.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "/css/site.css",
            "/docs/a b.html",
            "/hex.txt",
            "/img/logo.png",
            "/index.html",
            "/js/app.js",
            "/noise.txt",
            "/tiny.html"
        ]
    );
    let mut dirs: Vec<&str> = bundle.dirs.iter().map(String::as_str).collect();
    dirs.sort_unstable();
    assert_eq!(dirs, ["/", "/css", "/docs", "/img", "/js"]);

    // The manifest is not served, but is kept for the manifest loader.
    assert!(!bundle.files.contains_key("/_statiko.yaml"));
    assert_eq!(
        std::fs::read(manifest_path(&bundle)).unwrap(),
        b"rules: []\n"
    );

    let f = file(&bundle, "/index.html");
    assert_eq!(f.content_type, "text/html; charset=utf-8");
    assert_eq!(f.len, index.len() as u64);
    assert_eq!(f.etag, expected_etag(&index));
    assert_eq!(
        f.last_modified,
        SystemTime::UNIX_EPOCH + Duration::from_secs(MTIME)
    );
    assert!(matches!(f.body, Body::Memory(_)));
    assert_eq!(body_bytes(&f.body), index);
    let gz = f.gzip.as_ref().expect("html is gzipped");
    let br = f.brotli.as_ref().expect("html is brotli-compressed");
    assert!(gz.len < f.len && br.len < f.len);
    assert_eq!(gz.etag, format!("{}-gz\"", f.etag.trim_end_matches('"')));
    assert_eq!(br.etag, format!("{}-br\"", f.etag.trim_end_matches('"')));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body_bytes(&gz.body)[..])
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, index);
    let mut out = Vec::new();
    brotli::Decompressor::new(&body_bytes(&br.body)[..], 4096)
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, index);
    assert_eq!(body_bytes(&gz.body).len() as u64, gz.len);

    assert_eq!(
        file(&bundle, "/css/site.css").content_type,
        "text/css; charset=utf-8"
    );
    assert!(file(&bundle, "/css/site.css").gzip.is_some());

    // Binary types are not compressed.
    let logo = file(&bundle, "/img/logo.png");
    assert_eq!(logo.content_type, "image/png");
    assert!(logo.gzip.is_none() && logo.brotli.is_none());
    assert_eq!(logo.etag, expected_etag(&png));

    // Large files stream from disk, and so do their large variants.
    let js = file(&bundle, "/js/app.js");
    assert!(js.len > HOT_FILE_MAX);
    assert!(
        js.content_type.ends_with("javascript; charset=utf-8"),
        "{}",
        js.content_type
    );
    let Body::Disk(path) = &js.body else {
        panic!("large file in memory")
    };
    assert!(path.starts_with(&bundle.root));
    assert_eq!(std::fs::read(path).unwrap(), big_js);
    let js_gz = js.gzip.as_ref().unwrap();
    assert!(
        matches!(js_gz.body, Body::Memory(_)),
        "small variant in memory"
    );
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body_bytes(&js_gz.body)[..])
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, big_js);

    // Under 512 bytes: not compressed. Incompressible text: variants dropped (not 5% smaller).
    assert!(file(&bundle, "/tiny.html").gzip.is_none());
    let noisy = file(&bundle, "/noise.txt");
    assert!(noisy.gzip.is_none() && noisy.brotli.is_none());

    // Variants live outside the served tree, which holds exactly the bundle's files.
    assert_eq!(
        files_under(&bundle.root),
        [
            "_statiko.yaml",
            "css/site.css",
            "docs/a b.html",
            "hex.txt",
            "img/logo.png",
            "index.html",
            "js/app.js",
            "noise.txt",
            "tiny.html"
        ]
    );
    let hexed = file(&bundle, "/hex.txt");
    let Body::Disk(gz_path) = &hexed.gzip.as_ref().unwrap().body else {
        panic!("large variant in memory")
    };
    assert!(!gz_path.starts_with(&bundle.root));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(gz_path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, hex_txt);
    let Body::Disk(br_path) = &hexed.brotli.as_ref().unwrap().body else {
        panic!("large variant in memory")
    };
    let mut out = Vec::new();
    brotli::Decompressor::new(std::fs::File::open(br_path).unwrap(), 4096)
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, hex_txt);
    assert!(tmp_is_empty(&env));
}

#[tokio::test]
async fn etag_is_stable_across_bundles() {
    let env = env();
    let stager = env.stager();
    let page = html(1000);
    let a = env
        .publish(
            &tar_gz(&[("index.html", &page), ("a.txt", b"a")]),
            BundleFormat::TarGz,
        )
        .await;
    let b = env
        .publish(
            &zip_of(&[("index.html", &page), ("b.txt", b"b")]),
            BundleFormat::Zip,
        )
        .await;
    let a = stager.stage(&a).await.unwrap();
    let b = stager.stage(&b).await.unwrap();
    assert_ne!(a.digest, b.digest);
    let (fa, fb) = (file(&a, "/index.html"), file(&b, "/index.html"));
    assert_eq!(fa.etag, fb.etag);
    assert_eq!(
        fa.gzip.as_ref().unwrap().etag,
        fb.gzip.as_ref().unwrap().etag
    );
}

#[tokio::test]
async fn single_top_folder_is_flattened() {
    let env = env();
    let stager = env.stager();
    let zip = zip_of(&[
        ("site/index.html", b"<p>zip</p>"),
        ("site/css/a.css", b"a{}"),
        ("site/_statiko.yaml", b"rules: []\n"),
    ]);
    let record = env.publish(&zip, BundleFormat::Zip).await;
    let bundle = stager.stage(&record).await.unwrap();
    let mut keys: Vec<&str> = bundle.files.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["/css/a.css", "/index.html"]);
    assert!(manifest_path(&bundle).is_file());
    assert_eq!(
        body_bytes(&file(&bundle, "/index.html").body),
        b"<p>zip</p>"
    );
}

#[tokio::test]
async fn tar_zst_bundles_stage() {
    let env = env();
    let zst = zstd::encode_all(&tar_of(&[("index.html", b"zst")])[..], 3).unwrap();
    let record = env.publish(&zst, BundleFormat::TarZst).await;
    let bundle = env.stager().stage(&record).await.unwrap();
    assert_eq!(body_bytes(&file(&bundle, "/index.html").body), b"zst");
}

#[tokio::test]
async fn digest_mismatch_is_refused() {
    let env = env();
    let real = tar_gz(&[("index.html", b"real")]);
    let claimed = tar_gz(&[("index.html", b"claimed")]);
    let record = env
        .publish_as(&real, BundleFormat::TarGz, Some(&claimed))
        .await;
    let err = env.stager().stage(&record).await.unwrap_err();
    let StageError::DigestMismatch { expected, actual } = &err else {
        panic!("{err}")
    };
    assert_eq!(*expected, Digest::from(sha256(&claimed)).to_string());
    assert_eq!(*actual, Digest::from(sha256(&real)).to_string());
    assert!(
        err.to_string()
            .starts_with("bundle digest mismatch: expected sha256:")
    );
    assert!(!env.bundle_dir(&record).exists());
    assert!(tmp_is_empty(&env));
}

#[tokio::test]
async fn missing_bundle_is_a_fetch_error() {
    let env = env();
    let mut record = env
        .publish(&tar_gz(&[("a", b"a")]), BundleFormat::TarGz)
        .await;
    record.digest = Digest::from(sha256(b"nothing"));
    let err = env.stager().stage(&record).await.unwrap_err();
    assert!(matches!(err, StageError::Fetch(_)), "{err}");
    assert!(err.to_string().contains("not found"), "{err}");
    // A record with a malformed digest never reaches the stager: it does not decode.
    let mut json = serde_json::to_value(&record).unwrap();
    json["digest"] = "sha256:nope".into();
    let err = serde_json::from_value::<AppRecord>(json).unwrap_err();
    assert!(err.to_string().contains("invalid"), "{err}");
}

#[tokio::test]
async fn unsafe_archives_are_refused() {
    let env = env();
    let stager = env.stager();
    let traversal = env
        .publish(
            &raw_tar(b"../../evil.html", tar::EntryType::Regular, b"x"),
            BundleFormat::TarGz,
        )
        .await;
    let err = stager.stage(&traversal).await.unwrap_err();
    assert!(
        matches!(err, StageError::Archive(ArchiveError::ParentDir { .. })),
        "{err}"
    );
    assert!(!env.tmp.path().join("evil.html").exists());
    assert!(!env.data.join("evil.html").exists());

    let symlink = env
        .publish(
            &raw_tar(b"passwd", tar::EntryType::Symlink, b""),
            BundleFormat::TarGz,
        )
        .await;
    let err = stager.stage(&symlink).await.unwrap_err();
    assert!(
        matches!(err, StageError::Archive(ArchiveError::Symlink { .. })),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "invalid bundle archive: entry \"passwd\" is a symbolic link; bundles may hold only files and directories"
    );

    let absolute = env
        .publish(
            &raw_tar(b"/etc/cron.d/x", tar::EntryType::Regular, b"x"),
            BundleFormat::TarGz,
        )
        .await;
    let err = stager.stage(&absolute).await.unwrap_err();
    assert!(
        matches!(err, StageError::Archive(ArchiveError::AbsolutePath { .. })),
        "{err}"
    );

    // A bomb: 64 MiB of zeros against a 1 MiB cap.
    let limits = LimitsConfig {
        max_unpacked_size: 1 << 20,
        ..LimitsConfig::default()
    };
    let bomb = env
        .publish(
            &tar_gz(&[("zeros.txt", &vec![0u8; 64 << 20])]),
            BundleFormat::TarGz,
        )
        .await;
    let err = env
        .stager_with(limits, None, false)
        .stage(&bomb)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StageError::Archive(ArchiveError::TooLarge { .. })),
        "{err}"
    );

    let empty = env.publish(&gz(&tar_of(&[])), BundleFormat::TarGz).await;
    let err = stager.stage(&empty).await.unwrap_err();
    assert!(
        matches!(err, StageError::Archive(ArchiveError::Empty)),
        "{err}"
    );

    for record in [&traversal, &symlink, &absolute, &bomb, &empty] {
        assert!(!env.bundle_dir(record).exists());
    }
    assert!(tmp_is_empty(&env));
}

#[tokio::test]
async fn oversized_bundle_is_refused_before_download() {
    let env = env();
    let record = env
        .publish(
            &tar_gz(&[("a.bin", &noise(10_000, 3))]),
            BundleFormat::TarGz,
        )
        .await;
    let limits = LimitsConfig {
        max_bundle_size: 1000,
        ..LimitsConfig::default()
    };
    let err = env
        .stager_with(limits, None, false)
        .stage(&record)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StageError::TooLarge { max: 1000, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn concurrent_stages_share_one_copy() {
    let env = env();
    let stager = env.stager();
    let record = env
        .publish(&tar_gz(&[("index.html", &html(5000))]), BundleFormat::TarGz)
        .await;
    let mut other_site = record.clone();
    other_site.name = "other".into();
    let clone = stager.clone();
    let (a, b, c) = tokio::join!(
        stager.stage(&record),
        clone.stage(&other_site),
        stager.stage(&record)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert!(Arc::ptr_eq(&a, &b));
    assert!(Arc::ptr_eq(&a, &c));
    let again = stager.stage(&record).await.unwrap();
    assert!(Arc::ptr_eq(&a, &again));
    assert!(Arc::ptr_eq(&stager.cached(&record.digest).unwrap(), &a));
}

#[tokio::test]
async fn restart_reuses_the_staged_copy() {
    let env = env();
    let page = html(2000);
    let big = noise(HOT_FILE_MAX as usize + 10, 4);
    let record = env
        .publish(
            &tar_gz(&[("index.html", &page), ("big.bin", &big)]),
            BundleFormat::TarGz,
        )
        .await;
    let first = env.stager().stage(&record).await.unwrap();
    // The repository loses the bundle: a restart must not need it.
    env.repo.delete(&record.digest.hex()).await.unwrap();
    let second = env.stager().stage(&record).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(first.root, second.root);
    assert_eq!(first.dirs, second.dirs);
    assert_eq!(first.files.len(), second.files.len());
    for (path, a) in &first.files {
        let b = file(&second, path);
        assert_eq!(a.etag, b.etag);
        assert_eq!(a.content_type, b.content_type);
        assert_eq!(a.last_modified, b.last_modified);
        assert_eq!(body_bytes(&a.body), body_bytes(&b.body));
        assert_eq!(
            a.gzip.as_ref().map(|v| body_bytes(&v.body)),
            b.gzip.as_ref().map(|v| body_bytes(&v.body))
        );
        assert_eq!(
            a.brotli.as_ref().map(|v| &v.etag),
            b.brotli.as_ref().map(|v| &v.etag)
        );
    }
    assert!(matches!(file(&second, "/big.bin").body, Body::Disk(_)));

    // An incomplete copy (no metadata) is discarded and fetched again.
    std::fs::remove_file(env.bundle_dir(&record).join("meta.json")).unwrap();
    let err = env.stager().stage(&record).await.unwrap_err();
    assert!(matches!(err, StageError::Fetch(_)), "{err}");
    assert!(!env.bundle_dir(&record).exists());
}

#[tokio::test]
async fn eviction_removes_unused_bundles() {
    let env = env();
    let stager = env.stager();
    let a = env
        .publish(&tar_gz(&[("index.html", b"a")]), BundleFormat::TarGz)
        .await;
    let b = env
        .publish(&tar_gz(&[("index.html", b"b")]), BundleFormat::TarGz)
        .await;
    let staged_a = stager.stage(&a).await.unwrap();
    stager.stage(&b).await.unwrap();
    assert!(env.bundle_dir(&b).exists());

    let keep: HashSet<Digest> = [a.digest].into();
    assert_eq!(stager.evict_except(&keep).await, 1);
    assert!(env.bundle_dir(&a).exists());
    assert!(!env.bundle_dir(&b).exists());
    assert!(stager.cached(&b.digest).is_none());
    assert!(Arc::ptr_eq(&stager.cached(&a.digest).unwrap(), &staged_a));
    // Nothing more to evict.
    assert_eq!(stager.evict_except(&keep).await, 0);

    // An evicted version stages again (a rollback that is no longer cached).
    let again = stager.stage(&b).await.unwrap();
    assert_eq!(body_bytes(&file(&again, "/index.html").body), b"b");
    assert_eq!(stager.evict_except(&HashSet::new()).await, 2);
    assert!(stager.cached(&a.digest).is_none());
}

#[tokio::test]
async fn signatures_are_checked() {
    let env = env();
    let (private_pem, public) = generate_ed25519_key().unwrap();
    let (other_pem, _) = generate_ed25519_key().unwrap();
    let bytes = tar_gz(&[("index.html", b"signed")]);
    let unsigned = env.publish(&bytes, BundleFormat::TarGz).await;
    let digest = sha256(&bytes);
    let mut signed = unsigned.clone();
    signed.signature = Some(encode_signature(
        &sign_bundle_digest(&private_pem, &digest).unwrap(),
    ));
    let mut wrong_key = unsigned.clone();
    wrong_key.signature = Some(encode_signature(
        &sign_bundle_digest(&other_pem, &digest).unwrap(),
    ));
    let mut garbage = unsigned.clone();
    garbage.signature = Some("not base64!".into());

    let required = env.stager_with(LimitsConfig::default(), Some(public), true);
    let err = required.stage(&unsigned).await.unwrap_err();
    assert!(matches!(err, StageError::Signature(_)), "{err}");
    assert!(err.to_string().contains("not signed"), "{err}");
    let err = required.stage(&wrong_key).await.unwrap_err();
    assert!(matches!(err, StageError::Signature(_)), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = required.stage(&garbage).await.unwrap_err();
    assert!(matches!(err, StageError::Signature(_)), "{err}");
    let bundle = required.stage(&signed).await.unwrap();
    assert_eq!(body_bytes(&file(&bundle, "/index.html").body), b"signed");
    // Checked on every call, even when the digest is already staged.
    let err = required.stage(&wrong_key).await.unwrap_err();
    assert!(matches!(err, StageError::Signature(_)), "{err}");

    // Optional mode: unsigned is accepted, a bad signature is still refused.
    let optional = env.stager_with(LimitsConfig::default(), Some(public), false);
    optional.stage(&unsigned).await.unwrap();
    let err = optional.stage(&wrong_key).await.unwrap_err();
    assert!(matches!(err, StageError::Signature(_)), "{err}");

    // Required without a key configured: refused.
    let no_key = env.stager_with(LimitsConfig::default(), None, true);
    let err = no_key.stage(&signed).await.unwrap_err();
    assert!(matches!(err, StageError::Signature(_)), "{err}");
}

#[tokio::test]
async fn failed_stage_leaves_staged_bundles_alone() {
    let env = env();
    let stager = env.stager();
    let good = env
        .publish(&tar_gz(&[("index.html", b"v1")]), BundleFormat::TarGz)
        .await;
    let v1 = stager.stage(&good).await.unwrap();
    let bad = env
        .publish(
            &raw_tar(b"x", tar::EntryType::Fifo, b""),
            BundleFormat::TarGz,
        )
        .await;
    let err = stager.stage(&bad).await.unwrap_err();
    assert!(
        matches!(
            err,
            StageError::Archive(ArchiveError::SpecialFile { kind: "fifo", .. })
        ),
        "{err}"
    );
    assert!(Arc::ptr_eq(&stager.stage(&good).await.unwrap(), &v1));
    assert_eq!(body_bytes(&file(&v1, "/index.html").body), b"v1");
    // Error messages name no host path.
    assert!(!err.to_string().contains(env.tmp.path().to_str().unwrap()));
}

/// `_redirects` and `_headers` are compiled at staging with the conventions in force, kept out
/// of the served files, and compiled again when a restarted edge loads the bundle from disk.
#[tokio::test]
async fn routing_files_are_compiled_and_never_served() {
    let env = env();
    let bytes = tar_gz(&[
        ("index.html", b"home"),
        ("assets/app-BkHx0aQ2.js", b"app()"),
        ("_redirects", b"/old /new 302\n/app/* /index.html 200\n"),
        ("_headers", b"/*\n  X-Frame-Options: DENY\n"),
    ]);
    let record = env.publish(&bytes, BundleFormat::TarGz).await;
    let staged = env.stager().stage(&record).await.unwrap();
    // A new stager (a restarted edge) gets the bundle again (from disk once sealed).
    let reloaded = env.stager().stage(&record).await.unwrap();
    for bundle in [&staged, &reloaded] {
        let mut keys: Vec<&str> = bundle.files.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["/assets/app-BkHx0aQ2.js", "/index.html"]);
        assert_eq!(bundle.rules.redirects.as_ref().unwrap().len(), 2);
        assert_eq!(bundle.rules.headers.as_ref().unwrap().len(), 1);
        let conventions = bundle.rules.conventions;
        assert!(conventions.not_found_page && conventions.pretty_urls);
        // The bundle has a content-hashed file, so HTML is revalidated.
        assert!(conventions.immutable_hashed && conventions.html_no_cache);
    }
}

/// A bad `_redirects` or `_headers` that reached the repository (control checks them at
/// upload, but the repository is not trusted) fails staging with the file and the line.
#[tokio::test]
async fn bad_routing_files_fail_staging_with_their_line() {
    let env = env();
    let stager = env.stager();
    for (file, text, expected) in [
        (
            "_redirects",
            "/a /b\n/c /d 299\n",
            "_redirects line 2: unsupported status 299",
        ),
        (
            "_headers",
            "/*\n  Upgrade: h2c\n",
            "_headers line 2: \"Upgrade\": hop-by-hop",
        ),
    ] {
        let bytes = tar_gz(&[("index.html", b"x"), (file, text.as_bytes())]);
        let record = env.publish(&bytes, BundleFormat::TarGz).await;
        let err = stager.stage(&record).await.unwrap_err();
        assert!(matches!(err, StageError::SiteFile(_)), "{err}");
        assert!(err.to_string().starts_with(expected), "{err}");
        assert!(stager.cached(&record.digest).is_none());
        assert!(!env.bundle_dir(&record).exists());
    }
}
