//! A `statiko-edge` process for a test: a generated config (same store and bundle repository as
//! a [`Control`](crate::Control)), its own data dir that survives restarts, readiness through
//! `--ready-file`, and helpers to fetch pages and read `/status`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use statiko_common::process::ReadyFile;
use tempfile::TempDir;
use tokio::process::Command;

use crate::bins::bin_path;
use crate::cmd::scrub_statiko_env;
use crate::control::{StateStore, TEST_SECRETS_ENCRYPTION_KEY, merge};
use crate::net::{HttpResponse, http_get, https_get_unverified};
use crate::process::ChildProcess;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start an [`Edge`].
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// `nodeName`.
    pub name: String,
    /// Where the desired state lives (share it with the control).
    pub store: StateStore,
    /// `repo.local.path` (share it with the control: `control.repo_dir()`).
    pub repo_dir: PathBuf,
    /// Config overrides deep-merged over the generated config.
    pub overrides: Vec<Value>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl EdgeOptions {
    /// An edge named `name` on `store`, fetching bundles from `repo_dir`.
    pub fn new(name: &str, store: StateStore, repo_dir: &Path) -> Self {
        Self {
            name: name.to_owned(),
            store,
            repo_dir: repo_dir.to_owned(),
            overrides: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Deep-merges a JSON value over the config.
    pub fn config(mut self, overrides: Value) -> Self {
        self.overrides.push(overrides);
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn render(&self, dir: &Path) -> Value {
        let state = match &self.store {
            StateStore::TempFile => json!({"store": "file", "file": {"path": dir.join("state")}}),
            StateStore::File(path) => json!({"store": "file", "file": {"path": path}}),
            StateStore::Etcd(etcd) => {
                let mut section = json!({
                    "store": "etcd",
                    "etcd": {"address": etcd.endpoint, "keyPrefix": etcd.key_prefix, "timeout": 2000},
                });
                if let Some((ca, cert, key)) = &etcd.tls {
                    section["etcd"]["tlsConfiguration"] =
                        json!({"ca": ca, "clientCertificate": cert, "clientKey": key});
                }
                section
            }
        };
        let mut config = json!({
            "nodeName": self.name,
            "secretsEncryptionKey": TEST_SECRETS_ENCRYPTION_KEY,
            "state": state,
            "repo": {"type": "local", "local": {"path": self.repo_dir}},
            "edge": {
                "dataDir": dir.join("data"),
                "http": "127.0.0.1:0",
                "https": "127.0.0.1:0",
                "admin": "127.0.0.1:0",
                "leaseTtl": 3,
            },
        });
        for overrides in &self.overrides {
            merge(&mut config, overrides.clone());
        }
        config
    }
}

/// The addresses an edge listens on.
#[derive(Debug, Clone, Copy)]
pub struct EdgeAddrs {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// The HTTP/3 (UDP) listener, absent with `edge.http3: false`.
    pub h3: Option<SocketAddr>,
}

/// A running `statiko-edge`. Killed on drop; its data dir lives as long as the value.
#[derive(Debug)]
pub struct Edge {
    process: Option<ChildProcess>,
    dir: TempDir,
    options: EdgeOptions,
    addrs: EdgeAddrs,
}

impl Edge {
    /// Starts the edge and waits for its ready file.
    pub async fn start(options: EdgeOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("statiko-edge-")
            .tempdir()
            .context("create edge temp dir")?;
        let config = options.render(dir.path());
        std::fs::write(
            dir.path().join("config.yaml"),
            serde_saphyr::to_string(&config).context("serialize edge config")?,
        )
        .context("write edge config")?;
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut edge = Self {
            process: None,
            dir,
            options,
            addrs: EdgeAddrs {
                http: unbound,
                https: unbound,
                admin: unbound,
                h3: None,
            },
        };
        edge.spawn_and_wait().await?;
        Ok(edge)
    }

    /// `nodeName`.
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::id)
    }

    /// Listening addresses (they change on restart).
    pub fn addrs(&self) -> EdgeAddrs {
        self.addrs
    }

    /// The edge's temp dir (config, log, data dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Peak resident set size of the running process, in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        self.process
            .as_ref()
            .context("statiko-edge is not running")?
            .peak_rss_kib()
    }

    /// The process log tail.
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(
            &self.dir.path().join("edge.log"),
            crate::process::LOG_TAIL_LINES,
        )
    }

    /// `GET https://host/path` (SNI and Host = `host`), certificate not verified.
    pub async fn https_get(&self, host: &str, path: &str) -> Result<HttpResponse> {
        Ok(https_get_unverified(self.addrs.https, host, path, &[])
            .await?
            .0)
    }

    /// Like [`Edge::https_get`], with request headers, also returning the presented leaf (DER).
    pub async fn https_get_with(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(HttpResponse, Vec<u8>)> {
        https_get_unverified(self.addrs.https, host, path, headers).await
    }

    /// `GET http://host/path` on the plain listener.
    pub async fn http_get(&self, host: &str, path: &str) -> Result<HttpResponse> {
        http_get(self.addrs.http, host, path).await
    }

    /// The admin listener's `/status` document.
    pub async fn status(&self) -> Result<Value> {
        let response = http_get(self.addrs.admin, "localhost", "/status").await?;
        serde_json::from_slice(&response.body).context("/status is not JSON")
    }

    /// The value of `series` (name and labels, as in `/metrics`) on the admin listener's
    /// `/metrics`; 0 when absent.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let text = http_get(self.addrs.admin, "localhost", "/metrics")
            .await?
            .text();
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// The applied revision and, per site, `(app "name@version" or "", error or "")`, from `/status`.
    pub async fn served(&self, domain: &str) -> Result<Option<(String, String)>> {
        let status = self.status().await?;
        let sites = status["node"]["sites"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(sites.iter().find(|s| s["domain"] == domain).map(|s| {
            let app = match (s["app"]["name"].as_str(), s["app"]["version"].as_str()) {
                (Some(name), Some(version)) => format!("{name}@{version}"),
                _ => String::new(),
            };
            (app, s["error"].as_str().unwrap_or_default().to_owned())
        }))
    }

    /// Sends SIGTERM and returns the exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        match self.process.as_mut() {
            Some(process) => process.terminate().await,
            None => bail!("statiko-edge is not running"),
        }
    }

    /// Kills the process (SIGKILL).
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        match self.process.as_mut() {
            Some(process) => process.kill().await,
            None => bail!("statiko-edge is not running"),
        }
    }

    /// Starts the process again with the same config and data dir.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(process) = self.process.as_mut()
            && process.is_running()
        {
            process.terminate().await?;
        }
        self.spawn_and_wait().await
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let ready_path = self.dir.path().join("ready.json");
        if ready_path.exists() {
            std::fs::remove_file(&ready_path).context("remove stale ready file")?;
        }
        let mut command = Command::new(bin_path("statiko-edge"));
        command
            .arg("--config")
            .arg(self.dir.path().join("config.yaml"))
            .arg("--ready-file")
            .arg(&ready_path);
        scrub_statiko_env(&mut command);
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        let process = self.process.insert(ChildProcess::spawn(
            "statiko-edge",
            command,
            &self.dir.path().join("edge.log"),
        )?);
        self.addrs = process
            .wait_ready(READY_TIMEOUT, async || {
                let ready = ReadyFile::read(&ready_path)?;
                Ok(EdgeAddrs {
                    http: ready.address("http")?,
                    https: ready.address("https")?,
                    admin: ready.address("admin")?,
                    h3: ready.address("h3").ok(),
                })
            })
            .await?;
        Ok(())
    }
}
