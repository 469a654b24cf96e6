//! The configuration file shared by `statiko-control` and `statiko-edge` (each reads its own
//! sections), with the seed's keys and defaults.
//!
//! Precedence, lowest first: built-in defaults, the YAML file, `STATIKO_*` environment variables,
//! CLI flags. Unknown keys are errors; values stored in the state are the opposite (see `model.rs`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration, after defaults, file, environment and `*File` secrets are merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Unique per node; empty means the hostname.
    pub node_name: String,
    /// Never campaign for cluster leadership.
    pub disallow_leadership: bool,
    /// Base64 of 32 bytes: the AES-256-GCM key for every private key in the store.
    pub secrets_encryption_key: String,
    pub secrets_encryption_key_file: Option<PathBuf>,
    pub state: StateConfig,
    pub control: ControlConfig,
    pub auth: AuthConfig,
    pub repo: RepoConfig,
    pub edge: EdgeConfig,
    pub acme: AcmeConfig,
    pub codesign: CodesignConfig,
    pub limits: LimitsConfig,
    pub notifications: NotificationsConfig,
    pub log: LogConfig,
}

/// `state.store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Etcd,
    #[default]
    File,
}

/// `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StateConfig {
    pub store: StoreKind,
    pub file: FileStateConfig,
    pub etcd: EtcdConfig,
}

/// `state.file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FileStateConfig {
    /// Directory holding the state file and its lock (`state.json`, `state.lock`).
    pub path: PathBuf,
}

impl Default for FileStateConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/statiko/state"),
        }
    }
}

/// `state.etcd`, as in the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EtcdConfig {
    pub key_prefix: String,
    /// Per-request timeout in milliseconds.
    pub timeout: u64,
    /// Comma-separated endpoints, e.g. `http://host01:2379,https://host02:2379`.
    pub address: String,
    pub tls_configuration: EtcdTlsConfig,
    pub tls_skip_verify: bool,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            key_prefix: "/statiko".into(),
            timeout: 10_000,
            address: String::new(),
            tls_configuration: EtcdTlsConfig::default(),
            tls_skip_verify: false,
        }
    }
}

impl EtcdConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout)
    }

    /// The endpoints in `address`, trimmed, empty entries dropped.
    pub fn endpoints(&self) -> Vec<String> {
        self.address
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// `state.etcd.tlsConfiguration`: PEM file paths; empty means unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EtcdTlsConfig {
    pub ca: String,
    pub client_certificate: String,
    pub client_key: String,
}

/// `control`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ControlConfig {
    pub listen: String,
    pub tls: ControlTlsConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:2265".into(),
            tls: ControlTlsConfig::default(),
        }
    }
}

/// `control.tls`. Enabled with no certificate files: a self-signed certificate is made at start
/// and kept in `selfSignedDir`, so clients can pin it across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ControlTlsConfig {
    pub enabled: bool,
    pub certificate: String,
    pub key: String,
    pub self_signed_dir: PathBuf,
}

impl Default for ControlTlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            certificate: String::new(),
            key: String::new(),
            self_signed_dir: PathBuf::from("/var/lib/statiko/control-tls"),
        }
    }
}

/// `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
}

/// A role granted by a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    #[default]
    Readonly,
}

/// One entry of `auth.tokens`: `token` or `tokenFile`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TokenConfig {
    pub name: String,
    pub token: String,
    pub token_file: Option<PathBuf>,
    pub role: Role,
}

/// `repo.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    #[default]
    Local,
    S3,
    Azure,
    Gcs,
}

/// `repo`: the bundle repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RepoConfig {
    #[serde(rename = "type")]
    pub kind: RepoKind,
    pub local: LocalRepoConfig,
    pub s3: S3RepoConfig,
    pub azure: AzureRepoConfig,
    pub gcs: GcsRepoConfig,
}

/// `repo.local`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LocalRepoConfig {
    pub path: PathBuf,
}

impl Default for LocalRepoConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/statiko/repo"),
        }
    }
}

/// `repo.s3` (AWS S3 or any S3-compatible server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct S3RepoConfig {
    pub bucket: String,
    /// Empty means AWS; set for S3-compatible servers, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub secret_access_key_file: Option<PathBuf>,
    /// Object key prefix inside the bucket.
    pub prefix: String,
}

/// `repo.azure` (Azure Blob Storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AzureRepoConfig {
    pub account: String,
    pub container: String,
    pub access_key: String,
    pub access_key_file: Option<PathBuf>,
    /// Custom endpoint, e.g. for Azurite.
    pub endpoint: String,
    pub prefix: String,
}

/// `repo.gcs` (Google Cloud Storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GcsRepoConfig {
    pub bucket: String,
    /// Path of a service account JSON key; empty uses the environment's credentials.
    pub service_account_path: String,
    pub prefix: String,
}

/// `edge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EdgeConfig {
    pub data_dir: PathBuf,
    pub http: String,
    pub https: String,
    pub admin: String,
    /// Node status and leader lease time-to-live, in seconds.
    pub lease_ttl: u64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/statiko"),
            http: "0.0.0.0:80".into(),
            https: "0.0.0.0:443".into(),
            admin: "127.0.0.1:2266".into(),
            lease_ttl: 10,
        }
    }
}

/// `acme`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AcmeConfig {
    pub email: String,
    pub directory: String,
    /// Extra PEM roots, e.g. for a private or test ACME server.
    pub ca_bundle: String,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            email: String::new(),
            directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            ca_bundle: String::new(),
        }
    }
}

/// `codesign`: Ed25519 bundle signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CodesignConfig {
    /// Ed25519 public key: PEM (`PUBLIC KEY`) text or base64 of the 32 raw bytes.
    pub public_key: String,
    pub public_key_file: Option<PathBuf>,
    /// Refuse unsigned bundles.
    pub required: bool,
}

/// `limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted bundle archive, in bytes.
    pub max_bundle_size: u64,
    /// Largest total unpacked size of a bundle, in bytes.
    pub max_unpacked_size: u64,
    /// Most entries in a bundle archive.
    pub max_bundle_entries: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_bundle_size: 256 << 20,
            max_unpacked_size: 1 << 30,
            max_bundle_entries: 100_000,
        }
    }
}

/// `notifications`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NotificationsConfig {
    pub webhook: WebhookConfig,
}

/// `notifications.webhook`: POST `{"<payloadKey>": "<message>"}` to `url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WebhookConfig {
    pub url: String,
    pub payload_key: String,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            payload_key: "message".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directives; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            disallow_leadership: false,
            secrets_encryption_key: String::new(),
            secrets_encryption_key_file: None,
            state: StateConfig::default(),
            control: ControlConfig::default(),
            auth: AuthConfig::default(),
            repo: RepoConfig::default(),
            edge: EdgeConfig::default(),
            acme: AcmeConfig::default(),
            codesign: CodesignConfig::default(),
            limits: LimitsConfig::default(),
            notifications: NotificationsConfig::default(),
            log: LogConfig::default(),
        }
    }
}
