//! Cryptography used across Statiko, all on aws-lc-rs (the one rustls crypto provider).
//!
//! - [`SecretBox`]: AES-256-GCM sealing of secrets (private keys) before they go into the store,
//!   as `v1:<key id>:<base64(nonce || ciphertext+tag)>`.
//! - Ed25519 bundle signatures over the raw 32-byte SHA-256 digest of a bundle.
//! - SHA-256 helpers and the `sha256:<hex>` digest format.
//! - TLS certificate parsing/validation and self-signed certificate generation.
//!
//! Nothing secret ever appears in `Debug` output or in error messages.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer,
};
use x509_cert::Certificate as X509Certificate;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Any, Decode, Encode};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

/// Errors from this module. Messages are lowercase and never include secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("invalid encryption key: {0}")]
    InvalidKey(&'static str),
    #[error("sealed with key {sealed}, configured key is {configured}")]
    WrongKey { sealed: String, configured: String },
    #[error("malformed sealed value: {0}")]
    BadSealedFormat(&'static str),
    #[error("sealed value failed authentication (corrupted, tampered with, or a different key)")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    #[error("invalid signing key: {0}")]
    InvalidSigningKey(String),
    #[error("bundle signature does not verify with the configured public key")]
    BadSignature,
    #[error("invalid digest {0:?}: expected sha256:<64 hex characters>")]
    InvalidDigest(String),
    #[error("invalid hex: {0}")]
    InvalidHex(&'static str),
    #[error("no certificate in pem")]
    NoCertificate,
    #[error("invalid certificate pem: {0}")]
    InvalidCertificatePem(String),
    #[error("unparseable certificate{}: {reason}", position_suffix(*.index))]
    UnparseableCertificate { index: usize, reason: String },
    #[error("no private key in pem")]
    NoPrivateKey,
    #[error("invalid private key pem")]
    InvalidPrivateKeyPem,
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    #[error("private key does not match the certificate")]
    KeyMismatch,
    #[error("certificate expired at {not_after} (unix ms {not_after_ms})")]
    Expired {
        not_after: String,
        not_after_ms: i64,
    },
    #[error("cannot generate certificate: {0}")]
    Generate(String),
}

fn position_suffix(index: usize) -> String {
    if index == 0 {
        String::new()
    } else {
        format!(" #{} in chain", index + 1)
    }
}

// ---------------------------------------------------------------------------------------------
// SecretBox
// ---------------------------------------------------------------------------------------------

const SEAL_VERSION: &str = "v1";
const TAG_LEN: usize = 16;

/// AES-256-GCM sealing with a fresh random 96-bit nonce per value.
///
/// Sealed form: `v1:<key_id>:<base64(nonce || ciphertext+tag)>`, where `key_id` is the first
/// 8 hex characters of sha256(key), so a value sealed with another key is reported as such.
pub struct SecretBox {
    key: RandomizedNonceKey,
    key_id: String,
}

impl SecretBox {
    /// A box for this 256-bit key.
    pub fn new(key: [u8; 32]) -> Self {
        let key_id = hex(&sha256(&key)[..4]);
        // AES-256-GCM accepts every 32-byte key; failure here would be a broken library.
        #[allow(clippy::expect_used)]
        let key = RandomizedNonceKey::new(&AES_256_GCM, &key)
            .expect("aes-256-gcm accepts any 32-byte key");
        Self { key, key_id }
    }

    /// A box for the base64 of 32 bytes (the `secretsEncryptionKey` configuration format).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|_| CryptoError::InvalidKey("not valid base64"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::InvalidKey("must be exactly 32 bytes"))?;
        Ok(Self::new(key))
    }

    /// First 8 hex characters of sha256(key).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Seals `plaintext` as `v1:<key_id>:<base64(nonce || ciphertext+tag)>`.
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let mut in_out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        in_out.extend_from_slice(plaintext);
        // Sealing with a valid key only fails for inputs beyond GCM's ~64 GiB limit.
        #[allow(clippy::expect_used)]
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::empty(), &mut in_out)
            .expect("aes-256-gcm sealing of an in-memory value");
        let mut payload = Vec::with_capacity(NONCE_LEN + in_out.len());
        payload.extend_from_slice(nonce.as_ref());
        payload.extend_from_slice(&in_out);
        format!("{SEAL_VERSION}:{}:{}", self.key_id, BASE64.encode(payload))
    }

    /// Opens a value made by [`SecretBox::seal`] with the same key.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let mut parts = sealed.trim().splitn(3, ':');
        let (Some(version), Some(key_id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::BadSealedFormat(
                "expected v1:<key id>:<base64 payload>",
            ));
        };
        if version != SEAL_VERSION {
            return Err(CryptoError::BadSealedFormat(
                "unknown version (expected v1)",
            ));
        }
        if key_id.len() != 8 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CryptoError::BadSealedFormat(
                "key id must be 8 hex characters",
            ));
        }
        if !key_id.eq_ignore_ascii_case(&self.key_id) {
            return Err(CryptoError::WrongKey {
                sealed: key_id.to_owned(),
                configured: self.key_id.clone(),
            });
        }
        let payload = BASE64
            .decode(body)
            .map_err(|_| CryptoError::BadSealedFormat("payload is not valid base64"))?;
        if payload.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::BadSealedFormat("payload too short"));
        }
        let (nonce, ciphertext) = payload.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| CryptoError::BadSealedFormat("bad nonce"))?;
        let mut in_out = ciphertext.to_vec();
        let plaintext_len = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut in_out)
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        in_out.truncate(plaintext_len);
        Ok(in_out)
    }
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBox")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The key id of a sealed value (`v1:<key_id>:...`), if it looks like one.
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    let mut parts = sealed.trim().splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(SEAL_VERSION), Some(id), Some(_))
            if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Some(id)
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Ed25519 bundle signatures
// ---------------------------------------------------------------------------------------------

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn ed25519_from_spki_der(der: &[u8]) -> Result<[u8; 32], CryptoError> {
    match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
        Some(raw) if raw.len() == 32 => raw
            .try_into()
            .map_err(|_| CryptoError::InvalidPublicKey("wrong length".into())),
        _ => Err(CryptoError::InvalidPublicKey(
            "not an ed25519 public key (only ed25519 is supported)".into(),
        )),
    }
}

