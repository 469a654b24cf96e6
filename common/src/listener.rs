//! What every TCP listener of Statiko shares (the edge's HTTP, HTTPS and admin listeners,
//! control's gRPC and metrics listeners), independent of the protocol served:
//!
//! - [`accept`]: an accept that backs off after a listener error (EMFILE, ENFILE, ENOBUFS)
//!   instead of retrying in a tight loop, and logs it at most once per second.
//! - [`ConnLimiter`]: a cap on open connections, in total and per client address (IPv6 grouped
//!   by prefix); a refused connection is closed at once.
//! - [`Guarded`]: a socket wrapper that closes the connection (its next read or write fails)
//!   once it is idle: nothing read or written for `idle`, or no request in flight for `idle`
//!   (`first_request` before the first request). Requests are counted by the protocol layer
//!   through [`ConnState::request`] and [`TrackedBody`], so an HTTP/2 connection kept busy
//!   with PINGs only, or a silent connection that never sends a byte, is still closed.
//!   The check is one timer per connection, set for the earliest moment it could be idle
//!   and re-armed from there: no task, no CPU while nothing happens.
//! - [`Throttle`]: "log at most once per interval" for anything a client can trigger.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// First pause after a listener error; doubled on each further error up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Shards of the per-client table (fewer lock collisions between worker threads).
const SHARDS: usize = 16;

/// Accepts the next connection, or `None` once `shutdown` is cancelled. Errors that concern one
/// connection (reset before it was accepted) are skipped; any other error (EMFILE and the
/// like) pauses accepting, from 10 ms doubling to 1 s, so a full file table costs no CPU.
pub async fn accept(
    listener: &TcpListener,
    name: &'static str,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    static WARN: OnceLock<Throttle> = OnceLock::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(err) if is_per_connection_error(&err) => {}
            Err(err) => {
                if let Some(suppressed) = WARN
                    .get_or_init(|| Throttle::new(Duration::from_secs(1)))
                    .ready()
                {
                    tracing::warn!(listener = name, error = %err, suppressed, pause = ?backoff, "accept failed");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Errors that concern one failed connection, not the listener.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The address a client is counted under: IPv4 (or IPv4-mapped IPv6) as it is, IPv6 cut to its
/// first `ipv6_prefix` bits (a /64 is usually one subscriber).
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            IpAddr::V6(crate::config::mask_bits(u128::from(v6), 128, ipv6_prefix).into())
        }
    }
}

/// Why [`ConnLimiter::admit`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener's total cap.
    Total,
    /// The client's cap.
    PerClient,
}

/// Caps open connections, in total and per client key. Share one between listeners to count
/// a client's connections over all of them.
#[derive(Debug)]
pub struct ConnLimiter {
    total: Arc<Semaphore>,
    /// 0 = no per-client cap.
    per_client: u32,
    ipv6_prefix: u8,
    /// Open connections by client key; an entry goes when its count drops to 0, so the table
    /// never holds more entries than open connections.
    clients: Arc<Sharded<IpAddr, u32>>,
}

