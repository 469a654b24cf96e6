//! The bundle cache: staged bundles by digest in memory, one flight per digest, loading a
//! durable bundle after a restart and evicting those no site needs.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::{Arc, MutexGuard};

use super::Stager;
use super::meta::load_bundle;
use super::seal::lock_dir;
use crate::bundle::StagedBundle;

impl Stager {
    /// The staged bundle of `digest` (`sha256:<hex>` or hex), if it is in memory.
    pub fn cached(&self, digest: &str) -> Option<Arc<StagedBundle>> {
        self.cache().get(&normalize_digest(digest)).cloned()
    }

    /// The staged bundle of `digest` (`sha256:<hex>` or hex) in memory, or loaded from a
    /// durable copy on disk (a bundle kept across a restart); never downloaded.
    pub async fn staged_on_disk(&self, digest: &str) -> Option<Arc<StagedBundle>> {
        let hex_digest = normalize_digest(digest);
        if hex_digest.is_empty() || !hex_digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if let Some(bundle) = self.cached(&hex_digest) {
            return Some(bundle);
        }
        let flight = self.flight(&hex_digest);
        let _guard = flight.lock().await;
        if let Some(bundle) = self.cached(&hex_digest) {
            return Some(bundle);
        }
        let bundle = self.load(&hex_digest).await?;
        self.cache().insert(hex_digest, bundle.clone());
        Some(bundle)
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

    pub(super) fn cache(&self) -> MutexGuard<'_, HashMap<String, Arc<StagedBundle>>> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn sealing(&self) -> MutexGuard<'_, HashSet<String>> {
        self.inner
            .sealing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn flights(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.inner
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn flight(&self, hex_digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.flights()
            .entry(hex_digest.to_owned())
            .or_default()
            .clone()
    }

    /// Loads a complete bundle left on disk (after a restart). Anything incomplete or
    /// unreadable is removed, to be staged again. A bundle still being sealed (by another
    /// stager) is waited for.
    pub(super) async fn load(&self, hex_digest: &str) -> Option<Arc<StagedBundle>> {
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