/// Parses an Ed25519 public key from PEM `PUBLIC KEY` (SPKI), or from base64 of the 32 raw
/// bytes (base64 of the 44-byte SPKI DER is accepted too).
pub fn parse_ed25519_public_key(text: &str) -> Result<[u8; 32], CryptoError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CryptoError::InvalidPublicKey("empty".into()));
    }
    if text.contains("-----BEGIN") {
        let spki =
            SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes()).map_err(|e| match e {
                pem::Error::NoItemsFound => {
                    CryptoError::InvalidPublicKey("no PUBLIC KEY block in pem".into())
                }
                other => CryptoError::InvalidPublicKey(format!("bad pem: {other}")),
            })?;
        return ed25519_from_spki_der(spki.as_ref());
    }
    let bytes = BASE64
        .decode(text)
        .map_err(|_| CryptoError::InvalidPublicKey("neither pem nor base64".into()))?;
    match bytes.len() {
        32 => bytes
            .try_into()
            .map_err(|_| CryptoError::InvalidPublicKey("wrong length".into())),
        44 => ed25519_from_spki_der(&bytes),
        n => Err(CryptoError::InvalidPublicKey(format!(
            "base64 decodes to {n} bytes, expected 32"
        ))),
    }
}

/// PEM `PUBLIC KEY` (SPKI) of a raw Ed25519 public key.
pub fn ed25519_public_key_pem(public_key: &[u8; 32]) -> String {
    let mut der = Vec::with_capacity(44);
    der.extend_from_slice(&ED25519_SPKI_PREFIX);
    der.extend_from_slice(public_key);
    der_to_pem("PUBLIC KEY", &der)
}

