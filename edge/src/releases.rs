//! The edge's part in atomic deployments: stage the bundle of every deployment in `staging`
//! state without switching its site, hold it so it is not evicted, and report how staging went
//! (`staging` in the node record). The leader (`cutover.rs`) switches the site once every live
//! edge reports the deployment staged; the switch then finds the bundle already staged here, so
//! every edge flips at the same store revision.
//!
//! Retention: when a site switches bundles, the one it served before is kept staged (and
//! referenced, so eviction spares it), up to `edge.retainDeployments - 1` per site, newest
//! first, and within `edge.bundleDiskBudget` bytes over every site (the oldest retired goes
//! first; a live bundle is never counted nor evicted). A rollback to one of them stages from
//! memory at once: a pure flip, no download. Skew protection serves old assets from them.
//! What is retained is persisted in `edge.dataDir/applied/retained.json` and restored at start
//! from the bundles still on disk (`retention.rs`), so this holds across a restart.
//!
//! Previews (`desired.previews`) are staged and held the same way, for as long as they exist,
//! and reported under the same `staging` map; the reconciler serves each at its own host.
//!
//! An edge that was down during a cutover does nothing special when it comes back: the site
//! record names the live app, so the ordinary apply stages it (keeping the persisted version
//! served until then).

mod retention;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt as _;
use statiko_common::model::{DeploymentRecord, StageReport};

use crate::bundle::StagedBundle;
use crate::desired::{Desired, app_key};
use crate::stage::Stager;

/// Staging reports by deployment id.
pub(crate) type StageReports = BTreeMap<String, StageReport>;

/// Deployment bundles staged at the same time.
const CONCURRENCY: usize = 3;

/// Deployments staged (or that failed to stage) ahead of their cutover, and the bundles kept
/// for rollback.
#[derive(Debug)]
pub(crate) struct Releases {
    /// By deployment id.
    held: HashMap<String, Held>,
    reports: StageReports,
    /// Per site, the bundles it served before, newest first.
    retained: HashMap<String, VecDeque<Retained>>,
    /// `edge.retainDeployments`: the live bundle plus this many minus one retained.
    retain: usize,
    /// `edge.bundleDiskBudget`: the most bytes the retained bundles may take on disk.
    budget: u64,
    /// Where what is retained is persisted (`applied/retained.json`), if anywhere.
    file: Option<PathBuf>,
    /// What an earlier run retained, restored by the first apply.
    restore: Option<retention::Persisted>,
}

/// A bundle a site served before.
#[derive(Debug, Clone)]
pub(crate) struct Retained {
    pub(crate) bundle: Arc<StagedBundle>,
    /// The deployment it served: its id, or `name@version` when the site record named none.
    pub(crate) deployment: String,
    /// Unix ms when it stopped being live (the store time of the switch that replaced it).
    pub(crate) retired_at: i64,
    /// What it takes on disk (`StagedBundle::disk_bytes`).
    pub(crate) bytes: u64,
}

impl Default for Releases {
    fn default() -> Self {
        Self::new(3)
    }
}

#[derive(Debug)]
struct Held {
    /// The staged bundle, kept referenced so that it is not evicted before the cutover.
    bundle: Option<Arc<StagedBundle>>,
}

/// What an apply changed in the bundles held.
#[derive(Debug, Default)]
pub(crate) struct HeldChange {
    /// Digests now held by a staging deployment.
    pub(crate) added: Vec<String>,
    /// Digests no longer held by one that left `staging`.
    pub(crate) released: Vec<String>,
    /// Deployments that failed to stage.
    pub(crate) failed: u64,
}

impl Releases {
    /// Keeps `retain_deployments` live bundles per site (the live one included).
    pub(crate) fn new(retain_deployments: usize) -> Self {
        Self {
            held: HashMap::new(),
            reports: StageReports::new(),
            retained: HashMap::new(),
            retain: retain_deployments.max(1),
            budget: u64::MAX,
            file: None,
            restore: None,
        }
    }

