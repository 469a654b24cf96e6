//! An independent HTTP/3 client for tests: `tests/h3_client.py` on aioquic (PyPI, installed by
//! scripts/install-deps.sh), run as a child process. One call is one QUIC connection carrying
//! the given requests in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use serde::Deserialize;
use tokio::process::Command;

/// One request of an [`h3_fetch`] connection.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct H3Request {
    pub path: String,
    /// Request headers, lowercase names.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl H3Request {
    /// `GET path` with no extra header.
    pub fn get(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            headers: Default::default(),
        }
    }

    /// Adds a request header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.to_owned(), value.to_owned());
        self
    }
}

/// A response received over HTTP/3.
#[derive(Debug, Clone)]
pub struct H3Response {
    pub status: u16,
    /// Header fields as received (lowercase names, in order).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl H3Response {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What one QUIC connection saw.
#[derive(Debug, Clone)]
pub struct H3Connection {
    /// The ALPN protocol negotiated (`h3`).
    pub alpn: Option<String>,
    /// SHA-256 (hex) of the leaf certificate the server presented.
    pub certificate_sha256: Option<String>,
    pub responses: Vec<H3Response>,
}

#[derive(Deserialize)]
struct RawConnection {
    alpn: Option<String>,
    certificate_sha256: Option<String>,
    responses: Vec<RawResponse>,
}

#[derive(Deserialize)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body_b64: String,
}

/// The client script in the source tree.
pub fn h3_client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("h3_client.py")
}

/// Whether the HTTP/3 client can run (python3 with aioquic); a missing one fails under
/// `CI=true` and skips with a notice elsewhere, as [`crate::require_tool`] does.
pub async fn require_h3_client() -> Result<bool> {
    Ok(crate::require_tool("python3") && crate::bins::require_python_module("aioquic").await?)
}

/// Opens one QUIC connection to `addr` with SNI `name` (also the `:authority`), sends
/// `requests` on it in order and returns what came back.
pub async fn h3_fetch(
    addr: SocketAddr,
    name: &str,
    requests: &[H3Request],
) -> Result<H3Connection> {
    let requests = serde_json::to_string(requests)?;
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("python3")
            .arg(h3_client_script())
            .arg(addr.to_string())
            .arg(name)
            .arg(&requests)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("h3_client.py did not finish within 30 s")?
    .context("run h3_client.py")?;
    ensure!(
        output.status.success(),
        "h3_client.py {addr} {name}: {}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let raw: RawConnection =
        serde_json::from_slice(&output.stdout).context("h3_client.py printed no JSON")?;
    let responses = raw
        .responses
        .into_iter()
        .map(|r| {
            Ok(H3Response {
                status: r.status,
                headers: r.headers,
                body: base64::engine::general_purpose::STANDARD
                    .decode(r.body_b64)
                    .context("body_b64")?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(H3Connection {
        alpn: raw.alpn,
        certificate_sha256: raw.certificate_sha256,
        responses,
    })
}
