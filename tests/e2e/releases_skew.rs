//! Skew protection and retained deployments on a real cluster (etcd, control, edges on
//! loopback):
//! - after a cutover, an old hashed asset missing from the live version is served from the
//!   deployment that was live before, with a `Statiko-Deployment` header naming it, on every
//!   edge; HTML (a page, a navigation) always comes from the live version;
//! - it 404s once the site's window has passed, when the window is turned off, and once the
//!   deployment is no longer retained (`edge.retainDeployments`, or over
//!   `edge.bundleDiskBudget`, which drops the bundle retired first);
//! - a window that is not a duration is refused naming the field, by stk and by the API;
//! - edges restarted (killed, and stopped cleanly) after a cutover still hold the retained
//!   bundles: a rollback is served by every edge with the old bundle gone from the repository.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use statiko_proto::v1::{CreateSiteRequest, DeleteSiteRequest, GetSiteRequest, UpdateSiteRequest};
use statiko_tests::cluster::Cluster;
use statiko_tests::fixtures::{self, Upload, assert_status};
use statiko_tests::{Api, Edge, OutputExt, https_get_unverified, require_tool, secs, wait_until};
use tonic::Code;

use crate::releases::{
    all_serve, deploy_atomic, digest_of, rollback_without_the_bundle, serving_v1,
};

const SITE: &str = "skew.test";
const HEADER: &str = "statiko-deployment";

/// The content-hashed script of `web@version`.
fn asset(version: &str) -> String {
    format!("/assets/app-{version}a2b3c4d.js")
}

/// The files of `web@version`: a page loading its hashed script, the script, and a page only
/// it has.
fn files(version: &str) -> Vec<(String, String)> {
    vec![
        (
            "index.html".to_owned(),
            format!(
                "<!doctype html><script src=\"{}\"></script><h1>web@{version}</h1>\n",
                asset(version)
            ),
        ),
        (
            asset(version)[1..].to_owned(),
            format!("console.log('web@{version}');\n"),
        ),
        (
            format!("only-{version}.html"),
            format!("<!doctype html><h1>only in web@{version}</h1>\n"),
        ),
    ]
}

/// `web@version` as a `.tar.gz`.
fn bundle(version: &str) -> Vec<u8> {
    let files = files(version);
    let entries: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(path, body)| (path.as_str(), body.as_bytes()))
        .collect();
    fixtures::tar_gz(&entries).expect("an in-memory tar.gz")
}

/// What one edge answers for `path`: status, body and the `Statiko-Deployment` header.
async fn get(
    edge: &Edge,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String, Option<String>)> {
    let (response, _) = https_get_unverified(edge.addrs().https, SITE, path, headers).await?;
    Ok((
        response.status.as_u16(),
        response.text(),
        response.header(HEADER).map(str::to_owned),
    ))
}

/// Every edge serves `path` from the retired deployment `id` (`web@version`).
async fn all_serve_retired(cluster: &Cluster, version: &str, id: &str) -> Result<()> {
    for edge in &cluster.edges {
        let answer = get(edge, &asset(version), &[]).await?;
        ensure!(
            answer
                == (
                    200,
                    format!("console.log('web@{version}');\n"),
                    Some(id.to_owned())
                ),
            "{}: {} from the retired deployment {id}: {answer:?}",
            edge.name(),
            asset(version)
        );
    }
    Ok(())
}

/// Every edge answers `path` with the live version's 404 (no deployment header), eventually.
async fn all_404(cluster: &Cluster, path: &str) -> Result<()> {
    for edge in &cluster.edges {
        wait_until(secs(15), async || {
            let answer = get(edge, path, &[]).await?;
            anyhow::Ok((answer.0 == 404 && answer.2.is_none()).then_some(()))
        })
        .await
        .with_context(|| format!("{}: {path} should be a 404", edge.name()))?;
    }
    Ok(())
}

/// Uploads web@`versions`, deploys web@1 then web@2, and checks that every edge serves web@1's
/// asset from the retired web@1; returns web@1's deployment id.
async fn upload_and_retire_v1(cluster: &Cluster, api: &Api, versions: &[&str]) -> Result<String> {
    for version in versions {
        Upload::new("web", version, bundle(version))
            .send(api)
            .await?;
    }
    let d1 = deploy(cluster, "1").await?;
    deploy(cluster, "2").await?;
    all_serve_retired(cluster, "1", &d1).await?;
    Ok(d1)
}

/// The id of the deployment `deploy_atomic` made live.
async fn deploy(cluster: &Cluster, version: &str) -> Result<String> {
    let response = deploy_atomic(cluster, SITE, version, true).await?;
    all_serve_page(cluster, version).await?;
    Ok(response.deployment.context("a deployment")?.id)
}

