//! Turns each new desired state into what is served: stages the bundles it needs, then swaps the
//! certificates and the routing table atomically. A site whose new version fails to stage keeps
//! serving its previous version and reports the error; it is staged again with back-off
//! (`releases::STAGE_RETRY`) until it succeeds or its record changes: the run loop applies the
//! same state again at [`Reconciler::next_retry`].
//!
//! The apply is incremental. What was built (host routes, the certificate map, site statuses) is
//! kept in persistent maps, and reverse indexes say which sites an app or certificate record
//! affects; given the records changed since the state applied last
//! ([`Desired::changes_since`]), only the sites they touch are recomputed, so one change costs
//! the same with 10 sites or 10,000. The first apply of a lineage (start, a reload after a
//! compaction) recomputes every site.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use rustls::sign::CertifiedKey;
use statiko_common::backoff::Backoff;
use statiko_common::crypto::{self, Digest, SecretBox};
use statiko_common::model::{
    self, AppRecord, AppRef, CertificateKind, CertificateRecord, NodeSiteStatus, SiteRecord,
    TlsChoice,
};
use statiko_common::notify::Notifier;
use tokio::time::Instant;

use crate::bundle::StagedBundle;
use crate::desired::{Changed, Desired, Position};
use crate::metrics::EdgeMetrics;
use crate::releases::{Releases, Retained, STAGE_RETRY};
use crate::serve::tls::{CertMap, CertResolver, certified_key_from_pem};
use crate::stage::Stager;
use crate::table::{Challenge, Hosts, Route, RoutingTable, SharedTable, SiteRoute};

/// Certificates in use: name to `notAfter` (Unix ms), reported in the node status.
pub type CertExpiries = imbl::OrdMap<String, i64>;
/// Every site's status by primary domain.
pub type SiteStatuses = imbl::OrdMap<String, NodeSiteStatus>;

mod previews;

/// Bundles staged at the same time.
const STAGING_CONCURRENCY: usize = 3;

/// What one site serves now.
#[derive(Debug, Clone, Default)]
struct Served {
    app: Option<AppRef>,
    bundle: Option<Arc<StagedBundle>>,
    /// The deployment the site record named when `bundle` was staged for it.
    deployment: Option<String>,
    error: Option<String>,
}

/// One site as the last apply left it, with what it depends on.
#[derive(Debug)]
struct SiteState {
    served: Served,
    /// Host names routed to it: the primary domain and the aliases.
    hosts: Vec<String>,
    /// The app (`name@version`) it deploys, whether or not that record exists.
    app: Option<String>,
    /// The certificate records whose change can change what it presents.
    cert_deps: Vec<String>,
    /// The certificate it presents: its cache key, and its name and expiry when from the store.
    cert: Option<(String, Option<(String, i64)>)>,
}

/// The certificate chosen for a site.
struct Chosen {
    key: Arc<CertifiedKey>,
    cache_key: String,
    /// Name and `notAfter` of a certificate from the store (none for one made here).
    status: Option<(String, i64)>,
}

/// Outcome of applying one desired state, for the node status. Clones are O(1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub revision: i64,
    pub sites: SiteStatuses,
    /// Certificates in use.
    pub certificates: CertExpiries,
    /// How staging went for each deployment in `staging` state (see `releases.rs`).
    pub staging: crate::releases::StageReports,
}

impl Applied {
    /// Sites not served as desired.
    pub fn unhealthy(&self) -> impl Iterator<Item = &NodeSiteStatus> {
        self.sites.values().filter(|s| !s.healthy)
    }
}

/// Reference counts: how many sites use each key.
#[derive(Debug)]
struct Refs<K = String>(HashMap<K, usize>);

impl<K> Default for Refs<K> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<K: Eq + std::hash::Hash> Refs<K> {
    fn add<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: ToOwned<Owned = K> + Eq + std::hash::Hash + ?Sized,
    {
        match self.0.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                self.0.insert(key.to_owned(), 1);
            }
        }
    }

    /// Returns whether `key` lost its last user.
    fn release<Q>(&mut self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        match self.0.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.0.remove(key);
                true
            }
            None => false,
        }
    }
}

