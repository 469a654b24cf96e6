//! Staging: fetch an app bundle by digest, verify it (digest, optional Ed25519 signature),
//! unpack it safely and precompute every file's serving metadata, then move it into place.
//!
//! # Layout under `edge.dataDir`
//!
//! ```text
//! bundles/<hex>/root/...                  the unpacked files (StagedBundle::root)
//! bundles/<hex>/variants/gz/...          gzip variants, mirroring root/ (outside the served tree)
//! bundles/<hex>/variants/br/...          brotli variants, likewise
//! bundles/<hex>/meta.json                 per-file metadata; present only in a durable bundle
//! tmp/<hex>.<random>/                     work in progress (a zip download, the bundle being built)
//! ```
//!
//! # One pass
//!
//! Everything CPU-bound runs in one blocking task, in one pass over the data: the bundle is
//! read from the repository as it comes (a local repository's file directly), hashed for its
//! digest, decompressed and unpacked, each file hashed for its ETag as it is written; nothing
//! is read back except to compress the files worth compressing (a sample of a large file
//! decides). A zip archive, whose directory is at its end, is spooled to `tmp/` first. The
//! archive is parsed before the digest is known, but only into `tmp/`, under every limit of
//! `common::archive`; a bundle whose digest does not match is thrown away unseen.
//!
//! # Crash safety
//!
//! A bundle is built under `tmp/` and renamed into `bundles/` once complete, then served at
//! once, from the page cache. Durability follows off the deploy's path ([`Seal`]): every file
//! and directory is synced, and only then `meta.json` is written and synced. So `meta.json`
//! marks a durable bundle: after a restart a bundle is loaded from it without downloading it
//! again, and a bundle without a valid one (a crash before its seal) is removed and staged
//! again. While its seal runs, a bundle directory is locked (`flock`), so a stager loading it
//! waits, and the digest's flight stays taken, so it is not evicted half-sealed.
//!
//! Bundles are shared by digest: two sites that deploy the same digest share one download and
//! one staged copy. A failed staging leaves nothing behind and touches no other bundle, so the
//! caller keeps serving what it had.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use statiko_common::archive::{self, ArchiveError, ArchiveLimits, Unpacked};
use statiko_common::config::LimitsConfig;
use statiko_common::crypto::{Sha256Hasher, hex, parse_digest, verify_bundle_signature};
use statiko_common::manifest::{MAX_MANIFEST_LEN, Manifest};
use statiko_common::model::{AppRecord, BundleFormat};
use statiko_common::repo::{BundleReader, BundleRepo, RepoError};
use tokio::sync::OwnedMutexGuard;

use crate::bundle::{
    Body, HOT_FILE_MAX, HeaderText, LastModified, StagedBundle, StaticFile, Variant,
};

/// The app manifest in the bundle root. It is never served.
pub const MANIFEST_FILE: &str = "_statiko.yaml";
/// Files smaller than this are not precompressed.
pub const MIN_COMPRESS_LEN: u64 = 512;
/// Variant trees under `variants/`. Mirroring `root/` (rather than `<file>.gz` side files)
/// means no file or directory name in a bundle can collide with a variant.
const GZIP_DIR: &str = "gz";
const BROTLI_DIR: &str = "br";
const META_FILE: &str = "meta.json";
const META_VERSION: u32 = 1;
const ROOT_DIR: &str = "root";
const VARIANTS_DIR: &str = "variants";
const GZIP_LEVEL: u32 = 6;
const BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW: u32 = 22;
const CHUNK: usize = 64 * 1024;
/// A file larger than this is compressed only when its first `SAMPLE_LEN` bytes compress.
const SAMPLE_LEN: usize = 64 * 1024;

/// Why a bundle could not be staged. Messages are short and user-facing (they are shown in
/// node status) and name no host path.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("invalid bundle digest {0:?}")]
    InvalidDigest(String),
    #[error("fetching the bundle: {0}")]
    Fetch(String),
    #[error("bundle is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error("bundle digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("bundle signature: {0}")]
    Signature(String),
    #[error("invalid bundle archive: {0}")]
    Archive(#[from] ArchiveError),
    /// `_statiko.yaml` is invalid; the message names the offending key, e.g.
    /// `rules[3].options.clientCaching: invalid duration "5x"`.
    #[error("invalid app manifest {MANIFEST_FILE}: {0}")]
    Manifest(String),
    #[error("staging the bundle: {0}")]
    Io(String),
}

impl StageError {
    fn io(action: &str, err: &io::Error) -> Self {
        // std's I/O errors carry no path.
        Self::Io(format!("{action}: {err}"))
    }
}

/// Stages bundles; cheap to clone, shared by every site.
#[derive(Clone)]
pub struct Stager {
    inner: Arc<Inner>,
}

