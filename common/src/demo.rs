//! The demo secrets: the `secretsEncryptionKey` values and bearer tokens published in the
//! example configs under `deploy/`, which anyone can read. A process configured with one warns
//! loudly at start, and refuses to start when one of its listeners is reachable from other
//! machines (not loopback) unless `allowDemoSecrets: true` says that is intended.

use std::net::SocketAddr;

use crate::config::Config;
use crate::process::InvalidConfig;

/// Every `secretsEncryptionKey` in the repository's example configs, with where it is.
const DEMO_KEYS: &[(&str, &str)] = &[
    (
        "c3RhdGlrby1kZW1vLWtleS1DSEFOR0UtTUUtbm93ISE=",
        "deploy/config/single-node.yaml",
    ),
    (
        "c3RhdGlrby1jbHVzdGVyLWtleS1DSEFOR0UtTUUhISE=",
        "deploy/config/cluster-node.yaml",
    ),
    (
        "c3RhdGlrby1zeXN0ZW1kLWtleS1DSEFOR0UtTUUhISE=",
        "deploy/config/systemd-*.yaml",
    ),
    (
        "c3RhdGlrby1jb21wb3NlLWtleS1DSEFOR0UtTUUhISE=",
        "deploy/compose/statiko.yaml",
    ),
];

/// Every bearer token in the repository's example configs, with where it is.
const DEMO_TOKENS: &[(&str, &str)] = &[
    (
        "statiko-dev-admin-token-change-me",
        "deploy/config/single-node.yaml",
    ),
    (
        "statiko-dev-readonly-token-change-me",
        "deploy/config/single-node.yaml",
    ),
    (
        "change-me-cluster-admin-token",
        "deploy/config/cluster-node.yaml",
    ),
    (
        "change-me-systemd-admin-token",
        "deploy/config/systemd-control.yaml",
    ),
    (
        "statiko-compose-admin-token-change-me",
        "deploy/compose/statiko.yaml",
    ),
];

/// The demo secrets `config` uses, each described with the config key and the file it comes
/// from. Tokens count only when `tokens` is set (control checks them; the edge has none).
pub fn in_use(config: &Config, tokens: bool) -> Vec<String> {
    let mut found = Vec::new();
    let key = config.secrets_encryption_key.trim();
    if let Some((_, file)) = DEMO_KEYS.iter().find(|(demo, _)| *demo == key) {
        found.push(format!(
            "secretsEncryptionKey is the public demo key of {file}"
        ));
    }
    if tokens {
        for (i, token) in config.auth.tokens.iter().enumerate() {
            if let Some((_, file)) = DEMO_TOKENS.iter().find(|(demo, _)| *demo == token.token) {
                found.push(format!(
                    "auth.tokens[{i}] ({:?}) is a public demo token of {file}",
                    token.name
                ));
            }
        }
    }
    found
}

/// The start-up check: with demo secrets in use, warns; and when any of `listeners` (config
/// key, address; `None` is a listener turned off) is not loopback and `allowDemoSecrets` is
/// off, refuses with how to fix it. A host name was resolved at load (`localhost` is loopback).
pub fn check_at_start(
    config: &Config,
    listeners: &[(&str, Option<SocketAddr>)],
    tokens: bool,
) -> Result<(), InvalidConfig> {
    let demo = in_use(config, tokens);
    if demo.is_empty() {
        return Ok(());
    }
    let exposed: Vec<String> = listeners
        .iter()
        .filter_map(|(key, address)| address.map(|address| (key, address)))
        .filter(|(_, address)| !address.ip().is_loopback())
        .map(|(key, address)| format!("{key} ({address})"))
        .collect();
    if !exposed.is_empty() && !config.allow_demo_secrets {
        return Err(InvalidConfig(format!(
            "{} while {} {} not loopback: anyone who read the example configs could use {}. \
             Generate a key with `openssl rand -base64 32` (secretsEncryptionKey, or a file for \
             secretsEncryptionKeyFile) and tokens the same way, or bind the listeners to \
             127.0.0.1; allowDemoSecrets: true (STATIKO_ALLOW_DEMO_SECRETS=true) starts anyway",
            demo.join("; "),
            exposed.join(", "),
            if exposed.len() == 1 { "is" } else { "are" },
            if demo.len() == 1 { "it" } else { "them" },
        )));
    }
    for secret in &demo {
        tracing::warn!(
            "DEMO SECRET IN USE: {secret}; fine for a local try-out, never for real data: \
             generate your own with `openssl rand -base64 32`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    #[test]
    fn loopback_addresses() {
        // As the config loads them: a host name is resolved then.
        let is_loopback = |text: &str| {
            crate::config::typed::resolve(text)
                .expect("a listen address")
                .ip()
                .is_loopback()
        };
        for address in ["127.0.0.1:80", "[::1]:443", "localhost:8080", "127.1.2.3:0"] {
            assert!(is_loopback(address), "{address}");
        }
        for address in ["0.0.0.0:80", "[::]:443", "10.0.0.1:8080"] {
            assert!(!is_loopback(address), "{address}");
        }
    }

    fn at(text: &str) -> Option<SocketAddr> {
        Some(text.parse().expect("an address"))
    }

    #[test]
    fn demo_secrets_warn_on_loopback_and_refuse_elsewhere() {
        let mut config = Config {
            secrets_encryption_key: DEMO_KEYS[0].0.to_owned(),
            ..Config::default()
        };
        config.auth.tokens.push(TokenConfig {
            name: "ops".into(),
            token: DEMO_TOKENS[2].0.to_owned(),
            ..TokenConfig::default()
        });
        assert_eq!(in_use(&config, false).len(), 1);
        assert_eq!(in_use(&config, true).len(), 2);
        assert!(check_at_start(&config, &[("edge.http", at("127.0.0.1:8080"))], true).is_ok());
        let refused = check_at_start(&config, &[("edge.http", at("0.0.0.0:8080"))], true)
            .expect_err("a demo key on 0.0.0.0")
            .to_string();
        assert!(
            refused.contains("edge.http (0.0.0.0:8080)")
                && refused.contains("openssl rand -base64 32")
                && refused.contains("allowDemoSecrets"),
            "{refused}"
        );
        config.allow_demo_secrets = true;
        assert!(check_at_start(&config, &[("edge.http", at("0.0.0.0:8080"))], true).is_ok());
        config.allow_demo_secrets = false;
        config.secrets_encryption_key = "b3duLWtleS1vd24ta2V5LW93bi1rZXktb3duLWtleSE=".into();
        config.auth.tokens.clear();
        assert!(check_at_start(&config, &[("edge.http", at("0.0.0.0:8080"))], true).is_ok());
    }
}
