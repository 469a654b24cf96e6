//! TLS for the HTTPS listener: an SNI certificate resolver whose whole map is swapped
//! atomically (so a renewed or newly issued certificate reaches new handshakes without a
//! restart), a self-signed "statiko" default certificate for unknown or missing SNI, and the
//! rustls `ServerConfig` (TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, stateless tickets).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Session IDs remembered for TLS 1.2 resumption without tickets.
const SESSION_CACHE_SIZE: usize = 8 * 1024;

/// Why a certificate or the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in the pem chain")]
    NoCertificate,
    #[error("invalid pem")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("unusable private key")]
    Key(#[source] rustls::Error),
    #[error("private key does not match the certificate")]
    KeyMismatch(#[source] rustls::Error),
    #[error("generate the default certificate")]
    Generate(#[source] rcgen::Error),
    #[error("build the tls configuration")]
    Config(#[source] rustls::Error),
}

/// Certificates by SNI name: exact lowercase names, plus `*.example.com` entries that match
/// exactly one label. Anything else (including no SNI at all) gets the default certificate.
/// Site certificates by lowercase DNS name or `*.domain` wildcard; persistent, so the
/// reconciler patches a copy in O(changed) and publishes it whole.
pub type CertMap = imbl::HashMap<String, Arc<CertifiedKey>>;

pub struct CertResolver {
    certs: ArcSwap<CertMap>,
    default: Arc<CertifiedKey>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("names", &self.certs.load().len())
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    /// A resolver with no site certificates and a freshly generated self-signed default.
    pub fn new() -> Result<Self, TlsError> {
        Ok(Self::with_default(self_signed_default()?))
    }

    /// A resolver with no site certificates and the given default.
    pub fn with_default(default: Arc<CertifiedKey>) -> Self {
        Self {
            certs: ArcSwap::from_pointee(CertMap::new()),
            default,
        }
    }

    /// Replaces every site certificate at once. Keys are DNS names or `*.domain` wildcards;
    /// they are lowercased and a trailing dot is dropped.
    pub fn replace(&self, map: HashMap<String, Arc<CertifiedKey>>) {
        let map = map
            .into_iter()
            .map(|(name, key)| (normalize_name(&name), key))
            .collect();
        self.certs.store(Arc::new(map));
    }

    /// Publishes `map` as it is: its names must already be lowercase, without a trailing dot.
    pub fn set(&self, map: CertMap) {
        self.certs.store(Arc::new(map));
    }

    /// The default certificate, served for unknown or missing SNI.
    pub fn default_key(&self) -> &Arc<CertifiedKey> {
        &self.default
    }

    /// The certificate for an SNI name (`None`: the client sent none).
    pub fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(sni) = sni else {
            return self.default.clone();
        };
        let certs = self.certs.load();
        let found = if sni.bytes().any(|b| b.is_ascii_uppercase()) || sni.ends_with('.') {
            find(&certs, &normalize_name(sni))
        } else {
            find(&certs, sni)
        };
        found.unwrap_or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lookup(client_hello.server_name()))
    }
}

/// Exact match first, then a wildcard for the parent domain (one label only).
fn find(certs: &CertMap, name: &str) -> Option<Arc<CertifiedKey>> {
    if let Some(key) = certs.get(name) {
        return Some(key.clone());
    }
    let (first, parent) = name.split_once('.')?;
    if first.is_empty() || parent.is_empty() || !parent.contains('.') {
        // `*.com` style wildcards are never honoured.
        return None;
    }
    let mut wildcard = String::with_capacity(parent.len() + 2);
    wildcard.push_str("*.");
    wildcard.push_str(parent);
    certs.get(&wildcard).cloned()
}

fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A self-signed ECDSA P-256 certificate for the name "statiko".
fn self_signed_default() -> Result<Arc<CertifiedKey>, TlsError> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let params =
        rcgen::CertificateParams::new(vec!["statiko".to_owned()]).map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = aws_lc_rs::sign::any_supported_type(&key_der).map_err(TlsError::Key)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Parses a PEM certificate chain (end-entity first) and its PEM private key (PKCS#8, PKCS#1
/// or SEC1), and checks that the key belongs to the certificate.
pub fn certified_key_from_pem(
    cert_chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::Pem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(TlsError::Pem)?;
    let signing = aws_lc_rs::sign::any_supported_type(&key).map_err(TlsError::Key)?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(err) => return Err(TlsError::KeyMismatch(err)),
    }
    Ok(Arc::new(certified))
}

/// The HTTPS listener's rustls configuration: aws-lc-rs, TLS 1.2 and 1.3 only, ALPN `h2` then
/// `http/1.1` (server order is not forced), stateless session tickets plus a session cache.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = false;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = aws_lc_rs::Ticketer::new().map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_for(name: &str) -> Arc<CertifiedKey> {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        certified_key_from_pem(&cert.cert.pem(), &cert.signing_key.serialize_pem()).unwrap()
    }

    #[test]
    fn exact_wildcard_and_default() {
        let resolver = CertResolver::new().unwrap();
        let exact = key_for("example.com");
        let wild = key_for("*.example.com");
        resolver.replace(HashMap::from([
            ("Example.COM".to_owned(), exact.clone()),
            ("*.example.com".to_owned(), wild.clone()),
        ]));
        let default = resolver.default_key().clone();
        assert!(Arc::ptr_eq(&resolver.lookup(Some("example.com")), &exact));
        assert!(Arc::ptr_eq(&resolver.lookup(Some("EXAMPLE.com.")), &exact));
        assert!(Arc::ptr_eq(
            &resolver.lookup(Some("www.example.com")),
            &wild
        ));
        // A wildcard covers exactly one label.
        assert!(Arc::ptr_eq(
            &resolver.lookup(Some("a.b.example.com")),
            &default
        ));
        assert!(Arc::ptr_eq(&resolver.lookup(Some("other.test")), &default));
        assert!(Arc::ptr_eq(&resolver.lookup(None), &default));
        resolver.replace(HashMap::new());
        assert!(Arc::ptr_eq(&resolver.lookup(Some("example.com")), &default));
    }

    #[test]
    fn pem_errors() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_owned()]).unwrap();
        assert!(matches!(
            certified_key_from_pem("", &a.signing_key.serialize_pem()),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            certified_key_from_pem(&a.cert.pem(), "nope"),
            Err(TlsError::Pem(_))
        ));
        assert!(matches!(
            certified_key_from_pem(&a.cert.pem(), &b.signing_key.serialize_pem()),
            Err(TlsError::KeyMismatch(_))
        ));
    }

    #[test]
    fn config() {
        let config = server_config(Arc::new(CertResolver::new().unwrap())).unwrap();
        assert_eq!(config.alpn_protocols[0], b"h2");
        assert!(config.ticketer.enabled());
    }
}