struct Inner {
    bundles_dir: PathBuf,
    tmp_dir: PathBuf,
    repo: BundleRepo,
    limits: LimitsConfig,
    codesign_key: Option<[u8; 32]>,
    codesign_required: bool,
    /// Staged bundles by lowercase hex digest.
    cache: Mutex<HashMap<String, Arc<StagedBundle>>>,
    /// One lock per digest, so one staging runs per digest at a time (single flight). A
    /// bundle's seal keeps it until the bundle is durable.
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Digests whose seal is running.
    sealing: Mutex<HashSet<String>>,
}

impl fmt::Debug for Stager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stager")
            .field("bundles_dir", &self.inner.bundles_dir)
            .field("repo", &self.inner.repo)
            .field("codesign_required", &self.inner.codesign_required)
            .finish_non_exhaustive()
    }
}

/// Path of the app manifest of a staged bundle (it may not exist). The manifest is left out of
/// `StagedBundle::files`, so it is never served.
pub fn manifest_path(bundle: &StagedBundle) -> PathBuf {
    bundle.root.join(MANIFEST_FILE)
}

impl Stager {
    /// A stager keeping its bundles under `data_dir`. Leftovers of an interrupted staging (the
    /// `tmp/` directory) are removed.
    pub fn new(
        data_dir: &Path,
        repo: BundleRepo,
        limits: LimitsConfig,
        codesign_key: Option<[u8; 32]>,
        codesign_required: bool,
    ) -> Self {
        let tmp_dir = data_dir.join("tmp");
        if let Err(e) = std::fs::remove_dir_all(&tmp_dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %tmp_dir.display(), "cannot clean the staging directory");
        }
        Self {
            inner: Arc::new(Inner {
                bundles_dir: data_dir.join("bundles"),
                tmp_dir,
                repo,
                limits,
                codesign_key,
                codesign_required,
                cache: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                sealing: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Stages the bundle of `app`, or returns the staged copy of its digest. The signature is
    /// checked on every call, against the record and the current key. A new bundle is returned
    /// as soon as it can be served; it is made durable in the background.
    #[tracing::instrument(name = "stage", skip_all, fields(app = %app.app_ref(), digest = %app.digest))]
    pub async fn stage(&self, app: &AppRecord) -> Result<Arc<StagedBundle>, StageError> {
        let digest = parse_digest(&app.digest)
            .map_err(|_| StageError::InvalidDigest(app.digest.chars().take(80).collect()))?;
        let hex_digest = hex(&digest);
        self.check_signature(app, &digest)?;
        if let Some(bundle) = self.cached(&hex_digest) {
            return Ok(bundle);
        }
        let flight = self.flight(&hex_digest);
        let guard = flight.lock_owned().await;
        if let Some(bundle) = self.cached(&hex_digest) {
            return Ok(bundle);
        }
        if let Some(bundle) = self.load(&hex_digest).await {
            self.cache().insert(hex_digest, bundle.clone());
            return Ok(bundle);
        }
        let (bundle, seal) = self.fetch_and_stage(app, &hex_digest).await?;
        let bundle = Arc::new(bundle);
        self.cache().insert(hex_digest.clone(), bundle.clone());
        self.seal_in_background(hex_digest, seal, guard);
        Ok(bundle)
    }

    /// The staged bundle of `digest` (`sha256:<hex>` or hex), if it is in memory.
    pub fn cached(&self, digest: &str) -> Option<Arc<StagedBundle>> {
        self.cache().get(&normalize_digest(digest)).cloned()
    }

    /// Removes every staged bundle whose digest (`sha256:<hex>` or hex) is not in `keep`, from
    /// memory and disk. A bundle being staged is left alone; one being sealed is removed once
    /// its seal is done. Returns how many were removed from disk.
    pub async fn evict_except(&self, keep: &HashSet<String>) -> usize {
        let keep: HashSet<String> = keep.iter().map(|d| normalize_digest(d)).collect();
        self.cache().retain(|digest, _| keep.contains(digest));
        let bundles_dir = self.inner.bundles_dir.clone();
        let names = match tokio::task::spawn_blocking(move || list_dir_names(&bundles_dir)).await {
            Ok(Ok(names)) => names,
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => return 0,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot list staged bundles");
                return 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing staged bundles failed");
                return 0;
            }
        };
        let mut removed = 0;
        for name in names.into_iter().filter(|n| !keep.contains(n)) {
            let flight = self.flight(&name);
            let guard = if self.sealing().contains(&name) {
                // Sealing takes moments: wait, rather than leave the bundle behind.
                flight.lock_owned().await
            } else {
                // Staging in progress: leave it.
                let Ok(guard) = flight.try_lock_owned() else {
                    continue;
                };
                guard
            };
            // Staged again meanwhile: a deploy wants it after all.
            if self.cached(&name).is_some() {
                continue;
            }
            let dir = self.inner.bundles_dir.join(&name);
            let outcome = tokio::task::spawn_blocking(move || {
                let result = std::fs::remove_dir_all(&dir);
                drop(guard);
                result
            })
            .await;
            match outcome {
                Ok(Ok(())) => {
                    removed += 1;
                    tracing::info!(digest = %name, "evicted unused bundle");
                }
                Ok(Err(e)) => tracing::warn!(digest = %name, error = %e, "cannot evict bundle"),
                Err(e) => tracing::warn!(digest = %name, error = %e, "evicting bundle failed"),
            }
        }
        removed
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<String, Arc<StagedBundle>>> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sealing(&self) -> MutexGuard<'_, HashSet<String>> {
        self.inner
            .sealing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.inner
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn flight(&self, hex_digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.flights()
            .entry(hex_digest.to_owned())
            .or_default()
            .clone()
    }

    fn check_signature(&self, app: &AppRecord, digest: &[u8; 32]) -> Result<(), StageError> {
        let required = self.inner.codesign_required;
        let Some(key) = &self.inner.codesign_key else {
            if required {
                return Err(StageError::Signature(
                    "signatures are required but no public key is configured".into(),
                ));
            }
            return Ok(());
        };
        let Some(signature) = app.signature.as_deref().filter(|s| !s.trim().is_empty()) else {
            if required {
                return Err(StageError::Signature(
                    "the bundle is not signed and signatures are required".into(),
                ));
            }
            tracing::debug!(app = %app.name, version = %app.version, "bundle is not signed");
            return Ok(());
        };
        let signature = decode_base64(signature)
            .ok_or_else(|| StageError::Signature("the signature is not valid base64".into()))?;
        verify_bundle_signature(key, digest, &signature).map_err(|_| {
            StageError::Signature("the signature does not match the configured public key".into())
        })
    }

    /// Loads a complete bundle left on disk (after a restart). Anything incomplete or
    /// unreadable is removed, to be staged again. A bundle still being sealed (by another
    /// stager) is waited for.
    async fn load(&self, hex_digest: &str) -> Option<Arc<StagedBundle>> {
        let dir = self.inner.bundles_dir.join(hex_digest);
        let digest = format!("sha256:{hex_digest}");
        let hex_digest = hex_digest.to_owned();
        let outcome = tokio::task::spawn_blocking(move || {
            if !dir.exists() {
                return None;
            }
            let loaded = lock_dir(&dir).and_then(|_lock| load_bundle(&dir, &digest));
            match loaded {
                Ok(bundle) => Some(bundle),
                Err(e) => {
                    tracing::warn!(digest = %hex_digest, error = %e, "discarding incomplete staged bundle");
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(digest = %hex_digest, error = %e, "cannot remove staged bundle");
                    }
                    None
                }
            }
        })
        .await;
        outcome.ok().flatten().map(Arc::new)
    }

    /// Fetches, verifies, unpacks and precomputes the bundle and moves it into place; returns
    /// it with the work that makes it durable.
    async fn fetch_and_stage(
        &self,
        app: &AppRecord,
        hex_digest: &str,
    ) -> Result<(StagedBundle, Seal), StageError> {
        let started = Instant::now();
        let result = self.build(app, hex_digest, started).await;
        match &result {
            Ok((bundle, _, steps)) => tracing::info!(
                app = %app.name,
                version = %app.version,
                digest = %hex_digest,
                files = bundle.files.len(),
                open_ms = millis(steps.open),
                queued_ms = millis(steps.queued),
                unpack_ms = millis(steps.unpack),
                verify_ms = millis(steps.verify),
                variants_ms = millis(steps.variants),
                load_ms = millis(steps.load),
                total_ms = millis(started.elapsed()),
                "bundle staged"
            ),
            Err(e) => tracing::warn!(
                app = %app.name,
                version = %app.version,
                digest = %hex_digest,
                error = %e,
                "staging failed"
            ),
        }
        result.map(|(bundle, seal, _)| (bundle, seal))
    }

    async fn build(
        &self,
        app: &AppRecord,
        hex_digest: &str,
        started: Instant,
    ) -> Result<(StagedBundle, Seal, Steps), StageError> {
        let max = self.inner.limits.max_bundle_size;
        if app.size > max {
            return Err(StageError::TooLarge {
                size: app.size,
                max,
            });
        }
        let reader = self
            .inner
            .repo
            .open(hex_digest)
            .await
            .map_err(|e| fetch_error(&e))?;
        let build = Build {
            tmp_dir: self.inner.tmp_dir.clone(),
            bundles_dir: self.inner.bundles_dir.clone(),
            hex_digest: hex_digest.to_owned(),
            format: app.format,
            limits: self.inner.limits.clone(),
        };
        let mut steps = Steps {
            open: started.elapsed(),
            ..Steps::default()
        };
        let submitted = Instant::now();
        blocking(move || {
            steps.queued = submitted.elapsed();
            let (bundle, seal) = build.run(reader, &mut steps)?;
            Ok((bundle, seal, steps))
        })
        .await
    }

    /// Makes a staged bundle durable off the deploy's path, holding its flight (`guard`) so it
    /// is neither evicted nor staged again meanwhile.
    fn seal_in_background(&self, hex_digest: String, seal: Seal, guard: OwnedMutexGuard<()>) {
        self.sealing().insert(hex_digest.clone());
        let stager = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            match seal.run() {
                Ok(()) => tracing::info!(
                    digest = %hex_digest,
                    files = seal.meta.files.len(),
                    sync_ms = millis(started.elapsed()),
                    "bundle sealed"
                ),
                // It is served all the same; after a restart it is staged again.
                Err(e) => {
                    tracing::warn!(digest = %hex_digest, error = %e, "cannot make the staged bundle durable")
                }
            }
            drop(seal);
            drop(guard);
            stager.sealing().remove(&hex_digest);
        });
    }
}

