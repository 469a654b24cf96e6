//! The routing table: an immutable snapshot of what this edge serves, swapped atomically as a
//! whole, so a request sees the state before a revision or after it, never a mix.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use statiko_common::model::AppRef;

use crate::bundle::StagedBundle;
use crate::metrics::SiteCounters;

/// What a host name resolves to.
#[derive(Debug, Clone)]
pub enum Route {
    /// The primary domain of a site.
    Site(Arc<SiteRoute>),
    /// An alias: redirect (301) to the primary domain.
    Alias { primary: String },
    /// A preview of a site, at its own host.
    Preview(Arc<PreviewRoute>),
}

/// One preview as served (see `serve/preview.rs`).
#[derive(Debug)]
pub struct PreviewRoute {
    /// Its host (what SNI and `Host` name).
    pub host: String,
    /// The primary domain of its site (its requests count for that site).
    pub site: String,
    /// The staged bundle; `None` when it failed to stage on this edge (503).
    pub bundle: Option<Arc<StagedBundle>>,
    /// Unix ms from which it is no longer served.
    pub expires_at: i64,
    /// Basic auth, when it has a password.
    pub password: Option<Arc<crate::serve::preview::PasswordCheck>>,
    pub counters: Arc<SiteCounters>,
}

/// One site as served.
#[derive(Debug)]
pub struct SiteRoute {
    pub domain: String,
    /// The app version being served; `None` shows the welcome page.
    pub app: Option<AppRef>,
    /// The staged bundle of `app`; `None` while nothing is deployed.
    pub bundle: Option<Arc<StagedBundle>>,
    /// The site's response counters, taken when the route is built, so a request counts
    /// without looking its site up.
    pub counters: Arc<SiteCounters>,
    /// Deployments the site served before, newest first, that skew protection may still serve
    /// a missing static asset from (`serve/skew.rs`); empty when it is off.
    pub retired: Arc<[Retired]>,
}

/// A bundle a site served before (kept staged by `releases.rs`), with its skew protection
/// deadline.
#[derive(Debug)]
pub struct Retired {
    /// The `Statiko-Deployment` header of what it serves: the deployment id (`name@version`
    /// for a deployment recorded before sites named theirs).
    pub deployment: HeaderValue,
    pub bundle: Arc<StagedBundle>,
    /// Unix ms after which it serves nothing: when it stopped being live plus the window.
    pub until_ms: i64,
}

/// An ACME HTTP-01 challenge response, answered on port 80 for its domains only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub key_authorization: String,
    /// Lowercase domains of the site the challenge is for.
    pub domains: Vec<String>,
}

/// Lowercase host name (no port) to route; persistent, so the reconciler patches a copy in
/// O(changed) and publishes it whole.
pub type Hosts = imbl::HashMap<String, Route>;

/// Everything a request needs to be routed.
#[derive(Debug, Default)]
pub struct RoutingTable {
    /// Store revision this table reflects.
    pub revision: i64,
    pub hosts: Hosts,
    /// ACME HTTP-01 challenge responses by token.
    pub challenges: Arc<HashMap<String, Challenge>>,
}

impl RoutingTable {
    /// Resolves a `Host` header or SNI name (port and trailing dot ignored, case-insensitive).
    pub fn route(&self, host: &str) -> Option<&Route> {
        let host = host_without_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.hosts.get(&host.to_ascii_lowercase());
        }
        self.hosts.get(host)
    }
}

/// Strips a `:port` suffix, leaving bracketed IPv6 literals intact.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The table currently served; readers `load()` it once per request.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_without_port("example.com:8443"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:443"), "[::1]");
        let mut table = RoutingTable::default();
        table.hosts.insert(
            "www.example.com".into(),
            Route::Alias {
                primary: "example.com".into(),
            },
        );
        assert!(matches!(
            table.route("WWW.Example.com.:443"),
            Some(Route::Alias { .. })
        ));
        assert!(table.route("other.com").is_none());
    }
}