impl ConnLimiter {
    pub fn new(max_connections: usize, per_client: u64, ipv6_prefix: u8) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            per_client: u32::try_from(per_client).unwrap_or(u32::MAX),
            ipv6_prefix,
            clients: Arc::new(Sharded::default()),
        }
    }

    /// A slot for one connection from `ip`, held until the [`Admission`] is dropped.
    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Refused> {
        let mut admission = self.admit_total()?;
        self.admit_client(&mut admission, ip)?;
        Ok(admission)
    }

    /// [`ConnLimiter::admit`] for a connection `listener` accepted from `peer`; a refusal is
    /// logged through `refused_log` (a warning with the count of those it held back) and the
    /// caller closes the connection.
    pub fn admit_or_log(
        &self,
        peer: std::net::SocketAddr,
        listener: &'static str,
        refused_log: &Throttle,
    ) -> Option<Admission> {
        match self.admit(peer.ip()) {
            Ok(admission) => Some(admission),
            Err(refused) => {
                if let Some(suppressed) = refused_log.ready() {
                    tracing::warn!(%peer, ?refused, suppressed, listener, "connection limit reached, closing new connections (logged once per 10 s)");
                }
                None
            }
        }
    }

    /// A slot under the total cap only (the client is not known yet, e.g. before a PROXY
    /// protocol header); add the client with [`ConnLimiter::admit_client`].
    pub fn admit_total(&self) -> Result<Admission, Refused> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Total)?;
        Ok(Admission {
            _total: total,
            client: None,
        })
    }

    /// Counts `admission` under the client `ip` belongs to, if it has room.
    pub fn admit_client(&self, admission: &mut Admission, ip: IpAddr) -> Result<(), Refused> {
        if self.per_client == 0 || admission.client.is_some() {
            return Ok(());
        }
        let key = client_key(ip, self.ipv6_prefix);
        {
            let mut shard = self.clients.shard(&key);
            let count = shard.entry(key).or_insert(0);
            if *count >= self.per_client {
                return Err(Refused::PerClient);
            }
            *count += 1;
        }
        admission.client = Some((self.clients.clone(), key));
        Ok(())
    }

    /// Open connections of the client `ip` belongs to.
    pub fn client_connections(&self, ip: IpAddr) -> u32 {
        let key = client_key(ip, self.ipv6_prefix);
        self.clients.shard(&key).get(&key).copied().unwrap_or(0)
    }
}

/// One admitted connection; dropping it frees its slots.
#[derive(Debug)]
pub struct Admission {
    _total: OwnedSemaphorePermit,
    client: Option<(Arc<Sharded<IpAddr, u32>>, IpAddr)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((clients, key)) = self.client.take() {
            let mut shard = clients.shard(&key);
            if let Some(count) = shard.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    shard.remove(&key);
                }
            }
        }
    }
}

