//! Turns each new desired state into what is served: stages the bundles it needs, then swaps the
//! certificates and the routing table atomically. A site whose new version fails to stage keeps
//! serving its previous version and reports the error.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use rustls::sign::CertifiedKey;
use statiko_common::crypto::{self, SecretBox};
use statiko_common::model::{
    self, AppRef, CertificateKind, CertificateRecord, NodeSiteStatus, SiteRecord, TlsChoice,
};
use statiko_common::notify::Notifier;

use crate::bundle::StagedBundle;
use crate::desired::Desired;
use crate::serve::tls::{CertResolver, certified_key_from_pem};
use crate::stage::Stager;
use crate::table::{Challenge, Route, RoutingTable, SharedTable, SiteRoute};

/// A certificate's name and expiry (Unix ms), reported in the node status.
type CertExpiry = (String, i64);

/// Bundles staged at the same time.
const STAGING_CONCURRENCY: usize = 3;

/// What one site serves now.
#[derive(Debug, Clone, Default)]
struct Served {
    app: Option<AppRef>,
    bundle: Option<Arc<StagedBundle>>,
    error: Option<String>,
}

/// Outcome of applying one desired state, for the node status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub revision: i64,
    pub sites: Vec<NodeSiteStatus>,
    /// Certificates in use: (name, not_after ms).
    pub certificates: Vec<(String, i64)>,
}

/// Applies desired states one after the other; owns the staging cache and certificate cache.
#[derive(Debug)]
pub struct Reconciler {
    stager: Stager,
    table: SharedTable,
    certs: Arc<CertResolver>,
    secrets: Option<SecretBox>,
    served: HashMap<String, Served>,
    /// Parsed certificates by a key that changes when the certificate changes.
    cert_cache: HashMap<String, Arc<CertifiedKey>>,
    /// Cache keys used by the current apply; the rest is dropped after it.
    cert_used: HashSet<String>,
    /// Where failed deploys are reported.
    notifier: Option<Notifier>,
    /// The last deploy error notified per site, so each distinct failure is sent once.
    notified: HashMap<String, String>,
}

impl Reconciler {
    pub fn new(
        stager: Stager,
        table: SharedTable,
        certs: Arc<CertResolver>,
        secrets: Option<SecretBox>,
    ) -> Self {
        Self {
            stager,
            table,
            certs,
            secrets,
            served: HashMap::new(),
            cert_cache: HashMap::new(),
            cert_used: HashSet::new(),
            notifier: None,
            notified: HashMap::new(),
        }
    }

