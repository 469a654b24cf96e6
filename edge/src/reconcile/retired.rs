//! What the reconciler does with retained deployments (`releases.rs`): their limits, the
//! routes' retired deployments for skew protection (`serve/skew.rs`), each with the end of its
//! window, and, after each change (once the apply swapped its table), the disk budget and the
//! persisted copy.

use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;
use statiko_common::model::SiteRecord;

use super::{Applied, Reconciler};
use crate::desired::Desired;
use crate::releases::Releases;
use crate::table::{Retired, Route, SiteRoute};

impl Reconciler {
    /// Keeps `n` live bundles per site staged for rollback and skew protection
    /// (`edge.retainDeployments`), the retained ones within `budget` bytes on disk
    /// (`edge.bundleDiskBudget`), persisted under `data_dir` when given, so that they are still
    /// there after a restart.
    pub fn with_retention(mut self, n: u32, budget: u64, data_dir: Option<&Path>) -> Self {
        let releases = Releases::new(n as usize).with_budget(budget);
        self.releases = match data_dir {
            Some(dir) => releases.persisted_in(dir),
            None => releases,
        };
        self
    }

    /// Takes back what the last run kept (`Releases::restore`), before this apply releases
    /// anything, so that no eviction removes it first. Returns whether anything came back.
    pub(super) async fn restore_retained(&mut self, desired: &Desired) -> bool {
        let restored = self.releases.restore(&self.stager, desired).await;
        for (_, digest) in &restored {
            self.bundle_refs.add(digest);
        }
        !restored.is_empty()
    }

    /// The bookkeeping an apply leaves until after its table swap, so that no flip waits on
    /// it: the disk budget over the retained bundles, then their persisted copy (a write and an
    /// fsync, which can take tens of milliseconds while the disk is busy sealing a bundle).
    /// Returns the node status again when it changed (a bundle dropped over the budget).
    ///
    /// Safe across a crash: until the write, `retained.json` holds the previous retention. A
    /// restart from it may miss the bundle the last flip retired (it is then not reported
    /// retained, so a rollback to it stages as usual, by download) or name a bundle that is
    /// live now (taken back only when it is not live) or gone (skipped: only bundles durable on
    /// disk are taken back). It never makes an edge serve something else.
    pub async fn settle(&mut self, desired: &Desired) -> Option<Applied> {
        if !std::mem::take(&mut self.retention_changed) {
            return None;
        }
        let dropped = self.releases.enforce_budget();
        for (domain, digest) in &dropped {
            self.release_bundle(digest);
            self.refresh_retired(domain, desired);
        }
        if !dropped.is_empty() {
            self.publish_table(desired.revision);
        }
        self.releases.save().await;
        (!dropped.is_empty()).then(|| self.applied(desired.revision))
    }

    /// The deployments whose bundles `domain` retains, newest first (for the node status).
    pub(super) fn retained_ids(&self, domain: &str) -> Vec<String> {
        self.releases
            .retained(domain)
            .map(|kept| kept.deployment.clone())
            .collect()
    }

    /// What skew protection may serve for `site`: the bundles it keeps, newest first, unless
    /// its window is off.
    pub(super) fn retired_for(&self, site: &SiteRecord) -> Arc<[Retired]> {
        let window = i64::try_from(site.skew_protection_ms()).unwrap_or(i64::MAX);
        if window == 0 {
            return Arc::new([]);
        }
        self.releases
            .retained(&site.domain)
            .filter_map(|kept| {
                Some(Retired {
                    deployment: HeaderValue::try_from(kept.deployment.as_str()).ok()?,
                    bundle: kept.bundle.clone(),
                    until_ms: kept.retired_at.saturating_add(window),
                })
            })
            .collect()
    }

    /// Rebuilds the route of `domain` with what it keeps now (after a retention change).
    pub(super) fn refresh_retired(&mut self, domain: &str, desired: &Desired) {
        let (Some(site), Some(Route::Site(route))) =
            (desired.sites.get(domain), self.hosts.get(domain))
        else {
            return;
        };
        let route = Arc::new(SiteRoute {
            domain: route.domain.clone(),
            app: route.app.clone(),
            bundle: route.bundle.clone(),
            counters: route.counters.clone(),
            retired: self.retired_for(site),
        });
        self.hosts.insert(domain.to_owned(), Route::Site(route));
        let retained = self.retained_ids(domain);
        if let Some(status) = self.status.get_mut(domain) {
            status.retained = retained;
        }
    }
}
