//! The desired-state records kept in the store, one record per key (see `keys.rs`).
//!
//! Records are serde JSON. Unknown fields are ignored on read, so an older edge can read records
//! written by a newer control plane during a rolling upgrade. Times are Unix milliseconds.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// How a site gets its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TlsChoice {
    #[default]
    SelfSigned,
    Acme,
    Imported {
        certificate: String,
    },
}

/// One immutable app version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppRef {
    pub name: String,
    pub version: String,
}

impl std::fmt::Display for AppRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// `{root}/v1/sites/{domain}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteRecord {
    pub domain: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub tls: TlsChoice,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppRef>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<i64>,
    /// The live deployment's id, set with `app` by a cutover or an immediate deploy (an edge
    /// names it in the `Statiko-Deployment` header when skew protection serves an older one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Skew protection window, in milliseconds: unset is [`DEFAULT_SKEW_PROTECTION_MS`], 0 off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_protection_ms: Option<u64>,
}

/// How long after a cutover an edge still serves an old deployment's missing static assets
/// (24 h), unless the site sets its own window.
pub const DEFAULT_SKEW_PROTECTION_MS: u64 = 24 * 60 * 60 * 1000;

impl SiteRecord {
    /// The site's skew protection window in milliseconds (0: off).
    pub fn skew_protection_ms(&self) -> u64 {
        self.skew_protection_ms
            .unwrap_or(DEFAULT_SKEW_PROTECTION_MS)
    }

    /// The primary domain followed by every alias.
    pub fn all_domains(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.domain.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// `{root}/v1/domains/{domain}`: which site owns a domain or alias. Created in the same
/// transaction as the site, with `create_revision == 0`, so a name can belong to one site only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub site: String,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Everything.
    Admin,
    /// `Get*` and `List*` calls.
    Readonly,
    /// Upload apps; deploy, roll back and read the sites its scope names.
    Deployer,
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Admin => "admin",
            Self::Readonly => "readonly",
            Self::Deployer => "deployer",
        })
    }
}

/// `{root}/v1/tokens/{name}`: an API token made through `TokenService`. Only the SHA-256 of its
/// secret is kept; the secret itself is shown once, when the token is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub name: String,
    pub role: TokenRole,
    /// Deployer only: exact domains or `*.suffix` patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// `sha256:<hex>` of the secret.
    pub digest: crate::crypto::Digest,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Coarse: written at most once a minute per control replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
}

/// `{root}/console/v1/sessions/{sha256 of the session id}`: one signed-in console browser, on a
/// lease that ends with it. The token it signed in with is not here: the browser's cookie holds
/// it sealed with `key`, so neither the store nor the cookie alone gives the token back, and
/// deleting this record (sign-out) makes the cookie's copy unreadable for good.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleSessionRecord {
    /// 32 random bytes, hex: seals the token in the cookie and derives the CSRF token.
    pub key: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// The store lease the record is attached to.
    #[serde(default)]
    pub lease: i64,
}

impl std::fmt::Debug for ConsoleSessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSessionRecord")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Archive format of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BundleFormat {
    TarGz,
    TarZst,
    Zip,
}

impl BundleFormat {
    /// Recognises the format from the first bytes of an archive.
    pub fn sniff(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Self::TarGz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Self::TarZst)
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(Self::Zip)
        } else {
            None
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::TarGz => "tar.gz",
            Self::TarZst => "tar.zst",
            Self::Zip => "zip",
        }
    }
}

/// `{root}/v1/apps/{name}/{version}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRecord {
    pub name: String,
    pub version: String,
    /// `sha256:<hex>` of the archive; the bundle's object key is derived from it.
    pub digest: crate::crypto::Digest,
    pub size: u64,
    pub format: BundleFormat,
    /// Base64 Ed25519 signature over the raw SHA-256 digest, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default)]
    pub created_at: i64,
}

impl AppRecord {
    pub fn app_ref(&self) -> AppRef {
        AppRef {
            name: self.name.clone(),
            version: self.version.clone(),
        }
    }
}

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateKind {
    Imported,
    SelfSigned,
    Acme,
}

