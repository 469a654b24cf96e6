//! A state import far larger than one etcd transaction and one gRPC message: 10,000 sites with
//! three aliases each, 200 apps and 300 imported certificates (about 5 MiB of JSON), exported from a file-store node
//! and imported into a control on an etcd with its default limits (`--max-txn-ops` 128, 1.5 MiB
//! requests), through the streaming calls `stk state get/set` use. An edge following that etcd
//! never serves a half-written state: while each import is written, a probe alternately asks it
//! for the previous state's site and the new one's, and never finds neither. A late failure
//! (a record etcd refuses, found after several batches were written) leaves the previous state
//! serving and in the store, and says what failed. An import interrupted for good (its marker
//! left behind) keeps edges on the previous state and refuses other writes, until the next
//! import takes over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use statiko_common::crypto::{self, SecretBox};
use statiko_common::model::{CertificateKind, CertificateRecord};
use statiko_proto::v1::{
    StreamExportStateRequest, StreamImportStateRequest, StreamImportStateResponse,
};
use statiko_tests::fixtures::{self, cert_pair, site, upload_app};
use statiko_tests::{
    Api, Control, ControlOptions, Edge, EdgeOptions, Etcd, OutputExt, StateStore,
    TEST_SECRETS_ENCRYPTION_KEY, https_get_unverified, require_tool, secs, wait_until,
};

use crate::control_common::list_sites;

const SITES: usize = 10_000;
const APPS: usize = 200;
const CERTIFICATES: usize = 300;
/// The page `fixtures::site_bundle("web@1")` serves at `/`.
const PAGE: &str = "<!doctype html><title>web@1</title><h1>web@1</h1>\n";
const OLD_SITE: &str = "old.example.test";

fn domain(i: usize) -> String {
    format!("site-{i:05}.customers.example.test")
}

fn aliases(i: usize) -> Vec<String> {
    ["www", "shop", "blog"]
        .iter()
        .map(|prefix| format!("{prefix}.{}", domain(i)))
        .collect()
}

async fn export(api: &Api) -> Result<Vec<u8>> {
    let mut stream = api
        .state()
        .stream_export_state(StreamExportStateRequest {})
        .await?
        .into_inner();
    let mut document = Vec::new();
    while let Some(message) = stream.message().await? {
        document.extend_from_slice(&message.chunk);
    }
    Ok(document)
}

async fn import(api: &Api, document: &[u8]) -> Result<StreamImportStateResponse, tonic::Status> {
    let chunks: Vec<StreamImportStateRequest> = document
        .chunks(1 << 20)
        .map(|chunk| StreamImportStateRequest {
            chunk: chunk.to_vec(),
        })
        .collect();
    Ok(api
        .state()
        .stream_import_state(futures::stream::iter(chunks))
        .await?
        .into_inner())
}

/// The source node's document: its app, plus certificates, apps and sites written into it as
/// one document (10,000 `CreateSite` and 300 `ImportCertificate` calls would mostly measure
/// the file store's write-per-call). Every site presents an imported certificate (shared by
/// every 300th site), so the edge makes no self-signed certificate for any.
async fn source_document(source: &Control) -> Result<Vec<u8>> {
    let admin = source.admin().await?;
    upload_app(&admin, "web", "1").await?;
    let mut document: Value = serde_json::from_slice(&export(&admin).await?)?;
    let secrets = SecretBox::from_base64(TEST_SECRETS_ENCRYPTION_KEY)?;
    let mut certificates = Vec::new();
    for i in 0..CERTIFICATES {
        let wildcard = format!("*.{}", domain(i));
        let pair = cert_pair(&[&domain(i), &wildcard])?;
        let parsed = crypto::parse_certificate_and_key(&pair.cert_pem, &pair.key_pem)?;
        certificates.push(CertificateRecord::new(
            format!("cert-{i:03}"),
            CertificateKind::Imported,
            parsed,
            secrets.seal(pair.key_pem.as_bytes()),
            None,
            1,
        ));
    }
    document["certificates"] = serde_json::to_value(certificates)?;
    let web = document["apps"][0].clone();
    document["apps"] = (0..APPS)
        .map(|i| {
            let mut app = web.clone();
            app["name"] = json!(format!("app-{i:03}"));
            app
        })
        .collect();
    document["sites"] = (0..SITES)
        .map(|i| {
            json!({
                "domain": domain(i),
                "aliases": aliases(i),
                "tls": {"type": "imported", "certificate": format!("cert-{:03}", i % CERTIFICATES)},
                "app": {"name": format!("app-{:03}", i % APPS), "version": "1"},
                "createdAt": 1,
                "updatedAt": 1,
                "deployedAt": 1,
            })
        })
        .collect();
    import(&admin, &serde_json::to_vec(&document)?).await?;
    export(&admin).await
}

