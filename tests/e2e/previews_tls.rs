//! How previews get TLS, checked with a verifying TLS client on every edge:
//! - the site uses ACME: each preview host gets its own certificate by ACME HTTP-01 from the real
//!   ACME server (pebble), its one name the preview host, and the preview is served over HTTPS
//!   with it (chain and name verified against pebble's root);
//! - `previews.certificate` names an imported wildcard certificate for `*.<previews.domain>`:
//!   every preview presents it (verified against its CA), and the leader makes none of its own.

use anyhow::{Context, Result, ensure};
use http::Method;
use serde_json::json;
use statiko_common::crypto::{format_digest, sha256};
use statiko_common::model::{self, CertificateKind, CertificateRecord};
use statiko_proto::v1::{Deployment, ImportCertificateRequest, TlsType};
use statiko_tests::certs::{CertUsage, Pki};
use statiko_tests::client::Api;
use statiko_tests::cluster::Cluster;
use statiko_tests::fixtures::{self, site, tls};
use statiko_tests::net::{TlsTarget, http_request};
use statiko_tests::{Edge, Pebble, free_port, require_tool, secs, wait_until};

use crate::previews::{PREVIEWS, deploy_preview, preview_request, with_previews};

fn body(version: &str) -> String {
    format!("<!doctype html><title>web@{version}</title><h1>web@{version}</h1>\n")
}

/// Two edges with previews on (and `extra` in the control's config), a leader elected, `domain`
/// created with `tls`, `web@1` and `web@2` uploaded. `edge-0` answers HTTP on `http_port`.
async fn cluster(
    extra: serde_json::Value,
    edge_config: serde_json::Value,
    http_port: u16,
    domain: &str,
    tls_type: TlsType,
) -> Result<(Cluster, Api)> {
    let mut first = true;
    let cluster = Cluster::start_with_control(
        2,
        |o| with_previews(o).config(extra),
        |o| {
            let o = o.config(edge_config.clone());
            if std::mem::take(&mut first) {
                o.config(json!({"edge": {"http": format!("127.0.0.1:{http_port}")}}))
            } else {
                o
            }
        },
    )
    .await?;
    let api = cluster.control.admin().await?;
    cluster.settled().await?;
    let mut request = site(domain, &[]);
    request.tls = Some(tls(tls_type));
    api.sites().create_site(request).await?;
    for version in ["1", "2"] {
        fixtures::upload_app(&api, "web", version).await?;
    }
    Ok((cluster, api))
}

/// A preview of `web@version` staged on both edges, and its host.
async fn preview(api: &Api, domain: &str, version: &str) -> Result<(Deployment, String)> {
    let deployment = deploy_preview(api, preview_request(domain, version)).await?;
    let host = deployment.preview.as_ref().context("preview")?.host.clone();
    Ok((deployment, host))
}

/// `edge` serves `host` over HTTPS verified against `ca_pem` (chain and name) with `web@version`,
/// presenting the certificate whose SHA-256 is `fingerprint`.
async fn served_verified(
    edge: &Edge,
    host: &str,
    ca_pem: &str,
    version: &str,
    fingerprint: &str,
) -> Result<()> {
    let target = TlsTarget {
        server_name: host,
        ca_pem,
    };
    let response = http_request(
        edge.addrs().https,
        Some(target),
        Method::GET,
        host,
        "/",
        &[],
        Vec::new(),
    )
    .await?;
    ensure!(
        response.status == 200 && response.text() == body(version),
        "{} answered {} {:?}",
        edge.name(),
        response.status,
        response.text()
    );
    ensure!(response.header("x-robots-tag") == Some("noindex"));
    let (_, leaf) = edge.https_get_with(host, "/", &[]).await?;
    ensure!(
        format_digest(&sha256(&leaf)) == fingerprint,
        "{} presents another certificate for {host}",
        edge.name()
    );
    Ok(())
}

async fn certificate(cluster: &Cluster, name: &str) -> Result<Option<CertificateRecord>> {
    let mut client = cluster.etcd.client().await?;
    let response = client
        .get(format!("/statiko/v1/certificates/{name}"), None)
        .await?;
    Ok(match response.kvs().first() {
        Some(kv) => Some(model::decode(kv.value())?),
        None => None,
    })
}

