//! The edge against a real cluster: etcd, control and three `statiko-edge` processes. A deploy
//! reaches every edge; a redeploy under load fails no request and never mixes versions; with
//! etcd gone every edge keeps serving (also after a restart) and catches up when it returns; a
//! bad bundle is refused with a reason in the node status while the previous version serves.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, Result, ensure};
use statiko_tests::cluster::Cluster;
use statiko_tests::fixtures::{self, digest_of, site, site_bundle};
use statiko_tests::{Control, Edge, Etcd, require_tool, secs, wait_until};

/// etcd, a control and `n` edges (the shared [`Cluster`]), every edge registered.
pub(crate) async fn cluster(n: usize) -> Result<Cluster> {
    let cluster = Cluster::start(n).await?;
    cluster.wait_registered().await?;
    Ok(cluster)
}

/// The page `site_bundle(tag)` serves at `/`.
pub(crate) fn page(tag: &str) -> String {
    format!("<!doctype html><title>{tag}</title><h1>{tag}</h1>\n")
}

pub(crate) async fn body(edge: &Edge, host: &str) -> Result<String> {
    let response = edge.https_get(host, "/").await?;
    ensure!(
        response.status == 200,
        "status {} from {}",
        response.status,
        edge.name()
    );
    Ok(response.text())
}

#[tokio::test]
async fn deploy_reaches_every_edge() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = cluster(3).await?;
    let api = cluster.control.admin().await?;
    api.sites()
        .create_site(site("example.test", &["www.example.test"]))
        .await?;
    fixtures::upload_app(&api, "web", "1.0.0").await?;
    let deployed = cluster.deploy("example.test", "web", "1.0.0", true).await?;
    let mut ready = deployed.ready_nodes.clone();
    ready.sort();
    assert_eq!(ready, ["edge-0", "edge-1", "edge-2"]);

    for edge in &cluster.edges {
        assert_eq!(body(edge, "example.test").await?, page("web@1.0.0"));
        // The alias redirects to the primary domain, HTTP redirects to HTTPS.
        let alias = edge.https_get("www.example.test", "/a?b=c").await?;
        assert_eq!(alias.status, 301);
        let location = alias.header("location").unwrap_or_default();
        assert!(
            location.starts_with("https://example.test") && location.ends_with("/a?b=c"),
            "{location}"
        );
        let plain = edge.http_get("example.test", "/x?y=1").await?;
        assert_eq!(plain.status, 301);
        assert!(
            plain
                .header("location")
                .unwrap_or_default()
                .starts_with("https://example.test")
        );
        let unknown = edge.https_get("unknown.test", "/").await?;
        assert_eq!(unknown.status, 404);
        assert!(!unknown.text().contains("web@1.0.0"));
    }

    // `stk cluster status` shows every edge with the applied revision and what it serves.
    let json = cluster.control.stk_json(["cluster", "status"]).await?;
    let nodes = json["nodes"].as_array().context("nodes array")?;
    assert_eq!(nodes.len(), 3, "{json}");
    for node in nodes {
        assert!(
            node["applied_revision"].as_i64().unwrap_or_default() >= deployed.revision,
            "{node}"
        );
        assert_eq!(node["sites"][0]["app"]["version"], "1.0.0", "{node}");
    }
    Ok(())
}

