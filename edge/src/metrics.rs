//! The edge's Prometheus metrics on `prometheus-client`, rendered as text exposition (format
//! 0.0.4) on the admin listener's `/metrics`.
//!
//! The hot path holds cloned counter handles (an `Arc` around one atomic each): the route of a
//! site carries its [`SiteCounters`] (see [`crate::table::SiteRoute`]), so counting a response is
//! two relaxed `fetch_add`s and one histogram observation, with no map lookup, no lock on the
//! label families and no label formatting per request; labels are rendered only on scrape.
//! Cardinality is bounded: requests for hosts no site owns count under `_unknown`, and only the
//! first [`MAX_SITES`] sites get their own series; the rest share `_other`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
/// The `code` label of each status class, 1xx to 5xx.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteCodeLabels {
    site: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    certificate: String,
}

/// A gauge of seconds (`f64`).
type SecondsGauge = Gauge<f64, AtomicU64>;

/// Refusals by reason: one counter handle per reason.
#[derive(Debug, Default)]
pub struct LimitStats {
    counts: [Counter; Reason::ALL.len()],
}

impl LimitStats {
    fn registered(family: &Family<ReasonLabels, Counter>) -> Self {
        Self {
            counts: Reason::ALL
                .map(|r| family.get_or_create_owned(&ReasonLabels { reason: r.label() })),
        }
    }

    pub fn count(&self, reason: Reason) {
        self.counts[reason as usize].inc();
    }

    /// `(label, count)` for every reason.
    pub fn snapshot(&self) -> [(&'static str, u64); Reason::ALL.len()] {
        Reason::ALL.map(|r| (r.label(), self.counts[r as usize].get()))
    }
}

/// Connection and handshake counters of a listener (handles into the `listener` families).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub(crate) accepted: Counter,
    pub(crate) rejected: Counter,
    pub(crate) active: Gauge,
    pub(crate) tls_handshakes: Counter,
    pub(crate) tls_failures: Counter,
    /// Requests answered (registered for the HTTP/3 listener only: HTTP/1 and HTTP/2
    /// requests are the sum of `requests_total` less these).
    pub(crate) requests: Counter,
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
            connections_accepted: self.accepted.get(),
            connections_rejected: self.rejected.get(),
            connections_active: u64::try_from(self.active.get()).unwrap_or(0),
            tls_handshakes: self.tls_handshakes.get(),
            tls_handshake_failures: self.tls_failures.get(),
        }
    }
}

/// Counter handles of one `site` label, held by the site's route.
#[derive(Debug, Default)]
pub struct SiteCounters {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    responses: [Counter; 5],
    /// Response body bytes (the `Content-Length` of each response; HEAD counts 0).
    bytes: Counter,
}

/// Per-site counters by primary domain.
type SiteSeries = imbl::HashMap<Box<str>, Arc<SiteCounters>>;

/// The metric families and the registry that renders them.
#[derive(Debug)]
struct Families {
    registry: Registry,
    requests: Family<SiteCodeLabels, Counter>,
    response_bytes: Family<SiteLabels, Counter>,
    certificate_expiry: Family<CertificateLabels, SecondsGauge>,
    applied_revision: Gauge,
    desired_revision: Gauge,
    sync_lag: Gauge,
    sites: Gauge,
    sites_unhealthy: Gauge,
    leader: Gauge,
    store_connected: Gauge,
}