/// How long each staging step took (logged with `bundle staged`).
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    /// Asking the repository for the bundle.
    open: Duration,
    /// Waiting for a blocking thread.
    queued: Duration,
    /// Reading, hashing, decompressing and unpacking it, hashing each file.
    unpack: Duration,
    /// Reading what the archive left unread, comparing the digest.
    verify: Duration,
    /// Compressing the files worth it.
    variants: Duration,
    /// Moving into place and building the in-memory bundle.
    load: Duration,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The blocking part of a staging: everything after the repository answered.
struct Build {
    tmp_dir: PathBuf,
    bundles_dir: PathBuf,
    hex_digest: String,
    format: BundleFormat,
    limits: LimitsConfig,
}

impl Build {
    /// Unpacks and precomputes into a fresh directory under `tmp/`, then renames the result into
    /// `bundles/<hex>`. The work directory is removed whatever happens.
    fn run(
        self,
        reader: BundleReader,
        steps: &mut Steps,
    ) -> Result<(StagedBundle, Seal), StageError> {
        let max = self.limits.max_bundle_size;
        if reader.size() > max {
            return Err(StageError::TooLarge {
                size: reader.size(),
                max,
            });
        }
        std::fs::create_dir_all(&self.bundles_dir)
            .map_err(|e| StageError::io("creating the bundles directory", &e))?;
        std::fs::create_dir_all(&self.tmp_dir)
            .map_err(|e| StageError::io("creating the staging directory", &e))?;
        let work = tempfile::Builder::new()
            .prefix(&format!("{}.", self.hex_digest))
            .tempdir_in(&self.tmp_dir)
            .map_err(|e| StageError::io("creating the staging directory", &e))?;
        let result = self.build_in(reader, work.path(), steps);
        let work_path = work.path().to_owned();
        if let Err(e) = work.close()
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %work_path.display(), "cannot remove staging directory");
        }
        result
    }

    fn build_in(
        &self,
        reader: BundleReader,
        work: &Path,
        steps: &mut Steps,
    ) -> Result<(StagedBundle, Seal), StageError> {
        let staging = work.join("bundle");
        let root = staging.join(ROOT_DIR);
        std::fs::create_dir_all(&root)
            .map_err(|e| StageError::io("creating the bundle directory", &e))?;
        let unpacked = self.unpack(reader, work, &root, steps)?;
        // The manifest is checked before the costly compression, so a bad one fails fast.
        let manifest = read_manifest(&root)?;
        let started = Instant::now();
        let meta = precompute(&staging, &format!("sha256:{}", self.hex_digest), unpacked)?;
        if let Some(manifest) = &manifest {
            check_manifest_files(manifest, &meta)?;
        }
        steps.variants = started.elapsed();

        let started = Instant::now();
        // Locked until sealed; the lock follows the directory through the rename.
        let lock = lock_dir(&staging).map_err(|e| StageError::io("locking the bundle", &e))?;
        let final_dir = self.bundles_dir.join(&self.hex_digest);
        match std::fs::remove_dir_all(&final_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StageError::io("replacing an incomplete bundle", &e)),
        }
        std::fs::rename(&staging, &final_dir)
            .map_err(|e| StageError::io("moving the bundle into place", &e))?;
        let bundle = match build_bundle(&final_dir, &meta, manifest) {
            Ok(bundle) => bundle,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&final_dir);
                return Err(StageError::io("loading the staged bundle", &e));
            }
        };
        steps.load = started.elapsed();
        let seal = Seal {
            dir: final_dir,
            bundles_dir: self.bundles_dir.clone(),
            meta,
            _lock: lock,
        };
        Ok((bundle, seal))
    }

    /// Reads the bundle, checks its digest and unpacks it into `root`, in one pass for tar
    /// formats.
    fn unpack(
        &self,
        reader: BundleReader,
        work: &Path,
        root: &Path,
        steps: &mut Steps,
    ) -> Result<Unpacked, StageError> {
        let limits = ArchiveLimits::from_config(&self.limits);
        let mut download = Download::new(reader);
        let started = Instant::now();
        if self.format == BundleFormat::Zip {
            // A zip's directory is at its end: spool it to disk first, hashing it on the way.
            let path = work.join("bundle.zip");
            let spooled = File::create(&path).and_then(|file| {
                io::copy(&mut download, &mut BufWriter::with_capacity(CHUNK, file))
            });
            download.check_read()?;
            spooled.map_err(|e| StageError::io("saving the download", &e))?;
            steps.unpack = started.elapsed();
            let verified = Instant::now();
            download.check_digest(&self.hex_digest)?;
            steps.verify = verified.elapsed();
            let started = Instant::now();
            let unpacked = archive::unpack_file(&path, self.format, root, &limits);
            let _ = std::fs::remove_file(&path);
            steps.unpack += started.elapsed();
            return Ok(unpacked?);
        }
        let unpacked = archive::unpack_stream(&mut download, self.format, root, &limits);
        steps.unpack = started.elapsed();
        let started = Instant::now();
        // The digest covers the whole object, whatever the archive left unread. A read error
        // is kept by `download`.
        let _ = io::copy(&mut download, &mut io::sink());
        // A failed download or a wrong digest explains a broken archive, so they come first.
        download.check_read()?;
        download.check_digest(&self.hex_digest)?;
        steps.verify = started.elapsed();
        Ok(unpacked?)
    }
}

