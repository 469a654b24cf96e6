//! Previews in the reconciler: a route and a certificate per preview host, rebuilt on every
//! apply from `desired.previews` and the bundles `releases.rs` holds for them (previews are few;
//! a route whose record and bundle did not change is kept, with its cache of password
//! verdicts). A host that a site owns is never taken by a preview.

use std::collections::HashMap;
use std::sync::Arc;

use statiko_common::model::{DeploymentRecord, now_ms};

use super::{Chosen, Reconciler};
use crate::desired::Desired;
use crate::previews::preview_site;
use crate::serve::preview::PasswordCheck;
use crate::table::{PreviewRoute, Route};

/// One preview as the last apply left it.
#[derive(Debug)]
pub(super) struct PreviewState {
    record: DeploymentRecord,
    route: Arc<PreviewRoute>,
    /// The certificate it presents: cache key, and name and expiry when from the store.
    cert: Option<(String, Option<(String, i64)>)>,
}

impl Reconciler {
    /// Publishes the route and certificate of every preview being served, and withdraws those
    /// of previews gone or expired.
    pub(super) fn publish_previews(&mut self, desired: &Desired) {
        let now = now_ms();
        let mut next: HashMap<String, PreviewState> = HashMap::new();
        for (id, record) in &desired.previews {
            let Some(info) = &record.preview else {
                continue;
            };
            if info.expires_at <= now {
                continue; // no longer served; the leader deletes it
            }
            if matches!(
                self.hosts.get(&info.host),
                Some(Route::Site(_) | Route::Alias { .. })
            ) {
                tracing::warn!(host = %info.host, preview = %id, "a site owns the preview's host; not serving the preview");
                continue;
            }
            let bundle = self.releases.held_bundle(id).cloned();
            let route = match self.previews.get(id) {
                Some(old)
                    if old.record == *record
                        && old.route.bundle.as_ref().map(|b| &b.digest)
                            == bundle.as_ref().map(|b| &b.digest) =>
                {
                    old.route.clone()
                }
                _ => Arc::new(PreviewRoute {
                    host: info.host.clone(),
                    site: record.site.clone(),
                    bundle,
                    expires_at: info.expires_at,
                    password: info
                        .password_hash
                        .clone()
                        .map(|hash| Arc::new(PasswordCheck::new(hash))),
                    counters: self
                        .metrics
                        .as_ref()
                        .map_or_else(Default::default, |metrics| metrics.site(&record.site)),
                }),
            };
            let chosen =
                preview_site(desired, record).map(|site| self.certificate_for(&site, desired));
            let cert = match chosen {
                Some(Ok(Chosen {
                    key,
                    cache_key,
                    status,
                })) => {
                    self.cert_map.insert(info.host.clone(), key);
                    self.cert_refs.add(&cache_key);
                    if let Some((name, not_after)) = &status {
                        self.expiry_refs.add(name);
                        self.cert_expiries.insert(name.clone(), *not_after);
                    }
                    Some((cache_key, status))
                }
                Some(Err(err)) => {
                    tracing::warn!(host = %info.host, preview = %id, error = %err, "no certificate for the preview");
                    None
                }
                None => None,
            };
            self.hosts
                .insert(info.host.clone(), Route::Preview(route.clone()));
            next.insert(
                id.clone(),
                PreviewState {
                    record: record.clone(),
                    route,
                    cert,
                },
            );
        }
        // What the previous apply published: hosts no preview holds any more go, and every
        // certificate reference it took is given back (the new ones were taken above).
        for (id, old) in std::mem::take(&mut self.previews) {
            let host = &old.route.host;
            let still = next.get(&id).is_some_and(|n| &n.route.host == host);
            if !still
                && matches!(self.hosts.get(host), Some(Route::Preview(r)) if Arc::ptr_eq(r, &old.route))
            {
                self.hosts.remove(host);
                self.cert_map.remove(host);
            }
            if let Some(cert) = old.cert {
                self.release_cert(cert);
            }
        }
        self.previews = next;
    }
}
