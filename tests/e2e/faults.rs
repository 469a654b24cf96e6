//! Fault scenarios on a real cluster (etcd, control, three edges; processes on loopback). Each
//! edge reaches etcd through its own cuttable proxy (`statiko_tests::TcpProxy`, see its module
//! for why a proxy is a faithful edge ↔ etcd partition). Every scenario ends with
//! `assert_converged`: every edge reports the same applied revision, at least the last write's,
//! and serves the same bytes for every site.
//!
//! - etcd stopped and restarted: edges keep serving, control answers UNAVAILABLE, then catch up.
//! - the leader edge killed: another edge leads; the killed one rejoins as a follower.
//! - one edge partitioned from etcd: it serves its last state, drops out of the node list, and
//!   catches up when healed.
//! - control killed in the middle of an upload: no partial bundle becomes visible.
//! - etcd compacted while an edge is partitioned: the edge reloads a snapshot when healed.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use statiko_proto::v1::{ListAppsRequest, UploadAppRequest};
use statiko_tests::cluster::{Cluster, Converged, assert_converged_at};
use statiko_tests::fixtures::{self, site};
use statiko_tests::{Edge, require_tool, secs, wait_until};

/// The page `fixtures::site_bundle("name@version")` serves at `/`.
fn page(name: &str, version: &str) -> String {
    format!("<!doctype html><title>{name}@{version}</title><h1>{name}@{version}</h1>\n")
}

/// Converges and checks the agreed state: at least `revision`, and `expected` pages per site.
async fn converged(
    cluster: &Cluster,
    edges: &[&Edge],
    revision: i64,
    expected: &[(&str, String)],
) -> Result<Converged> {
    let sites: Vec<&str> = expected.iter().map(|(site, _)| *site).collect();
    let agreed = assert_converged_at(edges, &sites, revision)
        .await
        .with_context(|| cluster.logs())?;
    for (site, page) in expected {
        assert_eq!(&agreed.page(site), page, "{site}");
    }
    Ok(agreed)
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// A cluster of three edges serving `web@1` on `a.test`, converged.
async fn three_edges_serving() -> Result<(Cluster, i64)> {
    let cluster = Cluster::start(3).await?;
    // Every edge has registered, so a deploy --wait waits for all three.
    wait_until(secs(20), async || {
        anyhow::Ok(cluster.listed_nodes().await? == names(&["edge-0", "edge-1", "edge-2"]))
    })
    .await?;
    let api = cluster.control.admin().await?;
    api.sites().create_site(site("a.test", &[])).await?;
    fixtures::upload_app(&api, "web", "1").await?;
    let deployed = cluster
        .deploy_within("a.test", "web", "1", true, secs(20))
        .await?;
    assert_eq!(deployed.ready_nodes.len(), 3, "{:?}", deployed.ready_nodes);
    converged(
        &cluster,
        &cluster.edge_refs(),
        deployed.revision,
        &[("a.test", page("web", "1"))],
    )
    .await?;
    Ok((cluster, deployed.revision))
}

#[tokio::test]
async fn etcd_stopped_and_restarted() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let (mut cluster, _) = three_edges_serving().await?;
    fixtures::upload_app(&cluster.control.admin().await?, "web", "2").await?;

    cluster.etcd.stop().await?;
    // Every edge keeps serving what it had, and they still agree.
    let during = converged(
        &cluster,
        &cluster.edge_refs(),
        0,
        &[("a.test", page("web", "1"))],
    )
    .await?;
    let refused = cluster
        .deploy_within("a.test", "web", "2", false, secs(20))
        .await;
    let status = refused
        .expect_err("a deploy without etcd must fail")
        .downcast::<tonic::Status>()
        .context("a gRPC status")?;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    cluster.etcd.restart().await?;
    let deployed = wait_until(secs(30), async || {
        cluster
            .deploy_within("a.test", "web", "2", true, secs(20))
            .await
            .map(Some)
    })
    .await?;
    let after = converged(
        &cluster,
        &cluster.edge_refs(),
        deployed.revision,
        &[("a.test", page("web", "2"))],
    )
    .await?;
    assert!(after.revision > during.revision);
    Ok(())
}

