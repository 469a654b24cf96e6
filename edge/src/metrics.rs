//! The edge's Prometheus metrics: plain atomics, rendered as text exposition on the admin
//! listener's `/metrics`.
//!
//! Hand-written rather than `prometheus-client`: the hot path is one `ArcSwap` load, one hash
//! lookup by the site's domain and three relaxed `fetch_add`s, with no lock and no label
//! formatting per request; the label sets are fixed (site, status class) and rendered only on
//! scrape. Cardinality is bounded: requests for hosts no site owns count under `_unknown`, and
//! only the first [`MAX_SITES`] sites get their own series; the rest share `_other`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

/// Sites with series of their own; the rest count under [`OTHER`].
pub const MAX_SITES: usize = 10_000;
/// The `site` label of requests for a host no site owns.
pub const UNKNOWN: &str = "_unknown";
/// The `site` label shared by the sites beyond [`MAX_SITES`].
pub const OTHER: &str = "_other";

/// Request latency buckets (seconds): 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
/// Apply (stage + swap) duration buckets (seconds): 100 µs to 5 min.
const APPLY_BUCKETS: [f64; 14] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// Why a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client has `perClient.maxConnections` open.
    ClientConnections,
    /// The client opened TLS connections faster than `perClient.handshakesPerSecond`.
    ClientHandshakes,
    /// The client sent requests faster than `perClient.requestsPerSecond` (429).
    ClientRequests,
    /// The site got requests faster than `perSite.requestsPerSecond` (429).
    SiteRequests,
    /// PROXY protocol required and the header was missing, malformed or late.
    ProxyHeader,
    /// PROXY protocol from a peer outside `trustedProxies`.
    ProxyUntrusted,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::ClientConnections,
        Reason::ClientHandshakes,
        Reason::ClientRequests,
        Reason::SiteRequests,
        Reason::ProxyHeader,
        Reason::ProxyUntrusted,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::ClientConnections => "client_connections",
            Reason::ClientHandshakes => "client_handshakes",
            Reason::ClientRequests => "client_requests",
            Reason::SiteRequests => "site_requests",
            Reason::ProxyHeader => "proxy_header",
            Reason::ProxyUntrusted => "proxy_untrusted",
        }
    }
}

/// Refusals by reason, read at scrape time.
#[derive(Debug, Default)]
pub struct LimitStats {
    counts: [AtomicU64; Reason::ALL.len()],
}

impl LimitStats {
    pub fn count(&self, reason: Reason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// `(label, count)` for every reason.
    pub fn snapshot(&self) -> [(&'static str, u64); Reason::ALL.len()] {
        Reason::ALL.map(|r| (r.label(), self.counts[r as usize].load(Ordering::Relaxed)))
    }
}

/// Connection and handshake counters of a listener.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub(crate) accepted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) tls_handshakes: AtomicU64,
    pub(crate) tls_failures: AtomicU64,
}

/// A copy of [`ServerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections taken in under the cap.
    pub connections_accepted: u64,
    /// Connections closed at once because the cap was reached.
    pub connections_rejected: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// Completed TLS handshakes.
    pub tls_handshakes: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: u64,
}

impl ServerStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections_accepted: self.accepted.load(Ordering::Relaxed),
            connections_rejected: self.rejected.load(Ordering::Relaxed),
            connections_active: self.active.load(Ordering::Relaxed),
            tls_handshakes: self.tls_handshakes.load(Ordering::Relaxed),
            tls_handshake_failures: self.tls_failures.load(Ordering::Relaxed),
        }
    }
}

/// Counters of one `site` label.
#[derive(Debug, Default)]
pub struct SiteCounters {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    responses: [AtomicU64; 5],
    /// Response body bytes (the `Content-Length` of each response; HEAD counts 0).
    bytes: AtomicU64,
}

/// A histogram with fixed buckets; counts per bucket (not cumulative) plus overflow.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len() + 1` counts; the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0u64;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Per-site counters by primary domain.
type SiteSeries = imbl::HashMap<Box<str>, Arc<SiteCounters>>;

