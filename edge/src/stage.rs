//! Staging: fetch an app bundle by digest, verify it (digest, optional Ed25519 signature),
//! unpack it safely and precompute every file's serving metadata, then move it into place.
//!
//! # Layout under `edge.dataDir`
//!
//! ```text
//! bundles/<hex>/root/...                  the unpacked files (StagedBundle::root)
//! bundles/<hex>/variants/gz/...          gzip variants, mirroring root/ (outside the served tree)
//! bundles/<hex>/variants/br/...          brotli variants, likewise
//! bundles/<hex>/meta.json                 per-file metadata; present only in a complete bundle
//! tmp/<hex>.<random>/                     work in progress: the download and the bundle being built
//! ```
//!
//! A bundle is built entirely under `tmp/` and renamed into `bundles/` as its last step, so a
//! bundle directory is either complete or absent; after a restart it is loaded from
//! `meta.json` without downloading it again. Bundles are shared by digest: two sites that
//! deploy the same digest share one download and one staged copy. A failed staging leaves
//! nothing behind and touches no other bundle, so the caller keeps serving what it had.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use statiko_common::archive::{self, ArchiveError, ArchiveLimits};
use statiko_common::config::LimitsConfig;
use statiko_common::crypto::{Sha256Hasher, hex, parse_digest, verify_bundle_signature};
use statiko_common::manifest::{MAX_MANIFEST_LEN, Manifest};
use statiko_common::model::AppRecord;
use statiko_common::repo::{BundleRepo, RepoError};

use crate::bundle::{Body, HOT_FILE_MAX, StagedBundle, StaticFile, Variant};

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
    /// One lock per digest, so one staging runs per digest at a time (single flight).
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
            }),
        }
    }

    /// Stages the bundle of `app`, or returns the staged copy of its digest. The signature is
    /// checked on every call, against the record and the current key.
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
        let _guard = flight.lock().await;
        if let Some(bundle) = self.cached(&hex_digest) {
            return Ok(bundle);
        }
        let bundle = match self.load(&hex_digest).await {
            Some(bundle) => bundle,
            None => Arc::new(self.fetch_and_stage(app, &hex_digest).await?),
        };
        self.cache().insert(hex_digest, bundle.clone());
        Ok(bundle)
    }

    /// The staged bundle of `digest` (`sha256:<hex>` or hex), if it is in memory.
    pub fn cached(&self, digest: &str) -> Option<Arc<StagedBundle>> {
        self.cache().get(&normalize_digest(digest)).cloned()
    }

    /// Removes every staged bundle whose digest (`sha256:<hex>` or hex) is not in `keep`, from
    /// memory and disk. A bundle being staged is left alone. Returns how many were removed
    /// from disk.
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
            // Staging in progress: leave it.
            let Ok(guard) = flight.try_lock_owned() else {
                continue;
            };
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
    /// unreadable is removed, to be staged again.
    async fn load(&self, hex_digest: &str) -> Option<Arc<StagedBundle>> {
        let dir = self.inner.bundles_dir.join(hex_digest);
        let digest = format!("sha256:{hex_digest}");
        let hex_digest = hex_digest.to_owned();
        let outcome = tokio::task::spawn_blocking(move || {
            if !dir.exists() {
                return None;
            }
            match load_bundle(&dir, &digest) {
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

    async fn fetch_and_stage(
        &self,
        app: &AppRecord,
        hex_digest: &str,
    ) -> Result<StagedBundle, StageError> {
        let max = self.inner.limits.max_bundle_size;
        if app.size > max {
            return Err(StageError::TooLarge {
                size: app.size,
                max,
            });
        }
        let tmp_dir = self.inner.tmp_dir.clone();
        let bundles_dir = self.inner.bundles_dir.clone();
        let prefix = format!("{hex_digest}.");
        let work = blocking(move || {
            std::fs::create_dir_all(&bundles_dir)
                .map_err(|e| StageError::io("creating the bundles directory", &e))?;
            std::fs::create_dir_all(&tmp_dir)
                .map_err(|e| StageError::io("creating the staging directory", &e))?;
            tempfile::Builder::new()
                .prefix(&prefix)
                .tempdir_in(&tmp_dir)
                .map(tempfile::TempDir::keep)
                .map_err(|e| StageError::io("creating the staging directory", &e))
        })
        .await?;
        let result = self.stage_in(app, hex_digest, &work).await;
        let cleanup = work.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(cleanup)).await;
        if let Ok(Err(e)) = removed
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %work.display(), "cannot remove staging directory");
        }
        match &result {
            Ok(bundle) => tracing::info!(
                app = %app.name,
                version = %app.version,
                digest = %hex_digest,
                files = bundle.files.len(),
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
        result
    }

    /// Downloads, verifies, unpacks and precomputes into `work`, then renames the result into
    /// `bundles/<hex>`.
    async fn stage_in(
        &self,
        app: &AppRecord,
        hex_digest: &str,
        work: &Path,
    ) -> Result<StagedBundle, StageError> {
        let archive_path = work.join("bundle.archive");
        let actual = self
            .inner
            .repo
            .download_to(hex_digest, &archive_path)
            .await
            .map_err(fetch_error)?;
        let actual = hex(&actual);
        if actual != hex_digest {
            return Err(StageError::DigestMismatch {
                expected: format!("sha256:{hex_digest}"),
                actual: format!("sha256:{actual}"),
            });
        }
        let limits = self.inner.limits.clone();
        let format = app.format;
        let staging = work.join("bundle");
        let final_dir = self.inner.bundles_dir.join(hex_digest);
        let digest = format!("sha256:{hex_digest}");
        blocking(move || {
            let size = std::fs::metadata(&archive_path)
                .map_err(|e| StageError::io("reading the download", &e))?
                .len();
            if size > limits.max_bundle_size {
                return Err(StageError::TooLarge {
                    size,
                    max: limits.max_bundle_size,
                });
            }
            let root = staging.join(ROOT_DIR);
            std::fs::create_dir_all(&root)
                .map_err(|e| StageError::io("creating the bundle directory", &e))?;
            archive::unpack(
                &archive_path,
                format,
                &root,
                &ArchiveLimits::from_config(&limits),
            )?;
            let _ = std::fs::remove_file(&archive_path);
            // The manifest is checked before the costly precompute, so a bad one fails fast.
            let manifest = read_manifest(&root)?;
            let meta = precompute(&staging, &digest)?;
            if let Some(manifest) = &manifest {
                check_manifest_files(manifest, &meta)?;
            }
            write_meta(&staging, &meta)?;
            match std::fs::remove_dir_all(&final_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StageError::io("replacing an incomplete bundle", &e)),
            }
            std::fs::rename(&staging, &final_dir)
                .map_err(|e| StageError::io("moving the bundle into place", &e))?;
            build_bundle(&final_dir, meta, manifest)
                .map_err(|e| StageError::io("loading the staged bundle", &e))
        })
        .await
    }
}

/// Runs blocking work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StageError> + Send + 'static,
) -> Result<T, StageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StageError::Io(format!("staging task failed: {e}")))?
}

