//! What the reconciler does with retained deployments (`releases.rs`): their limits, the
//! routes' retired deployments for skew protection (`serve/skew.rs`), each with the end of its
//! window, and, after each change, the disk budget and the persisted copy.

use std::path::Path;
use std::sync::Arc;

use http::HeaderValue;
use statiko_common::model::SiteRecord;

use super::Reconciler;
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

    /// After an apply changed what sites keep (`changed`): the disk budget, then the persisted
    /// copy.
    pub(super) async fn settle_retained(&mut self, desired: &Desired, changed: bool) {
        if !changed {
            return;
        }
        for (domain, digest) in self.releases.enforce_budget() {
            self.release_bundle(&digest);
            self.refresh_retired(&domain, desired);
        }
        self.releases.save().await;
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
    }
}