#[tokio::test]
async fn leader_killed_another_edge_leads() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let (mut cluster, _) = three_edges_serving().await?;
    let leader = wait_until(secs(20), async || {
        let leaders = cluster.leaders().await;
        (leaders.len() == 1).then(|| leaders[0].clone())
    })
    .await
    .with_context(|| format!("exactly one edge should lead\n{}", cluster.logs()))?;
    let index = cluster
        .edges
        .iter()
        .position(|edge| edge.name() == leader)
        .context("the leader is one of the edges")?;

    cluster.edges[index].kill().await?;
    // Another edge takes over once the dead leader's lease expires (edge.leaseTtl is 3 s in
    // the harness); there is never more than one leader among the live edges.
    let successor = wait_until(secs(30), async || {
        let leaders = cluster.leaders().await;
        (leaders.len() == 1 && leaders[0] != leader).then(|| leaders[0].clone())
    })
    .await
    .with_context(|| format!("no edge took over from {leader}\n{}", cluster.logs()))?;
    let live: Vec<&Edge> = cluster
        .edges
        .iter()
        .filter(|edge| edge.name() != leader)
        .collect();
    // The cluster still takes deploys while the old leader is dead (once its node record
    // expired, --wait waits for the two live edges only).
    fixtures::upload_app(&cluster.control.admin().await?, "web", "2").await?;
    let deployed = wait_until(secs(30), async || {
        cluster
            .deploy_within("a.test", "web", "2", true, secs(20))
            .await
            .map(Some)
    })
    .await?;
    converged(
        &cluster,
        &live,
        deployed.revision,
        &[("a.test", page("web", "2"))],
    )
    .await?;

    // The killed edge comes back as a follower and catches up.
    cluster.edges[index].restart().await?;
    converged(
        &cluster,
        &cluster.edge_refs(),
        deployed.revision,
        &[("a.test", page("web", "2"))],
    )
    .await?;
    wait_until(secs(20), async || {
        anyhow::Ok(cluster.listed_nodes().await? == names(&["edge-0", "edge-1", "edge-2"]))
    })
    .await?;
    let leaders = cluster.leaders().await;
    assert_eq!(leaders, [successor], "{}", cluster.logs());
    Ok(())
}

#[tokio::test]
async fn edge_partitioned_from_etcd_and_healed() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let (cluster, _) = three_edges_serving().await?;
    fixtures::upload_app(&cluster.control.admin().await?, "web", "2").await?;

    cluster.proxies[2].cut();
    let deployed = cluster
        .deploy_within("a.test", "web", "2", false, secs(20))
        .await?;
    let majority = [&cluster.edges[0], &cluster.edges[1]];
    converged(
        &cluster,
        &majority,
        deployed.revision,
        &[("a.test", page("web", "2"))],
    )
    .await?;
    // What edge-2 had applied when it was cut off (the upload may or may not have reached it).
    let before = cluster.edges[2].status().await?["node"]["appliedRevision"].clone();
    // The partitioned edge's node record expires with its lease...
    wait_until(secs(20), async || {
        anyhow::Ok(cluster.listed_nodes().await? == names(&["edge-0", "edge-1"]))
    })
    .await
    .context("edge-2's node record should expire while it is partitioned")?;
    // ...while it keeps serving its last state.
    let isolated = &cluster.edges[2];
    for _ in 0..5 {
        let response = isolated.https_get("a.test", "/").await?;
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), page("web", "1"));
    }
    assert_eq!(isolated.status().await?["node"]["appliedRevision"], before);

    cluster.proxies[2].heal();
    converged(
        &cluster,
        &cluster.edge_refs(),
        deployed.revision,
        &[("a.test", page("web", "2"))],
    )
    .await?;
    wait_until(secs(20), async || {
        anyhow::Ok(cluster.listed_nodes().await? == names(&["edge-0", "edge-1", "edge-2"]))
    })
    .await
    .context("edge-2 should register again once healed")?;
    Ok(())
}

