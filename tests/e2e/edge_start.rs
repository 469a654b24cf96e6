//! Serve first, ask the store later: an edge restarted while etcd cannot answer serves its
//! persisted state within a second of starting, whether etcd is frozen (SIGSTOP: connections
//! are accepted and then nothing comes back) or the edge's packets to etcd are dropped (its
//! proxy blackholes the link). The edges use a 10 s store timeout, the default, so an edge
//! that waited on the store before serving would fail by far.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use statiko_tests::cluster::{Cluster, assert_converged_at};
use statiko_tests::fixtures;
use statiko_tests::{Edge, patience, require_tool, secs, wait_until};

/// The page `fixtures::site_bundle("web@1")` serves at `/`.
const PAGE: &str = "<!doctype html><title>web@1</title><h1>web@1</h1>\n";

/// Kills `edge`, starts it again, and returns how long after the start its first HTTPS
/// response for `a.test` came (it must be the deployed page).
async fn restart_and_time_first_response(edge: &mut Edge) -> Result<Duration> {
    edge.kill().await?;
    let started = Instant::now();
    edge.restart().await?;
    loop {
        if let Ok(response) = edge.https_get("a.test", "/").await {
            ensure!(
                response.status == 200 && response.text() == PAGE,
                "the restarted edge served {} {:?}\n{}",
                response.status,
                response.text(),
                edge.log_tail()
            );
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < secs(15),
            "no response at all\n{}",
            edge.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the edge has saved a state at least at `revision` to its data dir.
async fn persisted(edge: &Edge, revision: i64) -> Result<()> {
    let path = edge.dir().join("data/applied/desired.json");
    wait_until(secs(10), async || {
        let bytes = std::fs::read(&path)?;
        let saved: serde_json::Value = serde_json::from_slice(&bytes)?;
        anyhow::Ok(saved["revision"].as_i64().unwrap_or_default() >= revision)
    })
    .await
    .with_context(|| format!("{} did not persist revision {revision}", edge.name()))
}

#[tokio::test]
async fn restarted_edge_serves_within_a_second_while_etcd_cannot_answer() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let mut cluster = Cluster::start_with(2, |options| {
        options.config(json!({"state": {"etcd": {"timeout": 10_000}}}))
    })
    .await?;
    let api = cluster.control.admin().await?;
    api.sites()
        .create_site(fixtures::site("a.test", &[]))
        .await?;
    fixtures::upload_app(&api, "web", "1").await?;
    let deployed = fixtures::deploy(&api, "a.test", "web", "1", true, secs(20)).await?;
    assert_converged_at(&cluster.edge_refs(), &["a.test"], deployed.revision)
        .await
        .with_context(|| cluster.logs())?;
    for edge in &cluster.edges {
        persisted(edge, deployed.revision).await?;
    }
    let limit = patience(Duration::from_secs(1));

    // etcd frozen: the restarted edge's store calls hang until their timeout.
    cluster.etcd.freeze().await?;
    let frozen = restart_and_time_first_response(&mut cluster.edges[0]).await;
    cluster.etcd.thaw().await?;
    let frozen = frozen?;
    ensure!(
        frozen < limit,
        "first response {frozen:?} after start with etcd frozen\n{}",
        cluster.edges[0].log_tail()
    );

    // The edge's packets to etcd dropped: the proxy accepts and forwards nothing.
    cluster.proxies[1].cut();
    let dropped = restart_and_time_first_response(&mut cluster.edges[1]).await;
    cluster.proxies[1].heal();
    let dropped = dropped?;
    ensure!(
        dropped < limit,
        "first response {dropped:?} after start with etcd unreachable\n{}",
        cluster.edges[1].log_tail()
    );

    // Both rejoin: the store answers again, and every edge agrees on the deployed state.
    assert_converged_at(&cluster.edge_refs(), &["a.test"], deployed.revision)
        .await
        .with_context(|| cluster.logs())?;
    Ok(())
}
