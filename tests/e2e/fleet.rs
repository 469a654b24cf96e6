//! The CI-sized fleet: etcd, control and 20 edge processes (the `fleet` benchmark's scenario at
//! a tenth of its size). After each of three atomic deploys (two through the API, one through
//! `stk deploy --wait`), every edge reports the same applied revision and serves the deployed
//! bytes over HTTPS; the deploy's wait names all 20 edges.

use anyhow::{Context, Result, ensure};
use statiko_proto::v1::{DeployRequest, DeployStrategy, ListNodesRequest};
use statiko_tests::cluster::assert_converged_at;
use statiko_tests::fixtures::{self, site};
use statiko_tests::{Edge, Fleet, require_tool, secs, wait_until};

const EDGES: usize = 20;
const SITE: &str = "a.fleet";

#[tokio::test]
async fn twenty_edges_converge_on_every_deploy() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let fleet = Fleet::start(EDGES, |options| options).await?;
    let api = fleet.control.admin().await?;
    api.sites().create_site(site(SITE, &[])).await?;
    for version in ["1", "2", "3"] {
        fixtures::upload_app(&api, "app", version).await?;
    }
    // Every edge registered and one leads: atomic deploys wait for all of them.
    wait_until(secs(60), async || {
        let nodes = api
            .cluster()
            .list_nodes(ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        let leaders = nodes.iter().filter(|node| node.leader).count();
        anyhow::Ok(nodes.len() == EDGES && leaders == 1)
    })
    .await
    .context("every edge registered, one leader")?;
    let edges: Vec<&Edge> = fleet.edges.iter().collect();

    for version in ["1", "2"] {
        let deployed = api
            .deployments()
            .deploy(DeployRequest {
                domain: SITE.to_owned(),
                app: Some(fixtures::app_ref("app", version)),
                wait: true,
                wait_timeout: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                strategy: DeployStrategy::Atomic as i32,
            })
            .await?
            .into_inner();
        ensure!(
            deployed.ready_nodes.len() == EDGES,
            "deploy of app@{version} waited for {:?}",
            deployed.ready_nodes
        );
        serves_everywhere(&edges, version, deployed.revision).await?;
    }

    let reply = fleet
        .control
        .stk_json(["deploy", SITE, "app@3", "--wait"])
        .await?;
    let revision = reply["revision"].as_i64().unwrap_or_default();
    serves_everywhere(&edges, "3", revision).await
}

/// Every edge at the same applied revision (at least `revision`), serving app@`version`.
async fn serves_everywhere(edges: &[&Edge], version: &str, revision: i64) -> Result<()> {
    let agreed = assert_converged_at(edges, &[SITE], revision).await?;
    let expected = fixtures::site_bundle_index(&format!("app@{version}"));
    ensure!(
        agreed.pages[SITE] == (200, expected.clone()),
        "{SITE}: expected {:?}, every edge serves {:?}",
        String::from_utf8_lossy(&expected),
        agreed.page(SITE)
    );
    Ok(())
}