/// The bundle as it is read: hashed on the way, with the first read error kept (the unpacker
/// would report it as a broken archive; it is a failed download).
struct Download {
    reader: BundleReader,
    hasher: Sha256Hasher,
    failure: Option<StageError>,
}

impl Download {
    fn new(reader: BundleReader) -> Self {
        Self {
            reader,
            hasher: Sha256Hasher::new(),
            failure: None,
        }
    }

    fn check_read(&mut self) -> Result<(), StageError> {
        self.failure.take().map_or(Ok(()), Err)
    }

    fn check_digest(self, hex_digest: &str) -> Result<(), StageError> {
        let actual = hex(&self.hasher.finish());
        if actual != hex_digest {
            return Err(StageError::DigestMismatch {
                expected: format!("sha256:{hex_digest}"),
                actual: format!("sha256:{actual}"),
            });
        }
        Ok(())
    }
}

impl io::Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.reader.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                if self.failure.is_none() {
                    self.failure = Some(match BundleReader::repo_error(&e) {
                        Some(repo) => fetch_error(repo),
                        None => StageError::Fetch(format!("reading the download: {e}")),
                    });
                }
                Err(e)
            }
        }
    }
}

/// What makes a staged (and already served) bundle durable: every file and directory synced,
/// then `meta.json` written and synced last, so that `meta.json` marks a bundle whose data is
/// on disk. The bundle directory stays locked until the seal is dropped.
struct Seal {
    dir: PathBuf,
    bundles_dir: PathBuf,
    meta: BundleMeta,
    _lock: File,
}

