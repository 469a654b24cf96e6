//! Retained bundles within a disk budget and across a restart.
//!
//! - **Budget** (`edge.bundleDiskBudget`): the distinct retained bundles may take at most this
//!   many bytes (`StagedBundle::disk_bytes`); over it, the one retired longest ago, whatever
//!   its site, is dropped first. Live bundles are not retained entries, so they are neither
//!   counted nor ever dropped here.
//! - **Restart**: what is retained is written to `applied/retained.json` (write, fsync, rename)
//!   whenever it changes; the next run takes back, at the start of its applies (before anything
//!   is evicted) and until the first state read from the store, for each site that exists, the
//!   bundles still durable on disk (`Stager::staged_on_disk`, never a download) that are not
//!   live, within the limits. Anything else in the file is forgotten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use statiko_common::crypto::Digest;
use statiko_common::private_files;

use super::{Releases, Retained};
use crate::desired::Desired;
use crate::stage::Stager;

const FILE_VERSION: u32 = 1;

/// `applied/retained.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Persisted {
    version: u32,
    /// By site, newest first.
    pub(super) sites: HashMap<String, Vec<Entry>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Entry {
    pub(super) digest: Digest,
    pub(super) deployment: String,
    pub(super) retired_at: i64,
}

impl Releases {
    /// Bounds the retained bundles by `bytes` on disk.
    pub(crate) fn with_budget(mut self, bytes: u64) -> Self {
        self.budget = bytes;
        self
    }

    /// Persists what is retained under `data_dir`, and restores what an earlier run persisted
    /// there (at the first apply).
    pub(crate) fn persisted_in(mut self, data_dir: &Path) -> Self {
        let path = Self::file_path(data_dir);
        self.restore = match load(&path) {
            Ok(persisted) => persisted,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring the persisted retained deployments");
                None
            }
        };
        self.file = Some(path);
        self
    }

    /// Where what is retained is persisted.
    pub(crate) fn file_path(data_dir: &Path) -> PathBuf {
        data_dir.join("applied").join("retained.json")
    }

    /// Takes back what an earlier run retained: for every site of `desired`, the bundles still
    /// on disk that it does not serve now, newest first, within the per-site limit. Sites a
    /// persisted state (`desired` not yet read from the store) lacks wait for the next state;
    /// the first state read from the store ends it. Returns the sites and digests taken back
    /// (the caller takes one reference to each, before anything can be evicted).
    pub(crate) async fn restore(
        &mut self,
        stager: &Stager,
        desired: &Desired,
    ) -> Vec<(String, Digest)> {
        let Some(persisted) = self.restore.as_mut() else {
            return Vec::new();
        };
        let present: Vec<(String, Vec<Entry>)> = persisted
            .sites
            .extract_if(|domain, _| desired.sites.contains_key(domain))
            .collect();
        if desired.synced() || persisted.sites.is_empty() {
            self.restore = None;
        }
        let mut restored = Vec::new();
        for (domain, entries) in present {
            let Some(site) = desired.sites.get(&domain) else {
                continue;
            };
            let live = desired.app_for(site).map(|app| app.digest);
            for entry in entries {
                let kept = self.retained.entry(domain.clone()).or_default();
                if kept.len() + 1 >= self.retain {
                    break;
                }
                if live == Some(entry.digest)
                    || kept.iter().any(|r| r.bundle.digest == entry.digest)
                {
                    continue;
                }
                let Some(bundle) = stager.staged_on_disk(&entry.digest).await else {
                    tracing::info!(site = %domain, digest = %entry.digest,
                        "a retained bundle is no longer on disk");
                    continue;
                };
                let kept = self.retained.entry(domain.clone()).or_default();
                kept.push_back(Retained {
                    bytes: bundle.disk_bytes(),
                    bundle,
                    deployment: entry.deployment,
                    retired_at: entry.retired_at,
                });
                restored.push((domain.clone(), entry.digest));
            }
        }
        self.retained.retain(|_, kept| !kept.is_empty());
        if !restored.is_empty() {
            tracing::info!(
                bundles = restored.len(),
                "restored the retained deployments of the last run"
            );
        }
        restored
    }

    /// Drops the retained bundles retired longest ago, whatever their site, until the distinct
    /// ones fit in the budget. Returns the site and digest of each dropped (one reference each
    /// to release).
    pub(crate) fn enforce_budget(&mut self) -> Vec<(String, Digest)> {
        let mut dropped = Vec::new();
        while self.retained_bytes() > self.budget {
            // Each site's queue is newest first: its back is its oldest.
            let oldest = self
                .retained
                .iter()
                .filter_map(|(domain, kept)| kept.back().map(|r| (r.retired_at, domain)))
                .min()
                .map(|(_, domain)| domain.clone());
            let Some(domain) = oldest else {
                break;
            };
            if let Some(kept) = self.retained.get_mut(&domain)
                && let Some(old) = kept.pop_back()
            {
                tracing::info!(site = %domain, digest = %old.bundle.digest, bytes = old.bytes,
                    "dropping a retained bundle over edge.bundleDiskBudget");
                dropped.push((domain, old.bundle.digest));
            }
        }
        self.retained.retain(|_, kept| !kept.is_empty());
        dropped
    }

    /// Bytes the distinct retained bundles take on disk.
    pub(crate) fn retained_bytes(&self) -> u64 {
        let mut sizes: HashMap<&Digest, u64> = HashMap::new();
        for kept in self.retained.values().flatten() {
            sizes.insert(&kept.bundle.digest, kept.bytes);
        }
        sizes.values().sum()
    }

    /// Writes what is retained, when a file is set (a failure is logged: it costs a download
    /// after the next restart, nothing more).
    pub(crate) async fn save(&self) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let persisted = Persisted {
            version: FILE_VERSION,
            sites: self
                .retained
                .iter()
                .map(|(domain, kept)| {
                    let entries = kept
                        .iter()
                        .map(|r| Entry {
                            digest: r.bundle.digest,
                            deployment: r.deployment.clone(),
                            retired_at: r.retired_at,
                        })
                        .collect();
                    (domain.clone(), entries)
                })
                .collect(),
        };
        match tokio::task::spawn_blocking(move || write(&path, &persisted)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not persist the retained deployments");
            }
            Err(err) => {
                tracing::warn!(error = %err, "persisting the retained deployments failed");
            }
        }
    }
}

fn load(path: &Path) -> std::io::Result<Option<Persisted>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let persisted: Persisted = serde_json::from_slice(&bytes)
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
    Ok((persisted.version == FILE_VERSION).then_some(persisted))
}

fn write(path: &Path, persisted: &Persisted) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(persisted).map_err(std::io::Error::other)?;
    private_files::write_atomic(path, &bytes)
}
