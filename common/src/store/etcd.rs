//! The etcd backend of the store: a lazily connecting `etcd-client` with every call bounded by
//! the configured timeout.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp as EtcdCompareOp, ConnectOptions,
    DeleteOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions, Txn,
    TxnOp as EtcdTxnOp, WatchOptions,
};
use futures::StreamExt;
use tokio::sync::Mutex;

use super::{
    Compare, CompareOp, CompareTarget, KeyValue, Snapshot, StoreError, TxnOp, TxnResult,
    WatchBatch, WatchEvent, WatchStream,
};
use crate::config::EtcdConfig;

/// The etcd backend. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    /// `endpoints` joined with `,`, for error messages.
    endpoints_text: String,
    options: ConnectOptions,
    timeout: Duration,
    /// Connected on first use, so the store can be created while etcd is down.
    client: Mutex<Option<Client>>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Prepares a client for `config`. Only configuration errors (no endpoint, unreadable TLS
    /// files, an unsupported TLS option) fail here; etcd itself is contacted on first use, so
    /// this succeeds while etcd is down.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let endpoints = config.endpoints();
        if endpoints.is_empty() {
            return Err(StoreError::Rejected(
                "state.etcd.address lists no endpoint".to_owned(),
            ));
        }
        let timeout = config.timeout().max(Duration::from_millis(1));
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout.max(Duration::from_secs(1)))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        if let Some(tls) = tls_options(config, &endpoints).await? {
            options = options.with_tls(tls);
        }
        let store = Self {
            inner: Arc::new(Inner {
                endpoints_text: endpoints.join(","),
                endpoints,
                options,
                timeout,
                client: Mutex::new(None),
            }),
        };
        // Building the client does not talk to etcd (the channel connects on demand), but do
        // it now when it works so a configuration problem shows up early.
        let _ = tokio::time::timeout(timeout, store.client()).await;
        Ok(store)
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.call("get", |mut client| async move {
            let resp = client.get(key, None).await?;
            Ok(resp.kvs().first().map(convert_kv))
        })
        .await
    }

    /// Reads every key under `prefix` at one revision, sorted by key.
    pub async fn snapshot(&self, prefix: &str) -> Result<Snapshot, StoreError> {
        let prefix = prefix.to_owned();
        self.call("snapshot", |mut client| async move {
            let resp = client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await?;
            let revision = resp.header().map_or(0, |h| h.revision());
            let mut kvs: Vec<KeyValue> = resp.kvs().iter().map(convert_kv).collect();
            kvs.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(Snapshot { revision, kvs })
        })
        .await
    }

    /// Applies `ops` in one etcd transaction if every compare holds.
    pub async fn txn(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<TxnResult, StoreError> {
        let txn = Txn::new()
            .when(compares.iter().map(convert_compare).collect::<Vec<_>>())
            .and_then(ops.into_iter().map(convert_op).collect::<Vec<_>>());
        self.call("txn", |mut client| async move {
            let resp = client.txn(txn).await?;
            Ok(TxnResult {
                succeeded: resp.succeeded(),
                revision: resp.header().map_or(0, |h| h.revision()),
            })
        })
        .await
    }

    /// Watches every key under `prefix` from `start_revision` (inclusive). Events are grouped
    /// into one batch per revision. The stream ends with `Compacted` when etcd compacted
    /// `start_revision` away, and with `Unavailable` when the watch breaks.
    pub async fn watch(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<WatchStream, StoreError> {
        let prefix = prefix.to_owned();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision)
            .with_progress_notify();
        let stream = self
            .call("watch", |mut client| async move {
                client.watch(prefix, Some(options)).await
            })
            .await?;
        let state = WatchState {
            stream: Some(stream),
            pending: VecDeque::new(),
            requested: start_revision,
            store: self.clone(),
        };
        let batches = futures::stream::unfold(state, |mut st| async move {
            let item = st.next_item().await?;
            Some((item, st))
        });
        Ok(batches.boxed())
    }

    /// Grants a lease of `ttl` (whole seconds, at least 1).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        self.call("lease grant", |mut client| async move {
            Ok(client.lease_grant(secs, None).await?.id())
        })
        .await
    }

    /// Refreshes a lease once. False when the lease no longer exists.
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.call("lease keep-alive", |mut client| async move {
            // Opening the keep-alive stream sends one refresh and reads its answer; etcd-client
            // reports a TTL of 0 (the lease is gone) as this error.
            match client.lease_keep_alive(lease).await {
                Ok(_) => Ok(true),
                Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Revokes a lease (deleting its keys). Revoking a lease that is already gone succeeds.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.call("lease revoke", |mut client| async move {
            match client.lease_revoke(lease).await {
                Ok(_) => Ok(()),
                Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// The shared client, created on first use.
    async fn client(&self) -> Result<Client, StoreError> {
        let mut guard = self.inner.client.lock().await;
        if let Some(client) = guard.as_ref() {
            return Ok(client.clone());
        }
        let client = Client::connect(&self.inner.endpoints, Some(self.inner.options.clone()))
            .await
            .map_err(|e| self.map_err("connect", e))?;
        *guard = Some(client.clone());
        Ok(client)
    }

    /// Runs one etcd call within the configured timeout, mapping errors.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let work = async {
            let client = self.client().await?;
            f(client).await.map_err(|e| self.map_err(what, e))
        };
        match tokio::time::timeout(self.inner.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd at {} did not answer {what} within {} ms",
                self.inner.endpoints_text,
                self.inner.timeout.as_millis()
            ))),
        }
    }

    fn map_err(&self, what: &str, err: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        let endpoints = &self.inner.endpoints_text;
        match &err {
            E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
                StoreError::Unavailable(format!("etcd at {endpoints}: {what} failed: {err}"))
            }
            E::GRpcStatus(status) => match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
                | tonic::Code::Aborted => StoreError::Unavailable(format!(
                    "etcd at {endpoints}: {what} failed: {}",
                    status.message()
                )),
                _ => StoreError::Rejected(format!(
                    "etcd at {endpoints}: {what}: {:?}: {}",
                    status.code(),
                    status.message()
                )),
            },
            _ => StoreError::Rejected(format!("etcd at {endpoints}: {what}: {err}")),
        }
    }
}