fn fetch_error(err: RepoError) -> StageError {
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

fn write_meta(dir: &Path, meta: &BundleMeta) -> Result<(), StageError> {
    let json = serde_json::to_vec(meta)
        .map_err(|e| StageError::Io(format!("encoding the bundle metadata: {e}")))?;
    let write = || -> io::Result<()> {
        let mut file = File::create(dir.join(META_FILE))?;
        file.write_all(&json)?;
        file.sync_all()
    };
    write().map_err(|e| StageError::io("writing the bundle metadata", &e))
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
    build_bundle(dir, meta, manifest)
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
/// memory, the rest is served from disk.
fn build_bundle(
    dir: &Path,
    meta: BundleMeta,
    manifest: Option<Arc<Manifest>>,
) -> io::Result<StagedBundle> {
    let root = dir.join(ROOT_DIR);
    let variants = dir.join(VARIANTS_DIR);
    let mut files = HashMap::with_capacity(meta.files.len());
    for f in meta.files {
        let path = root.join(&f.path);
        let body = body_for(path, f.len)?;
        let variant = |v: Option<VariantMeta>, tree: &str| -> io::Result<Option<Variant>> {
            v.map(|v| {
                let path = variants.join(tree).join(&f.path);
                Ok(Variant {
                    len: v.len,
                    body: body_for(path, v.len)?,
                    etag: v.etag,
                })
            })
            .transpose()
        };
        let gzip = variant(f.gzip, GZIP_DIR)?;
        let brotli = variant(f.brotli, BROTLI_DIR)?;
        let file = StaticFile {
            len: f.len,
            body,
            content_type: f.content_type,
            etag: f.etag,
            last_modified: SystemTime::UNIX_EPOCH
                + Duration::new(f.mtime_secs, f.mtime_nanos.min(999_999_999)),
            gzip,
            brotli,
        };
        files.insert(format!("/{}", f.path), Arc::new(file));
    }
    let dirs = meta
        .dirs
        .into_iter()
        .map(|d| format!("/{d}"))
        .collect::<HashSet<_>>();
    Ok(StagedBundle {
        digest: meta.digest,
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

/// Walks `dir/root`, computing each file's metadata and writing compressed variants under
/// `dir/variants`.
fn precompute(dir: &Path, digest: &str) -> Result<BundleMeta, StageError> {
    let root = dir.join(ROOT_DIR);
    let variants = dir.join(VARIANTS_DIR);
    let mut meta = BundleMeta {
        version: META_VERSION,
        digest: digest.to_owned(),
        files: Vec::new(),
        dirs: vec![String::new()],
    };
    let mut pending = vec![String::new()];
    while let Some(rel_dir) = pending.pop() {
        let read = std::fs::read_dir(root.join(&rel_dir))
            .map_err(|e| StageError::io("listing the bundle", &e))?;
        for entry in read {
            let entry = entry.map_err(|e| StageError::io("listing the bundle", &e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let rel = if rel_dir.is_empty() {
                name
            } else {
                format!("{rel_dir}/{name}")
            };
            let file_type = entry
                .file_type()
                .map_err(|e| StageError::io("listing the bundle", &e))?;
            if file_type.is_dir() {
                meta.dirs.push(rel.clone());
                pending.push(rel);
            } else if file_type.is_file() {
                if rel == MANIFEST_FILE {
                    continue;
                }
                let file = precompute_file(&root, &variants, &rel)
                    .map_err(|e| StageError::Io(format!("precomputing {rel:?}: {e}")))?;
                meta.files.push(file);
            }
        }
    }
    meta.files.sort_by(|a, b| a.path.cmp(&b.path));
    meta.dirs.sort();
    Ok(meta)
}

/// Hashes one file and, when worth it, writes its gzip and brotli variants.
fn precompute_file(root: &Path, variants: &Path, rel: &str) -> io::Result<FileMeta> {
    let path = root.join(rel);
    let mut file = File::open(&path)?;
    let stat = file.metadata()?;
    let len = stat.len();
    let mtime = stat
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let content_type = content_type_for(rel);
    let compress = len >= MIN_COMPRESS_LEN && is_compressible(&content_type, rel);

    let gz_path = variants.join(GZIP_DIR).join(rel);
    let br_path = variants.join(BROTLI_DIR).join(rel);
    let mut encoders = if compress {
        for path in [&gz_path, &br_path] {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let gz = flate2::write::GzEncoder::new(
            BufWriter::new(File::create(&gz_path)?),
            flate2::Compression::new(GZIP_LEVEL),
        );
        let br = brotli::CompressorWriter::new(
            BufWriter::new(File::create(&br_path)?),
            CHUNK,
            BROTLI_QUALITY,
            BROTLI_WINDOW,
        );
        Some((gz, br))
    } else {
        None
    };
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut read_len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        read_len += n as u64;
        hasher.update(&buf[..n]);
        if let Some((gz, br)) = encoders.as_mut() {
            gz.write_all(&buf[..n])?;
            br.write_all(&buf[..n])?;
        }
    }
    if read_len != len {
        return Err(io::Error::other("file changed while staging"));
    }
    let tag = hex(&hasher.finish());
    let tag = &tag[..32];
    let etag = format!("\"{tag}\"");
    let (gzip, brotli) = match encoders {
        Some((gz, br)) => {
            gz.finish()?
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?;
            br.into_inner()
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?;
            (
                keep_variant(&gz_path, len, format!("\"{tag}-gz\""))?,
                keep_variant(&br_path, len, format!("\"{tag}-br\""))?,
            )
        }
        None => (None, None),
    };
    Ok(FileMeta {
        path: rel.to_owned(),
        len,
        content_type,
        etag,
        mtime_secs: mtime.as_secs(),
        mtime_nanos: mtime.subsec_nanos(),
        gzip,
        brotli,
    })
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
}