#[tokio::test]
async fn control_killed_mid_upload_leaves_no_partial_bundle() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let (mut cluster, _) = three_edges_serving().await?;
    let api = cluster.control.admin().await?;
    // A bundle of several MiB (incompressible, so the archive stays large): many chunks.
    let mut noise = Vec::with_capacity(4 << 20);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    while noise.len() < 4 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        noise.extend_from_slice(&state.to_le_bytes());
    }
    let index = page("big", "1");
    let bundle = fixtures::tar_gz(&[("index.html", index.as_bytes()), ("noise.bin", &noise)])?;
    let upload = fixtures::Upload::new("big", "1", bundle.clone());
    let messages = upload.messages();
    let half = messages.len() / 2;

    // Stream the first half, then hold the stream open while control is killed.
    let (sender, receiver) = tokio::sync::mpsc::channel::<UploadAppRequest>(1);
    let mut client = api.apps();
    let call = tokio::spawn(async move {
        client
            .upload_app(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
    });
    for message in messages.iter().take(half).cloned() {
        sender.send(message).await.context("the upload stream")?;
    }
    // With a channel of one, the call has pulled all but the last message sent.
    ensure!(
        !call.is_finished(),
        "the upload ended early: {:?}",
        call.await
    );
    cluster.control.kill().await?;
    let outcome = call.await?;
    assert!(
        outcome.is_err(),
        "an upload cut off by a crash must fail: {outcome:?}"
    );
    drop(sender);
    cluster.control.restart().await?;

    // No app record, and nothing under the repository's digest keys that is not a whole,
    // verified bundle.
    let api = cluster.control.admin().await?;
    let apps = api
        .apps()
        .list_apps(ListAppsRequest {
            name: "big".to_owned(),
        })
        .await?
        .into_inner()
        .apps;
    assert!(apps.is_empty(), "a partial upload became visible: {apps:?}");
    let bundles = cluster.control.repo_dir().join("bundles").join("sha256");
    for entry in std::fs::read_dir(&bundles).with_context(|| bundles.display().to_string())? {
        let path = entry?.path();
        let bytes = std::fs::read(&path)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        assert_eq!(
            fixtures::digest_of(&bytes),
            format!("sha256:{name}"),
            "{} does not hold the bundle its name promises",
            path.display()
        );
    }
    api.sites().create_site(site("big.test", &[])).await?;
    let refused = cluster
        .deploy_within("big.test", "big", "1", false, secs(20))
        .await;
    assert!(refused.is_err(), "deployed an app that was never uploaded");

    // The same upload, whole this time, works and reaches every edge.
    let mut retry = fixtures::Upload::new("big", "1", bundle);
    retry.digest = fixtures::digest_of(&retry.bytes);
    retry.send(&api).await.context("upload big@1 again")?;
    let deployed = cluster
        .deploy_within("big.test", "big", "1", true, secs(20))
        .await?;
    converged(
        &cluster,
        &cluster.edge_refs(),
        deployed.revision,
        &[("a.test", page("web", "1")), ("big.test", index.clone())],
    )
    .await?;
    let noise_served = cluster.edges[0].https_get("big.test", "/noise.bin").await?;
    assert!(noise_served.body.as_ref() == noise.as_slice());
    Ok(())
}

#[tokio::test]
async fn etcd_compacted_while_an_edge_is_partitioned() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let (cluster, _) = three_edges_serving().await?;
    let api = cluster.control.admin().await?;
    for version in ["2", "3"] {
        fixtures::upload_app(&api, "web", version).await?;
    }
    fixtures::upload_app(&api, "docs", "1").await?;

    cluster.proxies[1].cut();
    cluster
        .deploy_within("a.test", "web", "2", false, secs(20))
        .await?;
    api.sites().create_site(site("b.test", &[])).await?;
    cluster
        .deploy_within("b.test", "docs", "1", false, secs(20))
        .await?;
    let last = cluster
        .deploy_within("a.test", "web", "3", false, secs(20))
        .await?;
    // Compact away every revision the partitioned edge has not seen.
    let mut etcd = cluster.etcd.client().await?;
    let head = etcd
        .get("/", None)
        .await?
        .header()
        .context("etcd response header")?
        .revision();
    etcd.compact(
        head,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .context("compact")?;
    let isolated = &cluster.edges[1];
    assert_eq!(
        isolated.https_get("a.test", "/").await?.text(),
        page("web", "1")
    );
    assert_eq!(isolated.https_get("b.test", "/").await?.status, 404);

    cluster.proxies[1].heal();
    let expected = [("a.test", page("web", "3")), ("b.test", page("docs", "1"))];
    converged(&cluster, &cluster.edge_refs(), last.revision, &expected).await?;
    // It got there by reloading a snapshot, since its watch could not resume.
    let log = std::fs::read_to_string(isolated.dir().join("edge.log"))?;
    assert!(
        log.contains("compaction"),
        "edge-1 never saw the compaction:\n{}",
        isolated.log_tail()
    );
    Ok(())
}