/// The state of one watch stream, turned into batches by `next_item`.
struct WatchState {
    stream: Option<etcd_client::WatchStream>,
    pending: VecDeque<WatchBatch>,
    requested: i64,
    store: EtcdStore,
}

impl WatchState {
    /// The next batch, or the error that ends the stream; `None` after the error.
    async fn next_item(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            let stream = self.stream.as_mut()?;
            let message = stream.message().await;
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    self.stream = None;
                    return Some(Err(StoreError::Unavailable(format!(
                        "etcd at {}: watch stream closed",
                        self.store.inner.endpoints_text
                    ))));
                }
                Err(e) => {
                    self.stream = None;
                    return Some(Err(self.store.map_err("watch", e)));
                }
            };
            if resp.compact_revision() > 0 {
                self.stream = None;
                return Some(Err(StoreError::Compacted {
                    requested: self.requested,
                    compact_revision: resp.compact_revision(),
                }));
            }
            if resp.canceled() {
                self.stream = None;
                return Some(Err(StoreError::Unavailable(format!(
                    "etcd at {}: watch canceled: {}",
                    self.store.inner.endpoints_text,
                    resp.cancel_reason()
                ))));
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                let converted = match event.event_type() {
                    EventType::Put => WatchEvent::Put(convert_kv(kv)),
                    EventType::Delete => WatchEvent::Delete {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        mod_revision: revision,
                    },
                };
                match self.pending.back_mut() {
                    Some(last) if last.revision == revision => last.events.push(converted),
                    _ => self.pending.push_back(WatchBatch {
                        revision,
                        events: vec![converted],
                    }),
                }
            }
        }
    }
}

/// TLS options for the endpoints, or `None` for plaintext.
async fn tls_options(
    config: &EtcdConfig,
    endpoints: &[String],
) -> Result<Option<TlsOptions>, StoreError> {
    let tls = &config.tls_configuration;
    let has_material =
        !tls.ca.is_empty() || !tls.client_certificate.is_empty() || !tls.client_key.is_empty();
    let any_https = endpoints.iter().any(|e| e.starts_with("https://"));
    if !has_material && !any_https {
        return Ok(None);
    }
    if let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://")) {
        return Err(StoreError::Rejected(format!(
            "etcd TLS is configured but endpoint {plain} is http://; use https:// for every endpoint"
        )));
    }
    if config.tls_skip_verify {
        return Err(StoreError::Rejected(
            "state.etcd.tlsSkipVerify is not supported by the etcd backend (its TLS stack cannot \
             turn off certificate verification); set state.etcd.tlsConfiguration.ca to the CA \
             that signed the etcd server certificate instead"
                .to_owned(),
        ));
    }
    let mut options = TlsOptions::new();
    if !tls.ca.is_empty() {
        let pem = read_pem(&tls.ca, "tlsConfiguration.ca").await?;
        options = options.ca_certificate(Certificate::from_pem(pem));
    }
    match (tls.client_certificate.is_empty(), tls.client_key.is_empty()) {
        (true, true) => {}
        (false, false) => {
            let cert = read_pem(
                &tls.client_certificate,
                "tlsConfiguration.clientCertificate",
            )
            .await?;
            let key = read_pem(&tls.client_key, "tlsConfiguration.clientKey").await?;
            options = options.identity(Identity::from_pem(cert, key));
        }
        _ => {
            return Err(StoreError::Rejected(
                "state.etcd.tlsConfiguration needs both clientCertificate and clientKey, or neither"
                    .to_owned(),
            ));
        }
    }
    Ok(Some(options))
}

async fn read_pem(path: &str, what: &str) -> Result<Vec<u8>, StoreError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| StoreError::Rejected(format!("cannot read state.etcd.{what} {path}: {e}")))
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn convert_compare(compare: &Compare) -> EtcdCompare {
    let op = match compare.op {
        CompareOp::Equal => EtcdCompareOp::Equal,
        CompareOp::NotEqual => EtcdCompareOp::NotEqual,
        CompareOp::Less => EtcdCompareOp::Less,
        CompareOp::Greater => EtcdCompareOp::Greater,
    };
    let key = compare.key.clone();
    let converted = match compare.target {
        CompareTarget::CreateRevision(r) => EtcdCompare::create_revision(key, op, r),
        CompareTarget::ModRevision(r) => EtcdCompare::mod_revision(key, op, r),
        CompareTarget::Version(v) => EtcdCompare::version(key, op, v),
    };
    match &compare.range_end {
        Some(end) => converted.with_range(end.clone()),
        None => converted,
    }
}

fn convert_op(op: TxnOp) -> EtcdTxnOp {
    match op {
        TxnOp::Put { key, value, lease } => {
            let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
            EtcdTxnOp::put(key, value, options)
        }
        TxnOp::Delete { key } => EtcdTxnOp::delete(key, None),
        TxnOp::DeletePrefix { prefix } => {
            EtcdTxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()))
        }
    }
}
