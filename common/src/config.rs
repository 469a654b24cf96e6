//! The configuration file shared by `statiko-control` and `statiko-edge` (each reads its own
//! sections), with the seed's keys and defaults.
//!
//! By file: this one holds the types and defaults, `config/load.rs` the loading and environment
//! overlay, `config/validate.rs` the validation, `config/node.rs` the [`NodeConfig`] a binary
//! runs with, `config/typed.rs` how typed values are written, `config/net.rs` the
//! listener-hardening sections.
//!
//! Precedence, lowest first: built-in defaults, the YAML file, `STATIKO_*` environment variables.
//! The command line only names the file (`--config`); it overrides no key. Unknown keys are
//! errors; values stored in the state are the opposite (see `model.rs`).
//!
//! # Raw and typed
//!
//! The serde structs below are the raw layer (quickwit's builder): `deny_unknown_fields`, every
//! default in their `Default`. Their leaves are already typed where serde can parse a value on
//! its own: durations are `Duration` (written as milliseconds or seconds, see `config/typed.rs`),
//! listen addresses `SocketAddr`. [`Config::build_and_validate`] then checks the values that
//! depend on each other and parses, once, what needs the `*File` secrets read first (the secrets
//! key, the codesign key) into a [`NodeConfig`], which derefs to the sections.
//!
//! # Adding a key
//!
//! One field in its section with a doc comment, its default in the section's `Default`, a
//! `#[serde(with = "typed::...")]` if it is a duration or a listen address, and its check in
//! `validate.rs` if not every value of its type is acceptable. The key name, its `STATIKO_*`
//! variable and `--check-config` follow from the field.
//!
//! # Loading
//!
//! [`NodeConfig::load`] reads the file named by its `path` argument (the binaries' `--config`), else
//! by `STATIKO_CONFIG`, else `/etc/statiko/node-config.yaml` when it exists, else uses the
//! defaults only. The YAML is merged key by key over the serialized defaults, then environment
//! overrides are applied, then the result is deserialized with `deny_unknown_fields`, so a typo
//! fails with the key path in the config's own spelling (`state.etcd: unknown field ...`).
//!
//! # Environment overrides
//!
//! Every key, leaf or section, can be set with `STATIKO_` plus its path in upper snake case:
//! camelCase is split at case changes and path segments are joined with `_`, so
//! `state.etcd.tlsConfiguration.clientKey` is `STATIKO_STATE_ETCD_TLS_CONFIGURATION_CLIENT_KEY`
//! and `repo.type` is `STATIKO_REPO_TYPE`. For keys whose default is a string (or unset, like the
//! `*File` paths) the value is taken verbatim; other values are parsed as a YAML scalar or flow
//! value, e.g. `true`, `10000` or `[{name: ops, token: ..., role: admin}]`. A section variable
//! (`STATIKO_STATE_ETCD='{timeout: 500}'`) is merged over that section; a more specific variable
//! wins over a section variable.
//!
//! `STATIKO_*` variables that name no key are ignored, because other tools share the prefix:
//! `STATIKO_CONFIG` (the file path), `STATIKO_ENDPOINT` and `STATIKO_TOKEN` (the `stk` CLI).
//!
//! # Secrets
//!
//! `secretsEncryptionKey`, `auth.tokens[].token`, `repo.s3.secretAccessKey`, `repo.azure.accessKey`
//! and `codesign.publicKey` can instead be read from the `*File` key next to them (trailing
//! whitespace trimmed); giving both is an error. [`Config::redacted`] hides them for printing.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod load;
mod net;
mod node;
pub mod typed;
mod validate;

use load::Position;
#[cfg(test)]
use load::hostname;
pub use net::{
    Cidr, ControlLimitsConfig, EdgeLimitsConfig, PerClientConfig, PerSiteConfig,
    ProxyProtocolConfig, mask_bits,
};
pub use node::NodeConfig;

/// The whole configuration, after defaults, file, environment and `*File` secrets are merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Unique per node; empty means the hostname.
    pub node_name: String,
    /// Never campaign for cluster leadership.
    pub disallow_leadership: bool,
    /// Base64 of 32 bytes: the AES-256-GCM key for every private key in the store.
    pub secrets_encryption_key: String,
    pub secrets_encryption_key_file: Option<PathBuf>,
    /// Start even with a demo key or token from `deploy/` on a non-loopback listener.
    pub allow_demo_secrets: bool,
    pub state: StateConfig,
    pub control: ControlConfig,
    pub auth: AuthConfig,
    pub repo: RepoConfig,
    pub edge: EdgeConfig,
    pub acme: AcmeConfig,
    pub codesign: CodesignConfig,
    pub limits: LimitsConfig,
    pub deploy: DeployConfig,
    pub notifications: NotificationsConfig,
    pub log: LogConfig,
    pub previews: PreviewsConfig,
}

