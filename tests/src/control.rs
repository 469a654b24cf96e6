//! A `statiko-control` process for a test: a generated config in its own temp dir (file or
//! etcd store, local repo, self-signed TLS, test tokens), readiness through `--ready-file`,
//! SIGTERM with the exit status, restart, and ready-made API clients and `stk` runs.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use statiko_common::process::ReadyFile;
use tempfile::TempDir;
use tokio::process::Command;

use crate::bins::bin_path;
use crate::client::{Api, channel, plain_channel};
use crate::cmd::{OutputExt as _, run_bin, scrub_statiko_env};
use crate::etcd::Etcd;
use crate::process::ChildProcess;

/// The admin token every test control accepts unless [`ControlOptions::tokens`] replaces it.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
/// The read-only token every test control accepts unless replaced.
pub const READONLY_TOKEN: &str = "readonly-token-0123456789abcdef";
/// A fixed `secretsEncryptionKey` (base64 of the bytes 1..=32), so restarts can decrypt.
pub const TEST_SECRETS_ENCRYPTION_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
/// How long the control may take to write its ready file (before patience).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the control keeps its state.
#[derive(Debug, Clone, Default)]
pub enum StateStore {
    /// `state.store: file` in `<control dir>/state` (the default).
    #[default]
    TempFile,
    /// `state.store: file` in the given directory (e.g. shared across two controls).
    File(PathBuf),
    /// `state.store: etcd`.
    Etcd(EtcdStore),
}

/// `state.etcd` for a test control.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    /// `state.etcd.address`, e.g. `http://127.0.0.1:2379`.
    pub endpoint: String,
    /// `state.etcd.keyPrefix`.
    pub key_prefix: String,
    /// `state.etcd.tlsConfiguration`: CA, client certificate and key files.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl StateStore {
    /// The etcd store of a harness [`Etcd`] (TLS files included), with key prefix `/statiko`.
    pub fn etcd(etcd: &Etcd) -> Self {
        Self::etcd_with_prefix(etcd, "/statiko")
    }

    /// Like [`StateStore::etcd`] with another key prefix.
    pub fn etcd_with_prefix(etcd: &Etcd, key_prefix: &str) -> Self {
        Self::Etcd(EtcdStore {
            endpoint: etcd.endpoint(),
            key_prefix: key_prefix.to_owned(),
            tls: etcd.tls().map(|tls| {
                (
                    tls.ca_path.clone(),
                    tls.client_cert_path.clone(),
                    tls.client_key_path.clone(),
                )
            }),
        })
    }
}

/// A role in `auth.tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May change everything.
    Admin,
    /// May only read.
    Readonly,
}

/// One entry of `auth.tokens`.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// `name`.
    pub name: String,
    /// `token`.
    pub token: String,
    /// `role`.
    pub role: Role,
}

impl TokenSpec {
    /// A token entry.
    pub fn new(name: &str, token: &str, role: Role) -> Self {
        Self {
            name: name.to_owned(),
            token: token.to_owned(),
            role,
        }
    }
}

/// How to start a [`Control`]; `ControlOptions::default()` is a file store with the test
/// tokens. Builder methods chain: `ControlOptions::default().store(..).yaml("..")`.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Where state lives.
    pub store: StateStore,
    /// `auth.tokens`; defaults to [`ADMIN_TOKEN`] (admin) and [`READONLY_TOKEN`] (readonly).
    pub tokens: Vec<TokenSpec>,
    /// Config overrides deep-merged over the generated config, in order (objects merge key by
    /// key, anything else replaces; `null` removes the key).
    pub overrides: Vec<Value>,
    /// YAML overrides, parsed at start and merged after `overrides`.
    pub yaml: Vec<String>,
    /// Extra environment, e.g. `STATIKO_*` overrides.
    pub env: Vec<(String, String)>,
    /// Extra command-line arguments after `--config` and `--ready-file`.
    pub args: Vec<String>,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            store: StateStore::TempFile,
            tokens: vec![
                TokenSpec::new("admin", ADMIN_TOKEN, Role::Admin),
                TokenSpec::new("readonly", READONLY_TOKEN, Role::Readonly),
            ],
            overrides: Vec::new(),
            yaml: Vec::new(),
            env: Vec::new(),
            args: Vec::new(),
        }
    }
}