async fn all_serve_page(cluster: &Cluster, version: &str) -> Result<()> {
    for edge in &cluster.edges {
        let (status, body, header) = get(edge, "/", &[]).await?;
        ensure!(
            status == 200 && body.contains(&format!("web@{version}")) && header.is_none(),
            "{}: / should be the live web@{version}: {status} {body:?} {header:?}",
            edge.name()
        );
    }
    Ok(())
}

async fn update_window(cluster: &Cluster, window: &str) -> Result<()> {
    let cli = cluster
        .control
        .stk(["site", "update", SITE, "--skew-protection", window])
        .await?;
    cli.assert_success();
    Ok(())
}

#[tokio::test]
async fn skew_protection_serves_old_assets_within_the_window() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    // The live deployment and one more retained per site.
    let cluster = Cluster::start_with(2, |options| {
        options.config(json!({"edge": {"retainDeployments": 2}}))
    })
    .await?;
    cluster.settled().await?;
    let api = cluster.control.admin().await?;
    let created = api
        .sites()
        .create_site(fixtures::site(SITE, &[]))
        .await?
        .into_inner()
        .site
        .context("a site")?;
    let window = created.skew_protection.context("the window")?;
    assert_eq!(
        (window.seconds, window.nanos),
        (86_400, 0),
        "24 h by default"
    );
    // Within the (default) window: web@1's script, gone from web@2, is served from web@1.
    let d1 = upload_and_retire_v1(&cluster, &api, &["1", "2", "3", "4"]).await?;
    for edge in &cluster.edges {
        // The live version's files carry no header.
        let live = get(edge, &asset("2"), &[]).await?;
        ensure!(live.0 == 200 && live.2.is_none(), "{live:?}");
        // HTML is never served from an older deployment, nor is a navigation.
        let page = get(edge, "/only-1.html", &[]).await?;
        ensure!(page.0 == 404 && page.2.is_none(), "{page:?}");
        let navigation = get(edge, "/only-1", &[("accept", "text/html")]).await?;
        ensure!(
            navigation.0 == 404 && navigation.2.is_none(),
            "{navigation:?}"
        );
    }
    let site = api
        .sites()
        .get_site(GetSiteRequest {
            domain: SITE.into(),
        })
        .await?
        .into_inner()
        .site
        .context("a site")?;
    ensure!(!site.deployment_id.is_empty() && site.deployment_id != d1);

    // web@3 live: web@2 retained (served), web@1 no longer retained (404 despite the window).
    let d2 = site.deployment_id;
    deploy(&cluster, "3").await?;
    all_serve_retired(&cluster, "2", &d2).await?;
    all_404(&cluster, &asset("1")).await?;

    // Turned off: the live version's 404.
    update_window(&cluster, "off").await?;
    all_404(&cluster, &asset("2")).await?;

    // A 6 s window: web@3's script is served right after the next cutover, and 404s after it.
    update_window(&cluster, "6s").await?;
    let d3 = api
        .sites()
        .get_site(GetSiteRequest {
            domain: SITE.into(),
        })
        .await?
        .into_inner()
        .site
        .context("a site")?
        .deployment_id;
    let before = Instant::now();
    deploy(&cluster, "4").await?;
    all_serve_retired(&cluster, "3", &d3).await?;
    ensure!(
        before.elapsed() < Duration::from_secs(6),
        "the deploy and the checks took {:?}, longer than the window they check",
        before.elapsed()
    );
    let cutover = api
        .sites()
        .get_site(GetSiteRequest {
            domain: SITE.into(),
        })
        .await?
        .into_inner()
        .site
        .context("a site")?
        .deployed_at
        .context("deployed_at")?;
    all_404(&cluster, &asset("3")).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let cutover = cutover.seconds as f64 + f64::from(cutover.nanos) / 1e9;
    ensure!(
        now - cutover >= 6.0,
        "a 404 only {:.2}s after the cutover, inside the 6 s window",
        now - cutover
    );
    all_serve_page(&cluster, "4").await
}