/// `previews`: preview deploys (read by control, which fixes each preview's host and
/// certificate in its record when it is made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PreviewsConfig {
    /// The domain previews are served under (a wildcard DNS name pointing at the edges), e.g.
    /// `preview.example.com`; empty: previews are off.
    pub domain: String,
    /// The name of an imported wildcard certificate for `*.<domain>`; empty: the leader makes
    /// one certificate per preview host (ACME HTTP-01 when the site uses ACME, else self-signed).
    pub certificate: String,
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
    /// Per-request timeout, in milliseconds.
    #[serde(with = "typed::millis")]
    pub timeout: Duration,
    /// Comma-separated endpoints, e.g. `http://host01:2379,https://host02:2379`.
    pub address: String,
    pub tls_configuration: EtcdTlsConfig,
    pub tls_skip_verify: bool,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            key_prefix: "/statiko".into(),
            timeout: Duration::from_secs(10),
            address: String::new(),
            tls_configuration: EtcdTlsConfig::default(),
            tls_skip_verify: false,
        }
    }
}

impl EtcdConfig {
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
    #[serde(with = "typed::listen_addr")]
    pub listen: SocketAddr,
    pub tls: ControlTlsConfig,
    /// Plain-HTTP Prometheus `/metrics` listener; empty disables it.
    #[serde(with = "typed::optional_listen_addr")]
    pub metrics: Option<SocketAddr>,
    /// Control's own working directory (created 0700): uploads are spooled under
    /// `<dataDir>/uploads` while they are checked.
    pub data_dir: PathBuf,
    pub limits: ControlLimitsConfig,
    pub console: ConsoleConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 2265)),
            tls: ControlTlsConfig::default(),
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 2267))),
            data_dir: PathBuf::from("/var/lib/statiko/control"),
            limits: ControlLimitsConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

/// `control.console`: the web console, over HTTPS with control's certificate (`control.tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Listen address (host:port); `""` (`None`) turns the console off.
    #[serde(with = "typed::optional_listen_addr")]
    pub listen: Option<SocketAddr>,
    /// How long a sign-in lasts (whole seconds in the file); the session ends then whatever
    /// the activity.
    #[serde(with = "typed::seconds")]
    pub session_lifetime: Duration,
}

/// Bounds of `control.console.sessionLifetime` (1 s to 30 days).
pub const CONSOLE_SESSION_LIFETIME_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600);

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: None,
            session_lifetime: Duration::from_secs(12 * 3600),
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
    #[serde(with = "typed::listen_addr")]
    pub http: SocketAddr,
    #[serde(with = "typed::listen_addr")]
    pub https: SocketAddr,
    #[serde(with = "typed::listen_addr")]
    pub admin: SocketAddr,
    /// Node status and leader lease time-to-live, in seconds.
    #[serde(with = "typed::seconds")]
    pub lease_ttl: Duration,
    /// Redirect plain HTTP to HTTPS (except ACME challenges). Turn off when a TLS-terminating
    /// load balancer or CDN in front talks plain HTTP to the edge.
    pub redirect_http: bool,
    /// Serve every site over HTTP/3 (QUIC) on the UDP port of `https`, advertised with
    /// `Alt-Svc` on HTTPS responses.
    pub http3: bool,
    pub limits: EdgeLimitsConfig,
    pub proxy_protocol: ProxyProtocolConfig,
    /// Bundles of the last live deployments kept staged per site (the live one included), so
    /// a rollback to one of them needs no download.
    pub retain_deployments: u32,
    /// Most bytes the retained (not live) bundles may take on disk, over every site; the
    /// oldest retired goes first. Live bundles never count.
    pub bundle_disk_budget: u64,
    /// Runtime worker threads serving requests and running the edge's tasks; 0 (the default)
    /// starts one per CPU core.
    pub worker_threads: u32,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/statiko"),
            http: SocketAddr::from(([0, 0, 0, 0], 80)),
            https: SocketAddr::from(([0, 0, 0, 0], 443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 2266)),
            lease_ttl: Duration::from_secs(10),
            redirect_http: true,
            http3: true,
            limits: EdgeLimitsConfig::default(),
            proxy_protocol: ProxyProtocolConfig::default(),
            retain_deployments: 3,
            bundle_disk_budget: 10 << 30,
            worker_threads: 0,
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
    /// Longest wait for the next message of an upload stream, in milliseconds.
    #[serde(with = "typed::millis")]
    pub upload_idle_timeout: Duration,
    /// Longest time one upload stream may take, in milliseconds.
    #[serde(with = "typed::millis")]
    pub upload_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_bundle_size: 256 << 20,
            max_unpacked_size: 1 << 30,
            max_bundle_entries: 100_000,
            // nginx's client_body_timeout.
            upload_idle_timeout: Duration::from_secs(60),
            // 256 MiB at about 450 KB/s.
            upload_timeout: Duration::from_secs(600),
        }
    }
}