impl Seal {
    fn run(&self) -> io::Result<()> {
        let root = self.dir.join(ROOT_DIR);
        let variants = self.dir.join(VARIANTS_DIR);
        for file in &self.meta.files {
            sync_file(&root.join(&file.path))?;
            if file.gzip.is_some() {
                sync_file(&variants.join(GZIP_DIR).join(&file.path))?;
            }
            if file.brotli.is_some() {
                sync_file(&variants.join(BROTLI_DIR).join(&file.path))?;
            }
        }
        match sync_file(&root.join(MANIFEST_FILE)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
        for dir in &self.meta.dirs {
            sync_dir(&root.join(dir))?;
            for tree in [GZIP_DIR, BROTLI_DIR] {
                // Variant trees only have the directories that hold a variant.
                match sync_dir(&variants.join(tree).join(dir)) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
        }
        match sync_dir(&variants) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
        write_meta(&self.dir, &self.meta)?;
        sync_dir(&self.dir)?;
        sync_dir(&self.bundles_dir)
    }
}

fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_data()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Opens `dir` and takes its exclusive lock, waiting for a holder (a seal in progress).
fn lock_dir(dir: &Path) -> io::Result<File> {
    let file = File::open(dir)?;
    file.lock()?;
    Ok(file)
}

/// Runs blocking work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StageError> + Send + 'static,
) -> Result<T, StageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StageError::Io(format!("staging task failed: {e}")))?
}

