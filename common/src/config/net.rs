//! The network-facing limits of the listeners: `edge.limits`, `edge.proxyProtocol` and
//! `control.limits` (connection caps, timeouts in milliseconds, per-client token buckets), and
//! their validation. Durations are milliseconds, like `state.etcd.timeout`.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `edge.limits`: every limit of the edge's HTTP and HTTPS listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EdgeLimitsConfig {
    /// Open connections per listener; above it a new connection is closed at once.
    pub max_connections: u64,
    /// Time allowed for a TLS handshake, in ms.
    #[serde(with = "super::typed::millis")]
    pub tls_handshake_timeout: Duration,
    /// Time allowed for a request head, and for the first request of a connection, in ms.
    #[serde(with = "super::typed::millis")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight, or on which nothing moved, for this long is
    /// closed (HTTP/2 PINGs do not count), in ms.
    #[serde(with = "super::typed::millis")]
    pub idle_timeout: Duration,
    pub per_client: PerClientConfig,
    pub per_site: PerSiteConfig,
}

impl Default for EdgeLimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            per_client: PerClientConfig::default(),
            per_site: PerSiteConfig::default(),
        }
    }
}

/// `edge.limits.perClient`: limits per source address (IPv6 grouped by `ipv6Prefix`); 0 = off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PerClientConfig {
    /// Open connections per client over both listeners.
    pub max_connections: u64,
    /// New TLS connections per client per second (token bucket rate).
    pub handshakes_per_second: f64,
    pub handshake_burst: u64,
    /// Requests per client per second (token bucket rate).
    pub requests_per_second: f64,
    pub request_burst: u64,
    /// IPv6 clients sharing this many leading bits count as one client.
    pub ipv6_prefix: u8,
}

impl Default for PerClientConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            handshakes_per_second: 0.0,
            handshake_burst: 0,
            requests_per_second: 0.0,
            request_burst: 0,
            ipv6_prefix: 64,
        }
    }
}

/// `edge.limits.perSite`: requests per site (primary domain, aliases included); 0 = off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PerSiteConfig {
    pub requests_per_second: f64,
    pub request_burst: u64,
}

/// `edge.proxyProtocol`: PROXY protocol v1/v2 on the HTTP and HTTPS listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxyProtocolConfig {
    /// Require a PROXY header on every connection; one without a valid header is dropped.
    pub enabled: bool,
    /// CIDRs (or single addresses) allowed to send the header; empty = any peer.
    pub trusted_proxies: Vec<Cidr>,
    /// Time allowed for the header to arrive, in ms.
    #[serde(with = "super::typed::millis")]
    pub header_timeout: Duration,
}

impl Default for ProxyProtocolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            trusted_proxies: Vec::new(),
            header_timeout: Duration::from_secs(5),
        }
    }
}

/// `control.limits`: the gRPC listener's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ControlLimitsConfig {
    /// Open connections; above it a new connection is closed at once.
    pub max_connections: u64,
    /// Open connections per client address; 0 = off.
    pub max_connections_per_client: u64,
    /// Time allowed for a TLS handshake, in ms.
    #[serde(with = "super::typed::millis")]
    pub tls_handshake_timeout: Duration,
    /// A connection with no call in flight, or on which nothing moved, for this long is closed
    /// (HTTP/2 PINGs do not count), in ms.
    #[serde(with = "super::typed::millis")]
    pub idle_timeout: Duration,
}

