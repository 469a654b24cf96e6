//! One etcd per test: plain or TLS with client-certificate auth, on reserved loopback ports,
//! in its own temp data dir, with its log in a file; stop/restart keep ports and data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tempfile::TempDir;
use tokio::process::Command;

use crate::bins::tool_path;
use crate::certs::Pki;
use crate::net::free_port;
use crate::process::ChildProcess;

/// How long etcd may take to answer `status()` after start (before patience).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The member name; the cluster is always this single member.
const MEMBER_NAME: &str = "statiko-test";

/// The TLS material of a TLS etcd, copied into the etcd's own dir so it outlives the [`Pki`].
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// CA that signed the server and client certificates (PEM file).
    pub ca_path: PathBuf,
    /// Client certificate accepted by `--client-cert-auth` (PEM file).
    pub client_cert_path: PathBuf,
    /// Its private key (PEM file).
    pub client_key_path: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1` (PEM file).
    pub server_cert_path: PathBuf,
    /// Its private key (PEM file).
    pub server_key_path: PathBuf,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

/// A single-member etcd cluster run as a child process. Killed on drop.
#[derive(Debug)]
pub struct Etcd {
    // Declared first so it is dropped (killed) before the temp dir is removed.
    process: Option<ChildProcess>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
}

impl Etcd {
    /// Starts a plaintext etcd on `http://127.0.0.1:<free port>`.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// Starts etcd on `https://127.0.0.1:<free port>` with the PKI's server certificate,
    /// `--client-cert-auth` and `--trusted-ca-file`, so clients need the PKI's client cert.
    pub async fn start_tls(pki: &Pki) -> Result<Self> {
        let dir = new_dir()?;
        let copy = |source: &Path, name: &str| -> Result<PathBuf> {
            let target = dir.path().join(name);
            std::fs::copy(source, &target)
                .with_context(|| format!("copy {} to {}", source.display(), target.display()))?;
            Ok(target)
        };
        let tls = EtcdTls {
            ca_path: copy(pki.ca_path(), "ca.pem")?,
            client_cert_path: copy(&pki.client().cert_path, "client.pem")?,
            client_key_path: copy(&pki.client().key_path, "client.key")?,
            server_cert_path: copy(&pki.server().cert_path, "server.pem")?,
            server_key_path: copy(&pki.server().key_path, "server.key")?,
            ca_pem: pki.ca_pem().to_owned(),
            client_cert_pem: pki.client().cert_pem.clone(),
            client_key_pem: pki.client().key_pem.clone(),
        };
        Self::launch(dir, Some(tls)).await
    }

    async fn start_with(tls: Option<EtcdTls>) -> Result<Self> {
        Self::launch(new_dir()?, tls).await
    }

    async fn launch(dir: TempDir, tls: Option<EtcdTls>) -> Result<Self> {
        let mut etcd = Self {
            dir,
            client_port: 0,
            peer_port: 0,
            tls,
            process: None,
        };
        // The ports are reserved by bind-and-release, so another process may grab one before
        // etcd binds it: retry once with fresh ports and a fresh data dir.
        let mut last_error = None;
        for _attempt in 0..2 {
            etcd.client_port = free_port()?;
            etcd.peer_port = free_port()?;
            if etcd.client_port == etcd.peer_port {
                etcd.peer_port = free_port()?;
            }
            let data_dir = etcd.data_dir();
            if data_dir.exists() {
                std::fs::remove_dir_all(&data_dir)
                    .with_context(|| format!("remove {}", data_dir.display()))?;
            }
            match etcd.spawn_and_wait().await {
                Ok(()) => return Ok(etcd),
                Err(error) => {
                    if let Some(mut process) = etcd.process.take() {
                        let _exit = process.kill().await;
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    /// The client URL, `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::id)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The TLS files (for a control config), if this etcd was started with [`Etcd::start_tls`].
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// Options for `etcd_client::Client::connect`: short timeouts, and the CA and client
    /// certificate for a TLS etcd.
    pub fn connect_options(&self) -> ConnectOptions {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        match &self.tls {
            None => options,
            Some(tls) => options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                    .identity(Identity::from_pem(
                        &tls.client_cert_pem,
                        &tls.client_key_pem,
                    ))
                    .domain_name("localhost"),
            ),
        }
    }

    /// A connected etcd client.
    pub async fn client(&self) -> Result<Client> {
        Client::connect([self.endpoint()], Some(self.connect_options()))
            .await
            .with_context(|| format!("connect to etcd at {}", self.endpoint()))
    }

    /// Stops etcd with SIGTERM (SIGKILL after the grace period). Data and ports are kept.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.terminate().await.context("stop etcd")?;
        }
        Ok(())
    }

    /// Kills etcd with SIGKILL, as a crash would. Data and ports are kept.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill().await.context("kill etcd")?;
        }
        Ok(())
    }

    /// Freezes etcd with SIGSTOP: its sockets stay open and accept, but it answers nothing,
    /// like a hung host. [`Etcd::thaw`] resumes it.
    pub async fn freeze(&mut self) -> Result<()> {
        match self.process.as_mut() {
            Some(process) => process.signal("STOP").await,
            None => bail!("etcd is not running"),
        }
    }

    /// Resumes a frozen etcd (SIGCONT).
    pub async fn thaw(&mut self) -> Result<()> {
        match self.process.as_mut() {
            Some(process) => process.signal("CONT").await,
            None => bail!("etcd is not running"),
        }
    }

    /// Stops etcd if it is running and starts it again on the same ports and data dir.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn_and_wait().await
    }

    /// Whether the etcd process is running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::is_running)
    }

    /// The tail of etcd's log.
    pub fn log_tail(&self) -> String {
        crate::process::log_tail(&self.log_path(), crate::process::LOG_TAIL_LINES)
    }

    /// The temp dir holding the data dir, the log and the TLS copies.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let Some(binary) = tool_path("etcd") else {
            bail!("etcd is not installed: run scripts/install-deps.sh (or set STATIKO_ETCD_BIN)");
        };
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(binary);
        command
            .arg("--name")
            .arg(MEMBER_NAME)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("{MEMBER_NAME}={peer_url}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert_path)
                .arg("--key-file")
                .arg(&tls.server_key_path)
                .arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca_path);
        }
        // etcd reads ETCD_* variables as flags; keep a developer's shell from leaking in.
        for (name, _value) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD") {
                command.env_remove(name);
            }
        }
        let endpoint = self.endpoint();
        let options = self.connect_options();
        let process = self
            .process
            .insert(ChildProcess::spawn("etcd", command, &self.log_path())?);
        process
            .wait_ready(READY_TIMEOUT, async || {
                let mut client = Client::connect([endpoint.as_str()], Some(options.clone()))
                    .await
                    .context("connect")?;
                client.status().await.context("status")?;
                anyhow::Ok(())
            })
            .await
    }
}

fn new_dir() -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix("statiko-etcd-")
        .tempdir()
        .context("create etcd temp dir")
}