fn fetch_error(err: &RepoError) -> StageError {
    match err {
        // Its path is on this host: keep only the action and the cause.
        RepoError::Io { action, source, .. } => {
            StageError::Fetch(format!("{action} the download: {source}"))
        }
        other => StageError::Fetch(other.to_string()),
    }
}

fn normalize_digest(digest: &str) -> String {
    let digest = digest.trim();
    digest
        .strip_prefix("sha256:")
        .unwrap_or(digest)
        .to_ascii_lowercase()
}

fn list_dir_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        if let Some(name) = entry?.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// `meta.json`: what a restart needs to rebuild the `StagedBundle` without reading every file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BundleMeta {
    version: u32,
    digest: String,
    files: Vec<FileMeta>,
    /// Relative directory paths (`""` for the root).
    dirs: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileMeta {
    /// Relative path under `root/`, `/`-separated.
    path: String,
    len: u64,
    content_type: String,
    etag: String,
    mtime_secs: u64,
    mtime_nanos: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gzip: Option<VariantMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    brotli: Option<VariantMeta>,
}

#[derive(Debug, Serialize, Deserialize)]
struct VariantMeta {
    len: u64,
    etag: String,
}

fn write_meta(dir: &Path, meta: &BundleMeta) -> io::Result<()> {
    let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let mut file = File::create(dir.join(META_FILE))?;
    file.write_all(&json)?;
    file.sync_all()
}

fn load_bundle(dir: &Path, digest: &str) -> io::Result<StagedBundle> {
    let json = std::fs::read(dir.join(META_FILE))?;
    let meta: BundleMeta = serde_json::from_slice(&json).map_err(io::Error::other)?;
    if meta.version != META_VERSION || meta.digest != digest {
        return Err(io::Error::other(
            "bundle metadata of another version or digest",
        ));
    }
    // A manifest this version refuses makes the bundle unusable: it is staged again, and the
    // staging reports why.
    let manifest =
        read_manifest(&dir.join(ROOT_DIR)).map_err(|e| io::Error::other(e.to_string()))?;
    if let Some(manifest) = &manifest {
        check_manifest_files(manifest, &meta).map_err(|e| io::Error::other(e.to_string()))?;
    }
    build_bundle(dir, &meta, manifest)
}

/// Reads and compiles `root/_statiko.yaml`, if there is one.
fn read_manifest(root: &Path) -> Result<Option<Arc<Manifest>>, StageError> {
    let path = root.join(MANIFEST_FILE);
    let stat = match std::fs::symlink_metadata(&path) {
        Ok(stat) => stat,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StageError::io("reading the app manifest", &e)),
    };
    if !stat.is_file() {
        return Err(StageError::Manifest("it is not a file".into()));
    }
    if stat.len() > MAX_MANIFEST_LEN as u64 {
        return Err(StageError::Manifest(format!(
            "it is {} bytes, over the {MAX_MANIFEST_LEN}-byte limit",
            stat.len()
        )));
    }
    let bytes = std::fs::read(&path).map_err(|e| StageError::io("reading the app manifest", &e))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| StageError::Manifest("it is not valid UTF-8".into()))?;
    let manifest = Manifest::parse(&text).map_err(|e| StageError::Manifest(e.to_string()))?;
    Ok(Some(Arc::new(manifest)))
}

/// The files a manifest names must be in the bundle: the error pages, and `index.html` for
/// the single-page-app fallback.
fn check_manifest_files(manifest: &Manifest, meta: &BundleMeta) -> Result<(), StageError> {
    let exists = |url_path: &str| {
        let rel = url_path.trim_start_matches('/');
        meta.files
            .binary_search_by(|file| file.path.as_str().cmp(rel))
            .is_ok()
    };
    for (key, page) in [
        ("page404", manifest.page404()),
        ("page403", manifest.page403()),
    ] {
        if let Some(page) = page
            && !exists(page)
        {
            return Err(StageError::Manifest(format!(
                "{key}: {page:?} is not in the bundle"
            )));
        }
    }
    if manifest.spa() && !exists("/index.html") {
        return Err(StageError::Manifest(
            "spa: the bundle has no index.html to fall back to".into(),
        ));
    }
    Ok(())
}