impl ControlOptions {
    /// Sets the state store.
    pub fn store(mut self, store: StateStore) -> Self {
        self.store = store;
        self
    }

    /// Replaces the tokens.
    pub fn tokens(mut self, tokens: Vec<TokenSpec>) -> Self {
        self.tokens = tokens;
        self
    }

    /// Adds a token.
    pub fn token(mut self, name: &str, token: &str, role: Role) -> Self {
        self.tokens.push(TokenSpec::new(name, token, role));
        self
    }

    /// Deep-merges a JSON value over the config, e.g. `json!({"limits": {"maxBundleSize": 1024}})`.
    pub fn config(mut self, overrides: Value) -> Self {
        self.overrides.push(overrides);
        self
    }

    /// Deep-merges a YAML document over the config.
    pub fn yaml(mut self, yaml: &str) -> Self {
        self.yaml.push(yaml.to_owned());
        self
    }

    /// Adds an environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// The config this would run with in `dir`, as a JSON value (written as YAML).
    pub fn render(&self, dir: &Path) -> Result<Value> {
        let state = match &self.store {
            StateStore::TempFile => json!({"store": "file", "file": {"path": dir.join("state")}}),
            StateStore::File(path) => json!({"store": "file", "file": {"path": path}}),
            StateStore::Etcd(etcd) => {
                let mut section = json!({
                    "store": "etcd",
                    "etcd": {"address": etcd.endpoint, "keyPrefix": etcd.key_prefix},
                });
                if let Some((ca, cert, key)) = &etcd.tls {
                    section["etcd"]["tlsConfiguration"] =
                        json!({"ca": ca, "clientCertificate": cert, "clientKey": key});
                }
                section
            }
        };
        let tokens: Vec<Value> = self
            .tokens
            .iter()
            .map(|token| {
                let role = match token.role {
                    Role::Admin => "admin",
                    Role::Readonly => "readonly",
                };
                json!({"name": token.name, "token": token.token, "role": role})
            })
            .collect();
        let mut config = json!({
            "secretsEncryptionKey": TEST_SECRETS_ENCRYPTION_KEY,
            "state": state,
            "control": {
                "listen": "127.0.0.1:0",
                "tls": {"enabled": true, "selfSignedDir": dir.join("control-tls")},
                "dataDir": dir.join("control-data"),
            },
            "auth": {"tokens": tokens},
            "repo": {"type": "local", "local": {"path": dir.join("repo")}},
        });
        for overrides in &self.overrides {
            merge(&mut config, overrides.clone());
        }
        for yaml in &self.yaml {
            let overrides: Value = serde_saphyr::from_str(yaml)
                .with_context(|| format!("parse YAML override:\n{yaml}"))?;
            merge(&mut config, overrides);
        }
        Ok(config)
    }
}

/// A running `statiko-control`. Killed on drop; use [`Control::terminate`] to test shutdown.
#[derive(Debug)]
pub struct Control {
    // Declared first so it is dropped (killed) before the temp dir is removed.
    process: Option<ChildProcess>,
    dir: TempDir,
    options: ControlOptions,
    config: Value,
    grpc_addr: SocketAddr,
    console_addr: Option<SocketAddr>,
}

