//! Loopback networking for tests: reserving a free port, and a tiny HTTP/1.1 client (plain or
//! TLS with a chosen SNI name and CA) for probing servers without a full HTTP client crate.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use statiko_common::tls_client::AcceptAnyServerCert;

/// A port on 127.0.0.1 that was free a moment ago: bound to `:0`, read back, released.
///
/// Racy by nature; callers that hand it to a server retry once with a new port on failure.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr().context("local address")?.port())
}

/// A buffered HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header value as a string, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// TLS settings for [`http_request`]: the SNI / verified name and the CA to trust (PEM).
#[derive(Debug, Clone, Copy)]
pub struct TlsTarget<'a> {
    /// Sent as SNI and checked against the certificate.
    pub server_name: &'a str,
    /// PEM of the CA (or self-signed certificate) to trust.
    pub ca_pem: &'a str,
}

/// Sends one HTTP/1.1 request to `addr` over a fresh connection and buffers the response.
///
/// `host` becomes the `Host` header; `tls` switches to HTTPS with the given SNI and CA.
pub async fn http_request(
    addr: SocketAddr,
    tls: Option<TlsTarget<'_>>,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<HttpResponse> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(body.into()))
        .context("build HTTP request")?;

    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    match tls {
        None => send(tcp, request).await,
        Some(target) => {
            let connector = tls_connector(target.ca_pem)?;
            let server_name = ServerName::try_from(target.server_name.to_owned())
                .with_context(|| format!("invalid TLS server name {:?}", target.server_name))?;
            let stream = connector
                .connect(server_name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {addr} as {}", target.server_name))?;
            send(stream, request).await
        }
    }
}

/// `GET http://{addr}{path}` with `Host: {host}`.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<HttpResponse> {
    http_request(addr, None, Method::GET, host, path, &[], Bytes::new()).await
}

async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<HttpResponse>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .context("send HTTP request")?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .context("read HTTP response body")?
        .to_bytes();
    driver.abort();
    Ok(HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn tls_connector(ca_pem: &str) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("parse CA PEM")?)
            .context("add CA certificate")?;
        added += 1;
    }
    if added == 0 {
        bail!("no certificate in the CA PEM");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("rustls protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `GET https://{server_name}{path}` at `addr` with SNI and `Host` set to `server_name`, without
/// verifying the certificate (edges serve self-signed certificates). Returns the response and
/// the DER of the leaf certificate the server presented.
pub async fn https_get_unverified(
    addr: SocketAddr,
    server_name: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(HttpResponse, Vec<u8>)> {
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(http::header::HOST, server_name);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::new()))
        .context("build HTTP request")?;
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let name = ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("invalid TLS server name {server_name:?}"))?;
    let stream = unverified_connector()
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr} as {server_name}"))?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default();
    Ok((send(stream, request).await?, leaf))
}

fn unverified_connector() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(&provider)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}
