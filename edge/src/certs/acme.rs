//! ACME (HTTP-01) issuance for one site: the shared account, an order resumed or placed, the
//! challenges published and waited for, the certificate collected, and failures recorded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeStatus,
    ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use statiko_common::crypto;
use statiko_common::model::{
    self, AcmeAccountRecord, AcmeOrderRecord, CertificateKind, CertificateRecord, ChallengeRecord,
    NodeStatusRecord,
};
use statiko_common::store::{Compare, StoreError, TxnOp};
use tokio_util::sync::CancellationToken;

use super::policy::{ACME_POLL_TIMEOUT, PROPAGATION_TIMEOUT, backoff_ms};
use super::{CertJobs, IssueError};
use crate::leader::Leadership;

impl CertJobs {
    /// One ACME attempt for a site; on failure the error is recorded and notified.
    pub(super) async fn acme_task(
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
            tracing::warn!(site = %site, error = %err, "ACME issuance failed");
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
                return Err(IssueError::OrderUnusable(format!(
                    "the order became {status:?}"
                )));
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
                String::from_utf8(secrets.open(&sealed)?).map_err(|_| {
                    IssueError::OrderUnusable("the stored order key is not PEM".into())
                })?
            }
            (status, _) => {
                return Err(IssueError::OrderUnusable(format!(
                    "the order is {status:?}"
                )));
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
            return Err(IssueError::Interrupted(
                "the order record changed while issuing (another leader?)".into(),
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
                IssueError::OrderUnusable(format!("no http-01 challenge for {domain}"))
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
            return Err(IssueError::Interrupted("no longer leader".into()));
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
            return Err(IssueError::Interrupted(
                "the order record changed (another leader?)".into(),
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
        record.last_error = Some(err.to_string());
        let backoff = backoff_ms(record.attempts);
        record.next_attempt_at = model::now_ms() + backoff;
        if err.restart() {
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
                err
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
        Err(IssueError::Interrupted(
            "the ACME account record keeps changing".into(),
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
                .map_err(|err| IssueError::Interrupted(format!("acme.caBundle: {err}")))?;
            path
        } else {
            PathBuf::from(bundle)
        };
        Ok(Account::builder_with_root(path)?)
    }
}

/// A P-256 key and a CSR for `domains` (DER), with the key as PKCS#8 PEM.
fn csr(domains: &[String]) -> Result<(Vec<u8>, String), IssueError> {
    let fail = |err: rcgen::Error| IssueError::Interrupted(format!("make the CSR: {err}"));
    let mut params = rcgen::CertificateParams::new(domains.to_vec()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let csr = params.serialize_request(&key).map_err(fail)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}
