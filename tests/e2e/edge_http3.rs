//! HTTP/3 against real processes: etcd, control and edges, fetched by an independent client
//! (aioquic, `tests/h3_client.py`). Pages, a `_redirects` rule and a `_headers` block, a range
//! of a file streamed from disk, brotli and gzip variants, a 304, an unknown host and the
//! counters are the same over QUIC as over HTTPS; HTTPS responses advertise it with `Alt-Svc`,
//! and an edge with `edge.http3: false` neither listens on UDP nor advertises it. A replaced
//! certificate is presented to the next QUIC connection.

use std::io::Read as _;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use statiko_proto::v1::{CreateSiteRequest, ImportCertificateRequest};
use statiko_tests::fixtures::{Upload, cert_pair, deploy, sha256, site, tar_gz, tls_imported};
use statiko_tests::h3::{H3Request, h3_fetch, require_h3_client};
use statiko_tests::{
    Control, ControlOptions, Edge, EdgeOptions, Etcd, StateStore, require_tool, secs, wait_until,
};

const SITE: &str = "h3.statiko.test";

/// A bundle with a page, a compressible asset (precompressed at staging), a file above the
/// in-memory limit (streamed from disk), a `_redirects` rule and a `_headers` block.
fn bundle() -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let script: Vec<u8> = "function statiko() { return 'served over every protocol'; }\n"
        .repeat(400)
        .into_bytes();
    let data: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let bytes = tar_gz(&[
        (
            "index.html",
            b"<!doctype html><title>h3</title><h1>h3</h1>\n",
        ),
        ("assets/app.js", &script),
        ("data.bin", &data),
        ("_redirects", b"/old /index.html 301\n"),
        ("_headers", b"/assets/*\n  X-Served-By: statiko-h3-test\n"),
    ])?;
    Ok((bytes, script, data))
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

/// etcd, control and one edge with HTTP/3 on (the default); `None` (skip) without etcd or the
/// HTTP/3 client outside CI.
async fn start() -> Result<Option<(Etcd, Control, Edge)>> {
    statiko_tests::init();
    if !(require_tool("etcd") && require_h3_client().await?) {
        return Ok(None);
    }
    let etcd = Etcd::start().await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let edge = Edge::start(EdgeOptions::new(
        "edge-h3",
        StateStore::etcd(&etcd),
        &control.repo_dir(),
    ))
    .await?;
    Ok(Some((etcd, control, edge)))
}

