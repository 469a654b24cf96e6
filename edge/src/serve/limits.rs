//! Per-client and per-site limits of the edge, in the style of GitLab Pages' rate limits:
//! token buckets (a rate and a burst; rate 0 = off) for new TLS connections and requests per
//! client address (IPv6 grouped by prefix), and requests per site. Open connections per client
//! are capped by the listeners' shared [`statiko_common::listener::ConnLimiter`]; its refusals
//! are counted and logged here too.
//!
//! Every refusal is counted by reason in [`LimitStats`] (`statiko_edge_limited_total`) and
//! logged at most once per client (or site) per [`LOG_INTERVAL`]. The tables are bounded: a
//! bucket that has refilled is the same as no bucket, so such entries are dropped first when a
//! table is full, then any others (a dropped entry only forgets a partly used bucket).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use statiko_common::config::EdgeLimitsConfig;
use statiko_common::listener::{Sharded, client_key, now_ms};

pub use crate::metrics::{LimitStats, Reason};

/// Least time between two log lines about one client or site.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Most entries per table (clients, sites).
const MAX_ENTRIES: usize = 65_536;
/// Shards of a table (as in `Sharded`).
const SHARDS: usize = 16;

/// The client a request came from (the PROXY protocol's source when enabled), set by the
/// accept loop in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// A token bucket: `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    burst: f64,
}

impl Rate {
    fn new(per_second: f64, burst: u64) -> Option<Self> {
        (per_second > 0.0).then_some(Self {
            per_second,
            burst: burst.max(1) as f64,
        })
    }

    /// Time for an empty bucket to fill.
    fn refill(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.per_second)
    }
}

impl Bucket {
    fn full(rate: Option<Rate>, now: Instant) -> Self {
        Self {
            tokens: rate.map_or(0.0, |r| r.burst),
            at: now,
        }
    }

    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct ClientEntry {
    handshakes: Bucket,
    requests: Bucket,
    seen: Instant,
    next_log_ms: u64,
}

#[derive(Debug)]
struct SiteEntry {
    requests: Bucket,
    seen: Instant,
    next_log_ms: u64,
}

/// The per-client and per-site buckets, shared by both listeners and the handler.
#[derive(Debug)]
pub struct ClientLimits {
    handshakes: Option<Rate>,
    requests: Option<Rate>,
    site_requests: Option<Rate>,
    ipv6_prefix: u8,
    /// An entry unused for this long is the same as a new one.
    stale_after: Duration,
    clients: Sharded<IpAddr, ClientEntry>,
    sites: Sharded<Box<str>, SiteEntry>,
    pub stats: std::sync::Arc<LimitStats>,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self::new(&EdgeLimitsConfig::default())
    }
}

impl ClientLimits {
    pub fn new(config: &EdgeLimitsConfig) -> Self {
        let client = &config.per_client;
        let handshakes = Rate::new(client.handshakes_per_second, client.handshake_burst);
        let requests = Rate::new(client.requests_per_second, client.request_burst);
        let site_requests = Rate::new(
            config.per_site.requests_per_second,
            config.per_site.request_burst,
        );
        let stale_after = [handshakes, requests, site_requests]
            .iter()
            .flatten()
            .map(Rate::refill)
            .max()
            .unwrap_or_default();
        Self {
            handshakes,
            requests,
            site_requests,
            ipv6_prefix: client.ipv6_prefix,
            stale_after,
            clients: Sharded::default(),
            sites: Sharded::default(),
            stats: std::sync::Arc::default(),
        }
    }

