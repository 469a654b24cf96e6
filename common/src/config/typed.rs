//! How the config's typed values are written: durations as whole milliseconds or seconds, listen
//! addresses as `host:port` (`""` for a listener turned off). Each is a serde `with` module, so
//! a key stays one field of its section, typed (`Duration`, `SocketAddr`), while the file, the
//! `STATIKO_*` variables and `--check-config` keep the integers and strings they always had.
//!
//! A wrong value fails deserialization, so the error names the key in the config's spelling
//! (`edge.http: invalid socket address ...`), like a wrong type does.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use serde::{Deserialize as _, Deserializer, Serializer};

/// A duration written as whole milliseconds (`timeout: 10000`).
pub mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// A duration written as whole seconds (`leaseTtl: 10`).
pub mod seconds {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}

/// A listen address: `ip:port`, `[ipv6]:port` or `host:port` (the name resolved once, at load,
/// to its first address); port 0 is allowed.
pub mod listen_addr {
    use super::*;

    pub fn serialize<S: Serializer>(value: &SocketAddr, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        resolve(&text).map_err(serde::de::Error::custom)
    }
}

/// A listen address that may be turned off with `""`.
pub mod optional_listen_addr {
    use super::*;

    pub fn serialize<S: Serializer>(
        value: &Option<SocketAddr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(addr) => serializer.collect_str(addr),
            None => serializer.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Ok(None);
        }
        resolve(&text).map(Some).map_err(serde::de::Error::custom)
    }
}

/// Parses a listen address, resolving a host name to its first address.
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let valid_host = |host: &str| {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    match text.rsplit_once(':') {
        Some((host, port)) if valid_host(host) && port.parse::<u16>().is_ok() => text
            .to_socket_addrs()
            .map_err(|err| format!("resolve {text:?}: {err}"))?
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        _ => Err(format!(
            "invalid socket address {text:?}: expected host:port"
        )),
    }
}