/// A map split in [`SHARDS`] mutex-guarded parts by key hash.
#[derive(Debug)]
pub struct Sharded<K, V> {
    shards: Vec<Mutex<HashMap<K, V>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K, V> Default for Sharded<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    /// The locked shard holding `key`.
    pub fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        let i = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every shard, one at a time (for sweeps).
    pub fn for_each_shard(&self, mut f: impl FnMut(&mut HashMap<K, V>)) {
        for shard in &self.shards {
            f(&mut shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner));
        }
    }

    /// Entries in all shards.
    pub fn len(&self) -> usize {
        let mut n = 0;
        self.for_each_shard(|shard| n += shard.len());
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// When an idle connection is closed.
#[derive(Debug, Clone, Copy)]
pub struct IdlePolicy {
    /// Nothing read or written, or no request in flight, for this long.
    pub idle: Duration,
    /// No request started this long after the connection was accepted.
    pub first_request: Duration,
}

/// What the socket and the protocol layer record about a connection's activity (times in
/// [`now_ms`] milliseconds).
#[derive(Debug, Default)]
pub struct ConnState {
    /// Last successful read or write (PINGs included).
    last_io_ms: AtomicU64,
    /// Last request start or end.
    last_event_ms: AtomicU64,
    /// Requests started on the connection.
    requests: AtomicU64,
    in_flight: AtomicU32,
}

impl ConnState {
    /// Counts a request from now until the guard is dropped (keep it in the response body
    /// with [`TrackedBody`], so a long download is one request until its last byte).
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.last_event_ms.store(now_ms(), Ordering::Relaxed);
        RequestGuard(self.clone())
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.last_event_ms.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body holding its request's [`RequestGuard`] until it is finished or dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    guard: Option<RequestGuard>,
}

impl<B> TrackedBody<B> {
    /// `inner`, counted as a request until it ends when `guard` is given.
    pub fn new(inner: B, guard: impl Into<Option<RequestGuard>>) -> Self {
        Self {
            inner,
            guard: guard.into(),
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = poll {
            this.guard = None;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that closes itself when idle (see the module documentation), and holds whatever
/// must live as long as the connection (its [`Admission`]).
pub struct Guarded<T> {
    inner: T,
    /// Bytes to return before reading `inner` (read past a PROXY protocol header).
    prefix: bytes::Bytes,
    state: Arc<ConnState>,
    policy: IdlePolicy,
    /// Fires at the earliest moment the connection could be idle; re-armed from there.
    timer: Pin<Box<Sleep>>,
    started_ms: u64,
    expired: bool,
    _hold: Option<Box<dyn Send + Sync>>,
}

impl<T> std::fmt::Debug for Guarded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("policy", &self.policy)
            .field("expired", &self.expired)
            .finish_non_exhaustive()
    }
}

impl<T> Guarded<T> {
    /// Wraps `inner`; `hold` is dropped with the connection.
    pub fn new(inner: T, policy: IdlePolicy, hold: Option<Box<dyn Send + Sync>>) -> Self {
        let now = now_ms();
        let state = ConnState {
            last_io_ms: AtomicU64::new(now),
            ..ConnState::default()
        };
        let first = policy.idle.min(policy.first_request);
        Self {
            inner,
            prefix: bytes::Bytes::new(),
            state: Arc::new(state),
            policy,
            timer: Box::pin(tokio::time::sleep(first)),
            started_ms: now,
            expired: false,
            _hold: hold,
        }
    }

    /// Returns `prefix` before anything read from the socket.
    pub fn with_prefix(mut self, prefix: bytes::Bytes) -> Self {
        self.prefix = prefix;
        self
    }

    /// The connection's request counters, for the protocol layer.
    pub fn state(&self) -> Arc<ConnState> {
        self.state.clone()
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Polls the idle timer; an error once the connection is idle.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.expired {
            return Err(idle_error());
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.deadline_ms();
            let now = now_ms();
            if now >= deadline {
                self.expired = true;
                return Err(idle_error());
            }
            let wait = Duration::from_millis(deadline - now);
            self.timer.as_mut().reset((Instant::now() + wait).into());
        }
        Ok(())
    }

    /// When the connection becomes idle if nothing happens until then.
    fn deadline_ms(&self) -> u64 {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let state = &self.state;
        let quiet = state
            .last_io_ms
            .load(Ordering::Relaxed)
            .saturating_add(ms(self.policy.idle));
        let no_request = if state.in_flight.load(Ordering::Relaxed) > 0 {
            u64::MAX
        } else if state.requests.load(Ordering::Relaxed) == 0 {
            self.started_ms
                .saturating_add(ms(self.policy.first_request))
        } else {
            state
                .last_event_ms
                .load(Ordering::Relaxed)
                .saturating_add(ms(self.policy.idle))
        };
        quiet.min(no_request)
    }

    fn bump<R>(&self, poll: &Poll<io::Result<R>>) {
        if let Poll::Ready(Ok(_)) = poll {
            self.state.last_io_ms.store(now_ms(), Ordering::Relaxed);
        }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.bump(&poll);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bump(&poll);
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bump(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// "At most once per interval", for log lines a client can trigger.
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] when the next line may be written.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one)` when a line may be written now.
    pub fn ready(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Milliseconds since the first call in this process (monotonic).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64));
        assert_ne!(client_key(a, 64), client_key(c, 64));
        assert_ne!(client_key(a, 128), client_key(b, 128));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            client_key(mapped, 64),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn limiter_counts_per_client_and_total() {
        let limiter = ConnLimiter::new(3, 2, 64);
        let x: IpAddr = "192.0.2.1".parse().unwrap();
        let y: IpAddr = "192.0.2.2".parse().unwrap();
        let a = limiter.admit(x).unwrap();
        let b = limiter.admit(x).unwrap();
        assert_eq!(limiter.admit(x).unwrap_err(), Refused::PerClient);
        let c = limiter.admit(y).unwrap();
        assert_eq!(limiter.admit(y).unwrap_err(), Refused::Total);
        drop(a);
        assert_eq!(limiter.client_connections(x), 1);
        let d = limiter.admit(x).unwrap();
        drop((b, c, d));
        assert_eq!(limiter.client_connections(x), 0);
        assert!(
            limiter.clients.is_empty(),
            "entries go with their last connection"
        );
    }

    #[test]
    fn throttle_allows_one_per_interval() {
        let throttle = Throttle::new(Duration::from_secs(60));
        assert_eq!(throttle.ready(), Some(0));
        assert_eq!(throttle.ready(), None);
        assert_eq!(throttle.ready(), None);
    }
}
