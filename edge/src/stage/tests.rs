//! Unit tests of staging: the seal, loading, digest checks and precompression.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use statiko_common::crypto::hex;
use statiko_common::model::BundleFormat;

use super::content_type::is_compressible;
use super::fetch::{Build, Steps};
use super::precompress::{SAMPLE_LEN, compress_file, compresses};
use super::seal::lock_dir;
use super::*;

#[test]
fn base64_decodes() {
    assert_eq!(decode_signature("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(decode_signature("aGVsbG8").unwrap(), b"hello");
    assert_eq!(decode_signature("").unwrap(), b"");
    assert_eq!(decode_signature("+/8=").unwrap(), [0xfb, 0xff]);
    assert_eq!(decode_signature("-_8").unwrap(), [0xfb, 0xff]);
    assert!(decode_signature("a").is_none());
    assert!(decode_signature("aGVsbG9").is_none());
    assert!(decode_signature("a b").is_none());
}

#[test]
fn content_types() {
    assert_eq!(content_type_for("index.html"), "text/html; charset=utf-8");
    assert_eq!(
        content_type_for("a/app.js"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        content_type_for("x.json"),
        "application/json; charset=utf-8"
    );
    assert_eq!(content_type_for("i.svg"), "image/svg+xml; charset=utf-8");
    assert_eq!(content_type_for("p.png"), "image/png");
    assert_eq!(content_type_for("noext"), "application/octet-stream");
    assert!(is_compressible(&content_type_for("f.wasm"), "f.wasm"));
    assert!(is_compressible(&content_type_for("f.ttf"), "f.ttf"));
    assert!(is_compressible(
        &content_type_for("m.webmanifest"),
        "m.webmanifest"
    ));
    assert!(!is_compressible(&content_type_for("p.png"), "p.png"));
    assert!(!is_compressible(&content_type_for("f.woff2"), "f.woff2"));
}

/// A stager over a local repository in a temp dir.
struct Env {
    tmp: tempfile::TempDir,
    repo: BundleRepo,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = statiko_common::config::RepoConfig::default();
        config.local.path = tmp.path().join("repo");
        let repo = BundleRepo::from_config(&config).unwrap();
        Self { tmp, repo }
    }

    fn stager(&self) -> Stager {
        Stager::new(
            &self.tmp.path().join("data"),
            self.repo.clone(),
            LimitsConfig::default(),
            None,
            false,
        )
    }

    /// Stores `bytes` under the digest of `digest_of` (their own unless given).
    async fn publish(
        &self,
        bytes: &[u8],
        format: BundleFormat,
        digest_of: Option<&[u8]>,
    ) -> AppRecord {
        let digest = statiko_common::crypto::sha256(digest_of.unwrap_or(bytes));
        let path = self.tmp.path().join(format!("upload-{}", hex(&digest)));
        std::fs::write(&path, bytes).unwrap();
        self.repo.put_file(&hex(&digest), &path).await.unwrap();
        AppRecord {
            name: "app".into(),
            version: "1".into(),
            digest: statiko_common::crypto::Digest::from(digest),
            size: bytes.len() as u64,
            format,
            signature: None,
            created_at: 0,
        }
    }

    fn bundle_dir(&self, record: &AppRecord) -> PathBuf {
        self.tmp
            .path()
            .join("data/bundles")
            .join(record.digest.hex())
    }

    fn repo_object(&self, record: &AppRecord) -> PathBuf {
        let key = self.repo.object_key(&record.digest.hex()).unwrap();
        self.tmp.path().join("repo").join(key)
    }
}

fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_600_000_000);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        writer
            .start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Waits until no seal runs, as a stager on the same data dir would.
async fn sealed(stager: &Stager) {
    while !stager.sealing().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_bundle_is_durable_once_sealed() {
    let env = Env::new();
    let stager = env.stager();
    let page = b"<h1>sealed</h1>".repeat(100);
    let record = env
        .publish(
            &zstd::encode_all(&tar_of(&[("index.html", &page)])[..], 3).unwrap(),
            BundleFormat::TarZst,
            None,
        )
        .await;
    let bundle = stager.stage(&record).await.unwrap();
    // Served at once, from the final directory.
    assert_eq!(bundle.root, env.bundle_dir(&record).join(ROOT_DIR));
    sealed(&stager).await;
    let meta: BundleMeta =
        serde_json::from_slice(&std::fs::read(env.bundle_dir(&record).join(META_FILE)).unwrap())
            .unwrap();
    assert_eq!(meta.digest, record.digest);
    assert_eq!(meta.dirs, [""]);
    assert_eq!(meta.files.len(), 1);
    assert_eq!(meta.files[0].mtime_secs, 1_600_000_000);
    assert!(meta.files[0].gzip.is_some() && meta.files[0].brotli.is_some());
    // The bundle directory is unlocked once sealed.
    lock_dir(&env.bundle_dir(&record)).unwrap();
    // A bundle whose seal never ran (a crash) has no metadata: it is staged again.
    std::fs::remove_file(env.bundle_dir(&record).join(META_FILE)).unwrap();
    let again = env.stager().stage(&record).await.unwrap();
    assert_eq!(again.files.len(), 1);
}

#[tokio::test]
async fn loading_waits_for_a_seal_in_progress() {
    let env = Env::new();
    let record = env
        .publish(
            &zstd::encode_all(&tar_of(&[("a.txt", b"a")])[..], 3).unwrap(),
            BundleFormat::TarZst,
            None,
        )
        .await;
    let stager = env.stager();
    stager.stage(&record).await.unwrap();
    sealed(&stager).await;
    // Play a seal in progress: the lock held, the metadata not there yet.
    let dir = env.bundle_dir(&record);
    let meta = std::fs::read(dir.join(META_FILE)).unwrap();
    std::fs::remove_file(dir.join(META_FILE)).unwrap();
    let lock = lock_dir(&dir).unwrap();
    let other = env.stager();
    let loading = tokio::spawn(async move { other.stage(&record).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!loading.is_finished());
    std::fs::write(dir.join(META_FILE), meta).unwrap();
    drop(lock);
    let bundle = loading.await.unwrap().unwrap();
    assert!(bundle.files.contains_key("/a.txt"));
}

#[tokio::test]
async fn the_digest_is_checked_before_the_archive_is_judged() {
    let env = Env::new();
    // Garbage under someone else's digest: the wrong digest is what is reported.
    let record = env
        .publish(b"not an archive", BundleFormat::TarGz, Some(b"other"))
        .await;
    let err = env.stager().stage(&record).await.unwrap_err();
    assert!(matches!(err, StageError::DigestMismatch { .. }), "{err}");
    // With the right digest, it is an invalid archive.
    let record = env
        .publish(b"not an archive", BundleFormat::TarGz, None)
        .await;
    let err = env.stager().stage(&record).await.unwrap_err();
    assert!(matches!(err, StageError::Archive(_)), "{err}");
    // Bytes after the archive's end marker count in the digest too.
    let archive = zstd::encode_all(&tar_of(&[("a.txt", b"a")])[..], 3).unwrap();
    let mut longer = archive.clone();
    longer.extend_from_slice(&[0u8; 100]);
    let tail_env = Env::new();
    let record = tail_env
        .publish(&longer, BundleFormat::TarZst, Some(&archive))
        .await;
    let err = tail_env.stager().stage(&record).await.unwrap_err();
    assert!(matches!(err, StageError::DigestMismatch { .. }), "{err}");
    // Zip archives are spooled, then checked the same way.
    let zip = zip_of(&[("index.html", b"zip")]);
    let record = env.publish(&zip, BundleFormat::Zip, Some(b"other")).await;
    let err = env.stager().stage(&record).await.unwrap_err();
    assert!(matches!(err, StageError::DigestMismatch { .. }), "{err}");
    let record = env.publish(&zip, BundleFormat::Zip, None).await;
    let bundle = env.stager().stage(&record).await.unwrap();
    assert!(bundle.files.contains_key("/index.html"));
    assert!(
        std::fs::read_dir(env.tmp.path().join("data/tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test]
async fn a_broken_download_is_a_fetch_error() {
    let env = Env::new();
    let bytes = zstd::encode_all(&tar_of(&[("big.bin", &noise(300_000))])[..], 3).unwrap();
    let record = env.publish(&bytes, BundleFormat::TarZst, None).await;
    let stager = env.stager();
    let hex_digest = record.digest.hex();
    let reader = env.repo.open(&hex_digest).await.unwrap();
    // The object loses its tail after the repository announced its size.
    let object = std::fs::OpenOptions::new()
        .write(true)
        .open(env.repo_object(&record))
        .unwrap();
    object.set_len(bytes.len() as u64 / 2).unwrap();
    let build = Build {
        tmp_dir: stager.inner.tmp_dir.clone(),
        bundles_dir: stager.inner.bundles_dir.clone(),
        digest: record.digest,
        format: record.format,
        limits: LimitsConfig::default(),
    };
    let err = build.run(reader, &mut Steps::default()).err().unwrap();
    assert!(matches!(err, StageError::Fetch(_)), "{err}");
    assert!(err.to_string().contains("ended after"), "{err}");
    assert!(
        !err.to_string().contains(env.tmp.path().to_str().unwrap()),
        "{err}"
    );
    assert!(!env.bundle_dir(&record).exists());
    // The repository's size is checked against the limit before reading.
    let env = Env::new();
    let record = env.publish(&bytes, BundleFormat::TarZst, None).await;
    let reader = env.repo.open(&record.digest.hex()).await.unwrap();
    let build = Build {
        tmp_dir: env.tmp.path().join("tmp"),
        bundles_dir: env.tmp.path().join("bundles"),
        digest: record.digest,
        format: record.format,
        limits: LimitsConfig {
            max_bundle_size: 1000,
            ..LimitsConfig::default()
        },
    };
    let err = build.run(reader, &mut Steps::default()).err().unwrap();
    assert!(
        matches!(err, StageError::TooLarge { max: 1000, .. }),
        "{err}"
    );
}

#[test]
fn only_files_that_compress_get_variants() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join(ROOT_DIR);
    let variants = tmp.path().join(VARIANTS_DIR);
    std::fs::create_dir_all(&root).unwrap();
    // Random data named like text: the sample says no, nothing is written.
    let random = noise(200_000);
    std::fs::write(root.join("random.js"), &random).unwrap();
    let (gz, br) = compress_file(&root, &variants, "random.js", random.len() as u64, "t").unwrap();
    assert!(gz.is_none() && br.is_none());
    assert!(!variants.exists());
    // Text compresses, from the first byte to the last.
    let text = b"function f() { return 42; }\n".repeat(10_000);
    std::fs::write(root.join("app.js"), &text).unwrap();
    let (gz, br) = compress_file(&root, &variants, "app.js", text.len() as u64, "t").unwrap();
    let (gz, br) = (gz.unwrap(), br.unwrap());
    assert_eq!(gz.etag, "\"t-gz\"");
    assert_eq!(br.etag, "\"t-br\"");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(File::open(variants.join(GZIP_DIR).join("app.js")).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, text);
    assert_eq!(
        std::fs::metadata(variants.join(BROTLI_DIR).join("app.js"))
            .unwrap()
            .len(),
        br.len
    );
    // Text that is random past the sample still gets the 5% rule.
    let mut mixed = text[..SAMPLE_LEN].to_vec();
    mixed.extend(noise(2_000_000));
    std::fs::write(root.join("mixed.txt"), &mixed).unwrap();
    let (gz, br) = compress_file(&root, &variants, "mixed.txt", mixed.len() as u64, "t").unwrap();
    assert!(gz.is_none() && br.is_none());
    assert!(!variants.join(GZIP_DIR).join("mixed.txt").exists());
    assert!(compresses(&text[..1000]).unwrap());
    assert!(!compresses(&noise(SAMPLE_LEN)).unwrap());
}