/// The in-memory bundle for a complete bundle directory: hot files and variants are read into
/// memory, the rest is served from disk. Header values are built here, once; files of one
/// content type share its value.
fn build_bundle(
    dir: &Path,
    meta: &BundleMeta,
    manifest: Option<Arc<Manifest>>,
) -> io::Result<StagedBundle> {
    let root = dir.join(ROOT_DIR);
    let variants = dir.join(VARIANTS_DIR);
    let header = |text: &str| HeaderText::new(text).map_err(io::Error::other);
    let mut content_types: HashMap<&str, HeaderText> = HashMap::new();
    let mut files = HashMap::with_capacity(meta.files.len());
    for f in &meta.files {
        let path = root.join(&f.path);
        let body = body_for(path, f.len)?;
        let variant = |v: &Option<VariantMeta>, tree: &str| -> io::Result<Option<Variant>> {
            v.as_ref()
                .map(|v| {
                    let path = variants.join(tree).join(&f.path);
                    Ok(Variant {
                        len: v.len,
                        body: body_for(path, v.len)?,
                        etag: header(&v.etag)?,
                    })
                })
                .transpose()
        };
        let gzip = variant(&f.gzip, GZIP_DIR)?;
        let brotli = variant(&f.brotli, BROTLI_DIR)?;
        let content_type = match content_types.get(f.content_type.as_str()) {
            Some(value) => value.clone(),
            None => {
                let value = header(&f.content_type)?;
                content_types.insert(&f.content_type, value.clone());
                value
            }
        };
        let file = StaticFile {
            len: f.len,
            body,
            content_type,
            etag: header(&f.etag)?,
            last_modified: LastModified::new(
                SystemTime::UNIX_EPOCH
                    + Duration::new(f.mtime_secs, f.mtime_nanos.min(999_999_999)),
            ),
            gzip,
            brotli,
        };
        files.insert(format!("/{}", f.path), Arc::new(file));
    }
    let dirs = meta
        .dirs
        .iter()
        .map(|d| format!("/{d}"))
        .collect::<HashSet<_>>();
    Ok(StagedBundle {
        digest: meta.digest.clone(),
        root,
        files,
        dirs,
        manifest,
    })
}

/// A body for a file of `len` bytes: in memory when small, else the path. The size on disk
/// must match, so a damaged copy is noticed.
fn body_for(path: PathBuf, len: u64) -> io::Result<Body> {
    if len <= HOT_FILE_MAX {
        let bytes = std::fs::read(&path)?;
        if bytes.len() as u64 != len {
            return Err(io::Error::other("staged file changed size"));
        }
        Ok(Body::Memory(Bytes::from(bytes)))
    } else {
        if std::fs::metadata(&path)?.len() != len {
            return Err(io::Error::other("staged file changed size"));
        }
        Ok(Body::Disk(path))
    }
}

/// Each unpacked file's metadata (its hash was taken while unpacking), and compressed variants
/// under `dir/variants` for the files worth compressing.
fn precompute(dir: &Path, digest: &str, unpacked: Unpacked) -> Result<BundleMeta, StageError> {
    let root = dir.join(ROOT_DIR);
    let variants = dir.join(VARIANTS_DIR);
    let mut files = Vec::with_capacity(unpacked.files.len());
    for file in unpacked.files {
        if file.path == MANIFEST_FILE {
            continue;
        }
        let content_type = content_type_for(&file.path);
        let tag = hex(&file.sha256);
        let tag = &tag[..32];
        let (gzip, brotli) =
            if file.len >= MIN_COMPRESS_LEN && is_compressible(&content_type, &file.path) {
                compress_file(&root, &variants, &file.path, file.len, tag)
                    .map_err(|e| StageError::Io(format!("precomputing {:?}: {e}", file.path)))?
            } else {
                (None, None)
            };
        let mtime = file
            .mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        files.push(FileMeta {
            path: file.path,
            len: file.len,
            content_type,
            etag: format!("\"{tag}\""),
            mtime_secs: mtime.as_secs(),
            mtime_nanos: mtime.subsec_nanos(),
            gzip,
            brotli,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut dirs = unpacked.dirs;
    dirs.push(String::new());
    dirs.sort();
    Ok(BundleMeta {
        version: META_VERSION,
        digest: digest.to_owned(),
        files,
        dirs,
    })
}

/// Writes the gzip and brotli variants of one file, reading it once, and keeps those that pay
/// off. A large file whose first [`SAMPLE_LEN`] bytes do not compress is left alone: media,
/// archives and random data would cost a full pass for nothing.
fn compress_file(
    root: &Path,
    variants: &Path,
    rel: &str,
    len: u64,
    tag: &str,
) -> io::Result<(Option<VariantMeta>, Option<VariantMeta>)> {
    let mut file = File::open(root.join(rel))?;
    let mut buf = vec![0u8; CHUNK.max(SAMPLE_LEN)];
    if len > SAMPLE_LEN as u64 {
        file.read_exact(&mut buf[..SAMPLE_LEN])?;
        if !compresses(&buf[..SAMPLE_LEN])? {
            return Ok((None, None));
        }
        file.rewind()?;
    }
    let gz_path = variants.join(GZIP_DIR).join(rel);
    let br_path = variants.join(BROTLI_DIR).join(rel);
    for path in [&gz_path, &br_path] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let mut gz = flate2::write::GzEncoder::new(
        BufWriter::new(File::create(&gz_path)?),
        flate2::Compression::new(GZIP_LEVEL),
    );
    let mut br = brotli::CompressorWriter::new(
        BufWriter::new(File::create(&br_path)?),
        CHUNK,
        BROTLI_QUALITY,
        BROTLI_WINDOW,
    );
    let mut read_len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        read_len += n as u64;
        gz.write_all(&buf[..n])?;
        br.write_all(&buf[..n])?;
    }
    if read_len != len {
        return Err(io::Error::other("file changed while staging"));
    }
    // Synced by the bundle's seal, with everything else.
    gz.finish()?.flush()?;
    br.into_inner().flush()?;
    Ok((
        keep_variant(&gz_path, len, format!("\"{tag}-gz\""))?,
        keep_variant(&br_path, len, format!("\"{tag}-br\""))?,
    ))
}

/// Whether a fast gzip pass makes `sample` at least 5% smaller (the bar a variant must clear).
fn compresses(sample: &[u8]) -> io::Result<bool> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(sample.len()),
        flate2::Compression::fast(),
    );
    gz.write_all(sample)?;
    let out = gz.finish()?;
    Ok(out.len() * 100 <= sample.len() * 95)
}

