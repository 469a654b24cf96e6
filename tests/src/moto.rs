//! An S3-compatible server for repository tests: `moto_server` from PyPI `moto[server]` on a
//! free loopback port, with bucket creation through a plain HTTP `PUT`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Method;
use tempfile::TempDir;
use tokio::process::Command;

use crate::bins::tool_path;
use crate::net::{free_port, http_request};
use crate::process::ChildProcess;

/// moto is a Python program; importing it takes a while on a busy machine (before patience).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `moto_server`. Any access key is accepted; the region is `us-east-1`.
#[derive(Debug)]
pub struct Moto {
    // Declared first so it is dropped (killed) before the temp dir is removed.
    process: ChildProcess,
    dir: TempDir,
    addr: SocketAddr,
}

impl Moto {
    /// The access key id to configure clients with (moto accepts any).
    pub const ACCESS_KEY_ID: &'static str = "statiko-test";
    /// The secret access key to configure clients with (moto accepts any).
    pub const SECRET_ACCESS_KEY: &'static str = "statiko-test-secret";
    /// The region moto serves by default.
    pub const REGION: &'static str = "us-east-1";

    /// Starts `moto_server -H 127.0.0.1 -p PORT` and waits until it answers HTTP.
    pub async fn start() -> Result<Self> {
        let Some(binary) = tool_path("moto_server") else {
            bail!("moto_server is not installed: run scripts/install-deps.sh");
        };
        let dir = tempfile::Builder::new()
            .prefix("statiko-moto-")
            .tempdir()
            .context("create moto temp dir")?;
        let mut last_error = None;
        // The port is reserved by bind-and-release: retry once if moto loses the race.
        for _attempt in 0..2 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let mut command = Command::new(&binary);
            command
                .arg("-H")
                .arg("127.0.0.1")
                .arg("-p")
                .arg(addr.port().to_string())
                .env("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY_ID)
                .env("AWS_SECRET_ACCESS_KEY", Self::SECRET_ACCESS_KEY)
                .env("AWS_DEFAULT_REGION", Self::REGION);
            let mut process =
                ChildProcess::spawn("moto_server", command, &dir.path().join("moto.log"))?;
            let ready = process
                .wait_ready(READY_TIMEOUT, async || {
                    let response = http_request(
                        addr,
                        None,
                        Method::GET,
                        &addr.to_string(),
                        "/",
                        &[],
                        Bytes::new(),
                    )
                    .await?;
                    anyhow::Ok(response.status)
                })
                .await;
            match ready {
                Ok(_status) => return Ok(Self { dir, addr, process }),
                Err(error) => {
                    let _exit = process.kill().await;
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("moto_server did not start")))
    }

    /// `http://127.0.0.1:PORT`, for `repo.s3.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates `bucket` (path-style `PUT /bucket`).
    pub async fn create_bucket(&self, bucket: &str) -> Result<()> {
        let response = http_request(
            self.addr,
            None,
            Method::PUT,
            &self.addr.to_string(),
            &format!("/{bucket}"),
            &[("content-length", "0")],
            Bytes::new(),
        )
        .await
        .with_context(|| format!("create bucket {bucket}"))?;
        if !response.status.is_success() {
            bail!(
                "create bucket {bucket}: HTTP {}: {}",
                response.status,
                response.text()
            );
        }
        Ok(())
    }

    /// `GET /bucket/key` (path style): the object's bytes, or `None` for 404.
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Bytes>> {
        let response = http_request(
            self.addr,
            None,
            Method::GET,
            &self.addr.to_string(),
            &format!("/{bucket}/{key}"),
            &[],
            Bytes::new(),
        )
        .await
        .with_context(|| format!("get s3://{bucket}/{key}"))?;
        match response.status.as_u16() {
            200 => Ok(Some(response.body)),
            404 => Ok(None),
            status => bail!(
                "get s3://{bucket}/{key}: HTTP {status}: {}",
                response.text()
            ),
        }
    }

    /// Stops moto with SIGTERM.
    pub async fn stop(&mut self) -> Result<()> {
        let _status = self.process.terminate().await?;
        Ok(())
    }

    /// The tail of moto's log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The temp dir holding the log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}