/// `{root}/v1/certificates/{name}`. The private key is sealed (`crypto::SecretBox`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRecord {
    pub name: String,
    pub kind: CertificateKind,
    /// Leaf first, then the chain.
    pub certificate_pem: String,
    /// Sealed PKCS#8/SEC1/PKCS#1 PEM private key.
    pub key: String,
    #[serde(default)]
    pub domains: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub fingerprint: String,
    #[serde(default)]
    pub created_at: i64,
    /// The site a leader-made certificate (self-signed or ACME) belongs to; `None` for imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

impl CertificateRecord {
    /// The record of a parsed certificate whose private key `sealed_key` holds (sealed with
    /// `crypto::SecretBox`); `site` for a leader-made one.
    pub fn new(
        name: String,
        kind: CertificateKind,
        parsed: crate::crypto::ParsedCertificate,
        sealed_key: String,
        site: Option<String>,
        created_at: i64,
    ) -> Self {
        Self {
            name,
            kind,
            certificate_pem: parsed.chain_pem,
            key: sealed_key,
            domains: parsed.domains,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            fingerprint: parsed.fingerprint,
            created_at,
            site,
        }
    }

    /// Whether the certificate names every one of `domains` (exactly or by a one-label wildcard).
    pub fn covers<'a>(&self, mut domains: impl Iterator<Item = &'a str>) -> bool {
        domains.all(|d| {
            self.domains.iter().any(|name| {
                name == d
                    || name.strip_prefix("*.").is_some_and(|parent| {
                        d.split_once('.').is_some_and(|(first, rest)| {
                            !first.is_empty() && rest == parent && parent.contains('.')
                        })
                    })
            })
        })
    }
}

/// The store name of the certificate the leader makes for a site: `selfsigned-<16 hex>` or
/// `acme-<16 hex>`, the hex being the start of sha256(primary domain). Such names are valid
/// certificate names (`ids::name`) and fit its 63 characters whatever the domain's length; the
/// record's `site` field says which site it is for.
pub fn leader_certificate_name(kind: CertificateKind, site: &str) -> String {
    let hash = crate::crypto::hex(&crate::crypto::sha256(site.as_bytes())[..8]);
    match kind {
        CertificateKind::Acme => format!("acme-{hash}"),
        CertificateKind::SelfSigned | CertificateKind::Imported => format!("selfsigned-{hash}"),
    }
}

/// `{root}/v1/acme/account`: the ACME account, shared by every leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcmeAccountRecord {
    /// The directory URL the account belongs to; another directory means another account.
    pub directory: String,
    /// Sealed JSON of the ACME client's account credentials (id and private key).
    pub credentials: String,
    #[serde(default)]
    pub created_at: i64,
}

/// `{root}/v1/acme/orders/{domain}`: the ACME order in flight for a site. Written before the
/// order is polled, so a new leader resumes it instead of ordering again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AcmeOrderRecord {
    pub site: String,
    /// The names ordered (primary domain first).
    pub domains: Vec<String>,
    /// The order URL at the ACME server; `None` before an order exists or after one failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Sealed PEM private key of the CSR, stored before finalizing, so a new leader can take
    /// the issued certificate of an order finalized by the previous one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Failed attempts in a row.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// No new attempt before this time (Unix ms): the retry backoff.
    #[serde(default)]
    pub next_attempt_at: i64,
    #[serde(default)]
    pub updated_at: i64,
    /// The leader that last wrote the record.
    #[serde(default)]
    pub node: String,
}

/// `{root}/v1/acme/challenges/{token}`: an HTTP-01 response. Every edge serves it on port 80 at
/// `/.well-known/acme-challenge/{token}`, for the listed domains only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeRecord {
    pub token: String,
    pub key_authorization: String,
    pub site: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub created_at: i64,
}

