//! Tests for config loading: defaults, file, environment, `*File` secrets and validation.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use super::*;

const NO_DEFAULT_FILE: &str = "/nonexistent/statiko/node-config.yaml";
/// Base64 of 32 bytes.
const KEY: &str = "c3RhdGlrby10ZXN0LWtleS0zMi1ieXRlcy1sb25nISE=";

fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_env(vars: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
    Config::load_with_default_path(None, &env(vars), Path::new(NO_DEFAULT_FILE))
}

fn write_temp(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

/// Loads `yaml` (with a fixed `nodeName` prepended) and `vars`.
fn load_yaml(yaml: &str, vars: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
    let file = write_temp(&format!("nodeName: test-node\n{yaml}"));
    Config::load_with_default_path(Some(file.path()), &env(vars), Path::new(NO_DEFAULT_FILE))
}

#[track_caller]
fn check_err(yaml: &str, vars: &[(&str, &str)], expected: &str) {
    match load_yaml(yaml, vars) {
        Ok(_) => panic!("expected an error containing {expected:?}"),
        Err(err) => {
            let msg = err.to_string();
            assert!(
                msg.contains(expected),
                "{msg:?} should contain {expected:?}"
            );
        }
    }
}

#[track_caller]
fn check_invalid(yaml: &str, key: &str) {
    match load_yaml(yaml, &[]) {
        Ok(_) => panic!("expected an error about {key}"),
        Err(err) => {
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(err.to_string().starts_with(&format!("{key}: ")), "{err}");
        }
    }
}

#[test]
fn defaults_match_the_seed() {
    let config = load_env(&[]).unwrap();
    assert_eq!(config.state.store, StoreKind::File);
    assert_eq!(config.state.etcd.key_prefix, "/statiko");
    assert_eq!(config.state.etcd.timeout, Duration::from_millis(10_000));
    assert_eq!(config.state.etcd.address, "");
    assert_eq!(
        config.state.etcd.tls_configuration,
        EtcdTlsConfig::default()
    );
    assert!(!config.state.etcd.tls_skip_verify);
    assert!(!config.disallow_leadership);
    assert_eq!(config.control.listen.to_string(), "0.0.0.0:2265");
    assert!(config.control.tls.enabled);
    assert_eq!(config.edge.http.to_string(), "0.0.0.0:80");
    assert_eq!(config.edge.https.to_string(), "0.0.0.0:443");
    assert_eq!(config.edge.admin.to_string(), "127.0.0.1:2266");
    assert_eq!(config.repo.kind, RepoKind::Local);
    assert_eq!(
        config.acme.directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    // An empty nodeName becomes the hostname.
    assert_eq!(Some(config.node_name.clone()), hostname());
    let rest = Config {
        node_name: String::new(),
        ..config.raw().clone()
    };
    assert_eq!(rest, Config::default());
}

#[test]
fn env_names() {
    let keys: HashMap<String, String> = Config::env_keys().into_iter().collect();
    for (var, key) in [
        ("STATIKO_STATE_ETCD_ADDRESS", "state.etcd.address"),
        ("STATIKO_NODE_NAME", "nodeName"),
        ("STATIKO_EDGE_HTTPS", "edge.https"),
        ("STATIKO_REPO_TYPE", "repo.type"),
        (
            "STATIKO_STATE_ETCD_TLS_CONFIGURATION_CLIENT_KEY",
            "state.etcd.tlsConfiguration.clientKey",
        ),
        ("STATIKO_STATE_ETCD", "state.etcd"),
        (
            "STATIKO_SECRETS_ENCRYPTION_KEY_FILE",
            "secretsEncryptionKeyFile",
        ),
        (
            "STATIKO_REPO_S3_SECRET_ACCESS_KEY",
            "repo.s3.secretAccessKey",
        ),
        ("STATIKO_AUTH_TOKENS", "auth.tokens"),
        ("STATIKO_EDGE_LEASE_TTL", "edge.leaseTtl"),
    ] {
        assert_eq!(keys.get(var).map(String::as_str), Some(key), "{var}");
    }
    assert!(!keys.contains_key(CONFIG_PATH_ENV));
    // No two keys share a variable.
    assert_eq!(keys.len(), Config::env_keys().len());
}

#[test]
fn env_overrides_nested_bool_number_and_list() {
    let config = load_env(&[
        ("STATIKO_NODE_NAME", "edge-7"),
        ("STATIKO_STATE_STORE", "etcd"),
        (
            "STATIKO_STATE_ETCD_ADDRESS",
            "http://host01:2379,https://host02:2379",
        ),
        ("STATIKO_STATE_ETCD_TIMEOUT", "2500"),
        ("STATIKO_STATE_ETCD_TLS_SKIP_VERIFY", "true"),
        (
            "STATIKO_STATE_ETCD_TLS_CONFIGURATION_CLIENT_KEY",
            "/etc/etcd/client.key",
        ),
        ("STATIKO_DISALLOW_LEADERSHIP", "true"),
        ("STATIKO_EDGE_HTTPS", "[::]:8443"),
        ("STATIKO_REPO_TYPE", "s3"),
        ("STATIKO_REPO_S3_BUCKET", "bundles"),
        (
            "STATIKO_AUTH_TOKENS",
            "[{name: a, token: aaaaaaaaaaaaaaaa, role: admin}, {name: b, token: bbbbbbbbbbbbbbbb}]",
        ),
    ])
    .unwrap();
    assert_eq!(config.node_name, "edge-7");
    assert_eq!(config.state.store, StoreKind::Etcd);
    assert_eq!(
        config.state.etcd.endpoints(),
        ["http://host01:2379", "https://host02:2379"]
    );
    assert_eq!(config.state.etcd.timeout, Duration::from_millis(2500));
    assert!(config.state.etcd.tls_skip_verify);
    assert_eq!(
        config.state.etcd.tls_configuration.client_key,
        "/etc/etcd/client.key"
    );
    assert!(config.disallow_leadership);
    assert_eq!(config.edge.https.to_string(), "[::]:8443");
    assert_eq!(config.repo.kind, RepoKind::S3);
    assert_eq!(config.auth.tokens.len(), 2);
    assert_eq!(config.auth.tokens[0].role, Role::Admin);
    assert_eq!(config.auth.tokens[1].role, Role::Readonly);
    assert_eq!(config.auth.tokens[1].token, "bbbbbbbbbbbbbbbb");
}

#[test]
fn env_string_keys_are_verbatim() {
    // A number-looking node name stays a string.
    let config = load_env(&[("STATIKO_NODE_NAME", "12345")]).unwrap();
    assert_eq!(config.node_name, "12345");
}

#[test]
fn env_section_merges_and_specific_key_wins() {
    let config = load_env(&[
        ("STATIKO_NODE_NAME", "n1"),
        ("STATIKO_STATE_ETCD", "{timeout: 500, keyPrefix: /a}"),
        ("STATIKO_STATE_ETCD_KEY_PREFIX", "/b"),
    ])
    .unwrap();
    assert_eq!(config.state.etcd.timeout, Duration::from_millis(500));
    assert_eq!(config.state.etcd.key_prefix, "/b");
    assert!(!config.state.etcd.tls_skip_verify);
}

#[test]
fn env_option_path_is_settable() {
    let key_file = write_temp(&format!("{KEY}\n"));
    let path = key_file.path().to_str().unwrap();
    let config = load_env(&[
        ("STATIKO_NODE_NAME", "n1"),
        ("STATIKO_SECRETS_ENCRYPTION_KEY_FILE", path),
    ])
    .unwrap();
    assert_eq!(config.secrets_encryption_key, KEY);
    assert!(config.secrets_key().is_some());
}

#[test]
fn unknown_statiko_variables_are_ignored() {
    let config = load_env(&[
        ("STATIKO_NODE_NAME", "n1"),
        ("STATIKO_ENDPOINT", "https://127.0.0.1:2265"),
        ("STATIKO_TOKEN", "x"),
        ("STATIKO_NOT_A_KEY", "{"),
    ])
    .unwrap();
    assert_eq!(config.node_name, "n1");
}

#[test]
fn env_bad_value_names_the_key() {
    let err = load_env(&[("STATIKO_STATE_ETCD_TIMEOUT", "abc")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"state.etcd.timeout: invalid type: string "abc", expected u64"#
    );
    let err = load_env(&[("STATIKO_AUTH_TOKENS", "[{name: a")]).unwrap_err();
    assert!(matches!(err, ConfigError::Env { .. }), "{err}");
    assert!(err.to_string().contains("STATIKO_AUTH_TOKENS"), "{err}");
    assert_eq!(err.key(), Some("auth.tokens"));
}

#[test]
fn env_beats_file() {
    let yaml = "state: {etcd: {timeout: 5000, keyPrefix: /file}}\n";
    let config = load_yaml(yaml, &[("STATIKO_STATE_ETCD_TIMEOUT", "7000")]).unwrap();
    assert_eq!(config.state.etcd.timeout, Duration::from_millis(7000));
    assert_eq!(config.state.etcd.key_prefix, "/file");
    assert_eq!(config.node_name, "test-node");
    let config = load_yaml(yaml, &[("STATIKO_NODE_NAME", "from-env")]).unwrap();
    assert_eq!(config.node_name, "from-env");
}

#[test]
fn file_from_statiko_config_and_path_argument_wins() {
    let from_env = write_temp("nodeName: from-env-file\n");
    let from_arg = write_temp("nodeName: from-arg-file\n");
    let vars = env(&[(CONFIG_PATH_ENV, from_env.path().to_str().unwrap())]);
    let none = Path::new(NO_DEFAULT_FILE);
    let config = Config::load_with_default_path(None, &vars, none).unwrap();
    assert_eq!(config.node_name, "from-env-file");
    let config = Config::load_with_default_path(Some(from_arg.path()), &vars, none).unwrap();
    assert_eq!(config.node_name, "from-arg-file");
    // The default path is used when nothing else names a file.
    let config = Config::load_with_default_path(None, &HashMap::new(), from_arg.path()).unwrap();
    assert_eq!(config.node_name, "from-arg-file");
}

#[test]
fn empty_file_and_empty_sections_keep_defaults() {
    let config = load_yaml("state:\nedge:\n", &[]).unwrap();
    assert_eq!(config.state, StateConfig::default());
    assert_eq!(config.edge, EdgeConfig::default());
}

#[test]
fn missing_file_names_the_path() {
    let err = Config::load_with_default_path(
        Some(Path::new("/nonexistent/x.yaml")),
        &HashMap::new(),
        Path::new(NO_DEFAULT_FILE),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("read config file /nonexistent/x.yaml: "),
        "{err}"
    );
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let err = load_yaml("state:\n  etcd: [unclosed\n", &[]).unwrap_err();
    let ConfigError::Syntax { line, .. } = &err else {
        panic!("{err}")
    };
    assert!(line.is_some(), "{err}");
    assert!(err.to_string().contains("invalid yaml at line"), "{err}");
    let list = write_temp("- a\n- b\n");
    let err = Config::load_with_default_path(
        Some(list.path()),
        &HashMap::new(),
        Path::new(NO_DEFAULT_FILE),
    )
    .unwrap_err();
    assert!(
        err.to_string().ends_with("the top level must be a mapping"),
        "{err}"
    );
}

#[test]
fn unknown_key_names_the_path() {
    let err = load_yaml("state:\n  etcd:\n    adress: http://x:2379\n", &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("state.etcd: unknown field `adress`, expected one of"),
        "{msg}"
    );
    check_err("nodeNmae: x\n", &[], "config: unknown field `nodeNmae`");
    check_err(
        "auth: {tokens: [{name: a, tokn: x}]}\n",
        &[],
        "auth.tokens[0]: unknown field `tokn`",
    );
}

#[test]
fn bad_type_names_the_path() {
    let err = load_yaml("state: {etcd: {timeout: abc}}\n", &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"state.etcd.timeout: invalid type: string "abc", expected u64"#
    );
    check_err(
        "state: {store: mysql}\n",
        &[],
        "state.store: unknown variant `mysql`",
    );
    check_err(
        "auth: {tokens: [{name: a, token: aaaaaaaaaaaaaaaa, role: root}]}\n",
        &[],
        "auth.tokens[0].role: unknown variant `root`",
    );
    check_err(
        "edge: {leaseTtl: -1}\n",
        &[],
        "edge.leaseTtl: invalid value",
    );
}

#[test]
fn secret_files_are_read_and_trimmed() {
    let key = write_temp(&format!("{KEY}\n"));
    let token = write_temp("0123456789abcdef-token \n\n");
    let s3 = write_temp("s3-secret\n");
    let azure = write_temp("azure-secret\n");
    // Base64 of 32 bytes: a raw Ed25519 public key (parsed at load).
    let codesign = write_temp("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
    let yaml = format!(
        "secretsEncryptionKeyFile: {}\n\
         auth: {{tokens: [{{name: ops, tokenFile: {}, role: admin}}]}}\n\
         repo: {{s3: {{secretAccessKeyFile: {}}}, azure: {{accessKeyFile: {}}}}}\n\
         codesign: {{publicKeyFile: {}}}\n",
        key.path().display(),
        token.path().display(),
        s3.path().display(),
        azure.path().display(),
        codesign.path().display(),
    );
    let config = load_yaml(&yaml, &[]).unwrap();
    assert_eq!(config.secrets_encryption_key, KEY);
    assert_eq!(config.auth.tokens[0].token, "0123456789abcdef-token");
    assert_eq!(config.repo.s3.secret_access_key, "s3-secret");
    assert_eq!(config.repo.azure.access_key, "azure-secret");
    assert_eq!(
        config.codesign.public_key,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    );
    assert_eq!(config.codesign_key(), Some([0; 32]));
}

#[test]
fn secret_inline_and_file_is_an_error() {
    let file = write_temp("x\n");
    let path = file.path().display();
    for (yaml, key) in [
        (
            format!("secretsEncryptionKey: {KEY}\nsecretsEncryptionKeyFile: {path}\n"),
            "secretsEncryptionKey",
        ),
        (
            format!(
                "auth: {{tokens: [{{name: a, token: aaaaaaaaaaaaaaaa, tokenFile: {path}}}]}}\n"
            ),
            "auth.tokens[0].token",
        ),
        (
            format!("repo: {{s3: {{secretAccessKey: x, secretAccessKeyFile: {path}}}}}\n"),
            "repo.s3.secretAccessKey",
        ),
        (
            format!("repo: {{azure: {{accessKey: x, accessKeyFile: {path}}}}}\n"),
            "repo.azure.accessKey",
        ),
        (
            format!("codesign: {{publicKey: x, publicKeyFile: {path}}}\n"),
            "codesign.publicKey",
        ),
    ] {
        let err = load_yaml(&yaml, &[]).unwrap_err();
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().contains("not both"), "{err}");
    }
}

#[test]
fn missing_secret_file_names_key_and_path() {
    let err = load_yaml("secretsEncryptionKeyFile: /nonexistent/key\n", &[]).unwrap_err();
    assert!(matches!(err, ConfigError::SecretFile { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("secretsEncryptionKeyFile: read secret file /nonexistent/key: "),
        "{err}"
    );
}

#[test]
fn validate_etcd_address_required() {
    check_invalid("state: {store: etcd}\n", "state.etcd.address");
}

#[test]
fn validate_etcd_endpoint_scheme() {
    check_invalid(
        "state: {store: etcd, etcd: {address: 'http://a:2379,b:2379'}}\n",
        "state.etcd.address",
    );
}

#[test]
fn validate_etcd_timeout_positive() {
    check_invalid("state: {etcd: {timeout: 0}}\n", "state.etcd.timeout");
}

#[test]
fn validate_secrets_key_length_without_printing_it() {
    let short = "c2hvcnQta2V5"; // "short-key"
    let err = load_yaml(&format!("secretsEncryptionKey: {short}\n"), &[]).unwrap_err();
    assert_eq!(err.key(), Some("secretsEncryptionKey"));
    assert!(!err.to_string().contains(short), "{err}");
    let err = load_yaml("secretsEncryptionKey: 'not base64 !!'\n", &[]).unwrap_err();
    assert_eq!(err.key(), Some("secretsEncryptionKey"));
    assert!(!err.to_string().contains("not base64"), "{err}");
}

#[test]
fn validate_token_name_required() {
    check_invalid(
        "auth: {tokens: [{name: '', token: aaaaaaaaaaaaaaaa}]}\n",
        "auth.tokens[0].name",
    );
}

#[test]
fn validate_token_names_unique() {
    check_invalid(
        "auth: {tokens: [{name: a, token: aaaaaaaaaaaaaaaa}, {name: a, token: bbbbbbbbbbbbbbbb}]}\n",
        "auth.tokens[1].name",
    );
}

#[test]
fn validate_token_length() {
    check_invalid(
        "auth: {tokens: [{name: a, token: short}]}\n",
        "auth.tokens[0].token",
    );
    check_invalid("auth: {tokens: [{name: a}]}\n", "auth.tokens[0].token");
}

#[test]
fn validate_token_role() {
    check_invalid(
        "auth: {tokens: [{name: a, token: aaaaaaaaaaaaaaaa, role: superuser}]}\n",
        "auth.tokens[0].role",
    );
}

#[test]
fn validate_listen_addresses() {
    check_invalid("control: {listen: nope}\n", "control.listen");
    check_invalid("edge: {http: '0.0.0.0'}\n", "edge.http");
    check_invalid("edge: {https: ':x'}\n", "edge.https");
    check_invalid("edge: {admin: '127.0.0.1:70000'}\n", "edge.admin");
    // Port 0, IPv6 and host names are fine.
    load_yaml(
        "control: {listen: 'localhost:0'}\nedge: {http: '[::]:0', https: '0.0.0.0:0'}\n",
        &[],
    )
    .unwrap();
}

#[test]
fn validate_repo_s3_bucket() {
    check_invalid("repo: {type: s3}\n", "repo.s3.bucket");
}

#[test]
fn validate_repo_azure_account_and_container() {
    check_invalid(
        "repo: {type: azure, azure: {container: c}}\n",
        "repo.azure.account",
    );
    check_invalid(
        "repo: {type: azure, azure: {account: a}}\n",
        "repo.azure.container",
    );
}

#[test]
fn validate_repo_gcs_bucket() {
    check_invalid("repo: {type: gcs}\n", "repo.gcs.bucket");
}

#[test]
fn validate_limits_positive() {
    check_invalid("limits: {maxBundleSize: 0}\n", "limits.maxBundleSize");
    check_invalid("limits: {maxUnpackedSize: 0}\n", "limits.maxUnpackedSize");
    check_invalid("limits: {maxBundleEntries: 0}\n", "limits.maxBundleEntries");
}

#[test]
fn validate_lease_ttl_bounds() {
    check_invalid("edge: {leaseTtl: 1}\n", "edge.leaseTtl");
    check_invalid("edge: {leaseTtl: 61}\n", "edge.leaseTtl");
    load_yaml("edge: {leaseTtl: 2}\n", &[]).unwrap();
    load_yaml("edge: {leaseTtl: 60}\n", &[]).unwrap();
}

#[test]
fn validate_node_name() {
    let err = load_env(&[("STATIKO_NODE_NAME", "bad name/1")]).unwrap_err();
    assert_eq!(err.key(), Some("nodeName"), "{err}");
    assert!(
        err.to_string().starts_with("nodeName: invalid node name"),
        "{err}"
    );
}

#[test]
fn validate_control_tls_pair() {
    check_invalid("control: {tls: {certificate: /c.pem}}\n", "control.tls.key");
    check_invalid("control: {tls: {key: /k.pem}}\n", "control.tls.certificate");
    // Disabled TLS ignores the pair.
    load_yaml("control: {tls: {enabled: false, key: /k.pem}}\n", &[]).unwrap();
}

#[test]
fn validate_control_console() {
    let config = load_yaml("", &[]).unwrap();
    assert_eq!(config.control.console.listen, None, "off by default");
    assert_eq!(
        config.control.console.session_lifetime,
        Duration::from_secs(43_200)
    );
    check_invalid(
        "control: {console: {listen: 'nowhere'}}\n",
        "control.console.listen",
    );
    check_invalid(
        "control: {tls: {enabled: false}, console: {listen: '127.0.0.1:2268'}}\n",
        "control.console.listen",
    );
    check_invalid(
        "control: {console: {sessionLifetime: 0}}\n",
        "control.console.sessionLifetime",
    );
    check_invalid(
        "control: {console: {sessionLifetime: 2592001}}\n",
        "control.console.sessionLifetime",
    );
    let config = load_yaml(
        "control: {console: {listen: '127.0.0.1:2268', sessionLifetime: 60}}\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        config.control.console.session_lifetime,
        Duration::from_secs(60)
    );
}

#[test]
fn validate_log_level() {
    check_invalid("log: {level: 'info,[[='}\n", "log.level");
}

#[test]
fn validate_urls() {
    check_invalid("acme: {directory: 'ftp://x'}\n", "acme.directory");
    check_invalid(
        "notifications: {webhook: {url: 'hooks'}}\n",
        "notifications.webhook.url",
    );
}

#[test]
fn redacted_hides_every_secret() {
    let config = load_yaml(
        &format!(
            "secretsEncryptionKey: {KEY}\n\
             auth: {{tokens: [{{name: ops, token: 0123456789abcdef0123, role: admin}}]}}\n\
             repo: {{s3: {{secretAccessKey: s3secret}}, azure: {{accessKey: azsecret}}}}\n\
             notifications: {{webhook: {{url: 'https://hooks.example.com/services/T0/B0/xyz'}}}}\n"
        ),
        &[],
    )
    .unwrap();
    let redacted = config.redacted();
    assert_eq!(redacted.secrets_encryption_key, REDACTED);
    assert_eq!(redacted.auth.tokens[0].token, REDACTED);
    assert_eq!(redacted.auth.tokens[0].name, "ops");
    assert_eq!(redacted.repo.s3.secret_access_key, REDACTED);
    assert_eq!(redacted.repo.azure.access_key, REDACTED);
    assert_eq!(
        redacted.notifications.webhook.url,
        "https://hooks.example.com/<redacted>"
    );
    let yaml = redacted.to_yaml_string();
    for secret in [KEY, "0123456789abcdef0123", "s3secret", "azsecret", "xyz"] {
        assert!(!yaml.contains(secret), "{yaml}");
    }
    // Empty secrets stay empty.
    assert_eq!(Config::default().redacted(), Config::default());
}

#[test]
fn yaml_output_loads_back() {
    let config = load_yaml(
        "state: {store: etcd, etcd: {address: 'http://a:2379'}}\n\
         auth: {tokens: [{name: ops, token: 0123456789abcdef0123, role: admin}]}\n",
        &[],
    )
    .unwrap();
    let file = write_temp(&config.to_yaml_string());
    let again = Config::load_with_default_path(
        Some(file.path()),
        &HashMap::new(),
        Path::new(NO_DEFAULT_FILE),
    )
    .unwrap();
    assert_eq!(again, config);
}

#[test]
fn secrets_key_decodes() {
    let config = Config {
        secrets_encryption_key: KEY.into(),
        ..Config::default()
    }
    .build_and_validate()
    .unwrap();
    assert_eq!(config.secrets_key().map(|k| k.len()), Some(32));
    assert_eq!(
        Config::default()
            .build_and_validate()
            .unwrap()
            .secrets_key(),
        None
    );
}

#[test]
fn deploy_examples_load_as_shipped() {
    for name in ["single-node.yaml", "cluster-node.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/config")
            .join(name);
        let config = Config::load_with_default_path(
            Some(&path),
            &HashMap::new(),
            Path::new(NO_DEFAULT_FILE),
        )
        .unwrap_or_else(|err| panic!("{name}: {err}"));
        assert!(config.secrets_key().is_some(), "{name}");
        assert!(!config.auth.tokens.is_empty(), "{name}");
    }
}

#[test]
fn cluster_example_documents_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/cluster-node.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    for (_, key) in Config::env_keys() {
        let leaf = key.rsplit('.').next().unwrap();
        assert!(
            text.contains(&format!("{leaf}:")) || text.contains(&format!("{leaf}\":")),
            "{key} is not in cluster-node.yaml"
        );
    }
}

#[test]
fn previews_keys_are_validated() {
    let config = load_yaml(
        "previews:\n  domain: Preview.Example.com\n  certificate: wildcard\n",
        &[],
    )
    .unwrap();
    assert_eq!(config.previews.domain, "Preview.Example.com");
    assert!(load_yaml("previews:\n  domain: \"\"\n", &[]).is_ok());
    check_invalid("previews:\n  domain: \"not a domain\"\n", "previews.domain");
    check_invalid(
        &format!("previews:\n  domain: {}.test\n", "a.".repeat(95)),
        "previews.domain",
    );
    check_invalid(
        "previews:\n  certificate: wildcard\n",
        "previews.certificate",
    );
    check_invalid(
        "previews:\n  domain: p.example.com\n  certificate: \"bad/name\"\n",
        "previews.certificate",
    );
}

#[test]
fn validate_edge_worker_threads() {
    check_invalid("edge: {workerThreads: 5000}\n", "edge.workerThreads");
    let config = load_yaml("edge: {workerThreads: 1}\n", &[]).unwrap();
    assert_eq!(config.edge.worker_threads, 1);
    assert_eq!(load_env(&[]).unwrap().edge.worker_threads, 0);
}
