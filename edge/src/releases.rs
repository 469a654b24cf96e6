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
//! A deployment that failed to stage (the repository unreachable, the bundle corrupt or
//! missing there) is staged again with back-off ([`STAGE_RETRY`]) for as long as it is wanted,
//! without its record changing: the run loop applies again when [`Releases::next_retry`] is
//! due. Its report stays the error until a retry succeeds. (A deployment in `staging` is
//! failed by the leader on the first error, so in practice this is for previews.)
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
use std::time::Duration;

use futures::StreamExt as _;
use statiko_common::backoff::Backoff;
use statiko_common::crypto::Digest;
use statiko_common::model::{DeploymentRecord, StageReport};
use tokio::time::Instant;

use crate::bundle::StagedBundle;
use crate::desired::{Desired, app_key};
use crate::stage::Stager;

/// Staging reports by deployment id.
pub(crate) type StageReports = BTreeMap<String, StageReport>;

/// Deployment bundles staged at the same time.
const CONCURRENCY: usize = 3;

/// Retries of a deployment that failed to stage: 1 s doubling up to 1 min, plus up to 500 ms of
/// jitter (the edges do not all ask the repository again at once).
pub(crate) const STAGE_RETRY: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
        .with_jitter(Duration::from_millis(500));

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
    /// When it failed to stage: its back-off, and when it is staged again.
    retry: Option<(Backoff, Instant)>,
}

/// What an apply changed in the bundles held.
#[derive(Debug, Default)]
pub(crate) struct HeldChange {
    /// Digests now held by a staging deployment.
    pub(crate) added: Vec<Digest>,
    /// Digests no longer held by one that left `staging`.
    pub(crate) released: Vec<Digest>,
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
        live_digest: Option<Digest>,
    ) -> Vec<Digest> {
        let kept = self.retained.entry(domain.to_owned()).or_default();
        let mut dropped = Vec::new();
        let digest = retired.bundle.digest;
        // Kept once, and not while live again (after a rollback to it).
        kept.retain(|r| {
            let keep = r.bundle.digest != digest && Some(r.bundle.digest) != live_digest;
            if !keep {
                dropped.push(r.bundle.digest);
            }
            keep
        });
        kept.push_front(retired);
        while kept.len() > self.retain - 1 {
            match kept.pop_back() {
                Some(old) => dropped.push(old.bundle.digest),
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
    pub(crate) fn forget(&mut self, domain: &str) -> Vec<Digest> {
        self.retained
            .remove(domain)
            .map(|kept| kept.into_iter().map(|r| r.bundle.digest).collect())
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
                ..
            }) = self.held.remove(&id)
            {
                change.released.push(bundle.digest);
            }
            self.reports.remove(&id);
        }
        let mut jobs = Vec::new();
        let now = Instant::now();
        for (id, d) in desired.staging.iter().chain(desired.previews.iter()) {
            let due = match self.held.get(id) {
                None => true,
                Some(held) => held.retry.as_ref().is_some_and(|(_, at)| *at <= now),
            };
            if due {
                jobs.push(async move { (id.clone(), stage(desired, stager, d).await) });
            }
        }
        let staged: Vec<_> = futures::stream::iter(jobs)
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (id, result) in staged {
            let earlier = self.held.remove(&id).and_then(|held| held.retry);
            let (held, report) = match result {
                Ok(bundle) => {
                    if earlier.is_some() {
                        tracing::info!(deployment = %id, "staged a deployment on a retry");
                    }
                    change.added.push(bundle.digest);
                    let report = StageReport {
                        ok: true,
                        error: None,
                    };
                    let held = Held {
                        bundle: Some(bundle),
                        retry: None,
                    };
                    (held, report)
                }
                Err(error) => {
                    let mut backoff = earlier.map_or(STAGE_RETRY, |(backoff, _)| backoff);
                    let delay = backoff.next_delay();
                    tracing::warn!(deployment = %id, %error, retry_in = ?delay, "staging a deployment failed");
                    change.failed += 1;
                    let report = StageReport {
                        ok: false,
                        error: Some(error),
                    };
                    let held = Held {
                        bundle: None,
                        retry: Some((backoff, Instant::now() + delay)),
                    };
                    (held, report)
                }
            };
            self.held.insert(id.clone(), held);
            self.reports.insert(id, report);
        }
        change
    }

    /// When the next deployment that failed to stage is due to be staged again.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.held
            .values()
            .filter_map(|held| held.retry.as_ref().map(|(_, at)| *at))
            .min()
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
    if let Some(expected) = deployment.digest
        && record.digest != expected
    {
        return Err(format!(
            "app {app} has digest {}, the deployment expects {expected}",
            record.digest
        ));
    }
    tracing::info!(deployment = %deployment.id, site = %deployment.site, %app, "staging a deployment");
    stager
        .stage(record)
        .await
        .map_err(|err| format!("staging {app} failed: {err}"))
}