#[tokio::test]
async fn an_acme_site_gets_an_acme_certificate_per_preview_host() -> Result<()> {
    statiko_tests::init();
    if !(require_tool("etcd") && require_tool("pebble") && require_tool("pebble-challtestsrv")) {
        return Ok(());
    }
    let validation_port = free_port()?;
    let pebble = Pebble::start(validation_port).await?;
    let acme = json!({"acme": {
        "directory": pebble.directory_url(),
        "caBundle": pebble.ca_bundle(),
        "email": "ops@statiko.test",
    }});
    let domain = "shop.statiko.test";
    let (cluster, api) = cluster(json!({}), acme, validation_port, domain, TlsType::Acme).await?;
    let (first, host) = preview(&api, domain, "2").await?;
    ensure!(
        host == format!("{}--shop-statiko-test.{PREVIEWS}", first.id),
        "{host}"
    );

    // The leader's ACME certificate for exactly the preview host, issued by pebble.
    let name = model::leader_certificate_name(CertificateKind::Acme, &host);
    let record = wait_until(secs(60), async || certificate(&cluster, &name).await)
        .await
        .with_context(|| format!("no ACME certificate for {host}\n{}", pebble.log_tail()))?;
    ensure!(
        record.domains == std::slice::from_ref(&host),
        "{:?}",
        record.domains
    );
    let root = pebble.issuing_root().await?;
    for edge in &cluster.edges {
        let leaf = wait_until(secs(30), async || {
            pebble.verify(edge.addrs().https, &host).await.ok()
        })
        .await
        .with_context(|| format!("{} presents no pebble certificate for {host}", edge.name()))?;
        ensure!(format_digest(&sha256(&leaf)) == record.fingerprint);
        served_verified(edge, &host, &root, "2", &record.fingerprint).await?;
    }
    // A second preview: a certificate of its own, the first one's kept.
    let (_, other) = preview(&api, domain, "1").await?;
    let other_name = model::leader_certificate_name(CertificateKind::Acme, &other);
    let other_record = wait_until(secs(60), async || certificate(&cluster, &other_name).await)
        .await
        .with_context(|| format!("no ACME certificate for {other}"))?;
    ensure!(other_record.domains == std::slice::from_ref(&other));
    for edge in &cluster.edges {
        wait_until(secs(30), async || {
            pebble.verify(edge.addrs().https, &other).await.ok()
        })
        .await?;
        served_verified(edge, &other, &root, "1", &other_record.fingerprint).await?;
        served_verified(edge, &host, &root, "2", &record.fingerprint).await?;
    }
    Ok(())
}

#[tokio::test]
async fn every_preview_presents_the_imported_wildcard_certificate() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let pki = Pki::new()?;
    let wildcard = pki.issue("wildcard", &[&format!("*.{PREVIEWS}")], CertUsage::Server)?;
    let config = json!({"previews": {"certificate": "previews-wildcard"}});
    let domain = "docs.statiko.test";
    let (cluster, api) =
        cluster(config, json!({}), free_port()?, domain, TlsType::SelfSigned).await?;
    let imported = api
        .certificates()
        .import_certificate(ImportCertificateRequest {
            name: "previews-wildcard".into(),
            certificate_pem: wildcard.cert_pem.clone(),
            key_pem: wildcard.key_pem.clone(),
            ..ImportCertificateRequest::default()
        })
        .await?
        .into_inner()
        .certificate
        .context("certificate")?;
    let stored = certificate(&cluster, &imported.name)
        .await?
        .context("the imported record")?;

    let mut hosts = Vec::new();
    for version in ["1", "2"] {
        let (_, host) = preview(&api, domain, version).await?;
        hosts.push((host, version));
    }
    for edge in &cluster.edges {
        for (host, version) in &hosts {
            wait_until(secs(20), async || {
                served_verified(edge, host, pki.ca_pem(), version, &stored.fingerprint).await
            })
            .await
            .with_context(|| format!("{}: {host} with the wildcard", edge.name()))?;
        }
    }
    // The wildcard serves them: the leader makes no certificate of its own for a preview host.
    for (host, _) in &hosts {
        for kind in [CertificateKind::SelfSigned, CertificateKind::Acme] {
            let name = model::leader_certificate_name(kind, host);
            ensure!(
                certificate(&cluster, &name).await?.is_none(),
                "the leader made {name}"
            );
        }
    }
    Ok(())
}