/// `deploy`: deployments and their cutover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeployConfig {
    /// Deployment records kept per site (older ones are deleted when a new one is made).
    pub history: u32,
    /// Time every live edge has to stage an atomic deployment before it fails, in seconds.
    #[serde(with = "typed::seconds")]
    pub stage_timeout: Duration,
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            history: 20,
            stage_timeout: Duration::from_secs(120),
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
    /// One line per served request at info level, target `statiko::access` (edge only).
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            access_log: false,
        }
    }
}

/// The file read when neither `--config` nor `STATIKO_CONFIG` names one (only if it exists).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/statiko/node-config.yaml";

/// The environment variable naming the config file; it is not a config key.
pub const CONFIG_PATH_ENV: &str = "STATIKO_CONFIG";

/// The prefix of every environment override.
pub const ENV_PREFIX: &str = "STATIKO_";

/// What [`Config::redacted`] puts in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// Why the configuration could not be loaded; every variant names the file, variable or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("read config file {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// The config file is not valid YAML, or its top level is not a mapping.
    #[error("config file {}: invalid yaml{}: {message}", path.display(), Position(*line, *column))]
    Syntax {
        path: PathBuf,
        line: Option<u64>,
        column: Option<u64>,
        message: String,
    },
    /// An environment override is not a valid YAML value.
    #[error("environment variable {var} ({key}): invalid yaml: {message}")]
    Env {
        var: String,
        key: String,
        message: String,
    },
    /// A key is unknown, or its value has the wrong type or an unknown variant.
    #[error("{key}: {message}")]
    Value { key: String, message: String },
    /// A value is well-typed but not acceptable.
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    /// A `*File` secret could not be read.
    #[error("{key}: read secret file {}: {error}", path.display())]
    SecretFile {
        key: String,
        path: PathBuf,
        error: io::Error,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The key the error is about, if it is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Env { key, .. }
            | Self::Value { key, .. }
            | Self::Invalid { key, .. }
            | Self::SecretFile { key, .. } => Some(key),
            Self::Read { .. } | Self::Syntax { .. } => None,
        }
    }
}

impl Config {
    /// A copy with every non-empty secret replaced by `<redacted>`, for printing.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        redact(&mut c.secrets_encryption_key);
        for token in &mut c.auth.tokens {
            redact(&mut token.token);
        }
        redact(&mut c.repo.s3.secret_access_key);
        redact(&mut c.repo.azure.access_key);
        // Webhook URLs (Slack, Teams) carry their credential in the path and query.
        let url = &mut c.notifications.webhook.url;
        if let Some((scheme, rest)) = url.split_once("://") {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if host.len() < rest.len() {
                *url = format!("{scheme}://{host}/{REDACTED}");
            }
        } else {
            redact(url);
        }
        c
    }

    /// The configuration as YAML, for `--check-config`; call it on [`Config::redacted`].
    pub fn to_yaml_string(&self) -> String {
        match serde_saphyr::to_string(self) {
            Ok(yaml) => yaml,
            Err(_) => serde_json::to_string_pretty(self).unwrap_or_default(),
        }
    }
}

/// Shortest accepted bearer token.
pub const MIN_TOKEN_LEN: usize = 16;
/// Bounds of `edge.leaseTtl`.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(60);

fn redact(secret: &mut String) {
    if !secret.is_empty() {
        *secret = REDACTED.into();
    }
}

#[cfg(test)]
mod tests;