impl Default for ControlLimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 1_000,
            max_connections_per_client: 100,
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address; written as that text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_bits(u128::from(u32::from(net)), 32, self.prefix)
                    == mask_bits(u128::from(u32::from(ip)), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_bits(u128::from(net), 128, self.prefix)
                    == mask_bits(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Keeps the first `prefix` of `width` bits.
pub fn mask_bits(value: u128, width: u8, prefix: u8) -> u128 {
    let prefix = prefix.min(width);
    if prefix == 0 {
        return 0;
    }
    let drop = u32::from(width - prefix);
    (value >> drop) << drop
}

/// Checks `edge.limits`, `edge.proxyProtocol` and `control.limits`.
pub(super) fn validate(
    edge: &EdgeLimitsConfig,
    proxy: &ProxyProtocolConfig,
    control: &ControlLimitsConfig,
) -> Result<(), ConfigError> {
    let zero = [
        ("edge.limits.maxConnections", edge.max_connections == 0),
        (
            "edge.limits.tlsHandshakeTimeout",
            edge.tls_handshake_timeout.is_zero(),
        ),
        (
            "edge.limits.headerReadTimeout",
            edge.header_read_timeout.is_zero(),
        ),
        ("edge.limits.idleTimeout", edge.idle_timeout.is_zero()),
        (
            "edge.proxyProtocol.headerTimeout",
            proxy.header_timeout.is_zero(),
        ),
        (
            "control.limits.maxConnections",
            control.max_connections == 0,
        ),
        (
            "control.limits.tlsHandshakeTimeout",
            control.tls_handshake_timeout.is_zero(),
        ),
        ("control.limits.idleTimeout", control.idle_timeout.is_zero()),
    ];
    for (key, is_zero) in zero {
        if is_zero {
            return Err(ConfigError::invalid(key, "must be greater than 0"));
        }
    }
    let rates = [
        (
            "edge.limits.perClient.handshakesPerSecond",
            edge.per_client.handshakes_per_second,
            "edge.limits.perClient.handshakeBurst",
            edge.per_client.handshake_burst,
        ),
        (
            "edge.limits.perClient.requestsPerSecond",
            edge.per_client.requests_per_second,
            "edge.limits.perClient.requestBurst",
            edge.per_client.request_burst,
        ),
        (
            "edge.limits.perSite.requestsPerSecond",
            edge.per_site.requests_per_second,
            "edge.limits.perSite.requestBurst",
            edge.per_site.request_burst,
        ),
    ];
    for (key, rate, burst_key, burst) in rates {
        if !rate.is_finite() || rate < 0.0 {
            return Err(ConfigError::invalid(
                key,
                "must be 0 (off) or a positive number",
            ));
        }
        if rate > 0.0 && burst == 0 {
            return Err(ConfigError::invalid(
                burst_key,
                format!("must be at least 1 when {key} is set"),
            ));
        }
    }
    if !(1..=128).contains(&edge.per_client.ipv6_prefix) {
        return Err(ConfigError::invalid(
            "edge.limits.perClient.ipv6Prefix",
            "must be between 1 and 128",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A change to a default config, and the key its validation error must name.
    type Case = (fn(&mut Config), &'static str);

    fn invalid_key(change: impl FnOnce(&mut Config)) -> Option<String> {
        let mut config = Config::default();
        change(&mut config);
        config
            .validate()
            .err()
            .and_then(|e| e.key().map(str::to_owned))
    }

    #[test]
    fn validation_names_the_key() {
        assert_eq!(invalid_key(|_| {}), None);
        let cases: [Case; 6] = [
            (
                |c| c.edge.limits.idle_timeout = Duration::ZERO,
                "edge.limits.idleTimeout",
            ),
            (
                |c| c.control.limits.max_connections = 0,
                "control.limits.maxConnections",
            ),
            (
                |c| c.edge.limits.per_client.requests_per_second = -1.0,
                "edge.limits.perClient.requestsPerSecond",
            ),
            (
                |c| c.edge.limits.per_site.requests_per_second = 5.0,
                "edge.limits.perSite.requestBurst",
            ),
            (
                |c| c.edge.limits.per_client.handshakes_per_second = f64::NAN,
                "edge.limits.perClient.handshakesPerSecond",
            ),
            (
                |c| c.edge.limits.per_client.ipv6_prefix = 0,
                "edge.limits.perClient.ipv6Prefix",
            ),
        ];
        for (change, key) in cases {
            assert_eq!(invalid_key(change).as_deref(), Some(key));
        }
        // A trusted proxy is parsed as it is read, so the error names the entry.
        let env = [(
            "STATIKO_EDGE_PROXY_PROTOCOL_TRUSTED_PROXIES".to_owned(),
            "[10.0.0.0/8, x]".to_owned(),
        )]
        .into();
        let err = Config::load_with_default_path(None, &env, std::path::Path::new("/nonexistent"))
            .unwrap_err();
        assert_eq!(
            err.key(),
            Some("edge.proxyProtocol.trustedProxies[1]"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_reach_the_new_keys() {
        let env: std::collections::HashMap<String, String> = [
            ("STATIKO_EDGE_LIMITS_PER_CLIENT_REQUESTS_PER_SECOND", "20"),
            ("STATIKO_EDGE_LIMITS_PER_CLIENT_REQUEST_BURST", "100"),
            (
                "STATIKO_EDGE_PROXY_PROTOCOL_TRUSTED_PROXIES",
                "[10.0.0.0/8, \"2001:db8::/32\"]",
            ),
            ("STATIKO_CONTROL_LIMITS_IDLE_TIMEOUT", "1000"),
            ("STATIKO_NODE_NAME", "n1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config =
            Config::load_with_default_path(None, &env, std::path::Path::new("/nonexistent"))
                .unwrap();
        assert_eq!(config.edge.limits.per_client.requests_per_second, 20.0);
        assert_eq!(config.edge.limits.per_client.request_burst, 100);
        assert_eq!(config.edge.proxy_protocol.trusted_proxies.len(), 2);
        assert_eq!(config.control.limits.idle_timeout, Duration::from_secs(1));
    }

    #[test]
    fn cidr_parse_and_contains() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(one.prefix, 32);
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }
}