/// Everything the edge counts. One per process, shared by the handler, the reconciler loop
/// and the admin listener.
#[derive(Debug)]
pub struct EdgeMetrics {
    /// Counters by primary domain, swapped whole when the set of sites changes (persistent, so
    /// adding or dropping one site is O(1) whatever the number of sites). Read when a route is
    /// built, never per request.
    sites: ArcSwap<SiteSeries>,
    /// Serializes `update_sites` (cold path only).
    registering: Mutex<()>,
    unknown: Arc<SiteCounters>,
    other: Arc<SiteCounters>,
    latency: Histogram,
    apply: Histogram,
    last_apply: SecondsGauge,
    /// Staging failures since the process started (bundles that could not be fetched, verified
    /// or unpacked).
    staging_failures: Counter,
    /// Counters of the HTTP and HTTPS listeners.
    pub http: Arc<ServerStats>,
    pub https: Arc<ServerStats>,
    /// Counters of the HTTP/3 (QUIC) listener: QUIC connections, their TLS handshakes, and
    /// the requests answered over HTTP/3.
    pub h3: Arc<ServerStats>,
    /// Connections and requests refused by the per-client and per-site limits and the PROXY
    /// protocol, by reason.
    pub limited: Arc<LimitStats>,
    /// Locked by a scrape: it sets the point-in-time gauges, then encodes.
    families: Mutex<Families>,
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        // Help texts without their final period: the registry adds it.
        let mut registry = Registry::with_prefix("statiko_edge");
        let requests = Family::<SiteCodeLabels, Counter>::default();
        registry.register(
            "requests",
            "Responses by site (primary domain) and status class",
            requests.clone(),
        );
        let response_bytes = Family::<SiteLabels, Counter>::default();
        registry.register(
            "response_bytes",
            "Response body bytes by site (Content-Length of each response)",
            response_bytes.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "request_duration_seconds",
            "Time from the request head to the response head",
            latency.clone(),
        );
        let listener = |name: &'static str, help: &str, registry: &mut Registry| {
            let family = Family::<ListenerLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let accepted = listener(
            "connections_accepted",
            "Connections accepted under the cap",
            &mut registry,
        );
        let rejected = listener(
            "connections_rejected",
            "Connections closed at once because the cap was reached",
            &mut registry,
        );
        let active = Family::<ListenerLabels, Gauge>::default();
        registry.register("connections_active", "Connections open now", active.clone());
        let tls_handshakes = Counter::default();
        registry.register(
            "tls_handshakes",
            "Completed TLS handshakes",
            tls_handshakes.clone(),
        );
        let tls_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_failures.clone(),
        );
        let http3_requests = Counter::default();
        registry.register(
            "http3_requests",
            "Requests answered over HTTP/3 (also counted in requests_total)",
            http3_requests.clone(),
        );
        let stats = |name: &'static str, tls: bool, requests: Counter| {
            let labels = ListenerLabels { listener: name };
            Arc::new(ServerStats {
                accepted: accepted.get_or_create_owned(&labels),
                rejected: rejected.get_or_create_owned(&labels),
                active: active.get_or_create_owned(&labels),
                tls_handshakes: if tls {
                    tls_handshakes.clone()
                } else {
                    Counter::default()
                },
                tls_failures: if tls {
                    tls_failures.clone()
                } else {
                    Counter::default()
                },
                requests,
            })
        };
        let http = stats("http", false, Counter::default());
        let https = stats("https", true, Counter::default());
        let h3 = stats("h3", true, http3_requests);
        let limited = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "limited",
            "Connections (closed) and requests (429) refused by the per-client and per-site \
             limits and the PROXY protocol, by reason",
            limited.clone(),
        );
        let limited = Arc::new(LimitStats::registered(&limited));

        let gauge = |name: &str, help: &str, registry: &mut Registry| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let applied_revision = gauge(
            "applied_revision",
            "Desired-state revision served now (-1 before the first apply)",
            &mut registry,
        );
        let desired_revision = gauge(
            "desired_revision",
            "Newest desired-state revision received from the store",
            &mut registry,
        );
        let sync_lag = gauge(
            "sync_lag_revisions",
            "Desired revision received but not served yet (0 when in sync)",
            &mut registry,
        );
        let apply = Histogram::new(APPLY_BUCKETS);
        registry.register(
            "apply_duration_seconds",
            "Time to apply one desired state: stage its bundles, swap certificates and routes",
            apply.clone(),
        );
        let last_apply = SecondsGauge::default();
        registry.register(
            "last_apply_timestamp_seconds",
            "When the last apply finished (Unix seconds; 0 before the first)",
            last_apply.clone(),
        );
        let staging_failures = Counter::default();
        registry.register(
            "staging_failures",
            "Bundles that failed to stage (fetch, verify or unpack)",
            staging_failures.clone(),
        );
        let sites = gauge("sites", "Sites in the applied state", &mut registry);
        let sites_unhealthy = gauge(
            "sites_unhealthy",
            "Sites whose last deploy or certificate has an error",
            &mut registry,
        );
        let leader = gauge(
            "leader",
            "1 while this edge is the cluster leader",
            &mut registry,
        );
        let store_connected = gauge(
            "store_connected",
            "1 while the store sync is connected",
            &mut registry,
        );
        let certificate_expiry = Family::<CertificateLabels, SecondsGauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of each certificate in use (Unix seconds)",
            certificate_expiry.clone(),
        );

        let families = Families {
            registry,
            requests,
            response_bytes,
            certificate_expiry,
            applied_revision,
            desired_revision,
            sync_lag,
            sites,
            sites_unhealthy,
            leader,
            store_connected,
        };
        Self {
            sites: ArcSwap::from_pointee(SiteSeries::new()),
            registering: Mutex::new(()),
            unknown: Arc::new(families.site_counters(UNKNOWN)),
            other: Arc::new(families.site_counters(OTHER)),
            latency,
            apply,
            last_apply,
            staging_failures,
            http,
            https,
            h3,
            limited,
            families: Mutex::new(families),
        }
    }
}