    /// The IPv6 prefix clients are grouped by.
    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
    }

    /// The key a client is counted under.
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        client_key(ip, self.ipv6_prefix)
    }

    /// Whether new TLS connections are rate-limited per client.
    pub fn limits_handshakes(&self) -> bool {
        self.handshakes.is_some()
    }

    /// A new TLS connection from `ip`: false (counted, logged) when over its rate.
    pub fn allow_handshake(&self, ip: IpAddr) -> bool {
        let Some(rate) = self.handshakes else {
            return true;
        };
        self.client_take(ip, Reason::ClientHandshakes, |entry, now| {
            entry.handshakes.take(rate, now)
        })
    }

    /// A request from `ip`: false (counted, logged) when over its rate.
    pub fn allow_request(&self, ip: IpAddr) -> bool {
        let Some(rate) = self.requests else {
            return true;
        };
        self.client_take(ip, Reason::ClientRequests, |entry, now| {
            entry.requests.take(rate, now)
        })
    }

    /// A request for the site `domain`: false (counted, logged) when over its rate.
    pub fn allow_site(&self, domain: &str) -> bool {
        let Some(rate) = self.site_requests else {
            return true;
        };
        let now = Instant::now();
        let mut shard = self.sites.shard(domain);
        if !shard.contains_key(domain) {
            make_room(&mut shard, self.stale_after, now, |e| e.seen);
            shard.insert(
                domain.into(),
                SiteEntry {
                    requests: Bucket::full(Some(rate), now),
                    seen: now,
                    next_log_ms: 0,
                },
            );
        }
        let Some(entry) = shard.get_mut(domain) else {
            return true;
        };
        entry.seen = now;
        if entry.requests.take(rate, now) {
            return true;
        }
        self.stats.count(Reason::SiteRequests);
        let log = due(&mut entry.next_log_ms);
        drop(shard);
        if log {
            tracing::warn!(
                site = domain,
                reason = Reason::SiteRequests.label(),
                "site over its request rate, answering 429 (logged once per minute per site)"
            );
        }
        false
    }

    /// Counts and (at most once per interval per client) logs a refusal decided elsewhere.
    pub fn refused(&self, ip: IpAddr, reason: Reason) {
        self.client_take(ip, reason, |_, _| false);
    }

    /// Takes from one of `ip`'s buckets through `take`; on refusal counts `reason` and logs.
    fn client_take(
        &self,
        ip: IpAddr,
        reason: Reason,
        take: impl FnOnce(&mut ClientEntry, Instant) -> bool,
    ) -> bool {
        let key = self.key(ip);
        let now = Instant::now();
        let mut shard = self.clients.shard(&key);
        if !shard.contains_key(&key) {
            make_room(&mut shard, self.stale_after, now, |e| e.seen);
            shard.insert(
                key,
                ClientEntry {
                    handshakes: Bucket::full(self.handshakes, now),
                    requests: Bucket::full(self.requests, now),
                    seen: now,
                    next_log_ms: 0,
                },
            );
        }
        let Some(entry) = shard.get_mut(&key) else {
            return true;
        };
        entry.seen = now;
        if take(entry, now) {
            return true;
        }
        self.stats.count(reason);
        let log = due(&mut entry.next_log_ms);
        drop(shard);
        if log {
            tracing::warn!(
                client = %key,
                reason = reason.label(),
                "client over its limit, refusing (logged once per minute per client)"
            );
        }
        false
    }

    /// Entries held (clients, sites), for tests and `/status`.
    pub fn entries(&self) -> (usize, usize) {
        (self.clients.len(), self.sites.len())
    }
}

/// Whether a log line is due, and if so pushes the next one [`LOG_INTERVAL`] away.
fn due(next_log_ms: &mut u64) -> bool {
    let now = now_ms();
    if now < *next_log_ms {
        return false;
    }
    *next_log_ms = now + u64::try_from(LOG_INTERVAL.as_millis()).unwrap_or(u64::MAX);
    true
}

/// Before inserting into a full shard: drop the entries unused for `stale_after` (a refilled
/// bucket), then, if that was not enough, a quarter of the shard.
fn make_room<K, V>(
    shard: &mut std::collections::HashMap<K, V>,
    stale_after: Duration,
    now: Instant,
    seen: impl Fn(&V) -> Instant,
) {
    let cap = MAX_ENTRIES / SHARDS;
    if shard.len() < cap {
        return;
    }
    shard.retain(|_, v| now.saturating_duration_since(seen(v)) < stale_after);
    if shard.len() >= cap {
        let mut drop = cap / 4;
        shard.retain(|_, _| {
            if drop > 0 {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut EdgeLimitsConfig)) -> ClientLimits {
        let mut config = EdgeLimitsConfig::default();
        f(&mut config);
        ClientLimits::new(&config)
    }

    #[test]
    fn request_bucket_allows_the_burst_then_refuses() {
        let l = limits(|c| {
            c.per_client.requests_per_second = 1.0;
            c.per_client.request_burst = 3;
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!((0..3).all(|_| l.allow_request(a)));
        assert!(!l.allow_request(a));
        assert!(l.allow_request(b), "another client has its own bucket");
        assert_eq!(l.stats.snapshot()[2], ("client_requests", 1));
    }

    #[test]
    fn off_when_rate_is_zero() {
        let l = limits(|_| {});
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..10_000).all(|_| l.allow_request(a) && l.allow_handshake(a)));
        assert!((0..10_000).all(|_| l.allow_site("a.example")));
        assert_eq!(l.entries(), (0, 0), "nothing is tracked when off");
    }

    #[test]
    fn sites_and_ipv6_prefixes() {
        let l = limits(|c| {
            c.per_site.requests_per_second = 1.0;
            c.per_site.request_burst = 2;
            c.per_client.handshakes_per_second = 1.0;
            c.per_client.handshake_burst = 1;
        });
        assert!(l.allow_site("a.example") && l.allow_site("a.example"));
        assert!(!l.allow_site("a.example"));
        assert!(l.allow_site("b.example"));
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(l.allow_handshake(x));
        assert!(!l.allow_handshake(y), "one /64 is one client");
    }

    #[test]
    fn tables_are_bounded() {
        let l = limits(|c| {
            c.per_client.requests_per_second = 1.0;
            c.per_client.request_burst = 1_000;
        });
        for i in 0..(MAX_ENTRIES as u32 * 2) {
            l.allow_request(IpAddr::from(i.to_be_bytes()));
        }
        assert!(l.entries().0 <= MAX_ENTRIES, "{:?}", l.entries());
    }
}
