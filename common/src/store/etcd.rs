//! The etcd backend of the store: a lazily connecting `etcd-client` with every call bounded by
//! the configured timeout.
//!
//! Every endpoint gets one lazy tonic channel of its own (TLS through a rustls connector of
//! ours, so `tlsSkipVerify` can turn off certificate verification), behind a small
//! sticky-failover service: calls go to one member (picked at random when the process starts)
//! until it fails, then to the next. etcd-client's balanced channel is not used: its power-of-two-choices balancer
//! keeps a dead member in rotation (tonic reports a channel that fails to reconnect as ready and
//! fails the call), so with one member down a share of every call failed until it came back.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp as EtcdCompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, PutOptions, Txn, TxnOp as EtcdTxnOp, WatchOptions,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tonic::body::Body;
use tower::{Service, ServiceExt};

use super::{
    Compare, CompareOp, CompareTarget, KeyValue, Snapshot, StoreError, TxnOp, TxnResult,
    WatchBatch, WatchEvent, WatchStream,
};
use crate::config::EtcdConfig;
use crate::tls_client::AcceptAnyServerCert;

/// Keys per range request of a snapshot (certificates are a few KiB each; the client's limit
/// is 4 MiB per message).
const SNAPSHOT_PAGE: i64 = 500;

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
    /// The failover channel over every endpoint, handed to `Client::from_channel`.
    channel: etcd_client::Channel,
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
    /// Prepares a client for `config`. Only configuration errors (no endpoint, unreadable or
    /// invalid TLS files, mixed http/https endpoints) fail here; etcd itself is contacted on
    /// first use, so this succeeds while etcd is down.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let endpoints = config.endpoints();
        if endpoints.is_empty() {
            return Err(StoreError::Rejected(
                "state.etcd.address lists no endpoint".to_owned(),
            ));
        }
        let timeout = config.timeout.max(Duration::from_millis(1));
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, keep_alive_timeout(timeout))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let channel = failover_channel(config, &endpoints, timeout).await?;
        let store = Self {
            inner: Arc::new(Inner {
                endpoints_text: endpoints.join(","),
                endpoints,
                options,
                channel,
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
            // In pages at one revision: a single range over a large state (10,000 sites with
            // their certificates is ~15 MB) exceeds the gRPC client's 4 MiB message limit.
            let end = crate::keys::prefix_end(&prefix).into_bytes();
            let mut from = prefix.into_bytes();
            let mut revision = 0;
            let mut kvs: Vec<KeyValue> = Vec::new();
            loop {
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(SNAPSHOT_PAGE);
                if revision > 0 {
                    options = options.with_revision(revision);
                }
                let resp = client.get(from.clone(), Some(options)).await?;
                if revision == 0 {
                    revision = resp.header().map_or(0, |h| h.revision());
                }
                kvs.extend(resp.kvs().iter().map(convert_kv));
                match resp.kvs().last() {
                    Some(last) if resp.more() => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => break,
                }
            }
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
        let options = Some(self.inner.options.clone());
        // Building a client on the lazy channel does not talk to etcd.
        let client = Client::from_channel(self.inner.channel.clone(), options)
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
            Err(_) => Err(StoreError::unavailable(format!(
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
                StoreError::unavailable_from(
                    format!("etcd at {endpoints}: {what} failed: {err}"),
                    err,
                )
            }
            E::GRpcStatus(status) => match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
                | tonic::Code::Aborted => StoreError::unavailable_from(
                    format!("etcd at {endpoints}: {what} failed: {}", status.message()),
                    err,
                ),
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
                    return Some(Err(StoreError::unavailable(format!(
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
                return Some(Err(StoreError::unavailable(format!(
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

/// HTTP/2 keep-alive ping interval on etcd connections.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long to wait for a keep-alive ping answer before dropping the connection.
fn keep_alive_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(1))
}

/// The failover channel over `endpoints`: TLS (every endpoint `https://`) when the config has TLS
/// material or an `https://` endpoint, plaintext otherwise. Nothing is dialled here: every
/// per-endpoint channel connects on first use.
async fn failover_channel(
    config: &EtcdConfig,
    endpoints: &[String],
    timeout: Duration,
) -> Result<etcd_client::Channel, StoreError> {
    let tls = &config.tls_configuration;
    let has_material =
        !tls.ca.is_empty() || !tls.client_certificate.is_empty() || !tls.client_key.is_empty();
    let any_https = endpoints.iter().any(|e| e.starts_with("https://"));
    let client_config = if has_material || any_https {
        if let Some(plain) = endpoints.iter().find(|e| !e.starts_with("https://")) {
            return Err(StoreError::Rejected(format!(
                "etcd TLS is configured but endpoint {plain} is not https://; use https:// for every endpoint"
            )));
        }
        if config.tls_skip_verify {
            tracing::warn!("tlsSkipVerify: etcd server certificates are not verified");
        }
        Some(Arc::new(tls_client_config(config).await?))
    } else {
        None
    };
    let channels = endpoints
        .iter()
        .map(|endpoint| endpoint_channel(endpoint, client_config.as_ref(), timeout))
        .collect::<Result<Vec<_>, _>>()?;
    // Each process starts on a member of its own, so a fleet spreads over the cluster.
    let first = rand::random_range(0..channels.len().max(1));
    let failover = Failover {
        channels: channels.into(),
        current: Arc::new(AtomicUsize::new(first)),
    };
    Ok(etcd_client::Channel::Custom(
        tower::util::BoxCloneSyncService::new(failover),
    ))
}

/// The rustls client configuration: ALPN `h2`, the client identity when configured, and either
/// the configured CA (the webpki roots without one) or, with `tlsSkipVerify`, no certificate
/// verification at all.
async fn tls_client_config(config: &EtcdConfig) -> Result<ClientConfig, StoreError> {
    let tls = &config.tls_configuration;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Rejected(format!("etcd tls setup failed: {e}")))?;
    let builder = if config.tls_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(&provider)))
    } else {
        let mut roots = RootCertStore::empty();
        if tls.ca.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            let pem = read_pem(&tls.ca, "tlsConfiguration.ca").await?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    StoreError::Rejected(format!(
                        "state.etcd.tlsConfiguration.ca {}: invalid pem: {e}",
                        tls.ca
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::Rejected(format!(
                        "state.etcd.tlsConfiguration.ca {}: invalid certificate: {e}",
                        tls.ca
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(StoreError::Rejected(format!(
                    "state.etcd.tlsConfiguration.ca {} holds no certificate",
                    tls.ca
                )));
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut client_config = match (tls.client_certificate.is_empty(), tls.client_key.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let (certs, key) = client_identity(config).await?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                StoreError::Rejected(format!(
                    "state.etcd.tlsConfiguration: unusable client certificate or key: {e}"
                ))
            })?
        }
        _ => {
            return Err(StoreError::Rejected(
                "state.etcd.tlsConfiguration needs both clientCertificate and clientKey, or neither"
                    .to_owned(),
            ));
        }
    };
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(client_config)
}

/// The client certificate chain and key from `tlsConfiguration`.
async fn client_identity(
    config: &EtcdConfig,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), StoreError> {
    let tls = &config.tls_configuration;
    let cert_pem = read_pem(
        &tls.client_certificate,
        "tlsConfiguration.clientCertificate",
    )
    .await?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            StoreError::Rejected(format!(
                "state.etcd.tlsConfiguration.clientCertificate {}: invalid pem: {e}",
                tls.client_certificate
            ))
        })?;
    if certs.is_empty() {
        return Err(StoreError::Rejected(format!(
            "state.etcd.tlsConfiguration.clientCertificate {} holds no certificate",
            tls.client_certificate
        )));
    }
    let key_pem = read_pem(&tls.client_key, "tlsConfiguration.clientKey").await?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        StoreError::Rejected(format!(
            "state.etcd.tlsConfiguration.clientKey {}: no usable private key: {e}",
            tls.client_key
        ))
    })?;
    Ok((certs, key))
}

/// A lazy channel to one endpoint: `https://host:port` through our rustls connector when
/// `tls` is set, else `http://host:port` (or a bare `host:port`) in plaintext.
fn endpoint_channel(
    endpoint: &str,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, StoreError> {
    let invalid = |reason: String| {
        StoreError::Rejected(format!("invalid etcd endpoint {endpoint}: {reason}"))
    };
    let (scheme, default_port) = if tls.is_some() {
        ("https", 443)
    } else {
        ("http", 2379)
    };
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .unwrap_or(endpoint);
    let uri: http::Uri = format!("{scheme}://{rest}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
    let host = uri
        .host()
        .ok_or_else(|| invalid("no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(default_port);
    let authority = uri
        .authority()
        .ok_or_else(|| invalid("no host".to_owned()))?
        .clone();
    // tonic only dials `http://` URIs through a custom connector (it would add its own TLS to
    // `https://`); the TLS is ours, and requests still carry the endpoint's origin.
    let builder = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| invalid(e.to_string()))?
        .origin(uri)
        .connect_timeout(timeout)
        .keep_alive_while_idle(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(keep_alive_timeout(timeout));
    let Some(client_config) = tls else {
        return Ok(builder.tcp_nodelay(true).connect_lazy());
    };
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| invalid(format!("not a valid tls server name: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(client_config.clone());
    let connect = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let host = host.clone();
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(builder.connect_with_connector_lazy(connect))
}

/// Sends every request to the current endpoint's channel and moves on to the next endpoint when
/// that channel fails (or gives no response before the caller gives up), so one dead etcd node
/// costs one failed call rather than a share of all of them. A request is never replayed: its
/// body may be a stream, and the caller's retry goes to the next endpoint.
///
/// A stream that breaks after its response began (a watch or a lease keep-alive whose member
/// died: the body fails with a transport error) moves on too. Otherwise the caller's retry
/// would dial the dead member again and, where its address no longer answers at all (a killed
/// container, a lost host), wait out the connect timeout: about a lease TTL, which is enough
/// for an edge to lose its lease over one member's death.
#[derive(Clone)]
struct Failover {
    channels: Arc<[tonic::transport::Channel]>,
    current: Arc<AtomicUsize>,
}

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each per-endpoint channel is polled for readiness in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let index = self.current.load(Ordering::Relaxed) % self.channels.len().max(1);
        let channel = self.channels.get(index).cloned();
        let guard = FailoverGuard(Some(Rotation {
            current: self.current.clone(),
            index,
            len: self.channels.len(),
        }));
        Box::pin(async move {
            // Moved in whole, so it lives (and rotates on drop) as long as the call.
            let mut guard = guard;
            let Some(channel) = channel else {
                return Err("no etcd endpoint".into());
            };
            let response = channel.oneshot(request).await?;
            let rotate = guard.0.take();
            Ok(response.map(|body| Body::new(FailoverBody { body, rotate })))
        })
    }
}

/// A response body that moves the failover on when it fails (see [`Failover`]).
struct FailoverBody {
    body: Body,
    /// Taken at the first error: one broken stream moves on once.
    rotate: Option<Rotation>,
}

impl hyper::body::Body for FailoverBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled
            && let Some(rotation) = self.rotate.take()
        {
            rotation.rotate();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Moves the failover from the endpoint `index` to the next, unless another failure on it
/// already did.
struct Rotation {
    current: Arc<AtomicUsize>,
    index: usize,
    len: usize,
}

impl Rotation {
    fn rotate(&self) {
        // Only the first of several concurrent failures on this endpoint moves on.
        if self.len > 1 {
            let _ = self.current.compare_exchange(
                self.index,
                (self.index + 1) % self.len,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// Moves the failover to the next endpoint when dropped still holding its rotation: the call
/// failed, or was abandoned before a response. A response takes the rotation on to its body.
struct FailoverGuard(Option<Rotation>);

impl Drop for FailoverGuard {
    fn drop(&mut self) {
        if let Some(rotation) = self.0.take() {
            rotation.rotate();
        }
    }
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