    /// Reports failed deploys through `notifier`.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Applies `desired`: stage, then swap certificates and table, then evict unused bundles.
    pub async fn apply(&mut self, desired: &Desired) -> Applied {
        // Stage every bundle that differs from what the site serves now, a few at a time.
        let mut wanted: Vec<(String, statiko_common::model::AppRecord)> = Vec::new();
        let mut next: HashMap<String, Served> = HashMap::new();
        for site in desired.sites.values() {
            let previous = self.served.get(&site.domain).cloned().unwrap_or_default();
            match (&site.app, desired.app_for(site)) {
                (None, _) => {
                    next.insert(site.domain.clone(), Served::default());
                }
                (Some(app), None) => {
                    next.insert(
                        site.domain.clone(),
                        Served {
                            error: Some(format!("app {app} does not exist")),
                            ..previous
                        },
                    );
                }
                (Some(_), Some(record)) => {
                    let same = previous
                        .bundle
                        .as_ref()
                        .is_some_and(|b| b.digest == record.digest)
                        && previous.app.as_ref() == Some(&record.app_ref());
                    if same {
                        next.insert(site.domain.clone(), previous);
                    } else {
                        wanted.push((site.domain.clone(), record.clone()));
                    }
                }
            }
        }
        let stager = &self.stager;
        let results: Vec<_> = futures::stream::iter(wanted)
            .map(|(domain, record)| async move {
                let result = stager.stage(&record).await;
                (domain, record, result)
            })
            .buffer_unordered(STAGING_CONCURRENCY)
            .collect()
            .await;
        for (domain, record, result) in results {
            let served = match result {
                Ok(bundle) => Served {
                    app: Some(record.app_ref()),
                    bundle: Some(bundle),
                    error: None,
                },
                Err(err) => {
                    crate::metrics::staging_failed();
                    tracing::warn!(site = %domain, app = %record.app_ref(), error = %err, "staging failed; previous version keeps serving");
                    let message =
                        format!("deploy of {} to {domain} failed: {err}", record.app_ref());
                    if self.notified.get(&domain) != Some(&message) {
                        if let Some(notifier) = &self.notifier {
                            notifier.send(message.clone());
                        }
                        self.notified.insert(domain.clone(), message);
                    }
                    let previous = self.served.get(&domain).cloned().unwrap_or_default();
                    Served {
                        error: Some(format!("staging {} failed: {err}", record.app_ref())),
                        ..previous
                    }
                }
            };
            next.insert(domain, served);
        }

        // Certificates first, so no new host is routed before its certificate is there.
        let mut cert_map = HashMap::new();
        let mut cert_status = Vec::new();
        let mut cert_errors: HashMap<String, String> = HashMap::new();
        for site in desired.sites.values() {
            match self.certificate_for(site, desired) {
                Ok((key, status)) => {
                    for domain in site.all_domains() {
                        cert_map.insert(domain.to_owned(), key.clone());
                    }
                    if let Some(status) = status {
                        cert_status.push(status);
                    }
                }
                Err(err) => {
                    cert_errors.insert(site.domain.clone(), err);
                }
            }
        }
        self.certs.replace(cert_map);

        let mut hosts = HashMap::with_capacity(desired.sites.len() * 2);
        for site in desired.sites.values() {
            let served = next.get(&site.domain).cloned().unwrap_or_default();
            let route = Arc::new(SiteRoute {
                domain: site.domain.clone(),
                app: served.app.clone(),
                bundle: served.bundle.clone(),
            });
            hosts.insert(site.domain.clone(), Route::Site(route));
            for alias in &site.aliases {
                hosts.insert(
                    alias.clone(),
                    Route::Alias {
                        primary: site.domain.clone(),
                    },
                );
            }
        }
        // ACME challenge responses, each for the domains of the site it names.
        let challenges = desired
            .challenges
            .iter()
            .filter_map(|(token, record)| {
                let site = desired.sites.get(&record.site)?;
                let domains: Vec<String> = record
                    .domains
                    .iter()
                    .filter(|d| site.all_domains().any(|s| s == d.as_str()))
                    .cloned()
                    .collect();
                (!domains.is_empty()).then(|| {
                    (
                        token.clone(),
                        Challenge {
                            key_authorization: record.key_authorization.clone(),
                            domains,
                        },
                    )
                })
            })
            .collect();
        self.table.store(Arc::new(RoutingTable {
            revision: desired.revision,
            hosts,
            challenges,
        }));
        self.notified
            .retain(|domain, _| desired.sites.contains_key(domain));

        let in_use: HashSet<String> = next
            .values()
            .filter_map(|s| s.bundle.as_ref().map(|b| b.digest.clone()))
            .collect();
        self.stager.evict_except(&in_use).await;
        self.served = next;
        let used = std::mem::take(&mut self.cert_used);
        self.cert_cache.retain(|key, _| used.contains(key));

        let sites = desired
            .sites
            .values()
            .map(|site| {
                let served = self.served.get(&site.domain).cloned().unwrap_or_default();
                let mut error = match (served.error, cert_errors.remove(&site.domain)) {
                    (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                    (a, b) => a.or(b),
                };
                if site.tls == TlsChoice::Acme
                    && let Some(acme) = desired
                        .acme_orders
                        .get(&site.domain)
                        .and_then(|o| o.last_error.as_ref())
                {
                    let acme = format!("acme: {acme}");
                    error = Some(match error {
                        Some(e) => format!("{e}; {acme}"),
                        None => acme,
                    });
                }
                NodeSiteStatus {
                    domain: site.domain.clone(),
                    app: served.app,
                    healthy: error.is_none(),
                    error,
                }
            })
            .collect();
        Applied {
            revision: desired.revision,
            sites,
            certificates: cert_status,
        }
    }

    /// The certificate a site presents, with its expiry for the status.
    fn certificate_for(
        &mut self,
        site: &SiteRecord,
        desired: &Desired,
    ) -> Result<(Arc<CertifiedKey>, Option<CertExpiry>), String> {
        if let TlsChoice::Imported { certificate } = &site.tls {
            let record = desired
                .certificates
                .get(certificate)
                .ok_or_else(|| format!("certificate {certificate:?} does not exist"))?;
            let key = self.imported(record)?;
            return Ok((key, Some((record.name.clone(), record.not_after))));
        }
        // The leader's certificates: the ACME one once issued (and covering every domain), else
        // the leader's self-signed one, else (until the leader's arrives) one made here.
        let now = model::now_ms();
        let usable = |record: &&CertificateRecord, kind: CertificateKind| {
            record.kind == kind
                && record.not_after > now
                && record.site.as_deref() == Some(site.domain.as_str())
                && record.covers(site.all_domains())
        };
        let mut candidates = Vec::with_capacity(2);
        if site.tls == TlsChoice::Acme {
            let name = model::leader_certificate_name(CertificateKind::Acme, &site.domain);
            candidates.extend(
                desired
                    .certificates
                    .get(&name)
                    .filter(|r| usable(r, CertificateKind::Acme)),
            );
        }
        let name = model::leader_certificate_name(CertificateKind::SelfSigned, &site.domain);
        candidates.extend(
            desired
                .certificates
                .get(&name)
                .filter(|r| usable(r, CertificateKind::SelfSigned)),
        );
        for record in candidates {
            match self.imported(record) {
                Ok(key) => return Ok((key, Some((record.name.clone(), record.not_after)))),
                Err(err) => {
                    tracing::warn!(site = %site.domain, error = %err, "unusable leader certificate")
                }
            }
        }
        let cache_key = local_cert_key(site);
        self.cert_used.insert(cache_key.clone());
        if let Some(key) = self.cert_cache.get(&cache_key) {
            return Ok((key.clone(), None));
        }
        let domains: Vec<String> = site.all_domains().map(str::to_owned).collect();
        let (cert, key) = crypto::self_signed(&domains, 90)
            .map_err(|err| format!("self-signed certificate: {err}"))?;
        let key = certified_key_from_pem(&cert, &key)
            .map_err(|err| format!("self-signed certificate: {err}"))?;
        self.cert_cache.insert(cache_key, key.clone());
        Ok((key, None))
    }

    fn imported(&mut self, record: &CertificateRecord) -> Result<Arc<CertifiedKey>, String> {
        let cache_key = format!("store:{}:{}", record.name, record.fingerprint);
        self.cert_used.insert(cache_key.clone());
        if let Some(key) = self.cert_cache.get(&cache_key) {
            return Ok(key.clone());
        }
        let secrets = self
            .secrets
            .as_ref()
            .ok_or_else(|| "secretsEncryptionKey is not configured on this edge".to_owned())?;
        let key_pem = secrets
            .open(&record.key)
            .map_err(|err| format!("certificate {:?}: {err}", record.name))?;
        let key_pem = String::from_utf8(key_pem)
            .map_err(|_| format!("certificate {:?}: key is not PEM", record.name))?;
        let key = certified_key_from_pem(&record.certificate_pem, &key_pem)
            .map_err(|err| format!("certificate {:?}: {err}", record.name))?;
        self.cert_cache.insert(cache_key, key.clone());
        Ok(key)
    }
}

fn local_cert_key(site: &SiteRecord) -> String {
    let mut domains: Vec<&str> = site.all_domains().collect();
    domains.sort_unstable();
    format!("local:{}", domains.join(","))
}