    /// Site `domain` stopped serving `retired.bundle` for `live_digest`: keeps it, and
    /// returns the digests no longer kept (the oldest beyond the limit, the live one, or the
    /// retired bundle itself when the limit keeps none): one reference each to drop. The caller
    /// takes one reference to the retired bundle.
    pub(crate) fn retain(
        &mut self,
        domain: &str,
        retired: Retained,
        live_digest: Option<&str>,
    ) -> Vec<String> {
        let kept = self.retained.entry(domain.to_owned()).or_default();
        let mut dropped = Vec::new();
        let digest = retired.bundle.digest.clone();
        // Kept once, and not while live again (after a rollback to it).
        kept.retain(|r| {
            let keep = r.bundle.digest != digest && Some(r.bundle.digest.as_str()) != live_digest;
            if !keep {
                dropped.push(r.bundle.digest.clone());
            }
            keep
        });
        kept.push_front(retired);
        while kept.len() > self.retain - 1 {
            match kept.pop_back() {
                Some(old) => dropped.push(old.bundle.digest.clone()),
                None => break,
            }
        }
        dropped
    }

    /// What site `domain` keeps, newest first.
    pub(crate) fn retained(&self, domain: &str) -> impl Iterator<Item = &Retained> {
        self.retained.get(domain).into_iter().flatten()
    }

    /// Site `domain` is gone: returns the digests it kept.
    pub(crate) fn forget(&mut self, domain: &str) -> Vec<String> {
        self.retained
            .remove(domain)
            .map(|kept| kept.into_iter().map(|r| r.bundle.digest.clone()).collect())
            .unwrap_or_default()
    }

    /// Stages the deployments new in `desired.staging` or `desired.previews` and forgets those
    /// that left both.
    pub(crate) async fn apply(&mut self, desired: &Desired, stager: &Stager) -> HeldChange {
        let mut change = HeldChange::default();
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|id| !desired.staging.contains_key(*id) && !desired.previews.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(Held {
                bundle: Some(bundle),
            }) = self.held.remove(&id)
            {
                change.released.push(bundle.digest.clone());
            }
            self.reports.remove(&id);
        }
        let mut jobs = Vec::new();
        for (id, d) in desired.staging.iter().chain(desired.previews.iter()) {
            if !self.held.contains_key(id) {
                jobs.push(async move { (id.clone(), stage(desired, stager, d).await) });
            }
        }
        let staged: Vec<_> = futures::stream::iter(jobs)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (id, result) in staged {
            let (bundle, report) = match result {
                Ok(bundle) => {
                    change.added.push(bundle.digest.clone());
                    let report = StageReport {
                        ok: true,
                        error: None,
                    };
                    (Some(bundle), report)
                }
                Err(error) => {
                    tracing::warn!(deployment = %id, %error, "staging a deployment failed");
                    change.failed += 1;
                    let report = StageReport {
                        ok: false,
                        error: Some(error),
                    };
                    (None, report)
                }
            };
            self.held.insert(id.clone(), Held { bundle });
            self.reports.insert(id, report);
        }
        change
    }

    /// The bundle held for deployment `id` (a preview), if it staged.
    pub(crate) fn held_bundle(&self, id: &str) -> Option<&Arc<StagedBundle>> {
        self.held.get(id).and_then(|held| held.bundle.as_ref())
    }

    /// How staging went, for the node record.
    pub(crate) fn reports(&self) -> StageReports {
        self.reports.clone()
    }
}

/// Stages the bundle of one deployment; the error is what the node record reports.
async fn stage(
    desired: &Desired,
    stager: &Stager,
    deployment: &DeploymentRecord,
) -> Result<Arc<StagedBundle>, String> {
    let app = &deployment.app;
    let record = desired
        .apps
        .get(&app_key(app))
        .ok_or_else(|| format!("app {app} does not exist"))?;
    if !deployment.digest.is_empty() && record.digest != deployment.digest {
        return Err(format!(
            "app {app} has digest {}, the deployment expects {}",
            record.digest, deployment.digest
        ));
    }
    tracing::info!(deployment = %deployment.id, site = %deployment.site, %app, "staging a deployment");
    stager
        .stage(record)
        .await
        .map_err(|err| format!("staging {app} failed: {err}"))
}
