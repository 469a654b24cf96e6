//! Fetching: the digest-checked download of a bundle and its unpacking, in one blocking pass.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use statiko_common::archive::{self, ArchiveLimits, Unpacked};
use statiko_common::config::LimitsConfig;
use statiko_common::crypto::{Digest, Sha256Hasher};
use statiko_common::model::{AppRecord, BundleFormat};
use statiko_common::repo::{BundleReader, RepoError};

use super::meta::build_bundle;
use super::precompress::precompute;
use super::seal::{Seal, lock_dir};
use super::site_files::RoutingFiles;
use super::{CHUNK, ROOT_DIR, StageError, Stager, check_manifest_files, read_manifest};
use crate::bundle::StagedBundle;

impl Stager {
    /// Fetches, verifies, unpacks and precomputes the bundle and moves it into place; returns
    /// it with the work that makes it durable.
    pub(super) async fn fetch_and_stage(
        &self,
        app: &AppRecord,
    ) -> Result<(StagedBundle, Seal), StageError> {
        let started = Instant::now();
        let result = self.build(app, started).await;
        match &result {
            Ok((bundle, _, steps)) => tracing::info!(
                app = %app.name,
                version = %app.version,
                digest = %app.digest,
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
                digest = %app.digest,
                error = %e,
                "staging failed"
            ),
        }
        result.map(|(bundle, seal, _)| (bundle, seal))
    }

    async fn build(
        &self,
        app: &AppRecord,
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
            .open(&app.digest.hex())
            .await
            .map_err(|e| fetch_error(&e))?;
        let build = Build {
            tmp_dir: self.inner.tmp_dir.clone(),
            bundles_dir: self.inner.bundles_dir.clone(),
            digest: app.digest,
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
}

/// How long each staging step took (logged with `bundle staged`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Steps {
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

pub(super) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The blocking part of a staging: everything after the repository answered.
pub(super) struct Build {
    pub(super) tmp_dir: PathBuf,
    pub(super) bundles_dir: PathBuf,
    pub(super) digest: Digest,
    pub(super) format: BundleFormat,
    pub(super) limits: LimitsConfig,
}

impl Build {
    /// Unpacks and precomputes into a fresh directory under `tmp/`, then renames the result into
    /// `bundles/<hex>`. The work directory is removed whatever happens.
    pub(super) fn run(
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
            .prefix(&format!("{}.", self.digest.hex()))
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
        let routing = RoutingFiles::read(&root)?;
        let started = Instant::now();
        let meta = precompute(&staging, self.digest, unpacked)?;
        if let Some(manifest) = &manifest {
            check_manifest_files(manifest, &meta)?;
        }
        let rules = routing.into_rules(manifest.as_deref(), &meta);
        steps.variants = started.elapsed();

        let started = Instant::now();
        // Locked until sealed; the lock follows the directory through the rename.
        let lock = lock_dir(&staging).map_err(|e| StageError::io("locking the bundle", &e))?;
        let final_dir = self.bundles_dir.join(self.digest.hex());
        match std::fs::remove_dir_all(&final_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StageError::io("replacing an incomplete bundle", &e)),
        }
        std::fs::rename(&staging, &final_dir)
            .map_err(|e| StageError::io("moving the bundle into place", &e))?;
        let bundle = match build_bundle(&final_dir, &meta, manifest, rules) {
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
            download.check_digest(&self.digest)?;
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
        download.check_digest(&self.digest)?;
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

    fn check_digest(self, expected: &Digest) -> Result<(), StageError> {
        let actual = Digest::from(self.hasher.finish());
        if actual != *expected {
            return Err(StageError::DigestMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
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
