//! Rollback as a pure flip on a real cluster (etcd, control, three edges on loopback):
//! - every edge's retained deployments are listed by `stk cluster status` (ListNodes);
//! - when every live edge's node record says it retains the target's bundle, `Rollback`
//!   switches the site in the call itself: the deployment it returns is already `live` (no
//!   staging report, no leader cutover), every edge serves it, and none downloads it (the
//!   bundle is gone from the repository);
//! - when an edge does not retain it (beyond `edge.retainDeployments`), the rollback takes the
//!   staged path: `staging`, the edges stage it, then the leader's cutover makes it `live`.

use anyhow::{Context, Result, ensure};
use serde_json::json;
use statiko_proto::v1::{
    DeploymentState, GetDeploymentRequest, GetSiteRequest, ListDeploymentsRequest, RollbackRequest,
};
use statiko_tests::cluster::Cluster;
use statiko_tests::{OutputExt, require_tool, secs, wait_until};

use crate::releases::{all_serve, deploy_atomic, digest_of, serving_v1};

const SITE: &str = "flip.test";

#[tokio::test]
async fn rollback_flips_when_every_edge_retains_the_bundle_and_stages_otherwise() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    // The live bundle and one retained per site.
    let cluster = Cluster::start_with(3, |options| {
        options.config(json!({"edge": {"retainDeployments": 2}}))
    })
    .await?;
    cluster.settled().await?;
    serving_v1(&cluster, SITE).await?;
    let api = cluster.control.admin().await?;
    let history = api
        .deployments()
        .list_deployments(ListDeploymentsRequest {
            domain: SITE.into(),
        })
        .await?
        .into_inner()
        .deployments;
    let first = history
        .iter()
        .find(|d| d.app.as_ref().is_some_and(|a| a.version == "1"))
        .context("web@1 deployed")?
        .id
        .clone();
    let second = deploy_atomic(&cluster, SITE, "2", true)
        .await?
        .deployment
        .context("a deployment")?
        .id;
    deploy_atomic(&cluster, SITE, "3", true).await?;
    all_serve(&cluster.edge_refs(), SITE, "3").await?;

    // `stk cluster status` shows what each edge keeps: web@2's deployment, not web@1's.
    let listed = wait_until(secs(10), async || {
        let json = cluster.control.stk_json(["cluster", "status"]).await?;
        let retained: Vec<serde_json::Value> = json["nodes"]
            .as_array()
            .context("nodes")?
            .iter()
            .filter_map(|node| {
                let sites = node["sites"].as_array()?;
                let site = sites.iter().find(|s| s["domain"] == SITE)?;
                Some(site["retained"].clone())
            })
            .collect();
        anyhow::Ok(
            (retained.len() == 3 && retained.iter().all(|r| *r == json!([second])))
                .then_some(retained),
        )
    })
    .await
    .context("every edge lists web@2's deployment as retained")?;
    ensure!(
        !listed.iter().any(|r| r.to_string().contains(&first)),
        "{listed:?}"
    );
    let table = cluster.control.stk(["cluster", "status"]).await?;
    table.assert_success();
    ensure!(
        table.stdout_text().contains("RETAINED") && table.stdout_text().contains(&second),
        "{}",
        table.stdout_text()
    );

    // Every edge retains web@2 (and no longer web@1). web@2 leaves the repository: a flip
    // needs no download.
    let v2 = digest_of(&cluster, "2").await?;
    let stored = cluster
        .control
        .repo_dir()
        .join("bundles/sha256")
        .join(v2.trim_start_matches("sha256:"));
    ensure!(stored.exists(), "no bundle at {}", stored.display());
    std::fs::remove_file(&stored)?;
    let flipped = api
        .deployments()
        .rollback(RollbackRequest {
            domain: SITE.into(),
            ..RollbackRequest::default()
        })
        .await?
        .into_inner()
        .deployment
        .context("a deployment")?;
    ensure!(
        flipped.state() == DeploymentState::Live,
        "a rollback every edge retains is live when the call returns: {flipped:?}"
    );
    let mut staged = flipped.staged_nodes.clone();
    staged.sort();
    assert_eq!(staged, ["edge-0", "edge-1", "edge-2"]);
    // The site names it already: the switch was the call's own transaction.
    let site = api
        .sites()
        .get_site(GetSiteRequest {
            domain: SITE.into(),
        })
        .await?
        .into_inner()
        .site
        .context("a site")?;
    assert_eq!(site.deployment_id, flipped.id);
    all_serve(&cluster.edge_refs(), SITE, "2").await?;

    // web@1 is retained nowhere: the rollback to it stages (from the repository), then the
    // leader cuts it over.
    let staged = api
        .deployments()
        .rollback(RollbackRequest {
            domain: SITE.into(),
            to: first,
            ..RollbackRequest::default()
        })
        .await?
        .into_inner()
        .deployment
        .context("a deployment")?;
    ensure!(
        staged.state() == DeploymentState::Staging,
        "a rollback no edge retains stages first: {staged:?}"
    );
    let live = wait_until(secs(30), async || {
        let d = api
            .deployments()
            .get_deployment(GetDeploymentRequest {
                domain: SITE.into(),
                id: staged.id.clone(),
            })
            .await?
            .into_inner()
            .deployment
            .context("a deployment")?;
        anyhow::Ok((d.state() != DeploymentState::Staging).then_some(d))
    })
    .await?;
    assert_eq!(live.state(), DeploymentState::Live, "{live:?}");
    assert_eq!(live.staged_nodes.len(), 3, "{live:?}");
    all_serve(&cluster.edge_refs(), SITE, "1").await
}
