//! Which staged bundles keep their small files in memory. A bundle live somewhere (a site
//! serves it, or a deployment staging or a preview holds it) is resident; one only retained
//! (for rollback and skew protection) is cold: its files are read from disk per request, so
//! retained deployments cost their metadata in memory, not their bodies.
//!
//! Run after the apply's table swap. A flip to a cold bundle (a rollback) is therefore served
//! from disk at once, and becomes resident here, right after; a deployment staging from a
//! retained bundle becomes resident before its cutover.

use std::collections::HashMap;
use std::sync::Arc;

use super::Reconciler;
use crate::bundle::StagedBundle;
use crate::desired::Desired;

impl Reconciler {
    /// Makes live bundles resident and retained-only ones cold, and puts the copies in place
    /// of the old ones wherever they are referenced. Returns whether a route changed (the table
    /// must be published again).
    pub(super) async fn settle_residency(&mut self, desired: &Desired) -> bool {
        let mut live: HashMap<String, Arc<StagedBundle>> = HashMap::new();
        let served = self.sites.values().filter_map(|s| s.served.bundle.as_ref());
        for bundle in served.chain(self.releases.held_bundles()) {
            live.entry(bundle.digest.clone())
                .or_insert_with(|| bundle.clone());
        }
        let mut cold: HashMap<String, Arc<StagedBundle>> = HashMap::new();
        for kept in self.releases.all_retained() {
            if !live.contains_key(&kept.bundle.digest) {
                cold.entry(kept.bundle.digest.clone())
                    .or_insert_with(|| kept.bundle.clone());
            }
        }
        let mut copies: HashMap<String, Arc<StagedBundle>> = HashMap::new();
        for (digest, bundle) in live {
            // The cache may already hold a newer copy.
            let current = self.stager.cached(&digest).unwrap_or(bundle);
            if let Some(copy) = self.stager.set_resident(&current, true).await {
                copies.insert(digest, copy);
            } else if current.resident {
                copies.insert(digest, current);
            }
        }
        for (digest, bundle) in cold {
            if let Some(copy) = self.stager.set_resident(&bundle, false).await {
                copies.insert(digest, copy);
            }
        }
        // Only the references that are not the copy already.
        let stale = |bundle: &Arc<StagedBundle>| {
            copies
                .get(&bundle.digest)
                .is_some_and(|copy| !Arc::ptr_eq(copy, bundle))
        };
        let mut touched = Vec::new();
        for (domain, state) in &mut self.sites {
            let mut route_changed = false;
            if let Some(bundle) = &mut state.served.bundle
                && stale(bundle)
            {
                *bundle = copies[&bundle.digest].clone();
                route_changed = true;
            }
            route_changed |= self
                .releases
                .retained(domain)
                .any(|kept| stale(&kept.bundle));
            if route_changed {
                touched.push(domain.clone());
            }
        }
        self.releases.replace_bundles(&copies);
        for domain in &touched {
            self.refresh_retired(domain, desired);
        }
        !touched.is_empty()
    }
}
