//! Pebble, the ACME test server (Debian's `pebble` 2.4), with `pebble-challtestsrv` as its DNS
//! so that every test domain resolves to 127.0.0.1. Each [`Pebble`] has its own ports, its own
//! TLS certificate (from a throwaway [`Pki`]: trust it through `acme.caBundle` =
//! [`Pebble::ca_bundle`]) and validates HTTP-01 on the port given to [`Pebble::start`], which
//! must be the HTTP port of an edge. Pebble makes a new issuing root at every start:
//! [`Pebble::verify`] checks a served chain against it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_rustls::TlsConnector;

use crate::certs::Pki;
use crate::net::{free_port, https_get_unverified};
use crate::process::ChildProcess;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running pebble and its mock DNS server. Both are killed on drop.
pub struct Pebble {
    pki: Pki,
    dir: TempDir,
    _dns: ChildProcess,
    pebble: ChildProcess,
    acme_port: u16,
    management_port: u16,
}

impl std::fmt::Debug for Pebble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pebble")
            .field("dir", &self.dir.path())
            .field("acme_port", &self.acme_port)
            .finish_non_exhaustive()
    }
}

impl Pebble {
    /// Starts pebble validating HTTP-01 challenges on `127.0.0.1:http_port`.
    pub async fn start(http_port: u16) -> Result<Self> {
        let pki = Pki::new()?;
        let dir = tempfile::Builder::new()
            .prefix("statiko-pebble-")
            .tempdir()
            .context("create pebble temp dir")?;
        let dns_port = free_port()?;
        let mut dns_command = Command::new(
            crate::tool_path("pebble-challtestsrv").context("pebble-challtestsrv not found")?,
        );
        dns_command.args([
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_port()?),
        ]);
        let mut dns = ChildProcess::spawn(
            "pebble-challtestsrv",
            dns_command,
            &dir.path().join("challtestsrv.log"),
        )?;
        let acme_port = free_port()?;
        let management_port = free_port()?;
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": pki.server().cert_path,
            "privateKey": pki.server().key_path,
            "httpPort": http_port,
            "tlsPort": free_port()?,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).context("write pebble config")?;
        let mut command = Command::new(crate::tool_path("pebble").context("pebble not found")?);
        command
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0");
        let mut pebble = ChildProcess::spawn("pebble", command, &dir.path().join("pebble.log"))?;
        let acme = SocketAddr::from(([127, 0, 0, 1], acme_port));
        pebble
            .wait_ready(READY_TIMEOUT, async || {
                let (response, _) = https_get_unverified(acme, "localhost", "/dir", &[]).await?;
                if response.status != 200 {
                    bail!("/dir answered {}", response.status);
                }
                Ok(())
            })
            .await?;
        if !dns.is_running() {
            bail!("pebble-challtestsrv exited\n{}", dns.log_tail());
        }
        Ok(Self {
            pki,
            dir,
            _dns: dns,
            pebble,
            acme_port,
            management_port,
        })
    }

    /// The ACME directory URL (`acme.directory`).
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The CA of pebble's own listener (`acme.caBundle`).
    pub fn ca_bundle(&self) -> &Path {
        self.pki.ca_path()
    }

    /// Pebble's temp dir (config, logs).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The tail of pebble's log.
    pub fn log_tail(&self) -> String {
        self.pebble.log_tail()
    }

    /// The PEM of pebble's current issuing root.
    pub async fn issuing_root(&self) -> Result<String> {
        let management = SocketAddr::from(([127, 0, 0, 1], self.management_port));
        let (response, _) = https_get_unverified(management, "localhost", "/roots/0", &[]).await?;
        if response.status != 200 {
            bail!("/roots/0 answered {}", response.status);
        }
        Ok(response.text())
    }

    /// Connects to `addr` with SNI `host`, verifying the presented chain against pebble's
    /// issuing root and `host`. Returns the leaf certificate (DER).
    pub async fn verify(&self, addr: SocketAddr, host: &str) -> Result<Vec<u8>> {
        let root = self.issuing_root().await?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(root.as_bytes()) {
            roots
                .add(cert.context("pebble root PEM")?)
                .context("add pebble root")?;
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        let name = ServerName::try_from(host.to_owned()).context("server name")?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .with_context(|| {
                format!("TLS handshake with {host} at {addr} (verified against pebble)")
            })?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .context("no certificate presented")?;
        Ok(leaf.as_ref().to_vec())
    }
}