/// Everything the edge counts. One per process, shared by the handler, the reconciler loop
/// and the admin listener.
#[derive(Debug)]
pub struct EdgeMetrics {
    /// Counters by primary domain, swapped whole when the set of sites changes (persistent, so
    /// adding or dropping one site is O(1) whatever the number of sites).
    sites: ArcSwap<SiteSeries>,
    /// Serializes `update_sites` (cold path only).
    registering: Mutex<()>,
    unknown: Arc<SiteCounters>,
    other: Arc<SiteCounters>,
    latency: Histogram,
    apply: Histogram,
    last_apply_ms: AtomicI64,
    /// Staging failures since the process started (bundles that could not be fetched, verified
    /// or unpacked).
    staging_failures: AtomicU64,
    /// Counters of the HTTP and HTTPS listeners.
    pub http: Arc<ServerStats>,
    pub https: Arc<ServerStats>,
    /// Connections and requests refused by the per-client and per-site limits and the PROXY
    /// protocol, by reason.
    pub limited: Arc<LimitStats>,
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self {
            sites: ArcSwap::from_pointee(SiteSeries::new()),
            registering: Mutex::new(()),
            unknown: Arc::default(),
            other: Arc::default(),
            latency: Histogram::new(&LATENCY_BUCKETS),
            apply: Histogram::new(&APPLY_BUCKETS),
            last_apply_ms: AtomicI64::new(0),
            staging_failures: AtomicU64::new(0),
            http: Arc::default(),
            https: Arc::default(),
            limited: Arc::default(),
        }
    }
}

/// Point-in-time values the admin listener adds to a scrape.
#[derive(Debug, Default)]
pub struct Gauges<'a> {
    /// The desired-state revision served now (`None` before the first apply).
    pub applied_revision: Option<i64>,
    /// The newest desired-state revision the store sync delivered.
    pub desired_revision: i64,
    pub leader: bool,
    pub store_connected: bool,
    pub sites: usize,
    pub unhealthy_sites: usize,
    /// Certificates in use: name to `notAfter` (Unix ms), as the reconciler keeps them.
    pub certificates: Option<&'a imbl::OrdMap<String, i64>>,
}