/// `{root}/v1/acme/reminders/{name}`: the last expiry reminder sent for a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReminderRecord {
    pub fingerprint: String,
    /// The threshold (days before expiry) of the last reminder sent.
    pub days: i64,
    #[serde(default)]
    pub sent_at: i64,
}

/// Where a deployment is in its life: `staging` -> `live` -> `superseded`, or `staging` ->
/// `failed`. Only the leader edge moves an atomic deployment out of `staging`; an immediate one is
/// written `live` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    #[default]
    Staging,
    Live,
    Superseded,
    Failed,
    /// A preview: staged on every edge and served at its own host until it expires or is
    /// deleted; it never becomes the site's live deployment (promoting it makes a new one).
    Preview,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staging => "staging",
            Self::Live => "live",
            Self::Superseded => "superseded",
            Self::Failed => "failed",
            Self::Preview => "preview",
        }
    }
}

/// How a deployment reaches the edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeployStrategy {
    /// Every live edge stages first; the site switches in one store revision once all have.
    #[default]
    Atomic,
    /// The site switches at once; each edge serves the new version as soon as it has staged it.
    Immediate,
}

impl DeployStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Atomic => "atomic",
            Self::Immediate => "immediate",
        }
    }
}

/// `{root}/v1/deployments/{site}/{id}`: one deploy of an app version to a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    /// `ids::new_deployment_id`: sorts by creation time.
    pub id: String,
    /// Primary domain of the site.
    pub site: String,
    pub app: AppRef,
    /// The app's digest, so that edges can stage without another lookup (`""` in records written
    /// before deployments carried it).
    #[serde(default, with = "crate::crypto::digest_or_empty")]
    pub digest: Option<crate::crypto::Digest>,
    /// The name of the token that made the deployment.
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub state: DeploymentState,
    #[serde(default)]
    pub strategy: DeployStrategy,
    /// Why a deployment failed (names the edges and their errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The edges that failed to stage, or did not report before the stage deadline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_nodes: Vec<String>,
    /// The edges that staged the deployment before its cutover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staged_nodes: Vec<String>,
    /// The deployment this one rolls back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_at: Option<i64>,
    /// When the deployment failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<i64>,
    /// Set on a preview (state `preview`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewInfo>,
    /// The preview this deployment promoted to live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<String>,
}

/// What makes a deployment a preview (see `preview.rs` for the host format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewInfo {
    /// The host it is served at, fixed at creation (`previews.domain` then in force).
    pub host: String,
    /// Unix ms after which it is no longer served; the leader then deletes it.
    pub expires_at: i64,
    /// argon2id PHC string of the basic-auth password; never the password itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// The imported wildcard certificate it presents (`previews.certificate` at creation); `None`:
    /// a certificate made for its host by the leader (ACME when its site uses ACME, else
    /// self-signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// `{root}/v1/previews/{id}`: which site preview `id` belongs to. Created only when absent, in
/// the transaction that creates the preview, so a preview id (and so its host) is unique across
/// the cluster and `stk preview delete ID` finds its site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewIndexRecord {
    pub site: String,
}

impl DeploymentRecord {
    /// A new deployment in `staging` state (the caller makes an immediate one live).
    pub fn new(
        id: String,
        site: String,
        app: AppRef,
        strategy: DeployStrategy,
        created_at: i64,
    ) -> Self {
        Self {
            id,
            site,
            app,
            digest: None,
            author: String::new(),
            created_at,
            state: DeploymentState::Staging,
            strategy,
            reason: None,
            failed_nodes: Vec::new(),
            staged_nodes: Vec::new(),
            rollback_of: None,
            live_at: None,
            superseded_at: None,
            failed_at: None,
            preview: None,
            promoted_from: None,
        }
    }

    /// Whether this is a preview past its expiry at `now` (Unix ms).
    pub fn preview_expired(&self, now: i64) -> bool {
        self.preview.as_ref().is_some_and(|p| p.expires_at <= now)
    }
}