impl Families {
    /// Registers the series of one `site` label (cold path).
    fn site_counters(&self, site: &str) -> SiteCounters {
        SiteCounters {
            responses: CLASSES.map(|code| {
                self.requests.get_or_create_owned(&SiteCodeLabels {
                    site: site.to_owned(),
                    code,
                })
            }),
            bytes: self.response_bytes.get_or_create_owned(&SiteLabels {
                site: site.to_owned(),
            }),
        }
    }

    /// Drops the series of one `site` label.
    fn remove_site(&self, site: &str) {
        for code in CLASSES {
            self.requests.remove(&SiteCodeLabels {
                site: site.to_owned(),
                code,
            });
        }
        self.response_bytes.remove(&SiteLabels {
            site: site.to_owned(),
        });
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
    fn families(&self) -> std::sync::MutexGuard<'_, Families> {
        self.families
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds the series of `added` sites (while there is room) and drops those of `removed`;
    /// sites already known keep theirs, so a new site never takes an old one's place. A site
    /// added while there was no room counts under [`OTHER`] until it is added again. Call it
    /// before building the routes of `added`, which take their counters from [`Self::site`].
    pub fn update_sites(&self, added: &[&str], removed: &[&str]) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let _serial = self
            .registering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let families = self.families();
        let mut next = SiteSeries::clone(&self.sites.load());
        for domain in removed {
            if next.remove(*domain).is_some() {
                families.remove_site(domain);
            }
        }
        for domain in added {
            if next.len() >= MAX_SITES {
                break;
            }
            if !next.contains_key(*domain) {
                next.insert((*domain).into(), Arc::new(families.site_counters(domain)));
            }
        }
        self.sites.store(Arc::new(next));
    }

    /// The counters a request for a site's primary domain counts under: taken once when the
    /// site's route is built (and for the rare redirect of an alias), not per request.
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
        site.responses[class].inc();
        if bytes > 0 {
            site.bytes.inc_by(bytes);
        }
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Counts one apply of a desired state (stage, then swap), finished at `finished_ms`.
    pub fn applied(&self, elapsed: Duration, finished_ms: i64) {
        self.apply.observe(elapsed.as_secs_f64());
        self.last_apply.set(finished_ms as f64 / 1000.0);
    }

    /// Counts one failed staging (called by the reconciler).
    pub fn staging_failed(&self) {
        self.staging_failures.inc();
    }

    /// The text exposition (format 0.0.4): sets the point-in-time gauges, then encodes.
    pub fn render(&self, gauges: &Gauges<'_>) -> String {
        let families = self.families();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        families
            .applied_revision
            .set(gauges.applied_revision.unwrap_or(-1));
        families.desired_revision.set(gauges.desired_revision);
        families.sync_lag.set(
            gauges
                .applied_revision
                .map_or(0, |applied| (gauges.desired_revision - applied).max(0)),
        );
        families.sites.set(count(gauges.sites));
        families.sites_unhealthy.set(count(gauges.unhealthy_sites));
        families.leader.set(i64::from(gauges.leader));
        families
            .store_connected
            .set(i64::from(gauges.store_connected));
        families.certificate_expiry.clear();
        for (name, not_after) in gauges.certificates.into_iter().flatten().take(MAX_SITES) {
            families
                .certificate_expiry
                .get_or_create(&CertificateLabels {
                    certificate: name.clone(),
                })
                .set(*not_after as f64 / 1000.0);
        }
        let mut out = String::with_capacity(4096 + self.sites.load().len() * 400);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &families.registry);
        out
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