/// Verifies an Ed25519 signature over the raw 32-byte SHA-256 digest of a bundle.
pub fn verify_bundle_signature(
    public_key: &[u8; 32],
    sha256_digest: &[u8; 32],
    signature: &[u8],
) -> Result<(), CryptoError> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(sha256_digest, signature)
        .map_err(|_| CryptoError::BadSignature)
}

/// The text form of a bundle signature in an app record: standard, padded base64.
pub fn encode_signature(signature: &[u8]) -> String {
    BASE64.encode(signature)
}

/// Decodes the text form of a bundle signature: standard or URL-safe base64, padded or not,
/// surrounding whitespace ignored. `None` when it is not base64.
pub fn decode_signature(text: &str) -> Option<Vec<u8>> {
    use base64::alphabet::{self, Alphabet};
    use base64::engine::DecodePaddingMode;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};

    const fn unpadded(alphabet: &Alphabet) -> GeneralPurpose {
        let config =
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireNone);
        GeneralPurpose::new(alphabet, config)
    }
    const STANDARD: GeneralPurpose = unpadded(&alphabet::STANDARD);
    const URL_SAFE: GeneralPurpose = unpadded(&alphabet::URL_SAFE);
    let text = text.trim().trim_end_matches('=');
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

fn ed25519_key_pair(pkcs8_pem: &str) -> Result<Ed25519KeyPair, CryptoError> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pkcs8_pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            CryptoError::InvalidSigningKey("no PRIVATE KEY block in pem".into())
        }
        _ => CryptoError::InvalidSigningKey("malformed pem".into()),
    })?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(|_| CryptoError::InvalidSigningKey("not an ed25519 pkcs#8 key".into()))
}

/// Signs a bundle digest with an Ed25519 PKCS#8 PEM private key (for tests and tools).
pub fn sign_bundle_digest(pkcs8_pem: &str, digest: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
    Ok(ed25519_key_pair(pkcs8_pem)?.sign(digest).as_ref().to_vec())
}

/// A new Ed25519 key: (PKCS#8 PEM private key, raw public key). For tests and tools.
pub fn generate_ed25519_key() -> Result<(String, [u8; 32]), CryptoError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| CryptoError::Generate("ed25519 key generation failed".into()))?;
    let pem = der_to_pem("PRIVATE KEY", doc.as_ref());
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(doc.as_ref())
        .map_err(|_| CryptoError::Generate("ed25519 key generation failed".into()))?;
    let public: [u8; 32] = pair
        .public_key()
        .as_ref()
        .try_into()
        .map_err(|_| CryptoError::Generate("unexpected ed25519 public key length".into()))?;
    Ok((pem, public))
}

// ---------------------------------------------------------------------------------------------
// Hashing
// ---------------------------------------------------------------------------------------------

/// Incremental SHA-256.
#[derive(Clone)]
pub struct Sha256Hasher {
    ctx: digest::Context,
}

impl Sha256Hasher {
    pub fn new() -> Self {
        Self {
            ctx: digest::Context::new(&digest::SHA256),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        let out = self.ctx.finish();
        let mut digest = [0u8; 32];
        digest.copy_from_slice(out.as_ref());
        digest
    }
}

impl Default for Sha256Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Sha256Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Hasher")
    }
}

/// SHA-256 of `data` in one call.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256Hasher::new();
    h.update(data);
    h.finish()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parses exactly 64 hex characters (either case) into 32 bytes.
pub fn parse_hex32(s: &str) -> Result<[u8; 32], CryptoError> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return Err(CryptoError::InvalidHex("expected 64 hex characters"));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let (Some(hi), Some(lo)) = (hex_val(pair[0]), hex_val(pair[1])) else {
            return Err(CryptoError::InvalidHex("non-hex character"));
        };
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

