//! Durability: the seal that syncs a served bundle to disk, then writes its `meta.json`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use statiko_common::crypto::Digest;
use tokio::sync::OwnedMutexGuard;

use super::fetch::millis;
use super::meta::{BundleMeta, write_meta};
use super::{BROTLI_DIR, GZIP_DIR, ROOT_DIR, SITE_FILES, Stager, VARIANTS_DIR};

impl Stager {
    /// Makes a staged bundle durable off the deploy's path, holding its flight (`guard`) so it
    /// is neither evicted nor staged again meanwhile.
    pub(super) fn seal_in_background(
        &self,
        digest: Digest,
        seal: Seal,
        guard: OwnedMutexGuard<()>,
    ) {
        self.sealing().insert(digest);
        let stager = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            match seal.run() {
                Ok(()) => tracing::info!(
                    digest = %digest,
                    files = seal.meta.files.len(),
                    sync_ms = millis(started.elapsed()),
                    "bundle sealed"
                ),
                // It is served all the same; after a restart it is staged again.
                Err(e) => {
                    tracing::warn!(digest = %digest, error = %e, "cannot make the staged bundle durable")
                }
            }
            drop(seal);
            drop(guard);
            stager.sealing().remove(&digest);
        });
    }
}

/// What makes a staged (and already served) bundle durable: every file and directory synced,
/// then `meta.json` written and synced last, so that `meta.json` marks a bundle whose data is
/// on disk. The bundle directory stays locked until the seal is dropped.
pub(super) struct Seal {
    pub(super) dir: PathBuf,
    pub(super) bundles_dir: PathBuf,
    pub(super) meta: BundleMeta,
    pub(super) _lock: File,
}

impl Seal {
    pub(super) fn run(&self) -> io::Result<()> {
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
        for name in SITE_FILES {
            match sync_file(&root.join(name)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
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
pub(super) fn lock_dir(dir: &Path) -> io::Result<File> {
    let file = File::open(dir)?;
    file.lock()?;
    Ok(file)
}
