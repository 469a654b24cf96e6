//! [`NodeConfig`]: the configuration a binary runs with, built once from the raw [`Config`] by
//! [`Config::build_and_validate`]: every value checked, and the keys parsed exactly once.

use std::ops::Deref;

use base64::Engine as _;

use super::*;
use crate::crypto::SecretBox;

/// The validated configuration: the sections of [`Config`] (through `Deref`), with typed
/// durations and addresses, plus the keys parsed from their text once.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    config: Config,
    secrets_key: Option<[u8; 32]>,
    codesign_key: Option<[u8; 32]>,
}

impl Deref for NodeConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

impl NodeConfig {
    /// Loads the configuration: defaults, then the YAML file (`path`, else `STATIKO_CONFIG` from
    /// `env`, else [`DEFAULT_CONFIG_PATH`] if it exists), then `STATIKO_*` overrides from `env`,
    /// then `*File` secrets; resolves an empty `nodeName` to the hostname, validates and parses.
    ///
    /// Pass `std::env::vars().collect()` as `env` in binaries and a literal map in tests.
    pub fn load(
        path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<NodeConfig, ConfigError> {
        Config::load_with_default_path(path, env, Path::new(DEFAULT_CONFIG_PATH))
    }

    /// The raw sections, as loaded (what `--check-config` prints, redacted).
    pub fn raw(&self) -> &Config {
        &self.config
    }

    /// The decoded `secretsEncryptionKey`, if set.
    pub fn secrets_key(&self) -> Option<[u8; 32]> {
        self.secrets_key
    }

    /// A [`SecretBox`] over the `secretsEncryptionKey`, if set.
    pub fn secret_box(&self) -> Option<SecretBox> {
        self.secrets_key.map(SecretBox::new)
    }

    /// The Ed25519 `codesign.publicKey`, if set.
    pub fn codesign_key(&self) -> Option<[u8; 32]> {
        self.codesign_key
    }
}

impl Config {
    /// Checks every value ([`Config::validate`]) and parses the secrets and codesign keys;
    /// the error names the key and never prints a secret.
    pub fn build_and_validate(self) -> Result<NodeConfig, ConfigError> {
        self.validate()?;
        let secrets_key = parse_secrets_key(&self.secrets_encryption_key)?;
        let codesign_key = match self.codesign.public_key.as_str() {
            "" => None,
            text => Some(
                crate::crypto::parse_ed25519_public_key(text)
                    .map_err(|err| ConfigError::invalid("codesign.publicKey", err.to_string()))?,
            ),
        };
        Ok(NodeConfig {
            config: self,
            secrets_key,
            codesign_key,
        })
    }
}

/// `secretsEncryptionKey`: empty, or the base64 of exactly 32 bytes.
fn parse_secrets_key(text: &str) -> Result<Option<[u8; 32]>, ConfigError> {
    if text.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .map(Some)
        .ok_or_else(|| {
            ConfigError::invalid(
                "secretsEncryptionKey",
                "must be the base64 encoding of exactly 32 bytes",
            )
        })
}