/// Keeps a variant only when it is at least 5% smaller than the original.
fn keep_variant(path: &Path, original: u64, etag: String) -> io::Result<Option<VariantMeta>> {
    let len = std::fs::metadata(path)?.len();
    if len.saturating_mul(100) <= original.saturating_mul(95) {
        Ok(Some(VariantMeta { len, etag }))
    } else {
        std::fs::remove_file(path)?;
        Ok(None)
    }
}

/// `Content-Type` for a path, with `; charset=utf-8` for text types.
pub fn content_type_for(path: &str) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    let text = mime.type_() == mime_guess::mime::TEXT
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "image/svg+xml"
                | "application/manifest+json"
                | "application/ld+json"
                | "application/xhtml+xml"
                | "application/rss+xml"
                | "application/atom+xml"
        );
    if text {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    }
}

/// Whether precompressing a file of this type pays off.
fn is_compressible(content_type: &str, path: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or(content_type)
        .trim();
    if essence.starts_with("text/") || essence.ends_with("+json") || essence.ends_with("+xml") {
        return true;
    }
    if matches!(
        essence,
        "application/javascript"
            | "application/x-javascript"
            | "application/json"
            | "application/xml"
            | "application/wasm"
            | "application/vnd.ms-fontobject"
            | "application/font-sfnt"
            | "application/x-font-ttf"
            | "application/x-font-otf"
            | "font/ttf"
            | "font/otf"
            | "image/x-icon"
            | "image/vnd.microsoft.icon"
            | "image/bmp"
    ) {
        return true;
    }
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    matches!(
        ext.as_deref(),
        Some("ttf" | "otf" | "eot" | "wasm" | "webmanifest" | "map")
    )
}

/// Decodes standard or URL-safe base64, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let trimmed = text.trim().trim_end_matches('=');
    for c in trimmed.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be padding zeros, and one leftover character is never valid.
    if bits >= 6 || acc != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("+/8=").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode_base64("-_8").unwrap(), [0xfb, 0xff]);
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("aGVsbG9").is_none());
        assert!(decode_base64("a b").is_none());
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
                digest: statiko_common::crypto::format_digest(&digest),
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
                .join(record.digest.trim_start_matches("sha256:"))
        }

        fn repo_object(&self, record: &AppRecord) -> PathBuf {
            let key = self
                .repo
                .object_key(record.digest.trim_start_matches("sha256:"))
                .unwrap();
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
        let meta: BundleMeta = serde_json::from_slice(
            &std::fs::read(env.bundle_dir(&record).join(META_FILE)).unwrap(),
        )
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
        let hex_digest = record.digest.trim_start_matches("sha256:").to_owned();
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
            hex_digest,
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
        let reader = env
            .repo
            .open(record.digest.trim_start_matches("sha256:"))
            .await
            .unwrap();
        let build = Build {
            tmp_dir: env.tmp.path().join("tmp"),
            bundles_dir: env.tmp.path().join("bundles"),
            hex_digest: record.digest.trim_start_matches("sha256:").to_owned(),
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
        let (gz, br) =
            compress_file(&root, &variants, "random.js", random.len() as u64, "t").unwrap();
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
        let (gz, br) =
            compress_file(&root, &variants, "mixed.txt", mixed.len() as u64, "t").unwrap();
        assert!(gz.is_none() && br.is_none());
        assert!(!variants.join(GZIP_DIR).join("mixed.txt").exists());
        assert!(compresses(&text[..1000]).unwrap());
        assert!(!compresses(&noise(SAMPLE_LEN)).unwrap());
    }
}