#[tokio::test]
async fn http3_serves_what_https_serves_and_alt_svc_advertises_it() -> Result<()> {
    let Some((etcd, control, edge)) = start().await? else {
        return Ok(());
    };
    let tcp_only = Edge::start(
        EdgeOptions::new("edge-tcp", StateStore::etcd(&etcd), &control.repo_dir())
            .config(json!({"edge": {"http3": false}})),
    )
    .await?;
    let h3_addr = edge
        .addrs()
        .h3
        .context("the ready file has no h3 address")?;
    ensure!(
        h3_addr.port() == edge.addrs().https.port(),
        "HTTP/3 on {h3_addr}, HTTPS on {}",
        edge.addrs().https
    );
    ensure!(
        tcp_only.addrs().h3.is_none(),
        "edge.http3: false still listens on UDP"
    );

    let api = control.admin().await?;
    api.sites().create_site(site(SITE, &[])).await?;
    let (bytes, script, data) = bundle()?;
    Upload::new("web", "1.0.0", bytes).send(&api).await?;
    deploy(&api, SITE, "web", "1.0.0", true, secs(30)).await?;
    for e in [&edge, &tcp_only] {
        wait_until(secs(20), async || {
            anyhow::Ok(e.https_get(SITE, "/").await?.status == 200)
        })
        .await
        .with_context(|| format!("{} serves {SITE}\n{}", e.name(), e.log_tail()))?;
    }

    // Alt-Svc on HTTPS (TCP) responses, with the UDP port; none with http3 off.
    let https = edge.https_get(SITE, "/").await?;
    let expected = format!("h3=\":{}\"; ma=86400", h3_addr.port());
    ensure!(
        https.header("alt-svc") == Some(expected.as_str()),
        "Alt-Svc {:?}, want {expected:?}",
        https.header("alt-svc")
    );
    let https_404 = edge.https_get(SITE, "/missing").await?;
    ensure!(https_404.header("alt-svc").is_some(), "no Alt-Svc on a 404");
    let off = tcp_only.https_get(SITE, "/").await?;
    ensure!(
        off.header("alt-svc").is_none(),
        "edge.http3: false advertises {:?}",
        off.header("alt-svc")
    );

    let requests_before = edge.metric("statiko_edge_http3_requests_total").await?;
    let etag = https
        .header("etag")
        .context("no ETag over HTTPS")?
        .to_owned();
    let connection = h3_fetch(
        h3_addr,
        SITE,
        &[
            H3Request::get("/"),
            H3Request::get("/data.bin").header("range", "bytes=1000-1999"),
            H3Request::get("/data.bin"),
            H3Request::get("/assets/app.js").header("accept-encoding", "br"),
            H3Request::get("/assets/app.js").header("accept-encoding", "gzip"),
            H3Request::get("/assets/app.js"),
            H3Request::get("/").header("if-none-match", &etag),
            H3Request::get("/old?x=1"),
            H3Request::get("/missing"),
        ],
    )
    .await?;
    ensure!(
        connection.alpn.as_deref() == Some("h3"),
        "ALPN {:?}",
        connection.alpn
    );
    let r = &connection.responses;
    ensure!(r.len() == 9, "{} responses", r.len());

    ensure!(
        r[0].status == 200 && r[0].body == https.body,
        "GET / over h3: {}",
        r[0].status
    );
    ensure!(
        r[0].header("etag") == Some(etag.as_str()),
        "ETag differs over h3"
    );
    ensure!(
        r[0].header("alt-svc").is_none(),
        "Alt-Svc on an HTTP/3 response"
    );

    ensure!(r[1].status == 206, "range: {}", r[1].status);
    ensure!(
        r[1].header("content-range") == Some(format!("bytes 1000-1999/{}", data.len()).as_str()),
        "Content-Range {:?}",
        r[1].header("content-range")
    );
    ensure!(r[1].body == data[1000..2000], "range bytes differ");
    ensure!(
        r[2].status == 200 && r[2].body == data,
        "the 300 KiB file streamed from disk: {} ({} bytes)",
        r[2].status,
        r[2].body.len()
    );

    ensure!(
        r[3].status == 200 && r[3].header("content-encoding") == Some("br"),
        "br: {} {:?}",
        r[3].status,
        r[3].header("content-encoding")
    );
    ensure!(
        r[3].body.len() < script.len() / 4,
        "the brotli body is not compressed"
    );
    ensure!(
        r[3].header("vary") == Some("Accept-Encoding"),
        "Vary {:?}",
        r[3].header("vary")
    );
    ensure!(
        r[4].header("content-encoding") == Some("gzip") && gunzip(&r[4].body)? == script,
        "gzip variant"
    );
    ensure!(
        r[5].header("content-encoding").is_none() && r[5].body == script,
        "identity asset"
    );
    ensure!(
        r[5].header("x-served-by") == Some("statiko-h3-test"),
        "the _headers block is missing over h3"
    );

    ensure!(
        r[6].status == 304 && r[6].body.is_empty(),
        "If-None-Match: {}",
        r[6].status
    );
    ensure!(
        r[7].status == 301 && r[7].header("location") == Some("/index.html?x=1"),
        "_redirects: {} {:?}",
        r[7].status,
        r[7].header("location")
    );
    ensure!(r[8].status == 404, "missing: {}", r[8].status);

    // An unknown host over h3 is the same 404 as over HTTPS.
    let unknown = h3_fetch(h3_addr, "unknown.statiko.test", &[H3Request::get("/")]).await?;
    ensure!(
        unknown.responses[0].status == 404,
        "unknown host: {}",
        unknown.responses[0].status
    );

    // Counted: the requests, and the QUIC connections under listener="h3".
    let requests = edge.metric("statiko_edge_http3_requests_total").await? - requests_before;
    ensure!(requests >= 10.0, "http3 requests counted: {requests}");
    let accepted = edge
        .metric(r#"statiko_edge_connections_accepted_total{listener="h3"}"#)
        .await?;
    ensure!(accepted >= 2.0, "h3 connections counted: {accepted}");

    // SIGTERM: the QUIC listener stops with the TCP ones and the edge exits cleanly.
    let mut edge = edge;
    let exit = edge.terminate().await?;
    ensure!(
        exit.success(),
        "edge exit after HTTP/3 traffic: {exit}\n{}",
        edge.log_tail()
    );
    Ok(())
}

#[tokio::test]
async fn a_replaced_certificate_reaches_new_quic_connections() -> Result<()> {
    let Some((_etcd, control, edge)) = start().await? else {
        return Ok(());
    };
    let h3_addr = edge.addrs().h3.context("no h3 address")?;
    let api = control.admin().await?;
    let first = cert_pair(&[SITE])?;
    let import =
        |pair: &statiko_tests::fixtures::CertPair, replace: bool| ImportCertificateRequest {
            name: "h3".into(),
            certificate_pem: pair.cert_pem.clone(),
            key_pem: pair.key_pem.clone(),
            replace,
            ..ImportCertificateRequest::default()
        };
    let fingerprint = |pair: &statiko_tests::fixtures::CertPair| -> Result<String> {
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(pair.cert_pem.as_bytes())
            .map(|der: rustls_pki_types::CertificateDer<'static>| der.to_vec())?;
        Ok(hex(&sha256(&der)))
    };
    api.certificates()
        .import_certificate(import(&first, false))
        .await?;
    api.sites()
        .create_site(CreateSiteRequest {
            tls: Some(tls_imported("h3")),
            ..site(SITE, &[])
        })
        .await?;
    let want = fingerprint(&first)?;
    wait_until(secs(20), async || {
        let seen = h3_fetch(h3_addr, SITE, &[H3Request::get("/")]).await?;
        anyhow::Ok(seen.certificate_sha256.as_deref() == Some(want.as_str()))
    })
    .await
    .context("the imported certificate over QUIC")?;

    let second = cert_pair(&[SITE])?;
    api.certificates()
        .import_certificate(import(&second, true))
        .await?;
    let want = fingerprint(&second)?;
    wait_until(secs(20), async || {
        let seen = h3_fetch(h3_addr, SITE, &[H3Request::get("/")]).await?;
        anyhow::Ok(
            seen.certificate_sha256.as_deref() == Some(want.as_str())
                && seen.responses[0].status == 200,
        )
    })
    .await
    .with_context(|| format!("the replaced certificate over QUIC\n{}", edge.log_tail()))?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