/// Asks the edge, over and over until stopped, for the old site's page and then the new one's.
/// A switch between the two requests can only show both; a half-written state (the old site
/// removed, the new one not yet there) shows neither, which is recorded.
fn probe(https: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut seen_neither = Vec::new();
        let serves = async |host: &str| {
            https_get_unverified(https, host, "/", &[])
                .await
                .is_ok_and(|(response, _)| response.status == 200 && response.text() == PAGE)
        };
        while !stop.load(Ordering::Relaxed) {
            let old = serves(OLD_SITE).await;
            let new = serves(&domain(SITES - 1)).await;
            if !old && !new {
                seen_neither.push(format!("at {:?}", Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen_neither
    })
}

#[tokio::test]
async fn ten_thousand_sites_import_into_a_default_etcd() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let source = Control::start(ControlOptions::default()).await?;
    let document = source_document(&source).await?;
    // Larger than gRPC's default 4 MiB message, which control enforces on requests.
    ensure!(
        document.len() > 4 << 20,
        "the document is only {} bytes",
        document.len()
    );

    // The target: a default etcd, a control sharing the source's bundles, one edge serving the
    // previous state.
    let etcd = Etcd::start().await?;
    let target = Control::start(
        ControlOptions::default()
            .store(StateStore::etcd(&etcd))
            .config(json!({"repo": {"local": {"path": source.repo_dir()}}})),
    )
    .await?;
    let admin = target.admin().await?;
    admin.sites().create_site(site(OLD_SITE, &[])).await?;
    upload_app(&admin, "web", "1").await?;
    fixtures::deploy(&admin, OLD_SITE, "web", "1", false, secs(10)).await?;
    let edge = Edge::start(
        EdgeOptions::new("edge-0", StateStore::etcd(&etcd), &source.repo_dir())
            .config(json!({"disallowLeadership": true})),
    )
    .await?;
    wait_until(secs(20), async || {
        anyhow::Ok(edge.https_get(OLD_SITE, "/").await?.text() == PAGE)
    })
    .await?;

    // A late failure: a certificate record larger than etcd accepts, written after the apps
    // and the other certificates.
    let mut failing: Value = serde_json::from_slice(&document)?;
    let mut huge = failing["certificates"][0].clone();
    huge["name"] = json!("zz-huge");
    huge["certificatePem"] = json!(format!(
        "{}\n{}",
        huge["certificatePem"].as_str().unwrap_or_default(),
        "#".repeat(3 << 20)
    ));
    failing["certificates"]
        .as_array_mut()
        .context("certificates")?
        .push(huge);
    let stop = Arc::new(AtomicBool::new(false));
    let watching = probe(edge.addrs().https, stop.clone());
    let refused = import(&admin, &serde_json::to_vec(&failing)?).await;
    let status = refused.expect_err("etcd cannot take the huge record");
    ensure!(
        status.message().contains("certificates/zz-huge")
            && status.message().contains("previous state is in place"),
        "{status:?}"
    );
    // Nothing of it is in the store, and the edge still serves the previous state.
    let domains: Vec<String> = list_sites(&admin)
        .await?
        .into_iter()
        .map(|s| s.domain)
        .collect();
    assert_eq!(domains, [OLD_SITE]);
    assert_eq!(edge.https_get(OLD_SITE, "/").await?.text(), PAGE);
    ensure!(edge.https_get(&domain(0), "/").await?.status != 200);
    // The marker is gone: ordinary writes work again.
    admin
        .sites()
        .create_site(site("after-failure.example.test", &[]))
        .await?;

    // The real import, through `stk state set` (streamed), switching the edge in one step.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("state.json");
    std::fs::write(&file, &document)?;
    let output = target
        .stk([
            "--output".as_ref(),
            "json".as_ref(),
            "state".as_ref(),
            "set".as_ref(),
            "-f".as_ref(),
            file.as_os_str(),
        ])
        .await?;
    output.assert_success();
    let imported: Value = serde_json::from_str(&output.stdout_text())?;
    assert_eq!(imported["sites"], SITES);
    assert_eq!(imported["apps"], APPS);
    assert_eq!(imported["certificates"], CERTIFICATES);
    let revision = imported["revision"].as_i64().context("revision")?;
    wait_until(secs(60), async || {
        let status = edge.status().await?;
        anyhow::Ok(
            status["node"]["appliedRevision"]
                .as_i64()
                .is_some_and(|applied| applied >= revision),
        )
    })
    .await
    .with_context(|| edge.log_tail())?;
    stop.store(true, Ordering::Relaxed);
    let neither = watching.await?;
    ensure!(
        neither.is_empty(),
        "the edge served neither state {} time(s)",
        neither.len()
    );

    for host in [domain(0), domain(5_000), domain(SITES - 1)] {
        let response = edge.https_get(&host, "/").await?;
        assert_eq!(response.status, 200, "{host}");
        assert_eq!(response.text(), PAGE, "{host}");
    }
    // An alias redirects to its site's primary domain.
    let alias = edge.https_get(&aliases(5_000)[1], "/").await?;
    assert_eq!(alias.status, 301);
    ensure!(
        alias
            .header("location")
            .is_some_and(|location| location.contains(&domain(5_000))),
        "{:?}",
        alias.headers
    );
    ensure!(edge.https_get(OLD_SITE, "/").await?.status != 200);
    // The target now exports what the source exported.
    let exported: Value = serde_json::from_slice(&export(&admin).await?)?;
    let original: Value = serde_json::from_slice(&document)?;
    assert_eq!(exported["sites"], original["sites"]);
    assert_eq!(exported["apps"], original["apps"]);
    assert_eq!(exported["certificates"], original["certificates"]);
    Ok(())
}

#[tokio::test]
async fn an_interrupted_import_holds_edges_and_writes_until_the_next_import() -> Result<()> {
    statiko_tests::init();
    if !require_tool("etcd") {
        return Ok(());
    }
    let etcd = Etcd::start().await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let admin = control.admin().await?;
    admin.sites().create_site(site("a.test", &[])).await?;
    upload_app(&admin, "web", "1").await?;
    fixtures::deploy(&admin, "a.test", "web", "1", false, secs(10)).await?;
    let edge = Edge::start(EdgeOptions::new(
        "edge-0",
        StateStore::etcd(&etcd),
        &control.repo_dir(),
    ))
    .await?;
    wait_until(secs(20), async || {
        anyhow::Ok(edge.https_get("a.test", "/").await?.text() == PAGE)
    })
    .await?;
    let before = export(&admin).await?;

    // An import that died after its first batches: the marker and a half-written record stay.
    let mut client = etcd.client().await?;
    client.put("/statiko/v1/meta/import", "{}", None).await?;
    let half: Value = json!({"domain": "half.test", "aliases": [], "tls": {"type": "selfSigned"}});
    client
        .put("/statiko/v1/sites/half.test", half.to_string(), None)
        .await?;
    // Other writes are refused, and so is an export of the half-written state.
    let refused = admin
        .sites()
        .create_site(site("b.test", &[]))
        .await
        .expect_err("a write while an import is unfinished");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    ensure!(refused.message().contains("state import"), "{refused:?}");
    let refused = admin
        .state()
        .stream_export_state(StreamExportStateRequest {})
        .await
        .map(|_| ())
        .expect_err("an export of a half-written state");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // The edge holds the previous state: the half-written site never appears.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(edge.https_get("a.test", "/").await?.text(), PAGE);
    assert_eq!(edge.https_get("half.test", "/").await?.status, 404);

    // The next import takes the marker over and writes its whole document.
    let mut document: Value = serde_json::from_slice(&before)?;
    document["sites"]
        .as_array_mut()
        .context("sites")?
        .push(json!({"domain": "d.test", "aliases": [], "tls": {"type": "selfSigned"}, "app": {"name": "web", "version": "1"}}));
    let imported = import(&admin, &serde_json::to_vec(&document)?).await?;
    assert_eq!(imported.sites, 2);
    wait_until(secs(20), async || {
        let status = edge.status().await?;
        // At least the import: the leader's certificates for the imported sites may follow
        // it at once, so the exact revision can pass between two polls.
        anyhow::Ok(
            status["node"]["appliedRevision"]
                .as_i64()
                .is_some_and(|applied| applied >= imported.revision),
        )
    })
    .await
    .with_context(|| edge.log_tail())?;
    assert_eq!(edge.https_get("d.test", "/").await?.text(), PAGE);
    assert_eq!(edge.https_get("a.test", "/").await?.text(), PAGE);
    assert_eq!(edge.https_get("half.test", "/").await?.status, 404);
    let domains: Vec<String> = list_sites(&admin)
        .await?
        .into_iter()
        .map(|s| s.domain)
        .collect();
    assert_eq!(domains, ["a.test", "d.test"]);
    admin.sites().create_site(site("b.test", &[])).await?;
    Ok(())
}