impl EdgeMetrics {
    /// Adds the series of `added` sites (while there is room) and drops those of `removed`;
    /// sites already known keep theirs, so a new site never takes an old one's place. A site
    /// added while there was no room counts under [`OTHER`] until it is added again.
    pub fn update_sites(&self, added: &[&str], removed: &[&str]) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let _serial = self
            .registering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = SiteSeries::clone(&self.sites.load());
        for domain in removed {
            next.remove(*domain);
        }
        for domain in added {
            if next.len() >= MAX_SITES {
                break;
            }
            if !next.contains_key(*domain) {
                next.insert((*domain).into(), Arc::default());
            }
        }
        self.sites.store(Arc::new(next));
    }

    /// The counters a request for a site's primary domain counts under.
    pub fn site(&self, domain: &str) -> Arc<SiteCounters> {
        self.sites
            .load()
            .get(domain)
            .cloned()
            .unwrap_or_else(|| self.other.clone())
    }

    /// The counters of requests no site owns.
    pub fn unknown(&self) -> Arc<SiteCounters> {
        self.unknown.clone()
    }

    /// Counts one response.
    pub fn record(&self, site: &SiteCounters, status: u16, bytes: u64, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        site.responses[class].fetch_add(1, Ordering::Relaxed);
        if bytes > 0 {
            site.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        self.latency.observe(elapsed);
    }

    /// Counts one apply of a desired state (stage, then swap), finished at `finished_ms`.
    pub fn applied(&self, elapsed: Duration, finished_ms: i64) {
        self.apply.observe(elapsed);
        self.last_apply_ms.store(finished_ms, Ordering::Relaxed);
    }

    /// Counts one failed staging (called by the reconciler).
    pub fn staging_failed(&self) {
        self.staging_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self, gauges: &Gauges<'_>) -> String {
        let sites = self.sites.load();
        let mut out = String::with_capacity(4096 + sites.len() * 160);
        header(
            &mut out,
            "statiko_edge_requests_total",
            "counter",
            "Responses by site (primary domain) and status class.",
        );
        let mut site_rows = |label: &str, c: &SiteCounters| {
            for (i, n) in c.responses.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "statiko_edge_requests_total{{site=\"{}\",code=\"{}xx\"}} {n}",
                        escape(label),
                        i + 1
                    );
                }
            }
        };
        site_rows(UNKNOWN, &self.unknown);
        site_rows(OTHER, &self.other);
        for (domain, c) in sites.iter() {
            site_rows(domain, c);
        }
        header(
            &mut out,
            "statiko_edge_response_bytes_total",
            "counter",
            "Response body bytes by site (Content-Length of each response).",
        );
        for (label, c) in [(UNKNOWN, &self.unknown), (OTHER, &self.other)]
            .into_iter()
            .chain(sites.iter().map(|(d, c)| (&**d, c)))
        {
            let _ = writeln!(
                out,
                "statiko_edge_response_bytes_total{{site=\"{}\"}} {}",
                escape(label),
                c.bytes.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "statiko_edge_request_duration_seconds",
            "histogram",
            "Time from the request head to the response head.",
        );
        self.latency
            .render(&mut out, "statiko_edge_request_duration_seconds");

        for (listener, stats) in [("http", &self.http), ("https", &self.https)] {
            let s = stats.snapshot();
            let rows: [(&str, &str, &str, u64); 3] = [
                (
                    "statiko_edge_connections_accepted_total",
                    "counter",
                    "Connections accepted under the cap.",
                    s.connections_accepted,
                ),
                (
                    "statiko_edge_connections_rejected_total",
                    "counter",
                    "Connections closed at once because the cap was reached.",
                    s.connections_rejected,
                ),
                (
                    "statiko_edge_connections_active",
                    "gauge",
                    "Connections open now.",
                    s.connections_active,
                ),
            ];
            for (name, kind, help, value) in rows {
                if listener == "http" {
                    header(&mut out, name, kind, help);
                }
                let _ = writeln!(out, "{name}{{listener=\"{listener}\"}} {value}");
            }
        }
        let tls = self.https.snapshot();
        single(
            &mut out,
            "statiko_edge_tls_handshakes_total",
            "counter",
            "Completed TLS handshakes.",
            tls.tls_handshakes,
        );
        single(
            &mut out,
            "statiko_edge_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or timed out.",
            tls.tls_handshake_failures,
        );

        header(
            &mut out,
            "statiko_edge_limited_total",
            "counter",
            "Connections (closed) and requests (429) refused by the per-client and per-site \
             limits and the PROXY protocol, by reason.",
        );
        for (reason, n) in self.limited.snapshot() {
            let _ = writeln!(out, "statiko_edge_limited_total{{reason=\"{reason}\"}} {n}");
        }

        single(
            &mut out,
            "statiko_edge_applied_revision",
            "gauge",
            "Desired-state revision served now (-1 before the first apply).",
            gauges.applied_revision.unwrap_or(-1),
        );
        single(
            &mut out,
            "statiko_edge_desired_revision",
            "gauge",
            "Newest desired-state revision received from the store.",
            gauges.desired_revision,
        );
        let lag = gauges
            .applied_revision
            .map_or(0, |applied| (gauges.desired_revision - applied).max(0));
        single(
            &mut out,
            "statiko_edge_sync_lag_revisions",
            "gauge",
            "Desired revision received but not served yet (0 when in sync).",
            lag,
        );
        header(
            &mut out,
            "statiko_edge_apply_duration_seconds",
            "histogram",
            "Time to apply one desired state: stage its bundles, swap certificates and routes.",
        );
        self.apply
            .render(&mut out, "statiko_edge_apply_duration_seconds");
        single(
            &mut out,
            "statiko_edge_last_apply_timestamp_seconds",
            "gauge",
            "When the last apply finished (Unix seconds; 0 before the first).",
            self.last_apply_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
        single(
            &mut out,
            "statiko_edge_staging_failures_total",
            "counter",
            "Bundles that failed to stage (fetch, verify or unpack).",
            self.staging_failures.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "statiko_edge_sites",
            "gauge",
            "Sites in the applied state.",
            gauges.sites,
        );
        single(
            &mut out,
            "statiko_edge_sites_unhealthy",
            "gauge",
            "Sites whose last deploy or certificate has an error.",
            gauges.unhealthy_sites,
        );
        single(
            &mut out,
            "statiko_edge_leader",
            "gauge",
            "1 while this edge is the cluster leader.",
            u8::from(gauges.leader),
        );
        single(
            &mut out,
            "statiko_edge_store_connected",
            "gauge",
            "1 while the store sync is connected.",
            u8::from(gauges.store_connected),
        );
        header(
            &mut out,
            "statiko_edge_certificate_expiry_timestamp_seconds",
            "gauge",
            "notAfter of each certificate in use (Unix seconds).",
        );
        for (name, not_after) in gauges.certificates.into_iter().flatten().take(MAX_SITES) {
            let _ = writeln!(
                out,
                "statiko_edge_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}} {}",
                escape(name),
                *not_after as f64 / 1000.0
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A series without labels, with its header: a gauge or a counter (`kind`).
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Label value escaping (backslash, quote, newline). Domains and certificate names never
/// need it; it is here so a bad value cannot break the exposition.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_site_and_class_with_bounded_labels() {
        let m = EdgeMetrics::default();
        let sites = ["a.example", "b.example"];
        m.update_sites(&sites, &[]);
        m.record(&m.site("a.example"), 200, 1024, Duration::from_micros(80));
        m.record(&m.site("a.example"), 304, 0, Duration::from_micros(80));
        m.record(&m.site("gone.example"), 200, 10, Duration::from_millis(2));
        m.record(&m.unknown(), 404, 0, Duration::from_millis(20));
        let text = m.render(&Gauges {
            applied_revision: Some(7),
            desired_revision: 9,
            certificates: Some(&imbl::OrdMap::unit("c1".into(), 2_000_000)),
            ..Gauges::default()
        });
        for line in [
            "statiko_edge_requests_total{site=\"a.example\",code=\"2xx\"} 1",
            "statiko_edge_requests_total{site=\"a.example\",code=\"3xx\"} 1",
            "statiko_edge_requests_total{site=\"_other\",code=\"2xx\"} 1",
            "statiko_edge_requests_total{site=\"_unknown\",code=\"4xx\"} 1",
            "statiko_edge_response_bytes_total{site=\"a.example\"} 1024",
            "statiko_edge_response_bytes_total{site=\"b.example\"} 0",
            "statiko_edge_request_duration_seconds_bucket{le=\"0.0001\"} 2",
            "statiko_edge_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "statiko_edge_request_duration_seconds_count 4",
            "statiko_edge_applied_revision 7",
            "statiko_edge_sync_lag_revisions 2",
            "statiko_edge_certificate_expiry_timestamp_seconds{certificate=\"c1\"} 2000",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn sites_are_added_and_dropped_one_by_one() {
        let m = EdgeMetrics::default();
        m.update_sites(&["a.example", "b.example"], &[]);
        m.record(&m.site("a.example"), 200, 1, Duration::from_micros(80));
        let a = m.site("a.example");
        m.update_sites(&["c.example"], &["b.example"]);
        assert!(
            Arc::ptr_eq(&a, &m.site("a.example")),
            "a keeps its counters"
        );
        assert!(Arc::ptr_eq(&m.site("b.example"), &m.other));
        let text = m.render(&Gauges::default());
        assert!(text.contains("statiko_edge_response_bytes_total{site=\"c.example\"} 0"));
        assert!(!text.contains("b.example"), "{text}");
    }

    #[test]
    fn keeps_series_of_known_sites_and_caps_new_ones() {
        let m = EdgeMetrics::default();
        let many: Vec<String> = (0..MAX_SITES + 5)
            .map(|i| format!("s{i}.example"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        m.update_sites(&many, &[]);
        assert_eq!(m.sites.load().len(), MAX_SITES);
        let first = m.site("s0.example");
        m.record(&first, 200, 1, Duration::ZERO);
        // Added again: s0 keeps its counters.
        m.update_sites(&many, &[]);
        assert!(Arc::ptr_eq(&first, &m.site("s0.example")));
        // A site over the cap counts under _other.
        let over = &many[MAX_SITES..];
        assert!(
            over.iter()
                .all(|d| Arc::ptr_eq(&m.site(d), &m.site("nope")))
        );
    }
}
