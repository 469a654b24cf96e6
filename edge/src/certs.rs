//! Leader-only certificate work: self-signed certificates for every site that is not imported,
//! ACME (HTTP-01) certificates for `--tls acme` sites, their renewal, garbage collection of the
//! leader's records, and expiry reminders for imported certificates.
//!
//! It runs while [`Leadership::token`] lives (it stops the moment the lease is lost). A pass
//! reads sites and certificates from the edge's watched copy of the store (never from a state
//! persisted by an earlier run) and the small ACME records from the store; every write carries
//! the leadership fence plus a compare on each record it was decided from, at the revision it
//! was read, so a decision made on a copy that fell behind fails and is retried. Writes put
//! `meta/state`, so edges treat leader-made records as desired state. A desired-state change
//! triggers a pass over the sites it touched (at most one per [`PASS_GAP_FACTOR`] times the
//! last pass's duration); every [`PASS_INTERVAL`] a full pass covers every site, collects
//! garbage and sends reminders, so work is O(changed) per change and O(sites) per interval.
//!
//! Naming (see `model::leader_certificate_name`): `certificates/selfsigned-<h>` and
//! `certificates/acme-<h>`, `h` derived from the site's primary domain, with `site` set.
//!
//! ACME, per site, one task at a time on the leader:
//! 1. the account (credentials sealed under `acme/account`) is created once and shared;
//! 2. a new order's URL is written to `acme/orders/{domain}` before anything waits on it, so a new
//!    leader resumes that order instead of placing another;
//! 3. the HTTP-01 key authorizations go to `acme/challenges/{token}`; the leader waits until every
//!    live edge has applied that revision (no fixed sleep), then tells the CA they are ready;
//! 4. the CSR's private key is sealed into the order record *before* finalizing, so a successor
//!    can collect a certificate its predecessor finalized;
//! 5. the certificate is written and the order and its challenges deleted in one transaction.
//!
//! Failures are recorded in the order record (`attempts`, `lastError`, `nextAttemptAt`: backoff
//! from 5 s doubling up to an hour), shown in every edge's status for the site, and notified.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeStatus,
    ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use statiko_common::config::AcmeConfig;
use statiko_common::crypto::{self, SecretBox};
use statiko_common::keys::KeySchema;
use statiko_common::model::{
    self, AcmeAccountRecord, AcmeOrderRecord, CertificateKind, CertificateRecord, ChallengeRecord,
    NodeStatusRecord, ReminderRecord, SiteRecord, TlsChoice,
};
use statiko_common::notify::Notifier;
use statiko_common::store::{Compare, Store, StoreError, TxnOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::desired::{Changed, Desired, Position};
use crate::leader::Leadership;

const DAY_MS: i64 = 86_400_000;
/// Validity of a self-signed certificate.
const SELF_SIGNED_DAYS: u32 = 365;
/// A self-signed certificate is re-made when less than this is left.
const SELF_SIGNED_RENEW_MS: i64 = 14 * DAY_MS;
/// How often the leader re-checks everything even without a change.
pub const PASS_INTERVAL: Duration = Duration::from_secs(5);
/// A pass triggered by a change waits this many times the last pass's duration after it.
const PASS_GAP_FACTOR: u32 = 4;
/// Expiry reminders, in days before `notAfter` (0: expired).
const REMINDER_DAYS: [i64; 6] = [30, 14, 7, 3, 1, 0];
/// Challenge records older than this with no order running are deleted.
const STALE_CHALLENGE_MS: i64 = 10 * 60_000;
/// How long the leader waits for the edges to apply stored challenges.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Polling of the ACME server for authorization and issuance.
const ACME_POLL_TIMEOUT: Duration = Duration::from_secs(90);
const MIN_BACKOFF_MS: i64 = 5_000;
const MAX_BACKOFF_MS: i64 = 3_600_000;

/// The sites a pass after `changes` must look at, or `None` when that takes a full pass (a
/// certificate record went and the sites that wanted it are not known).
fn changed_sites(desired: &Desired, changes: HashSet<Changed>) -> Option<HashSet<String>> {
    let mut sites = HashSet::new();
    for change in changes {
        match change {
            Changed::Site(domain) | Changed::AcmeOrder(domain) => {
                sites.insert(domain);
            }
            Changed::Certificate(name) => match desired.certificates.get(&name) {
                Some(record) => sites.extend(record.site.clone()),
                None => return None,
            },
            Changed::App(_) | Changed::Challenge(_) => {}
        }
    }
    Some(sites)
}

/// Why one issuance attempt failed.
#[derive(Debug)]
struct IssueError {
    message: String,
    /// Drop the order in flight: the next attempt places a new one.
    restart: bool,
}

impl IssueError {
    fn new(message: impl Into<String>, restart: bool) -> Self {
        Self {
            message: message.into(),
            restart,
        }
    }
}

impl From<instant_acme::Error> for IssueError {
    fn from(err: instant_acme::Error) -> Self {
        let restart = matches!(err, instant_acme::Error::Api(_));
        Self::new(format!("acme: {err}"), restart)
    }
}

impl From<StoreError> for IssueError {
    fn from(err: StoreError) -> Self {
        Self::new(err.to_string(), false)
    }
}

impl From<crypto::CryptoError> for IssueError {
    fn from(err: crypto::CryptoError) -> Self {
        Self::new(err.to_string(), true)
    }
}

impl From<serde_json::Error> for IssueError {
    fn from(err: serde_json::Error) -> Self {
        Self::new(format!("unreadable record: {err}"), false)
    }
}

/// One ACME task on the leader.
#[derive(Debug)]
struct AcmeTask {
    domains: Vec<String>,
    token: CancellationToken,
    handle: JoinHandle<()>,
}

/// The leader's certificate jobs. Cheap to share (`Arc`).
pub struct CertJobs {
    store: Store,
    keys: KeySchema,
    secrets: Option<SecretBox>,
    acme: AcmeConfig,
    data_dir: PathBuf,
    node: String,
    notifier: Notifier,
    /// The ACME account for `acme.directory`, once loaded.
    account: Mutex<Option<(String, Account)>>,
}

impl std::fmt::Debug for CertJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertJobs")
            .field("node", &self.node)
            .field("directory", &self.acme.directory)
            .finish_non_exhaustive()
    }
}