/// A bundle's content address: the SHA-256 of its archive, written `sha256:<64 lowercase hex>`
/// (parsed from either case). Parsed once where a digest enters (an upload's metadata, a state
/// document, a record the edge stages), then passed typed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The 32 bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex characters, without `sha256:` (the bundle repository's object name).
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl From<[u8; 32]> for Digest {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::str::FromStr for Digest {
    type Err = CryptoError;

    /// Parses `sha256:<64 hex>`.
    fn from_str(s: &str) -> Result<Self, CryptoError> {
        s.strip_prefix("sha256:")
            .and_then(|h| parse_hex32(h).ok())
            .map(Self)
            .ok_or_else(|| {
                let shown: String = s.chars().take(80).collect();
                CryptoError::InvalidDigest(shown)
            })
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Stored as its `sha256:<hex>` string (the records' JSON did not change when the field became
/// typed).
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde for an `Option<Digest>` stored as a string that is empty when there is none (a
/// deployment record written before it carried its app's digest).
pub mod digest_or_empty {
    use super::Digest;

    /// `""` for `None`.
    pub fn serialize<S: serde::Serializer>(
        digest: &Option<Digest>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match digest {
            Some(digest) => serializer.collect_str(digest),
            None => serializer.serialize_str(""),
        }
    }

    /// `None` for `""`.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Digest>, D::Error> {
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// Formats a SHA-256 value as `sha256:<64 lowercase hex>` (a [`Digest`]'s form; certificate
/// fingerprints too).
pub fn format_digest(digest: &[u8; 32]) -> String {
    Digest(*digest).to_string()
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A validated certificate and key pair, as stored for a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCertificate {
    /// DNS subject alternative names, lowercased (the subject CN when there is no DNS SAN).
    pub domains: Vec<String>,
    /// Unix milliseconds.
    pub not_before: i64,
    /// Unix milliseconds.
    pub not_after: i64,
    /// `sha256:<hex>` of the leaf certificate DER.
    pub fingerprint: String,
    /// Normalised PEM of the leaf followed by the chain.
    pub chain_pem: String,
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn der_to_pem(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// id-at-commonName (RFC 4519).
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

fn cert_domains(cert: &X509Certificate) -> Vec<String> {
    let mut domains: Vec<String> = Vec::new();
    if let Ok(Some((_, san))) = cert.tbs_certificate.get::<SubjectAltName>() {
        for name in &san.0 {
            if let GeneralName::DnsName(dns) = name {
                let d = dns.as_str().trim().to_ascii_lowercase();
                if !d.is_empty() && !domains.contains(&d) {
                    domains.push(d);
                }
            }
        }
    }
    if domains.is_empty()
        && let Some(cn) = cert
            .tbs_certificate
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .find(|atv| atv.oid == COMMON_NAME)
            .and_then(|atv| directory_string(&atv.value))
    {
        let cn = cn.trim().to_ascii_lowercase();
        if !cn.is_empty() {
            domains.push(cn);
        }
    }
    domains
}

/// A name attribute's text, in the string types certificates use for it.
fn directory_string(value: &Any) -> Option<String> {
    if let Ok(s) = value.decode_as::<Utf8StringRef<'_>>() {
        return Some(s.as_str().to_owned());
    }
    if let Ok(s) = value.decode_as::<PrintableStringRef<'_>>() {
        return Some(s.as_str().to_owned());
    }
    value
        .decode_as::<Ia5StringRef<'_>>()
        .ok()
        .map(|s| s.as_str().to_owned())
}

fn key_matches_certificate(key_spki: &[u8], cert: &X509Certificate) -> Result<bool, CryptoError> {
    let cert_spki = &cert.tbs_certificate.subject_public_key_info;
    if cert_spki.to_der().is_ok_and(|der| der == key_spki) {
        return Ok(true);
    }
    // Same key bits with a differently encoded algorithm identifier still match.
    match SubjectPublicKeyInfoOwned::from_der(key_spki) {
        Ok(parsed) => {
            Ok(parsed.subject_public_key.raw_bytes() == cert_spki.subject_public_key.raw_bytes())
        }
        Err(_) => Ok(false),
    }
}

/// Parses and checks a PEM certificate chain (leaf first) and its PEM private key.
///
/// Errors name what is wrong: no certificate, unparseable certificate, no private key,
/// unsupported key, key does not match the certificate, or expired. "Not yet valid" and
/// "expires soon" are left to the caller, who gets the dates.
pub fn parse_certificate_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<ParsedCertificate, CryptoError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CryptoError::InvalidCertificatePem(e.to_string()))?;
    let Some(leaf_der) = certs.first() else {
        return Err(CryptoError::NoCertificate);
    };
    for (index, der) in certs.iter().enumerate().skip(1) {
        X509Certificate::from_der(der.as_ref()).map_err(|e| {
            CryptoError::UnparseableCertificate {
                index,
                reason: e.to_string(),
            }
        })?;
    }
    let leaf = X509Certificate::from_der(leaf_der.as_ref()).map_err(|e| {
        CryptoError::UnparseableCertificate {
            index: 0,
            reason: e.to_string(),
        }
    })?;

    // Key errors deliberately carry no detail from the key text.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => CryptoError::NoPrivateKey,
        _ => CryptoError::InvalidPrivateKeyPem,
    })?;
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| CryptoError::UnsupportedKey(e.to_string()))?;
    let Some(key_spki) = signing_key.public_key() else {
        return Err(CryptoError::UnsupportedKey(
            "cannot derive the public key of this key type to check it against the certificate"
                .into(),
        ));
    };
    if !key_matches_certificate(key_spki.as_ref(), &leaf)? {
        return Err(CryptoError::KeyMismatch);
    }

    let validity = &leaf.tbs_certificate.validity;
    let unix_ms = |t: x509_cert::time::Time| {
        i64::try_from(t.to_unix_duration().as_millis()).unwrap_or(i64::MAX)
    };
    let not_before = unix_ms(validity.not_before);
    let not_after = unix_ms(validity.not_after);
    if not_after < now_unix_ms() {
        return Err(CryptoError::Expired {
            not_after: validity.not_after.to_string(),
            not_after_ms: not_after,
        });
    }

    let chain_pem = certs
        .iter()
        .map(|c| der_to_pem("CERTIFICATE", c.as_ref()))
        .collect::<String>();
    Ok(ParsedCertificate {
        domains: cert_domains(&leaf),
        not_before,
        not_after,
        fingerprint: format_digest(&sha256(leaf_der.as_ref())),
        chain_pem,
    })
}

fn date_time(unix_secs: i64) -> Result<time::OffsetDateTime, CryptoError> {
    time::OffsetDateTime::from_unix_timestamp(unix_secs)
        .map_err(|_| CryptoError::Generate("date out of range".into()))
}

/// A self-signed ECDSA P-256 certificate for `domains` (entries that parse as IP addresses
/// become IP SANs), valid from one hour ago for `valid_for_days` days.
/// Returns `(certificate PEM, PKCS#8 private key PEM)`.
pub fn self_signed(
    domains: &[String],
    valid_for_days: u32,
) -> Result<(String, String), CryptoError> {
    self_signed_between(
        domains,
        now_unix_ms() / 1000 - 3600,
        now_unix_ms() / 1000 + i64::from(valid_for_days) * 86_400,
    )
}

fn self_signed_between(
    domains: &[String],
    not_before_secs: i64,
    not_after_secs: i64,
) -> Result<(String, String), CryptoError> {
    let names: Vec<String> = domains
        .iter()
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty())
        .collect();
    let Some(first) = names.first().cloned() else {
        return Err(CryptoError::Generate(
            "a self-signed certificate needs at least one name".into(),
        ));
    };
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| CryptoError::Generate(e.to_string()))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, first);
    params.distinguished_name = dn;
    params.not_before = date_time(not_before_secs)?;
    params.not_after = date_time(not_after_secs)?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CryptoError::Generate(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| CryptoError::Generate(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