/// What one edge serves for one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeSiteStatus {
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppRef>,
    #[serde(default)]
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The deployments whose bundles this node retains staged for the site (newest first), by
    /// id: a deployment of one of them (a rollback) needs no staging here (see control's
    /// flip in `api/deployments.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retained: Vec<String>,
}

/// Expiry of one certificate an edge holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeCertificateStatus {
    pub name: String,
    pub not_after: i64,
}

/// `{root}/status/v1/nodes/{node}`, attached to the node's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatusRecord {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub leader: bool,
    #[serde(default)]
    pub disallow_leadership: bool,
    #[serde(default)]
    pub applied_revision: i64,
    #[serde(default)]
    pub updated_at: i64,
    /// Every site, or, when the node serves more than the record lists, the sites that are
    /// not healthy (the rest are served as desired at `applied_revision`).
    #[serde(default)]
    pub sites: Vec<NodeSiteStatus>,
    /// Healthy sites left out of `sites`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sites_omitted: u64,
    /// Certificates in use, or the ones expiring first when there are more than it lists.
    #[serde(default)]
    pub certificates: Vec<NodeCertificateStatus>,
    /// Certificates left out of `certificates`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub certificates_omitted: u64,
    /// How staging went for each deployment in `staging` state, by deployment id (the leader
    /// cuts a deployment over once every live node reports it staged).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub staging: std::collections::BTreeMap<String, StageReport>,
}

/// One node's staging of one deployment: `{"ok": true}` or `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StageReport {
    #[serde(default)]
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Encodes a record as its stored bytes.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    serde_json::to_vec(record).expect("records serialize to JSON")
}

/// Decodes stored bytes; unknown fields are ignored.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_round_trip_and_unknown_fields() {
        let site = SiteRecord {
            domain: "example.com".into(),
            aliases: vec!["www.example.com".into()],
            tls: TlsChoice::Imported {
                certificate: "wild".into(),
            },
            app: Some(AppRef {
                name: "web".into(),
                version: "1.0.0".into(),
            }),
            created_at: 1,
            updated_at: 2,
            deployed_at: Some(3),
            deployment: Some("d0000000001000aaaa".into()),
            skew_protection_ms: Some(2_000),
        };
        let bytes = encode(&site);
        assert_eq!(decode::<SiteRecord>(&bytes).unwrap(), site);
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        value["fieldFromTheFuture"] = serde_json::json!(42);
        let decoded: SiteRecord = serde_json::from_value(value).unwrap();
        assert_eq!(decoded, site);
        assert_eq!(
            decoded.all_domains().collect::<Vec<_>>(),
            ["example.com", "www.example.com"]
        );
    }

    #[test]
    fn coverage_and_names() {
        let cert = CertificateRecord {
            name: "c".into(),
            kind: CertificateKind::Imported,
            certificate_pem: String::new(),
            key: String::new(),
            domains: vec!["a.test".into(), "*.b.test".into()],
            not_before: 0,
            not_after: 0,
            fingerprint: String::new(),
            created_at: 0,
            site: None,
        };
        assert!(cert.covers(["a.test", "www.b.test"].into_iter()));
        assert!(!cert.covers(["a.test", "b.test"].into_iter()));
        assert!(!cert.covers(["x.y.b.test"].into_iter()));
        let name = leader_certificate_name(CertificateKind::Acme, &"x".repeat(200));
        assert!(crate::ids::name("n", &name).is_ok(), "{name}");
        assert!(
            leader_certificate_name(CertificateKind::SelfSigned, "a.test")
                .starts_with("selfsigned-")
        );
    }

    #[test]
    fn sniffs_formats() {
        assert_eq!(
            BundleFormat::sniff(&[0x1f, 0x8b, 8]),
            Some(BundleFormat::TarGz)
        );
        assert_eq!(
            BundleFormat::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(BundleFormat::TarZst)
        );
        assert_eq!(
            BundleFormat::sniff(b"PK\x03\x04rest"),
            Some(BundleFormat::Zip)
        );
        assert_eq!(BundleFormat::sniff(b"<html>"), None);
    }
}