#[tokio::test]
async fn a_window_that_is_not_a_duration_is_refused() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = Cluster::start(1).await?;
    let api = cluster.control.admin().await?;
    api.sites().create_site(fixtures::site(SITE, &[])).await?;

    let cli = cluster
        .control
        .stk(["site", "update", SITE, "--skew-protection", "soon"])
        .await?;
    assert_eq!(cli.status.code(), Some(64), "{}", cli.stderr_text());
    assert!(
        cli.stderr_text().contains("--skew-protection"),
        "{}",
        cli.stderr_text()
    );
    for (seconds, nanos) in [(-1, 0), (0, -5), (91 * 86_400, 0), (0, 2_000_000_000)] {
        let window = prost_types::Duration { seconds, nanos };
        assert_status(
            api.sites()
                .update_site(UpdateSiteRequest {
                    domain: SITE.into(),
                    skew_protection: Some(window),
                    ..UpdateSiteRequest::default()
                })
                .await,
            Code::InvalidArgument,
            &["skew_protection"],
        );
        assert_status(
            api.sites()
                .create_site(CreateSiteRequest {
                    skew_protection: Some(window),
                    ..fixtures::site("other.test", &[])
                })
                .await,
            Code::InvalidArgument,
            &["skew_protection"],
        );
    }

    // Good values round-trip; stk prints them.
    let cli = cluster
        .control
        .stk(["site", "update", SITE, "--skew-protection", "90m"])
        .await?;
    cli.assert_success();
    assert!(
        cli.stdout_text().contains("1h 30m"),
        "{}",
        cli.stdout_text()
    );
    let cli = cluster
        .control
        .stk([
            "--output",
            "json",
            "site",
            "update",
            SITE,
            "--skew-protection",
            "off",
        ])
        .await?;
    cli.assert_success();
    assert!(
        cli.stdout_text().contains("\"skew_protection\": \"off\""),
        "{}",
        cli.stdout_text()
    );
    Ok(())
}

#[tokio::test]
async fn restarted_edges_keep_retained_bundles_for_rollback() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let mut cluster = Cluster::start(3).await?;
    let leader = cluster.settled().await?;
    serving_v1(&cluster, "restart.test").await?;
    deploy_atomic(&cluster, "restart.test", "2", true).await?;
    all_serve(&cluster.edge_refs(), "restart.test", "2").await?;

    // Both followers restart after the cutover: one killed, one stopped cleanly.
    let followers: Vec<usize> = (0..3)
        .filter(|i| cluster.edges[*i].name() != leader)
        .collect();
    cluster.edges[followers[0]].kill().await?;
    cluster.edges[followers[0]].restart().await?;
    cluster.edges[followers[1]].terminate().await?;
    cluster.edges[followers[1]].restart().await?;
    cluster.settled().await?;
    all_serve(&cluster.edge_refs(), "restart.test", "2").await?;

    // An eviction pass on every edge (a bundle loses its last user) removes every staged bundle
    // not referenced: web@1's survives only where the restart took the retained ones back.
    let api = cluster.control.admin().await?;
    api.sites()
        .create_site(fixtures::site("other.test", &[]))
        .await?;
    deploy_atomic(&cluster, "other.test", "3", true).await?;
    api.sites()
        .delete_site(DeleteSiteRequest {
            domain: "other.test".into(),
        })
        .await?;
    let v1 = digest_of(&cluster, "1").await?;
    let v3 = digest_of(&cluster, "3").await?;
    for edge in &cluster.edges {
        let bundles = edge.dir().join("data/bundles");
        wait_until(secs(15), async || {
            anyhow::Ok((!bundles.join(v3.trim_start_matches("sha256:")).exists()).then_some(()))
        })
        .await
        .with_context(|| format!("{}: web@3 should be evicted", edge.name()))?;
        ensure!(
            bundles.join(v1.trim_start_matches("sha256:")).exists(),
            "{}: the retained web@1 was evicted\n{}",
            edge.name(),
            edge.log_tail()
        );
        ensure!(edge.dir().join("data/applied/retained.json").exists());
    }

    // web@1's bundle leaves the repository: only the edges' retained copies remain.
    rollback_without_the_bundle(&cluster, "restart.test", &v1).await?;
    Ok(())
}

#[tokio::test]
async fn the_disk_budget_bounds_retained_bundles() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    // Room for one retained bundle (its files' bytes: too small to be precompressed), not two.
    let one: usize = files("1").iter().map(|(_, body)| body.len()).sum();
    let cluster = Cluster::start_with(1, |options| {
        options.config(json!({"edge": {"retainDeployments": 3, "bundleDiskBudget": one}}))
    })
    .await?;
    cluster.settled().await?;
    let api = cluster.control.admin().await?;
    api.sites().create_site(fixtures::site(SITE, &[])).await?;
    upload_and_retire_v1(&cluster, &api, &["1", "2", "3"]).await?;
    deploy(&cluster, "3").await?;
    // web@2 fits; web@1, retired first, is dropped over the budget (live web@3 never counts).
    all_404(&cluster, &asset("1")).await?;
    let bundles = cluster.edges[0].dir().join("data/bundles");
    let v1 = digest_of(&cluster, "1").await?;
    wait_until(secs(15), async || {
        anyhow::Ok((!bundles.join(v1.trim_start_matches("sha256:")).exists()).then_some(()))
    })
    .await
    .context("web@1's bundle should leave the disk")?;
    let v2 = digest_of(&cluster, "2").await?;
    ensure!(bundles.join(v2.trim_start_matches("sha256:")).exists());
    ensure!(get(&cluster.edges[0], &asset("2"), &[]).await?.0 == 200);
    all_serve_page(&cluster, "3").await
}
