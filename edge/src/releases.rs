//! The edge's part in atomic deployments: stage the bundle of every deployment in `staging`
//! state without switching its site, hold it so it is not evicted, and report how staging went
//! (`staging` in the node record). The leader (`cutover.rs`) switches the site once every live
//! edge reports the deployment staged; the switch then finds the bundle already staged here, so
//! every edge flips at the same store revision.
//!
//! An edge that was down during a cutover does nothing special when it comes back: the site
//! record names the live app, so the ordinary apply stages it (keeping the persisted version
//! served until then).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt as _;
use statiko_common::model::{DeploymentRecord, StageReport};

use crate::bundle::StagedBundle;
use crate::desired::{Desired, app_key};
use crate::stage::Stager;

/// Staging reports by deployment id.
pub type StageReports = BTreeMap<String, StageReport>;

/// Deployment bundles staged at the same time.
const CONCURRENCY: usize = 3;

/// Deployments staged (or that failed to stage) ahead of their cutover.
#[derive(Debug, Default)]
pub struct Releases {
    /// By deployment id.
    held: HashMap<String, Held>,
    reports: StageReports,
}

#[derive(Debug)]
struct Held {
    /// The staged bundle, kept referenced so that it is not evicted before the cutover.
    bundle: Option<Arc<StagedBundle>>,
}

/// What an apply changed in the bundles held.
#[derive(Debug, Default)]
pub struct HeldChange {
    /// Digests now held by a staging deployment.
    pub added: Vec<String>,
    /// Digests no longer held by one that left `staging`.
    pub released: Vec<String>,
}

impl Releases {
    /// Stages the deployments new in `desired.staging` and forgets those that left it.
    pub async fn apply(&mut self, desired: &Desired, stager: &Stager) -> HeldChange {
        let mut change = HeldChange::default();
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|id| !desired.staging.contains_key(*id))
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
        for (id, d) in &desired.staging {
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
                    crate::metrics::staging_failed();
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

    /// How staging went, for the node record.
    pub fn reports(&self) -> StageReports {
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