/// Applies desired states one after the other; owns the staging cache and certificate cache.
#[derive(Debug)]
pub struct Reconciler {
    stager: Stager,
    table: SharedTable,
    certs: Arc<CertResolver>,
    secrets: Option<SecretBox>,
    /// The state applied last; `None` before the first apply.
    position: Option<Position>,
    sites: HashMap<String, SiteState>,
    /// Sites by the app they deploy, and by the certificate records they depend on.
    app_users: HashMap<String, HashSet<String>>,
    cert_users: HashMap<String, HashSet<String>>,
    /// What is published: routes and certificates by host name, ACME challenge responses.
    hosts: Hosts,
    cert_map: CertMap,
    challenges: Arc<HashMap<String, Challenge>>,
    status: SiteStatuses,
    cert_expiries: CertExpiries,
    /// Users of each name in `cert_expiries`, of each cached certificate, of each bundle digest.
    expiry_refs: Refs,
    cert_refs: Refs,
    bundle_refs: Refs<Digest>,
    /// Parsed certificates by a key that changes when the certificate changes.
    cert_cache: HashMap<String, Arc<CertifiedKey>>,
    /// Where failed deploys are reported.
    notifier: Option<Notifier>,
    /// The last deploy error notified per site, so each distinct failure is sent once.
    notified: HashMap<String, String>,
    metrics: Option<Arc<EdgeMetrics>>,
    /// Deployments staged ahead of their cutover, and previews.
    releases: Releases,
    /// Previews served, by deployment id.
    previews: HashMap<String, previews::PreviewState>,
    /// Whether an apply changed what sites retain since the last [`Reconciler::settle`].
    retention_changed: bool,
    /// Sites whose bundle failed to stage: their back-off and when they are staged again
    /// (`releases::STAGE_RETRY`), with no change to their record.
    site_retries: HashMap<String, (Backoff, Instant)>,
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
            position: None,
            sites: HashMap::new(),
            app_users: HashMap::new(),
            cert_users: HashMap::new(),
            hosts: Hosts::default(),
            cert_map: CertMap::default(),
            challenges: Arc::default(),
            status: SiteStatuses::default(),
            cert_expiries: CertExpiries::default(),
            expiry_refs: Refs::default(),
            cert_refs: Refs::default(),
            bundle_refs: Refs::default(),
            cert_cache: HashMap::new(),
            notifier: None,
            notified: HashMap::new(),
            metrics: None,
            releases: Releases::default(),
            previews: HashMap::new(),
            retention_changed: false,
            site_retries: HashMap::new(),
        }
    }

    /// Reports failed deploys through `notifier`.
    pub fn with_notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Keeps the per-site series of `metrics` in step with the sites served.
    pub fn with_metrics(mut self, metrics: Arc<EdgeMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Applies `desired`: stage, then swap certificates and table, then evict unused bundles.
    pub async fn apply(&mut self, desired: &Desired) -> Applied {
        let (mut affected, challenges_changed) = self.affected(desired);
        // Sites that failed to stage and are due again, whether or not their record changed.
        let now = Instant::now();
        for (domain, (_, at)) in &self.site_retries {
            if *at <= now && !affected.contains(domain) {
                affected.push(domain.clone());
            }
        }
        let restored = self.restore_retained(desired).await;

        // Stage every bundle that differs from what the site serves now, a few at a time.
        let mut wanted: Vec<(String, AppRecord)> = Vec::new();
        let mut next: HashMap<String, Served> = HashMap::new();
        for domain in &affected {
            let Some(site) = desired.sites.get(domain) else {
                continue;
            };
            let previous = self.previous(domain);
            match (&site.app, desired.app_for(site)) {
                (None, _) => {
                    next.insert(domain.clone(), Served::default());
                }
                (Some(app), None) => {
                    next.insert(
                        domain.clone(),
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
                        let deployment = site.deployment.clone().or(previous.deployment.clone());
                        next.insert(
                            domain.clone(),
                            Served {
                                deployment,
                                ..previous
                            },
                        );
                    } else {
                        wanted.push((domain.clone(), record.clone()));
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
        let mut failed: HashSet<String> = HashSet::new();
        for (domain, record, result) in results {
            let served = match result {
                Ok(bundle) => Served {
                    app: Some(record.app_ref()),
                    bundle: Some(bundle),
                    deployment: desired
                        .sites
                        .get(&domain)
                        .and_then(|site| site.deployment.clone()),
                    error: None,
                },
                Err(err) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.staging_failed();
                    }
                    let mut backoff = self
                        .site_retries
                        .remove(&domain)
                        .map_or(STAGE_RETRY, |(backoff, _)| backoff);
                    let delay = backoff.next_delay();
                    self.site_retries
                        .insert(domain.clone(), (backoff, Instant::now() + delay));
                    failed.insert(domain.clone());
                    tracing::warn!(site = %domain, app = %record.app_ref(), error = %err, retry_in = ?delay, "staging failed; previous version keeps serving");
                    let message =
                        format!("deploy of {} to {domain} failed: {err}", record.app_ref());
                    if self.notified.get(&domain) != Some(&message) {
                        if let Some(notifier) = &self.notifier {
                            notifier.send(message.clone());
                        }
                        self.notified.insert(domain.clone(), message);
                    }
                    Served {
                        error: Some(format!("staging {} failed: {err}", record.app_ref())),
                        ..self.previous(&domain)
                    }
                }
            };
            next.insert(domain, served);
        }
        // Staged, unchanged, gone or with nothing to stage: no retry.
        for domain in &affected {
            if !failed.contains(domain) {
                self.site_retries.remove(domain);
            }
        }

        // Withdraw what the affected sites published; what they release is counted down only
        // after the new state took its references, so a certificate or bundle kept is not
        // dropped and remade.
        let mut released: Vec<SiteState> = Vec::new();
        let mut added: Vec<&str> = Vec::new();
        let mut removed: Vec<&str> = Vec::new();
        for domain in &affected {
            let present = desired.sites.contains_key(domain);
            match self.sites.remove(domain) {
                Some(old) => {
                    self.withdraw(domain, &old);
                    if !present {
                        removed.push(domain);
                        self.status.remove(domain);
                        self.notified.remove(domain);
                    }
                    released.push(old);
                }
                None if present => added.push(domain),
                None => {}
            }
        }

        // The counters of new sites exist before their routes take them.
        if let Some(metrics) = &self.metrics {
            metrics.update_sites(&added, &removed);
        }

        // Certificates and routes of the affected sites.
        for domain in &affected {
            let Some(site) = desired.sites.get(domain) else {
                continue;
            };
            let served = next.remove(domain).unwrap_or_default();
            let state = self.publish_site(site, served, desired);
            self.sites.insert(domain.clone(), state);
        }
        self.retention_changed |= restored;
        for old in released {
            if self.retain_replaced(&old, desired) {
                self.retention_changed = true;
                if let Some(domain) = old.hosts.first() {
                    self.refresh_retired(domain, desired);
                }
            }
            self.release(old);
        }
        if challenges_changed {
            self.challenges = Arc::new(challenges(desired));
        }
        // Deployments staging ahead of their cutover: after the sites took their references, so
        // a bundle that just went live is never evicted in between.
        let held = self.releases.apply(desired, &self.stager).await;
        for digest in &held.added {
            self.bundle_refs.add(digest);
        }
        for digest in &held.released {
            self.release_bundle(digest);
        }
        if let Some(metrics) = &self.metrics {
            for _ in 0..held.failed {
                metrics.staging_failed();
            }
        }
        // Previews, at their own hosts, with the bundles just held for them.
        self.publish_previews(desired);

        // Certificates first, so no new host is routed before its certificate is there.
        self.certs.set(self.cert_map.clone());
        self.publish_table(desired.revision);
        self.position = Some(desired.position());
        self.applied(desired.revision)
    }

    /// Swaps in the routing table built from what is published now.
    fn publish_table(&self, revision: i64) {
        self.table.store(Arc::new(RoutingTable {
            revision,
            hosts: self.hosts.clone(),
            challenges: self.challenges.clone(),
        }));
    }

    /// What is applied at `revision`, for the node status.
    fn applied(&self, revision: i64) -> Applied {
        Applied {
            revision,
            sites: self.status.clone(),
            certificates: self.cert_expiries.clone(),
            staging: self.releases.reports(),
        }
    }

    /// When a site, deployment or preview that failed to stage is due to be staged again: apply
    /// the same desired state again then.
    pub fn next_retry(&self) -> Option<Instant> {
        let sites = self.site_retries.values().map(|(_, at)| *at).min();
        match (sites, self.releases.next_retry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The sites to recompute, and whether the challenge responses must be rebuilt.
    fn affected(&self, desired: &Desired) -> (Vec<String>, bool) {
        let changes = self.position.and_then(|at| desired.changes_since(at));
        let Some(changes) = changes else {
            // Everything: the sites there are and the sites that were.
            let mut all: HashSet<&String> = desired.sites.keys().collect();
            all.extend(self.sites.keys());
            return (all.into_iter().cloned().collect(), true);
        };
        let mut affected: HashSet<String> = HashSet::new();
        let mut challenges = false;
        let users = |index: &HashMap<String, HashSet<String>>, key: &str| {
            index
                .get(key)
                .into_iter()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
        };
        for change in changes {
            match change {
                Changed::Site(domain) => {
                    // A challenge answers only for its site's current domains.
                    challenges |= !desired.challenges.is_empty() || !self.challenges.is_empty();
                    affected.insert(domain);
                }
                Changed::AcmeOrder(domain) => {
                    affected.insert(domain);
                }
                Changed::App(app) => affected.extend(users(&self.app_users, &app)),
                Changed::Certificate(name) => affected.extend(users(&self.cert_users, &name)),
                // A challenge may be for a preview's host.
                Changed::Challenge(_) | Changed::Preview(_) => challenges = true,
            }
        }
        (affected.into_iter().collect(), challenges)
    }

    /// What a site serves now (nothing if it is new).
    fn previous(&self, domain: &str) -> Served {
        self.sites
            .get(domain)
            .map(|s| s.served.clone())
            .unwrap_or_default()
    }

    /// Removes a site's routes, certificates and index entries.
    fn withdraw(&mut self, domain: &str, old: &SiteState) {
        for host in &old.hosts {
            let owned = match self.hosts.get(host) {
                Some(Route::Site(route)) => route.domain == domain,
                Some(Route::Alias { primary }) => primary == domain,
                Some(Route::Preview(_)) | None => false,
            };
            if owned {
                self.hosts.remove(host);
                self.cert_map.remove(host);
            }
        }
        if let Some(app) = &old.app {
            unindex(&mut self.app_users, app, domain);
        }
        for name in &old.cert_deps {
            unindex(&mut self.cert_users, name, domain);
        }
    }

    /// Keeps the bundle a site served before for rollback and skew protection (`releases.rs`),
    /// or drops what a removed site kept. Returns whether what the site keeps changed.
    fn retain_replaced(&mut self, old: &SiteState, desired: &Desired) -> bool {
        let Some(domain) = old.hosts.first().cloned() else {
            return false;
        };
        let Some(site) = desired.sites.get(&domain) else {
            let forgotten = self.releases.forget(&domain);
            for digest in &forgotten {
                self.release_bundle(digest);
            }
            return !forgotten.is_empty();
        };
        let Some(bundle) = &old.served.bundle else {
            return false;
        };
        let live = self
            .sites
            .get(&domain)
            .and_then(|s| s.served.bundle.as_ref())
            .map(|b| b.digest);
        if live == Some(bundle.digest) {
            return false;
        }
        let retired = Retained {
            bundle: bundle.clone(),
            deployment: old.served.deployment.clone().unwrap_or_else(|| {
                old.served
                    .app
                    .as_ref()
                    .map(AppRef::to_string)
                    .unwrap_or_default()
            }),
            retired_at: site.deployed_at.unwrap_or_else(model::now_ms),
            bytes: bundle.disk_bytes(),
        };
        self.bundle_refs.add(&bundle.digest);
        for digest in self.releases.retain(&domain, retired, live) {
            self.release_bundle(&digest);
        }
        true
    }

    /// Counts down what a replaced or removed site used.
    fn release(&mut self, old: SiteState) {
        if let Some(cert) = old.cert {
            self.release_cert(cert);
        }
        if let Some(bundle) = &old.served.bundle {
            self.release_bundle(&bundle.digest);
        }
    }

    /// Counts down one user of a certificate (its cache key, and its name and expiry when
    /// from the store).
    fn release_cert(&mut self, (cache_key, status): (String, Option<(String, i64)>)) {
        if self.cert_refs.release(&cache_key) {
            self.cert_cache.remove(&cache_key);
        }
        if let Some((name, _)) = status
            && self.expiry_refs.release(&name)
        {
            self.cert_expiries.remove(&name);
        }
    }

    /// Counts down one user of a bundle; evicts what no one uses any more.
    fn release_bundle(&mut self, digest: &Digest) {
        if self.bundle_refs.release(digest) {
            let keep: HashSet<Digest> = self.bundle_refs.0.keys().copied().collect();
            let stager = self.stager.clone();
            // Off the apply path: evicting removes directories.
            tokio::spawn(async move {
                stager.evict_except(&keep).await;
            });
        }
    }

    /// Publishes one site's certificate and routes, indexes what it depends on, and records
    /// its status.
    fn publish_site(&mut self, site: &SiteRecord, served: Served, desired: &Desired) -> SiteState {
        let domain = &site.domain;
        let hosts: Vec<String> = site.all_domains().map(str::to_owned).collect();
        let cert_deps = certificate_deps(site);
        let (cert, cert_error) = match self.certificate_for(site, desired) {
            Ok(chosen) => {
                for host in &hosts {
                    self.cert_map.insert(host.clone(), chosen.key.clone());
                }
                self.cert_refs.add(&chosen.cache_key);
                if let Some((name, not_after)) = &chosen.status {
                    self.expiry_refs.add(name);
                    self.cert_expiries.insert(name.clone(), *not_after);
                }
                (Some((chosen.cache_key, chosen.status)), None)
            }
            Err(err) => (None, Some(err)),
        };
        let route = Arc::new(SiteRoute {
            domain: domain.clone(),
            app: served.app.clone(),
            bundle: served.bundle.clone(),
            counters: self
                .metrics
                .as_ref()
                .map_or_else(Default::default, |metrics| metrics.site(domain)),
            retired: self.retired_for(site),
        });
        self.hosts.insert(domain.clone(), Route::Site(route));
        for alias in &site.aliases {
            self.hosts.insert(
                alias.clone(),
                Route::Alias {
                    primary: domain.clone(),
                },
            );
        }
        if let Some(bundle) = &served.bundle {
            self.bundle_refs.add(&bundle.digest);
        }
        let app = site.app.as_ref().map(crate::desired::app_key);
        if let Some(app) = &app {
            index(&mut self.app_users, app, domain);
        }
        for name in &cert_deps {
            index(&mut self.cert_users, name, domain);
        }

        let mut error = match (served.error.clone(), cert_error) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        if site.tls == TlsChoice::Acme
            && let Some(acme) = desired
                .acme_orders
                .get(domain)
                .and_then(|o| o.last_error.as_ref())
        {
            let acme = format!("acme: {acme}");
            error = Some(match error {
                Some(e) => format!("{e}; {acme}"),
                None => acme,
            });
        }
        self.status.insert(
            domain.clone(),
            NodeSiteStatus {
                domain: domain.clone(),
                app: served.app.clone(),
                healthy: error.is_none(),
                error,
                retained: self.retained_ids(domain),
            },
        );
        SiteState {
            served,
            hosts,
            app,
            cert_deps,
            cert,
        }
    }

    /// The certificate a site presents, with its expiry for the status.
    fn certificate_for(&mut self, site: &SiteRecord, desired: &Desired) -> Result<Chosen, String> {
        if let TlsChoice::Imported { certificate } = &site.tls {
            let record = desired
                .certificates
                .get(certificate)
                .ok_or_else(|| format!("certificate {certificate:?} does not exist"))?;
            return self.imported(record);
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
                Ok(chosen) => return Ok(chosen),
                Err(err) => {
                    tracing::warn!(site = %site.domain, error = %err, "unusable leader certificate")
                }
            }
        }
        let cache_key = local_cert_key(site);
        if let Some(key) = self.cert_cache.get(&cache_key) {
            return Ok(Chosen {
                key: key.clone(),
                cache_key,
                status: None,
            });
        }
        let domains: Vec<String> = site.all_domains().map(str::to_owned).collect();
        let (cert, key) = crypto::self_signed(&domains, 90)
            .map_err(|err| format!("self-signed certificate: {err}"))?;
        let key = certified_key_from_pem(&cert, &key)
            .map_err(|err| format!("self-signed certificate: {err}"))?;
        self.cert_cache.insert(cache_key.clone(), key.clone());
        Ok(Chosen {
            key,
            cache_key,
            status: None,
        })
    }

    /// A certificate record from the store, parsed once per name and fingerprint.
    fn imported(&mut self, record: &CertificateRecord) -> Result<Chosen, String> {
        let cache_key = format!("store:{}:{}", record.name, record.fingerprint);
        let status = Some((record.name.clone(), record.not_after));
        if let Some(key) = self.cert_cache.get(&cache_key) {
            return Ok(Chosen {
                key: key.clone(),
                cache_key,
                status,
            });
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
        self.cert_cache.insert(cache_key.clone(), key.clone());
        Ok(Chosen {
            key,
            cache_key,
            status,
        })
    }
}

/// The certificate records whose change can change what `site` presents.
fn certificate_deps(site: &SiteRecord) -> Vec<String> {
    match &site.tls {
        TlsChoice::Imported { certificate } => vec![certificate.clone()],
        TlsChoice::Acme => vec![
            model::leader_certificate_name(CertificateKind::Acme, &site.domain),
            model::leader_certificate_name(CertificateKind::SelfSigned, &site.domain),
        ],
        TlsChoice::SelfSigned => vec![model::leader_certificate_name(
            CertificateKind::SelfSigned,
            &site.domain,
        )],
    }
}

fn index(index: &mut HashMap<String, HashSet<String>>, key: &str, domain: &str) {
    index
        .entry(key.to_owned())
        .or_default()
        .insert(domain.to_owned());
}

fn unindex(index: &mut HashMap<String, HashSet<String>>, key: &str, domain: &str) {
    if let Some(users) = index.get_mut(key) {
        users.remove(domain);
        if users.is_empty() {
            index.remove(key);
        }
    }
}

/// ACME challenge responses, each for the domains of the site it names.
fn challenges(desired: &Desired) -> HashMap<String, Challenge> {
    desired
        .challenges
        .iter()
        .filter_map(|(token, record)| {
            let domains: Vec<String> = match desired.sites.get(&record.site) {
                Some(site) => record
                    .domains
                    .iter()
                    .filter(|d| site.all_domains().any(|s| s == d.as_str()))
                    .cloned()
                    .collect(),
                // The leader orders a preview's certificate under its host as the site name.
                None => desired
                    .previews
                    .values()
                    .filter_map(|p| p.preview.as_ref())
                    .find(|p| p.host == record.site)
                    .map(|p| vec![p.host.clone()])
                    .filter(|hosts| record.domains == *hosts)?,
            };
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
        .collect()
}

fn local_cert_key(site: &SiteRecord) -> String {
    let mut domains: Vec<&str> = site.all_domains().collect();
    domains.sort_unstable();
    format!("local:{}", domains.join(","))
}

mod retired;
#[cfg(test)]
mod tests;
