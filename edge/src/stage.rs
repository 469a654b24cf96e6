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
//! once, from the page cache. Durability follows off the deploy's path (`seal.rs`): every file
//! and directory is synced, and only then `meta.json` is written and synced. So `meta.json`
//! marks a durable bundle: after a restart a bundle is loaded from it without downloading it
//! again, and a bundle without a valid one (a crash before its seal) is removed and staged
//! again. While its seal runs, a bundle directory is locked (`flock`), so a stager loading it
//! waits, and the digest's flight stays taken, so it is not evicted half-sealed.
//!
//! Bundles are shared by digest: two sites that deploy the same digest share one download and
//! one staged copy. A failed staging leaves nothing behind and touches no other bundle, so the
//! caller keeps serving what it had.

mod cache;
mod content_type;
mod fetch;
mod meta;
mod precompress;
mod seal;
mod site_files;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use statiko_common::archive::ArchiveError;
use statiko_common::config::LimitsConfig;
use statiko_common::crypto::{Digest, decode_signature, verify_bundle_signature};
pub use statiko_common::manifest::MANIFEST_FILE;
use statiko_common::manifest::{MAX_MANIFEST_LEN, Manifest};
use statiko_common::model::AppRecord;
use statiko_common::repo::BundleRepo;

pub use self::content_type::content_type_for;
use self::meta::BundleMeta;
pub use self::precompress::MIN_COMPRESS_LEN;
use crate::bundle::StagedBundle;
use statiko_common::conventions::SITE_FILES;

/// Variant trees under `variants/`. Mirroring `root/` (rather than `<file>.gz` side files)
/// means no file or directory name in a bundle can collide with a variant.
const GZIP_DIR: &str = "gz";
const BROTLI_DIR: &str = "br";
const META_FILE: &str = "meta.json";
const META_VERSION: u32 = 1;
const ROOT_DIR: &str = "root";
const VARIANTS_DIR: &str = "variants";
/// The I/O buffer size for spooling and compressing.
const CHUNK: usize = 64 * 1024;

/// Why a bundle could not be staged. Messages are short and user-facing (they are shown in
/// node status) and name no host path.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
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
    /// `_redirects` or `_headers` is invalid; the message names the file and the line, e.g.
    /// `_redirects line 3: unsupported status 399`.
    #[error("{0}")]
    SiteFile(String),
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
    cache: Mutex<HashMap<Digest, Arc<StagedBundle>>>,
    /// One lock per digest, so one staging runs per digest at a time (single flight). A
    /// bundle's seal keeps it until the bundle is durable.
    flights: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Digests whose seal is running.
    sealing: Mutex<HashSet<Digest>>,
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
        let digest = app.digest;
        self.check_signature(app, &digest)?;
        if let Some(bundle) = self.cached(&digest) {
            return Ok(bundle);
        }
        let flight = self.flight(&digest);
        let guard = flight.lock_owned().await;
        if let Some(bundle) = self.cached(&digest) {
            return Ok(bundle);
        }
        if let Some(bundle) = self.load(&digest).await {
            self.cache().insert(digest, bundle.clone());
            return Ok(bundle);
        }
        let (bundle, seal) = self.fetch_and_stage(app).await?;
        let bundle = Arc::new(bundle);
        self.cache().insert(digest, bundle.clone());
        self.seal_in_background(digest, seal, guard);
        Ok(bundle)
    }

    fn check_signature(&self, app: &AppRecord, digest: &Digest) -> Result<(), StageError> {
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
        let signature = decode_signature(signature)
            .ok_or_else(|| StageError::Signature("the signature is not valid base64".into()))?;
        verify_bundle_signature(key, digest.bytes(), &signature).map_err(|_| {
            StageError::Signature("the signature does not match the configured public key".into())
        })
    }
}

/// Reads and compiles `root/_statiko.yaml`, if there is one, under the rules control applies at
/// upload (`Manifest::from_bundle_file`).
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
    let bytes = if stat.len() > MAX_MANIFEST_LEN as u64 {
        // Refused by its length, unread.
        Vec::new()
    } else {
        std::fs::read(&path).map_err(|e| StageError::io("reading the app manifest", &e))?
    };
    let manifest = Manifest::from_bundle_file(&bytes, stat.len()).map_err(StageError::Manifest)?;
    Ok(Some(Arc::new(manifest)))
}

/// The files a manifest names must be in the bundle (`Manifest::check_files`, as at upload).
fn check_manifest_files(manifest: &Manifest, meta: &BundleMeta) -> Result<(), StageError> {
    manifest
        .check_files(|rel| {
            meta.files
                .binary_search_by(|file| file.path.as_str().cmp(rel))
                .is_ok()
        })
        .map_err(StageError::Manifest)
}