#[tokio::test]
async fn redeploy_under_load_fails_no_request() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = cluster(3).await?;
    let api = cluster.control.admin().await?;
    api.sites().create_site(site("load.test", &[])).await?;
    let versions = ["1", "2", "3"];
    for version in versions {
        fixtures::upload_app(&api, "web", version).await?;
    }
    cluster.deploy("load.test", "web", "1", true).await?;

    let pages: Vec<String> = versions.iter().map(|v| page(&format!("web@{v}"))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for edge in &cluster.edges {
        let addr = edge.addrs().https;
        let (stop, requests, pages) = (stop.clone(), requests.clone(), pages.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match statiko_tests::https_get_unverified(addr, "load.test", "/", &[]).await {
                    Ok((response, _))
                        if response.status == 200 && pages.contains(&response.text()) => {}
                    Ok((response, _)) => {
                        failures.push(format!("{} {:?}", response.status, response.text()))
                    }
                    Err(err) => failures.push(format!("{err:#}")),
                }
                requests.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    for version in ["2", "3", "1", "3"] {
        cluster.deploy("load.test", "web", version, true).await?;
        for edge in &cluster.edges {
            assert_eq!(
                body(edge, "load.test").await?,
                page(&format!("web@{version}"))
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await?);
    }
    let total = requests.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(total >= 30, "only {total} requests were made");
    Ok(())
}

#[tokio::test]
async fn edges_keep_serving_without_etcd_and_catch_up() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let mut cluster = cluster(3).await?;
    let api = cluster.control.admin().await?;
    api.sites().create_site(site("outage.test", &[])).await?;
    fixtures::upload_app(&api, "web", "1").await?;
    fixtures::upload_app(&api, "web", "2").await?;
    cluster.deploy("outage.test", "web", "1", true).await?;

    cluster.etcd.stop().await?;
    for edge in &cluster.edges {
        for _ in 0..5 {
            assert_eq!(body(edge, "outage.test").await?, page("web@1"));
        }
    }
    // An edge restarted while etcd is down serves its last state from its data dir.
    cluster.edges[0].restart().await?;
    assert_eq!(body(&cluster.edges[0], "outage.test").await?, page("web@1"));
    let refused = cluster.deploy("outage.test", "web", "2", false).await;
    let err = refused.expect_err("a deploy without etcd must fail");
    let status = err
        .downcast_ref::<tonic::Status>()
        .context("a gRPC status")?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    cluster.etcd.restart().await?;
    let deployed = wait_until(secs(30), async || {
        cluster
            .deploy("outage.test", "web", "2", true)
            .await
            .map(Some)
    })
    .await?;
    assert_eq!(deployed.ready_nodes.len(), 3, "{:?}", deployed.ready_nodes);
    for edge in &cluster.edges {
        assert_eq!(body(edge, "outage.test").await?, page("web@2"));
    }
    Ok(())
}

/// A raw ustar entry, so the test can write what a safe archiver refuses to (`..`, links).
fn raw_tar_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[148..156].copy_from_slice(b"        ");
    header[156] = kind;
    header[157..157 + link.len()].copy_from_slice(link.as_bytes());
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("in-memory gzip");
    encoder.finish().expect("in-memory gzip")
}

fn malicious(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, kind, link, data) in entries {
        raw_tar_entry(&mut tar, name, *kind, link, data);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    gzip(&tar)
}

/// Puts a bundle into the repository and its app record into etcd directly, as a compromised
/// repository or an older control plane could, bypassing the control plane's own checks.
/// `format` is the record's (`tar-gz`, `tar-zst`, `zip`).
pub(crate) async fn plant(
    etcd: &Etcd,
    control: &Control,
    name: &str,
    version: &str,
    format: &str,
    bytes: &[u8],
    claimed_digest: &str,
) -> Result<()> {
    let hex = claimed_digest.trim_start_matches("sha256:");
    let path = control.repo_dir().join("bundles/sha256").join(hex);
    std::fs::create_dir_all(path.parent().context("bundle dir")?)?;
    std::fs::write(&path, bytes)?;
    let record = serde_json::json!({
        "name": name, "version": version, "digest": claimed_digest,
        "size": bytes.len(), "format": format, "createdAt": 1,
    });
    let mut client = etcd.client().await?;
    client
        .put(
            format!("/statiko/v1/apps/{name}/{version}"),
            record.to_string(),
            None,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn bad_bundles_are_refused_and_the_previous_version_keeps_serving() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = cluster(1).await?;
    let edge = &cluster.edges[0];
    let api = cluster.control.admin().await?;
    api.sites().create_site(site("safe.test", &[])).await?;
    api.sites().create_site(site("other.test", &[])).await?;
    fixtures::upload_app(&api, "web", "1").await?;
    fixtures::upload_app(&api, "other", "1").await?;
    cluster.deploy("safe.test", "web", "1", true).await?;
    cluster.deploy("other.test", "other", "1", true).await?;

    let good = site_bundle("tampered");
    let bomb = {
        // More entries than `limits.maxBundleEntries` (100,000 by default): an entry bomb.
        let mut tar = Vec::new();
        for i in 0..200_001 {
            raw_tar_entry(&mut tar, &format!("f{i}"), b'0', "", b"");
        }
        tar.extend_from_slice(&[0u8; 1024]);
        gzip(&tar)
    };
    let cases: Vec<(&str, Vec<u8>, Option<String>, &str)> = vec![
        (
            "digest",
            good.clone(),
            Some(digest_of(b"something else")),
            "digest",
        ),
        (
            "traversal",
            malicious(&[("../escape.html", b'0', "", b"x")]),
            None,
            "escape.html",
        ),
        (
            "symlink",
            malicious(&[("index.html", b'2', "/etc/passwd", b"")]),
            None,
            "index.html",
        ),
        (
            "hardlink",
            malicious(&[
                ("a.html", b'0', "", b"a"),
                ("index.html", b'1', "a.html", b""),
            ]),
            None,
            "index.html",
        ),
        (
            "device",
            malicious(&[("index.html", b'3', "", b"")]),
            None,
            "index.html",
        ),
        ("bomb", bomb, None, "entries"),
    ];
    for (version, bytes, claimed, reason) in cases {
        let digest = claimed.unwrap_or_else(|| digest_of(&bytes));
        plant(
            &cluster.etcd,
            &cluster.control,
            "web",
            version,
            "tar-gz",
            &bytes,
            &digest,
        )
        .await?;
        cluster.deploy("safe.test", "web", version, false).await?;
        // The entry bomb is refused only after the edge has unpacked 100,000 entries: about
        // 10 s on a quiet 2-core machine, up to a minute on a loaded one.
        let error = wait_until(secs(90), async || {
            let served = edge.served("safe.test").await?;
            let current = format!("web@{version}");
            anyhow::Ok(served.filter(|(_, error)| error.contains(&current)))
        })
        .await
        .with_context(|| {
            format!(
                "case {version}: no staging error reported\n{}",
                edge.log_tail()
            )
        })?;
        assert_eq!(error.0, "web@1", "case {version}: served {error:?}");
        assert!(
            error.1.contains(reason),
            "case {version}: error {:?} should mention {reason:?}",
            error.1
        );
        assert_eq!(
            body(edge, "safe.test").await?,
            page("web@1"),
            "case {version}"
        );
        assert_eq!(
            body(edge, "other.test").await?,
            page("other@1"),
            "case {version}"
        );
        // Nothing from the archive ever lands outside the bundle.
        assert_eq!(
            edge.https_get("safe.test", "/escape.html").await?.status,
            404
        );
    }
    Ok(())
}

#[tokio::test]
async fn edge_status_and_readiness() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = cluster(1).await?;
    let edge = &cluster.edges[0];
    let ready = wait_until(secs(10), async || {
        let response = statiko_tests::http_get(edge.addrs().admin, "localhost", "/readyz").await?;
        anyhow::Ok(response.status == 200)
    })
    .await;
    assert!(ready.is_ok(), "/readyz never became ready");
    let health = statiko_tests::http_get(edge.addrs().admin, "localhost", "/healthz").await?;
    assert_eq!(health.status, 200);
    let status = edge.status().await?;
    assert_eq!(status["node"]["name"], "edge-0", "{status}");
    assert_eq!(status["storeConnected"], true, "{status}");
    Ok(())
}