impl Control {
    /// Writes the config, starts `statiko-control --config .. --ready-file ..` and waits until
    /// the ready file names the gRPC address (failing with the log tail otherwise).
    pub async fn start(options: ControlOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("statiko-control-")
            .tempdir()
            .context("create control temp dir")?;
        let config = options.render(dir.path())?;
        let yaml = serde_saphyr::to_string(&config).context("serialize control config")?;
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, yaml).context("write control config")?;
        let mut control = Self {
            dir,
            options,
            config,
            process: None,
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            console_addr: None,
        };
        control.spawn_and_wait().await?;
        Ok(control)
    }

    /// The gRPC address from the ready file.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The web console's address from the ready file, when `control.console.listen` is set.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// `https://127.0.0.1:PORT` of the web console.
    pub fn console_url(&self) -> Result<String> {
        let addr = self
            .console_addr
            .context("the console is off (set control.console.listen)")?;
        Ok(format!("https://{addr}"))
    }

    /// `https://127.0.0.1:PORT` (or `http://` when the config disables TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls_enabled() { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// Whether `control.tls.enabled` is true in the effective config.
    pub fn tls_enabled(&self) -> bool {
        self.config["control"]["tls"]["enabled"].as_bool() != Some(false)
    }

    /// The self-signed certificate, `<control.tls.selfSignedDir>/cert.pem`, to trust.
    pub fn ca_path(&self) -> PathBuf {
        let self_signed_dir = self.config["control"]["tls"]["selfSignedDir"]
            .as_str()
            .map_or_else(|| self.dir.path().join("control-tls"), PathBuf::from);
        self_signed_dir.join("cert.pem")
    }

    /// The control's temp dir (config, log, ready file, default state and repo dirs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file it runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// The effective config as written (JSON form of the YAML file).
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// `repo.local.path`.
    pub fn repo_dir(&self) -> PathBuf {
        self.config["repo"]["local"]["path"]
            .as_str()
            .map_or_else(|| self.dir.path().join("repo"), PathBuf::from)
    }

    /// `state.file.path` (meaningful for the file store).
    pub fn state_dir(&self) -> PathBuf {
        self.config["state"]["file"]["path"]
            .as_str()
            .map_or_else(|| self.dir.path().join("state"), PathBuf::from)
    }

    /// The process log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("control.log")
    }

    /// The tail of the process log.
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(&self.log_path(), crate::process::LOG_TAIL_LINES)
    }

    /// Peak resident set size of the running process, in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        self.process
            .as_ref()
            .context("statiko-control is not running")?
            .peak_rss_kib()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::id)
    }

    /// The process, e.g. to send another signal.
    pub fn process(&mut self) -> Option<&mut ChildProcess> {
        self.process.as_mut()
    }

    /// Sends SIGTERM and returns the exit status (a graceful exit is `code() == Some(0)`).
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        match self.process.as_mut() {
            Some(process) => process.terminate().await,
            None => bail!("statiko-control is not running"),
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        match self.process.as_mut() {
            Some(process) => process.kill().await,
            None => bail!("statiko-control is not running"),
        }
    }

    /// Terminates the process if it runs and starts it again with the same config and dirs.
    /// The gRPC port changes (it listens on `:0`); the self-signed certificate is kept.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(process) = self.process.as_mut()
            && process.is_running()
        {
            let status = process.terminate().await?;
            if !status.success() {
                bail!(
                    "statiko-control exited with {status} on SIGTERM\n{}",
                    self.log_tail()
                );
            }
        }
        self.spawn_and_wait().await
    }

    /// API clients sending `token`.
    pub async fn api(&self, token: &str) -> Result<Api> {
        Api::new(self.channel().await?, token)
    }

    /// API clients sending [`ADMIN_TOKEN`].
    pub async fn admin(&self) -> Result<Api> {
        self.api(ADMIN_TOKEN).await
    }

    /// API clients sending [`READONLY_TOKEN`].
    pub async fn readonly(&self) -> Result<Api> {
        self.api(READONLY_TOKEN).await
    }

    /// API clients sending no token.
    pub async fn anonymous(&self) -> Result<Api> {
        Ok(Api::anonymous(self.channel().await?))
    }

    /// A connected channel (TLS trusting [`Control::ca_path`] unless TLS is disabled).
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        if self.tls_enabled() {
            channel(&self.endpoint(), &self.ca_path()).await
        } else {
            plain_channel(&self.endpoint()).await
        }
    }

    /// Environment for `stk` to reach this control with `token`: `STATIKO_ENDPOINT`,
    /// `STATIKO_TOKEN` and `STATIKO_CA`.
    pub fn stk_env(&self, token: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("STATIKO_ENDPOINT".to_owned(), self.endpoint()),
            ("STATIKO_TOKEN".to_owned(), token.to_owned()),
        ];
        if self.tls_enabled() {
            env.push((
                "STATIKO_CA".to_owned(),
                self.ca_path().to_string_lossy().into_owned(),
            ));
        }
        env
    }

    /// Runs `stk --endpoint E --token ADMIN [--ca CERT] <args>` against this control.
    pub async fn stk<A>(&self, args: A) -> Result<Output>
    where
        A: IntoIterator,
        A::Item: AsRef<OsStr>,
    {
        self.stk_as(ADMIN_TOKEN, args).await
    }

    /// Runs `stk --output json <args>` as admin, which must succeed: its parsed output.
    pub async fn stk_json<A>(&self, args: A) -> Result<serde_json::Value>
    where
        A: IntoIterator,
        A::Item: AsRef<OsStr>,
    {
        let mut full: Vec<std::ffi::OsString> = vec!["--output".into(), "json".into()];
        full.extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        let output = self.stk(&full).await?;
        output.assert_success();
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("stk {full:?}: not JSON: {}", output.stdout_text()))
    }

    /// Like [`Control::stk`] with another token.
    pub async fn stk_as<A>(&self, token: &str, args: A) -> Result<Output>
    where
        A: IntoIterator,
        A::Item: AsRef<OsStr>,
    {
        let mut full_args: Vec<std::ffi::OsString> = vec![
            "--endpoint".into(),
            self.endpoint().into(),
            "--token".into(),
            token.into(),
        ];
        if self.tls_enabled() {
            full_args.push("--ca".into());
            full_args.push(self.ca_path().into());
        }
        full_args.extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        run_bin("stk", full_args, &[] as &[(&str, &str)]).await
    }

    /// Runs `statiko-control --config <rendered options> --check-config` without starting it;
    /// the temp dir is returned too so paths in the config stay valid while inspecting.
    pub async fn check_config(options: &ControlOptions) -> Result<(Output, TempDir)> {
        let dir = tempfile::Builder::new()
            .prefix("statiko-control-check-")
            .tempdir()
            .context("create temp dir")?;
        let config = options.render(dir.path())?;
        let config_path = dir.path().join("config.yaml");
        std::fs::write(
            &config_path,
            serde_saphyr::to_string(&config).context("serialize config")?,
        )
        .context("write config")?;
        let mut args: Vec<std::ffi::OsString> = vec![
            "--config".into(),
            config_path.into(),
            "--check-config".into(),
        ];
        args.extend(options.args.iter().map(Into::into));
        let output = run_bin("statiko-control", args, &options.env).await?;
        Ok((output, dir))
    }

    fn ready_path(&self) -> PathBuf {
        self.dir.path().join("ready.json")
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let ready_path = self.ready_path();
        if ready_path.exists() {
            std::fs::remove_file(&ready_path).context("remove stale ready file")?;
        }
        let mut command = Command::new(bin_path("statiko-control"));
        command
            .arg("--config")
            .arg(self.config_path())
            .arg("--ready-file")
            .arg(&ready_path)
            .args(&self.options.args);
        scrub_statiko_env(&mut command);
        command.envs(self.options.env.iter().map(|(key, value)| (key, value)));
        let process = self.process.insert(ChildProcess::spawn(
            "statiko-control",
            command,
            &self.log_path(),
        )?);
        let cert_path = self
            .config
            .pointer("/control/tls/enabled")
            .and_then(Value::as_bool)
            .unwrap_or(true)
            .then(|| {
                self.config
                    .pointer("/control/tls/selfSignedDir")
                    .and_then(Value::as_str)
                    .map(|dir| Path::new(dir).join("cert.pem"))
            })
            .flatten();
        let ready = process
            .wait_ready(READY_TIMEOUT, async || {
                let ready = ReadyFile::read(&ready_path)?;
                ready.address("grpc")?;
                if let Some(cert_path) = &cert_path
                    && !cert_path.exists()
                {
                    bail!("ready, but {} does not exist", cert_path.display());
                }
                Ok(ready)
            })
            .await?;
        self.grpc_addr = ready.address("grpc")?;
        self.console_addr = ready.address("console").ok();
        Ok(())
    }
}

/// Deep-merges `overrides` into `target`: objects key by key, `null` deletes, else replace.
pub fn merge(target: &mut Value, overrides: Value) {
    match (target, overrides) {
        (Value::Object(target), Value::Object(overrides)) => merge_objects(target, overrides),
        (target, overrides) => *target = overrides,
    }
}

fn merge_objects(target: &mut Map<String, Value>, overrides: Map<String, Value>) {
    for (key, value) in overrides {
        if value.is_null() {
            target.remove(&key);
        } else if let Some(existing) = target.get_mut(&key) {
            merge(existing, value);
        } else {
            target.insert(key, value);
        }
    }
}
