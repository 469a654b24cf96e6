//! The bundle cache: staged bundles by digest in memory, one flight per digest, loading a
//! durable bundle after a restart and evicting those no site needs.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::{Arc, MutexGuard};

use super::Stager;
use super::meta::load_bundle;
use super::seal::lock_dir;
use statiko_common::crypto::Digest;

use crate::bundle::StagedBundle;

impl Stager {
    /// The staged bundle of `digest`, if it is in memory.
    pub fn cached(&self, digest: &Digest) -> Option<Arc<StagedBundle>> {
        self.cache().get(digest).cloned()
    }

    /// The staged bundle of `digest` in memory, or loaded from a durable copy on disk (a
    /// bundle kept across a restart); never downloaded.
    pub async fn staged_on_disk(&self, digest: &Digest) -> Option<Arc<StagedBundle>> {
        if let Some(bundle) = self.cached(digest) {
            return Some(bundle);
        }
        let flight = self.flight(digest);
        let _guard = flight.lock().await;
        if let Some(bundle) = self.cached(digest) {
            return Some(bundle);
        }
        let bundle = self.load(digest).await?;
        self.cache().insert(*digest, bundle.clone());
        Some(bundle)
    }

    /// Removes every staged bundle whose digest is not in `keep`, from memory and disk (and
    /// anything under `bundles/` not named by a digest). A bundle being staged is left alone;
    /// one being sealed is removed once its seal is done. Returns how many were removed from
    /// disk.
    pub async fn evict_except(&self, keep: &HashSet<Digest>) -> usize {
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
        for name in names {
            // Directories are named by the digest's hex.
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                self.remove_stray(&name).await;
                continue;
            };
            if keep.contains(&digest) {
                continue;
            }
            let flight = self.flight(&digest);
            let guard = if self.sealing().contains(&digest) {
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
            if self.cached(&digest).is_some() {
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

    /// Removes `bundles/<name>`, which no digest names (left by hand, or by an older format).
    async fn remove_stray(&self, name: &str) {
        let dir = self.inner.bundles_dir.join(name);
        match tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await {
            Ok(Ok(())) => tracing::info!(name, "removed a stray entry from the bundle directory"),
            Ok(Err(e)) => tracing::warn!(name, error = %e, "cannot remove a stray bundle entry"),
            Err(e) => tracing::warn!(name, error = %e, "removing a stray bundle entry failed"),
        }
    }

    pub(super) fn cache(&self) -> MutexGuard<'_, HashMap<Digest, Arc<StagedBundle>>> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn sealing(&self) -> MutexGuard<'_, HashSet<Digest>> {
        self.inner
            .sealing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn flights(&self) -> MutexGuard<'_, HashMap<Digest, Arc<tokio::sync::Mutex<()>>>> {
        self.inner
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn flight(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        self.flights().entry(*digest).or_default().clone()
    }

    /// Loads a complete bundle left on disk (after a restart). Anything incomplete or
    /// unreadable is removed, to be staged again. A bundle still being sealed (by another
    /// stager) is waited for.
    pub(super) async fn load(&self, digest: &Digest) -> Option<Arc<StagedBundle>> {
        let dir = self.inner.bundles_dir.join(digest.hex());
        let digest = *digest;
        let outcome = tokio::task::spawn_blocking(move || {
            if !dir.exists() {
                return None;
            }
            let loaded = lock_dir(&dir).and_then(|_lock| load_bundle(&dir, &digest));
            match loaded {
                Ok(bundle) => Some(bundle),
                Err(e) => {
                    tracing::warn!(digest = %digest, error = %e, "discarding incomplete staged bundle");
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(digest = %digest, error = %e, "cannot remove staged bundle");
                    }
                    None
                }
            }
        })
        .await;
        outcome.ok().flatten().map(Arc::new)
    }
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