impl CertJobs {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        keys: KeySchema,
        secrets: Option<SecretBox>,
        acme: AcmeConfig,
        data_dir: PathBuf,
        node: String,
        notifier: Notifier,
    ) -> Self {
        Self {
            store,
            keys,
            secrets,
            acme,
            data_dir,
            node,
            notifier,
            account: Mutex::new(None),
        }
    }

    /// Runs the jobs until `lead.token` is cancelled; `desired` only triggers passes.
    pub async fn run(
        self: Arc<Self>,
        lead: Leadership,
        mut desired: watch::Receiver<Arc<Desired>>,
    ) {
        tracing::info!("leader jobs started");
        let mut tasks: HashMap<String, AcmeTask> = HashMap::new();
        let mut tick = tokio::time::interval(PASS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut desired_open = true;
        // When the last pass ended and what it took: passes a change triggers keep a gap of
        // PASS_GAP_FACTOR times that, so at 10,000 sites a stream of changes cannot keep the
        // leader busy re-reading the store (a pass over 10 sites takes a millisecond or two).
        let mut last: Option<(tokio::time::Instant, Duration)> = None;
        // The state the last successful pass worked on: a change triggers a pass over the
        // sites changed since (the tick's pass covers everything, garbage and reminders too).
        let mut passed: Option<Position> = None;
        loop {
            let mut full = false;
            tokio::select! {
                () = lead.token.cancelled() => break,
                _ = tick.tick() => full = true,
                changed = desired.changed(), if desired_open => {
                    desired_open = changed.is_ok();
                    desired.borrow_and_update();
                    if let Some((ended, took)) = last {
                        tokio::select! {
                            () = lead.token.cancelled() => break,
                            () = tokio::time::sleep_until(ended + took * PASS_GAP_FACTOR) => {}
                        }
                    }
                }
            }
            let state = desired.borrow().clone();
            if !state.synced() {
                // Not read from the store yet: a pass would take every record for garbage.
                continue;
            }
            let scope = passed
                .filter(|_| !full)
                .and_then(|at| state.changes_since(at))
                .and_then(|changes| changed_sites(&state, changes));
            let started = tokio::time::Instant::now();
            let pass = tokio::select! {
                () = lead.token.cancelled() => break,
                pass = self.pass(&lead, &mut tasks, &state, scope.as_ref()) => pass,
            };
            last = Some((tokio::time::Instant::now(), started.elapsed()));
            match pass {
                Ok(()) => passed = Some(state.position()),
                Err(err) => tracing::warn!(error = %err, "certificate pass failed; retrying"),
            }
        }
        for task in tasks.values() {
            task.token.cancel();
        }
        for (_, task) in tasks {
            let _ = task.handle.await;
        }
        tracing::info!("leader jobs stopped");
    }

    /// One pass over every site and every leader-made record, or, with `scope`, over those sites
    /// only (no garbage collection, no reminders). Sites and certificates come from
    /// the edge's synced copy of the store (`desired`, the state that triggered the pass), not
    /// from a fresh read: at 10,000 sites a read is 15 MB. Acting on it is safe because every
    /// write compares the records it depends on at the revisions that copy holds; a write based
    /// on a copy a few milliseconds old fails its compare and the next pass redoes it.
    async fn pass(
        self: &Arc<Self>,
        lead: &Leadership,
        tasks: &mut HashMap<String, AcmeTask>,
        desired: &Desired,
        scope: Option<&HashSet<String>>,
    ) -> Result<(), StoreError> {
        // Forget finished tasks before reading, so one finishing meanwhile is not started again.
        tasks.retain(|_, t| !t.handle.is_finished());
        let now = model::now_ms();
        let sites: Vec<&SiteRecord> = match scope {
            None => desired.sites.values().collect(),
            Some(scope) => scope.iter().filter_map(|d| desired.sites.get(d)).collect(),
        };
        let cert = |name: &str| {
            let record = desired.certificates.get(name)?;
            let revision = desired.revisions.get(&self.keys.certificate(name));
            Some((record, revision.copied().unwrap_or(0)))
        };
        let acme = self.store.snapshot(&self.keys.acme()).await?;
        let mut orders: HashMap<String, (AcmeOrderRecord, i64)> = HashMap::new();
        let mut challenges: Vec<(String, ChallengeRecord, i64)> = Vec::new();
        let mut reminders: HashMap<String, (ReminderRecord, i64)> = HashMap::new();
        for kv in &acme.kvs {
            if let Some(name) = kv.key.strip_prefix(&self.keys.reminders()) {
                if let Ok(r) = model::decode(&kv.value) {
                    reminders.insert(name.to_owned(), (r, kv.mod_revision));
                }
            } else if let Some(site) = kv.key.strip_prefix(&self.keys.acme_orders()) {
                if let Ok(o) = model::decode(&kv.value) {
                    orders.insert(site.to_owned(), (o, kv.mod_revision));
                }
            } else if kv.key.starts_with(&self.keys.acme_challenges())
                && let Ok(c) = model::decode(&kv.value)
            {
                challenges.push((kv.key.clone(), c, kv.mod_revision));
            }
        }

        let mut wanted: HashSet<String> = HashSet::new();
        for site in sites.iter().copied() {
            if matches!(site.tls, TlsChoice::Imported { .. }) {
                continue;
            }
            let domains = site_domains(site);
            let name = model::leader_certificate_name(CertificateKind::SelfSigned, &site.domain);
            wanted.insert(name.clone());
            let existing = cert(&name);
            if !existing.is_some_and(|(r, _)| self_signed_fresh(r, site, &domains, now)) {
                if existing.is_some_and(|(r, _)| r.kind == CertificateKind::Imported) {
                    tracing::warn!(name = %name, "an imported certificate holds the self-signed name");
                } else if let Err(err) = self
                    .make_self_signed(
                        lead,
                        site,
                        &domains,
                        existing.map(|(_, rev)| rev),
                        desired
                            .revisions
                            .get(&self.keys.site(&site.domain))
                            .copied(),
                    )
                    .await
                {
                    tracing::warn!(site = %site.domain, error = %err.message, "self-signed certificate not made");
                }
            }

            if site.tls != TlsChoice::Acme {
                continue;
            }
            let name = model::leader_certificate_name(CertificateKind::Acme, &site.domain);
            wanted.insert(name.clone());
            if cert(&name).is_some_and(|(r, _)| acme_fresh(r, site, now)) {
                if let Some(task) = tasks.remove(&site.domain) {
                    task.token.cancel();
                }
                continue;
            }
            match tasks.get(&site.domain) {
                Some(task) if task.domains == domains => continue,
                Some(_) => {
                    // The names changed under a running order: start over for the new set.
                    if let Some(task) = tasks.remove(&site.domain) {
                        task.token.cancel();
                    }
                }
                None => {}
            }
            if orders
                .get(&site.domain)
                .is_some_and(|(o, _)| o.domains == domains && o.next_attempt_at > now)
            {
                continue; // backing off after a failure
            }
            let token = lead.token.child_token();
            let handle = tokio::spawn(self.clone().acme_task(
                lead.clone(),
                token.clone(),
                site.domain.clone(),
                domains.clone(),
            ));
            tasks.insert(
                site.domain.clone(),
                AcmeTask {
                    domains,
                    token,
                    handle,
                },
            );
        }
        if let Some(scope) = scope {
            // Orders of the changed sites that no longer want ACME stop now; their records go
            // in the next full pass.
            for domain in scope {
                let acme = desired
                    .sites
                    .get(domain)
                    .is_some_and(|s| s.tls == TlsChoice::Acme);
                if !acme && let Some(task) = tasks.remove(domain) {
                    task.token.cancel();
                }
            }
            return Ok(());
        }
        let acme_sites: HashSet<&str> = sites
            .iter()
            .filter(|s| s.tls == TlsChoice::Acme)
            .map(|s| s.domain.as_str())
            .collect();
        tasks.retain(|site, task| {
            let keep = acme_sites.contains(site.as_str());
            if !keep {
                task.token.cancel();
            }
            keep
        });

        let certs: HashMap<&str, (&CertificateRecord, i64)> = desired
            .certificates
            .keys()
            .filter_map(|name| Some((name.as_str(), cert(name)?)))
            .collect();
        // Garbage: leader-made certificates no site needs, orders and challenges of no order.
        // Each delete also compares the site it was made for as this copy has it, so a site
        // created or changed meanwhile keeps its certificate.
        let mut garbage: Vec<(String, i64, Option<&str>)> = Vec::new();
        for (name, (record, rev)) in &certs {
            if record.kind != CertificateKind::Imported
                && !wanted.contains(*name)
                && let Some(site) = &record.site
            {
                garbage.push((self.keys.certificate(name), *rev, Some(site.as_str())));
            }
        }
        for (site, (_, rev)) in &orders {
            if !acme_sites.contains(site.as_str()) {
                garbage.push((self.keys.acme_order(site), *rev, None));
            }
        }
        for (key, challenge, rev) in &challenges {
            if !tasks.contains_key(&challenge.site)
                && (!acme_sites.contains(challenge.site.as_str())
                    || challenge.created_at + STALE_CHALLENGE_MS < now)
            {
                garbage.push((key.clone(), *rev, None));
            }
        }
        for (name, (_, rev)) in &reminders {
            if !certs.contains_key(name.as_str()) {
                garbage.push((self.keys.reminder(name), *rev, None));
            }
        }
        for (key, rev, site) in garbage {
            let mut compares = lead.compares();
            compares.push(Compare::unchanged_since(key.clone(), rev));
            if let Some(site) = site {
                let site_key = self.keys.site(site);
                compares.push(match desired.revisions.get(&site_key) {
                    Some(site_rev) => Compare::unchanged_since(site_key, *site_rev),
                    None => Compare::absent(site_key),
                });
            }
            let ops = vec![TxnOp::delete(key.clone()), self.meta_state()];
            if self.store.txn(compares, ops).await?.succeeded {
                tracing::info!(key = %key, "deleted an unused leader record");
            }
        }

        self.remind(lead, &sites, &certs, &reminders, now).await
    }

    /// Expiry reminders for imported certificates in use: once per threshold crossed.
    async fn remind(
        &self,
        lead: &Leadership,
        sites: &[&SiteRecord],
        certs: &HashMap<&str, (&CertificateRecord, i64)>,
        reminders: &HashMap<String, (ReminderRecord, i64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut users_of: HashMap<&str, Vec<&str>> = HashMap::new();
        for site in sites {
            if let TlsChoice::Imported { certificate } = &site.tls {
                users_of
                    .entry(certificate.as_str())
                    .or_default()
                    .push(site.domain.as_str());
            }
        }
        for (name, (record, _)) in certs {
            if record.kind != CertificateKind::Imported {
                continue;
            }
            let Some(days) = reminder_threshold(record.not_after - now) else {
                continue;
            };
            let Some(users) = users_of.get(name) else {
                continue;
            };
            let previous = reminders.get(*name);
            if previous.is_some_and(|(r, _)| r.fingerprint == record.fingerprint && r.days <= days)
            {
                continue;
            }
            let key = self.keys.reminder(name);
            let reminder = ReminderRecord {
                fingerprint: record.fingerprint.clone(),
                days,
                sent_at: now,
            };
            let mut compares = lead.compares();
            compares.push(match previous {
                Some((_, rev)) => Compare::unchanged_since(key.clone(), *rev),
                None => Compare::absent(key.clone()),
            });
            let put = TxnOp::put(key, model::encode(&reminder));
            if !self.store.txn(compares, vec![put]).await?.succeeded {
                continue;
            }
            let when = httpdate::fmt_http_date(
                UNIX_EPOCH + Duration::from_millis(u64::try_from(record.not_after).unwrap_or(0)),
            );
            let message = if record.not_after <= now {
                format!(
                    "certificate {name} (used by {}) has expired ({when})",
                    users.join(", ")
                )
            } else {
                format!(
                    "certificate {name} (used by {}) expires in {} days ({when})",
                    users.join(", "),
                    (record.not_after - now).div_euclid(DAY_MS)
                )
            };
            self.notifier.send(message);
        }
        Ok(())
    }

    fn meta_state(&self) -> TxnOp {
        TxnOp::put(self.keys.meta_state(), Vec::new())
    }

    fn secrets(&self) -> Result<&SecretBox, IssueError> {
        self.secrets.as_ref().ok_or_else(|| {
            IssueError::new(
                "secretsEncryptionKey is not configured: private keys cannot be stored",
                false,
            )
        })
    }

    async fn make_self_signed(
        &self,
        lead: &Leadership,
        site: &SiteRecord,
        domains: &[String],
        revision: Option<i64>,
        site_revision: Option<i64>,
    ) -> Result<(), IssueError> {
        let secrets = self.secrets()?;
        let (cert_pem, key_pem) = crypto::self_signed(domains, SELF_SIGNED_DAYS)?;
        let parsed = crypto::parse_certificate_and_key(&cert_pem, &key_pem)?;
        let name = model::leader_certificate_name(CertificateKind::SelfSigned, &site.domain);
        let record = CertificateRecord::new(
            name.clone(),
            CertificateKind::SelfSigned,
            parsed,
            secrets.seal(key_pem.as_bytes()),
            Some(site.domain.clone()),
            model::now_ms(),
        );
        let key = self.keys.certificate(&name);
        let mut compares = lead.compares();
        compares.push(match revision {
            Some(rev) => Compare::unchanged_since(key.clone(), rev),
            None => Compare::absent(key.clone()),
        });
        // Made for the site as it was read: not for one deleted or renamed meanwhile.
        if let Some(rev) = site_revision {
            compares.push(Compare::unchanged_since(self.keys.site(&site.domain), rev));
        }
        let ops = vec![TxnOp::put(key, model::encode(&record)), self.meta_state()];
        if self.store.txn(compares, ops).await?.succeeded {
            tracing::info!(site = %site.domain, name = %name, "made a self-signed certificate");
        }
        Ok(())
    }

    /// One ACME attempt for a site; on failure the error is recorded and notified.
    async fn acme_task(
        self: Arc<Self>,
        lead: Leadership,
        token: CancellationToken,
        site: String,
        domains: Vec<String>,
    ) {
        let result = tokio::select! {
            () = token.cancelled() => return,
            result = self.issue(&lead, &site, &domains) => result,
        };
        if let Err(err) = result {
            if token.is_cancelled() {
                return;
            }
            tracing::warn!(site = %site, error = %err.message, "ACME issuance failed");
            if let Err(store_err) = self.record_failure(&lead, &site, &domains, &err).await {
                tracing::warn!(site = %site, error = %store_err, "ACME failure not recorded");
            }
        }
    }

    async fn issue(
        &self,
        lead: &Leadership,
        site: &str,
        domains: &[String],
    ) -> Result<(), IssueError> {
        let secrets = self.secrets()?;
        let account = self.account(lead).await?;
        let order_key = self.keys.acme_order(site);
        let (mut record, mut revision) = match self.store.get(&order_key).await? {
            Some(kv) => (
                model::decode::<AcmeOrderRecord>(&kv.value)?,
                kv.mod_revision,
            ),
            None => (AcmeOrderRecord::default(), 0),
        };
        if record.domains != domains {
            record = AcmeOrderRecord::default();
        }

        // Resume the order in flight, if there is one for these names.
        let mut order = None;
        if let Some(url) = record.url.clone() {
            match account.order(url).await {
                Ok(mut resumed) => {
                    let status = resumed.state().status;
                    let usable = match status {
                        OrderStatus::Pending | OrderStatus::Ready => true,
                        OrderStatus::Processing | OrderStatus::Valid => record.key.is_some(),
                        OrderStatus::Invalid => false,
                    };
                    if usable {
                        tracing::info!(site, status = ?status, "resuming the ACME order in flight");
                        order = Some(resumed);
                    }
                }
                Err(err) => tracing::info!(site, error = %err, "the stored ACME order is gone"),
            }
        }
        let mut order = match order {
            Some(order) => order,
            None => {
                let identifiers: Vec<Identifier> =
                    domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
                let order = account.new_order(&NewOrder::new(&identifiers)).await?;
                record = AcmeOrderRecord {
                    site: site.to_owned(),
                    domains: domains.to_vec(),
                    url: Some(order.url().to_owned()),
                    key: None,
                    ..record
                };
                revision = self
                    .write_order(lead, &order_key, &mut record, revision)
                    .await?;
                tracing::info!(site, url = %order.url(), "placed an ACME order");
                order
            }
        };

        if order.state().status == OrderStatus::Pending {
            self.answer_challenges(lead, &mut order, site).await?;
            let policy = RetryPolicy::new().timeout(ACME_POLL_TIMEOUT);
            let status = order.poll_ready(&policy).await?;
            if status != OrderStatus::Ready {
                return Err(IssueError::new(
                    format!("the order became {status:?}"),
                    true,
                ));
            }
        }
        let key_pem = match (order.state().status, record.key.clone()) {
            (OrderStatus::Ready, _) => {
                let (csr, key_pem) = csr(domains)?;
                record.key = Some(secrets.seal(key_pem.as_bytes()));
                revision = self
                    .write_order(lead, &order_key, &mut record, revision)
                    .await?;
                order.finalize_csr(&csr).await?;
                key_pem
            }
            (OrderStatus::Processing | OrderStatus::Valid, Some(sealed)) => {
                String::from_utf8(secrets.open(&sealed)?)
                    .map_err(|_| IssueError::new("the stored order key is not PEM", true))?
            }
            (status, _) => {
                return Err(IssueError::new(format!("the order is {status:?}"), true));
            }
        };
        let chain = order
            .poll_certificate(&RetryPolicy::new().timeout(ACME_POLL_TIMEOUT))
            .await?;
        let parsed = crypto::parse_certificate_and_key(&chain, &key_pem)?;
        let name = model::leader_certificate_name(CertificateKind::Acme, site);
        let certificate = CertificateRecord::new(
            name.clone(),
            CertificateKind::Acme,
            parsed,
            secrets.seal(key_pem.as_bytes()),
            Some(site.to_owned()),
            model::now_ms(),
        );
        let mut compares = lead.compares();
        compares.push(Compare::unchanged_since(order_key.clone(), revision));
        let mut ops = vec![
            TxnOp::put(self.keys.certificate(&name), model::encode(&certificate)),
            TxnOp::delete(order_key),
            self.meta_state(),
        ];
        for kv in self.store.snapshot(&self.keys.acme_challenges()).await?.kvs {
            if model::decode::<ChallengeRecord>(&kv.value).is_ok_and(|c| c.site == site) {
                ops.push(TxnOp::delete(kv.key));
            }
        }
        if !self.store.txn(compares, ops).await?.succeeded {
            return Err(IssueError::new(
                "the order record changed while issuing (another leader?)",
                false,
            ));
        }
        tracing::info!(site, name = %name, not_after = certificate.not_after, "ACME certificate issued");
        Ok(())
    }

    /// Stores the HTTP-01 responses, waits until the edges serve them, then tells the CA.
    async fn answer_challenges(
        &self,
        lead: &Leadership,
        order: &mut instant_acme::Order,
        site: &str,
    ) -> Result<(), IssueError> {
        let now = model::now_ms();
        let mut records = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let domain = authz.identifier().to_string();
            let challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                IssueError::new(format!("no http-01 challenge for {domain}"), true)
            })?;
            records.push(ChallengeRecord {
                token: challenge.token.clone(),
                key_authorization: challenge.key_authorization().as_str().to_owned(),
                site: site.to_owned(),
                domains: vec![domain],
                created_at: now,
            });
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut ops: Vec<TxnOp> = records
            .iter()
            .map(|c| TxnOp::put(self.keys.acme_challenge(&c.token), model::encode(c)))
            .collect();
        ops.push(self.meta_state());
        let result = self.store.txn(lead.compares(), ops).await?;
        if !result.succeeded {
            return Err(IssueError::new("no longer leader", false));
        }
        self.wait_applied(result.revision).await;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut challenge) = authz.challenge(ChallengeType::Http01)
                && challenge.status == ChallengeStatus::Pending
            {
                challenge.set_ready().await?;
            }
        }
        Ok(())
    }

    /// Waits until every live edge has applied `revision` (or [`PROPAGATION_TIMEOUT`]).
    async fn wait_applied(&self, revision: i64) {
        let deadline = tokio::time::Instant::now() + PROPAGATION_TIMEOUT;
        loop {
            let behind = match self.store.snapshot(&self.keys.nodes()).await {
                Ok(snapshot) => snapshot
                    .kvs
                    .iter()
                    .filter_map(|kv| model::decode::<NodeStatusRecord>(&kv.value).ok())
                    .filter(|n| n.applied_revision < revision)
                    .map(|n| n.name)
                    .collect::<Vec<_>>(),
                Err(_) => vec!["?".to_owned()],
            };
            if behind.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(revision, behind = ?behind, "edges did not apply the challenges in time; going on");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes the order record; returns its new revision. Fails when it changed meanwhile.
    async fn write_order(
        &self,
        lead: &Leadership,
        key: &str,
        record: &mut AcmeOrderRecord,
        revision: i64,
    ) -> Result<i64, IssueError> {
        record.updated_at = model::now_ms();
        record.node = self.node.clone();
        let mut compares = lead.compares();
        compares.push(if revision == 0 {
            Compare::absent(key)
        } else {
            Compare::unchanged_since(key, revision)
        });
        let ops = vec![TxnOp::put(key, model::encode(&*record)), self.meta_state()];
        let result = self.store.txn(compares, ops).await?;
        if !result.succeeded {
            return Err(IssueError::new(
                "the order record changed (another leader?)",
                false,
            ));
        }
        Ok(result.revision)
    }

    async fn record_failure(
        &self,
        lead: &Leadership,
        site: &str,
        domains: &[String],
        err: &IssueError,
    ) -> Result<(), StoreError> {
        let key = self.keys.acme_order(site);
        let (mut record, revision) = match self.store.get(&key).await? {
            Some(kv) => (
                model::decode::<AcmeOrderRecord>(&kv.value).unwrap_or_default(),
                kv.mod_revision,
            ),
            None => (AcmeOrderRecord::default(), 0),
        };
        if record.domains != domains {
            record = AcmeOrderRecord {
                site: site.to_owned(),
                domains: domains.to_vec(),
                ..AcmeOrderRecord::default()
            };
        }
        record.attempts += 1;
        record.last_error = Some(err.message.clone());
        let backoff = backoff_ms(record.attempts);
        record.next_attempt_at = model::now_ms() + backoff;
        if err.restart {
            record.url = None;
            record.key = None;
        }
        if self
            .write_order(lead, &key, &mut record, revision)
            .await
            .is_ok()
        {
            self.notifier.send(format!(
                "certificate for {site} could not be issued (attempt {}, next in {} s): {}",
                record.attempts,
                backoff / 1000,
                err.message
            ));
        }
        Ok(())
    }

    /// The ACME account for `acme.directory`: loaded from the store, or created and stored.
    async fn account(&self, lead: &Leadership) -> Result<Account, IssueError> {
        if let Ok(cached) = self.account.lock()
            && let Some((directory, account)) = cached.as_ref()
            && *directory == self.acme.directory
        {
            return Ok(account.clone());
        }
        let secrets = self.secrets()?;
        let key = self.keys.acme_account();
        for _ in 0..3 {
            let existing = self.store.get(&key).await?;
            if let Some(kv) = &existing {
                let record: AcmeAccountRecord = model::decode(&kv.value)?;
                if record.directory == self.acme.directory {
                    let credentials: AccountCredentials =
                        serde_json::from_slice(&secrets.open(&record.credentials)?)?;
                    let account = self.builder()?.from_credentials(credentials).await?;
                    self.cache_account(&account);
                    return Ok(account);
                }
            }
            let contact = format!("mailto:{}", self.acme.email);
            let contacts: Vec<&str> = if self.acme.email.is_empty() {
                Vec::new()
            } else {
                vec![contact.as_str()]
            };
            let (account, credentials) = self
                .builder()?
                .create(
                    &NewAccount {
                        contact: &contacts,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    self.acme.directory.clone(),
                    None,
                )
                .await?;
            let record = AcmeAccountRecord {
                directory: self.acme.directory.clone(),
                credentials: secrets.seal(&serde_json::to_vec(&credentials)?),
                created_at: model::now_ms(),
            };
            let mut compares = lead.compares();
            compares.push(match &existing {
                Some(kv) => Compare::unchanged_since(key.clone(), kv.mod_revision),
                None => Compare::absent(key.clone()),
            });
            let put = TxnOp::put(key.clone(), model::encode(&record));
            if self.store.txn(compares, vec![put]).await?.succeeded {
                tracing::info!(directory = %self.acme.directory, "created the ACME account");
                self.cache_account(&account);
                return Ok(account);
            }
        }
        Err(IssueError::new(
            "the ACME account record keeps changing",
            false,
        ))
    }

    fn cache_account(&self, account: &Account) {
        if let Ok(mut cached) = self.account.lock() {
            *cached = Some((self.acme.directory.clone(), account.clone()));
        }
    }

    /// An ACME client trusting `acme.caBundle` (a PEM file path, or PEM text) when set.
    fn builder(&self) -> Result<AccountBuilder, IssueError> {
        let bundle = self.acme.ca_bundle.trim();
        if bundle.is_empty() {
            return Ok(Account::builder()?);
        }
        let path = if bundle.contains("-----BEGIN") {
            let path = self.data_dir.join("acme-ca-bundle.pem");
            std::fs::write(&path, bundle)
                .map_err(|err| IssueError::new(format!("acme.caBundle: {err}"), false))?;
            path
        } else {
            PathBuf::from(bundle)
        };
        Ok(Account::builder_with_root(path)?)
    }
}

/// The primary domain followed by the aliases, as ordered.
fn site_domains(site: &SiteRecord) -> Vec<String> {
    site.all_domains().map(str::to_owned).collect()
}

fn same_names(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut b: Vec<&str> = b.iter().map(String::as_str).collect();
    a.sort_unstable();
    a.dedup();
    b.sort_unstable();
    b.dedup();
    a == b
}

/// A self-signed record is kept while it names exactly the site's domains and has 14 days left.
fn self_signed_fresh(
    record: &CertificateRecord,
    site: &SiteRecord,
    domains: &[String],
    now: i64,
) -> bool {
    record.kind == CertificateKind::SelfSigned
        && record.site.as_deref() == Some(site.domain.as_str())
        && same_names(&record.domains, domains)
        && record.not_before <= now
        && record.not_after - now > SELF_SIGNED_RENEW_MS
}

/// An ACME certificate is renewed when a third of its lifetime remains, or when it does not
/// cover every domain of the site any more.
fn acme_fresh(record: &CertificateRecord, site: &SiteRecord, now: i64) -> bool {
    let lifetime = record.not_after - record.not_before;
    record.kind == CertificateKind::Acme
        && record.site.as_deref() == Some(site.domain.as_str())
        && record.covers(site.all_domains())
        && now < record.not_after - lifetime / 3
}

/// The reminder threshold reached with `left_ms` of validity left, if any.
fn reminder_threshold(left_ms: i64) -> Option<i64> {
    REMINDER_DAYS
        .iter()
        .copied()
        .filter(|days| left_ms <= days * DAY_MS)
        .min()
}

fn backoff_ms(attempts: u32) -> i64 {
    let shift = attempts.saturating_sub(1).min(20);
    (MIN_BACKOFF_MS << shift).min(MAX_BACKOFF_MS)
}

/// A P-256 key and a CSR for `domains` (DER), with the key as PKCS#8 PEM.
fn csr(domains: &[String]) -> Result<(Vec<u8>, String), IssueError> {
    let fail = |err: rcgen::Error| IssueError::new(format!("make the CSR: {err}"), false);
    let mut params = rcgen::CertificateParams::new(domains.to_vec()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_backoff() {
        assert_eq!(reminder_threshold(40 * DAY_MS), None);
        assert_eq!(reminder_threshold(30 * DAY_MS), Some(30));
        assert_eq!(reminder_threshold(10 * DAY_MS), Some(14));
        assert_eq!(reminder_threshold(DAY_MS / 2), Some(1));
        assert_eq!(reminder_threshold(-5), Some(0));
        assert_eq!(backoff_ms(1), 5_000);
        assert_eq!(backoff_ms(2), 10_000);
        assert_eq!(backoff_ms(40), MAX_BACKOFF_MS);
    }

    #[test]
    fn freshness() {
        let site = SiteRecord {
            domain: "a.test".into(),
            aliases: vec!["www.a.test".into()],
            tls: TlsChoice::Acme,
            app: None,
            created_at: 0,
            updated_at: 0,
            deployed_at: None,
        };
        let mut record = CertificateRecord {
            name: "acme-x".into(),
            kind: CertificateKind::Acme,
            certificate_pem: String::new(),
            key: String::new(),
            domains: vec!["a.test".into(), "www.a.test".into()],
            not_before: 0,
            not_after: 90 * DAY_MS,
            fingerprint: String::new(),
            created_at: 0,
            site: Some("a.test".into()),
        };
        assert!(acme_fresh(&record, &site, 50 * DAY_MS));
        assert!(
            !acme_fresh(&record, &site, 61 * DAY_MS),
            "a third left: renew"
        );
        record.domains.pop();
        assert!(!acme_fresh(&record, &site, DAY_MS), "an alias not covered");
        record.kind = CertificateKind::SelfSigned;
        record.domains = vec!["www.a.test".into(), "a.test".into()];
        assert!(self_signed_fresh(
            &record,
            &site,
            &site_domains(&site),
            DAY_MS
        ));
        assert!(!self_signed_fresh(
            &record,
            &site,
            &site_domains(&site),
            80 * DAY_MS
        ));
        assert!(!self_signed_fresh(
            &record,
            &site,
            &["a.test".into()],
            DAY_MS
        ));
    }
}
