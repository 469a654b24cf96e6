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

mod acme;
mod gc;
mod pass;
mod policy;
mod reminders;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::Account;
use statiko_common::config::AcmeConfig;
use statiko_common::crypto::{self, SecretBox};
use statiko_common::keys::KeySchema;
use statiko_common::model::CertificateRecord;
use statiko_common::notify::Notifier;
use statiko_common::store::{Store, StoreError, TxnOp};
use tokio::sync::watch;

use self::pass::{AcmeTask, changed_sites};
use self::policy::{PASS_GAP_FACTOR, PASS_INTERVAL};
use crate::desired::{Desired, Position};
use crate::leader::Leadership;

/// The certificates a full pass saw, by name, with their revisions.
type Certs<'a> = HashMap<&'a str, (&'a CertificateRecord, i64)>;

/// Why one issuance attempt failed, and whether the next attempt resumes the order in flight
/// or places a new one.
#[derive(Debug, thiserror::Error)]
enum IssueError {
    /// The CA answered with an error (the order is dropped) or could not be reached.
    #[error("acme: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A key or certificate could not be made, sealed or parsed: the order is dropped.
    #[error("{0}")]
    Crypto(#[from] crypto::CryptoError),
    #[error("unreadable record: {0}")]
    Record(#[from] serde_json::Error),
    /// The order cannot go on: the next attempt places a new one.
    #[error("{0}")]
    OrderUnusable(String),
    /// This attempt cannot go on (configuration, a lost race); the order in flight is kept.
    #[error("{0}")]
    Interrupted(String),
}

impl IssueError {
    /// Whether to drop the order in flight, so the next attempt places a new one.
    fn restart(&self) -> bool {
        match self {
            Self::Acme(err) => matches!(err, instant_acme::Error::Api(_)),
            Self::Crypto(_) | Self::OrderUnusable(_) => true,
            Self::Store(_) | Self::Record(_) | Self::Interrupted(_) => false,
        }
    }
}

/// The leader's certificate jobs. Cheap to share (`Arc`).
pub(crate) struct CertJobs {
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
    pub(crate) fn new(
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
    pub(crate) async fn run(
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

    fn meta_state(&self) -> TxnOp {
        TxnOp::put(self.keys.meta_state(), Vec::new())
    }

    fn secrets(&self) -> Result<&SecretBox, IssueError> {
        self.secrets.as_ref().ok_or_else(|| {
            IssueError::Interrupted(
                "secretsEncryptionKey is not configured: private keys cannot be stored".into(),
            )
        })
    }
}
