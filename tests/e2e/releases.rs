//! Atomic cutover on a real cluster (etcd, control, three edges on loopback):
//! - a deploy under continuous polling of every edge is seen as one flip: after the first
//!   new-version response, no edge answers with the old version beyond a small window;
//! - an edge that cannot stage (a corrupt bundle on its disk) or misses the stage deadline
//!   (partitioned from etcd) makes the deployment `failed`, naming it, and no edge switches;
//! - the control replica and the leader edge killed mid-cutover: the deployment still ends
//!   `live` (or `failed`), never stuck in `staging`; a stopped edge and the killed leader,
//!   restarted after the cutover, stage and serve the new version.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use statiko_proto::v1::{
    DeployRequest, DeployResponse, DeployStrategy, Deployment, DeploymentState,
    GetDeploymentRequest,
};
use statiko_tests::cluster::{Cluster, assert_converged};
use statiko_tests::fixtures::{self, site};
use statiko_tests::{Edge, OutputExt, https_get_unverified, require_tool, secs, wait_until};
use tonic::Code;

/// The page `fixtures::site_bundle("web@version")` serves at `/`.
fn page(version: &str) -> String {
    format!("<!doctype html><title>web@{version}</title><h1>web@{version}</h1>\n")
}

/// `domain` on `web@1` everywhere, with `web@2` and `web@3` uploaded.
pub(crate) async fn serving_v1(cluster: &Cluster, domain: &str) -> Result<()> {
    let api = cluster.control.admin().await?;
    api.sites().create_site(site(domain, &[])).await?;
    for version in ["1", "2", "3"] {
        fixtures::upload_app(&api, "web", version).await?;
    }
    deploy_atomic(cluster, domain, "1", true).await?;
    all_serve(&cluster.edge_refs(), domain, "1").await
}

pub(crate) async fn all_serve(edges: &[&Edge], domain: &str, version: &str) -> Result<()> {
    let agreed = assert_converged(edges, &[domain]).await?;
    ensure!(
        agreed.page(domain) == page(version),
        "{domain}: expected web@{version}, got {:?}",
        agreed.page(domain)
    );
    Ok(())
}

async fn get_deployment(cluster: &Cluster, domain: &str, id: &str) -> Result<Deployment> {
    cluster
        .control
        .admin()
        .await?
        .deployments()
        .get_deployment(GetDeploymentRequest {
            domain: domain.to_owned(),
            id: id.to_owned(),
        })
        .await?
        .into_inner()
        .deployment
        .context("a deployment")
}

/// The digest of `web@version` as uploaded.
pub(crate) async fn digest_of(cluster: &Cluster, version: &str) -> Result<String> {
    let apps = cluster
        .control
        .admin()
        .await?
        .apps()
        .list_apps(statiko_proto::v1::ListAppsRequest::default())
        .await?
        .into_inner()
        .apps;
    apps.into_iter()
        .find(|a| a.name == "web" && a.version == version)
        .map(|a| a.digest)
        .with_context(|| format!("web@{version} uploaded"))
}

/// Deploys `web@version` to `domain` with the atomic strategy (what `stk deploy` asks for).
pub(crate) async fn deploy_atomic(
    cluster: &Cluster,
    domain: &str,
    version: &str,
    wait: bool,
) -> Result<DeployResponse, tonic::Status> {
    let api = cluster
        .control
        .admin()
        .await
        .map_err(|err| tonic::Status::unavailable(format!("{err:#}")))?;
    let response = api
        .deployments()
        .deploy(DeployRequest {
            domain: domain.to_owned(),
            app: Some(fixtures::app_ref("web", version)),
            wait,
            wait_timeout: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            strategy: DeployStrategy::Atomic as i32,
        })
        .await?;
    Ok(response.into_inner())
}

/// One poll: when it was sent and answered, and the version it saw.
struct Sample {
    sent: Instant,
    answered: Instant,
    version: u8,
}

#[tokio::test]
async fn atomic_deploy_is_one_flip_under_polling() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = Cluster::start(3).await?;
    cluster.settled().await?;
    serving_v1(&cluster, "flip.test").await?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut pollers = Vec::new();
    for edge in &cluster.edges {
        let (addr, stop) = (edge.addrs().https, stop.clone());
        let (old, new) = (page("1"), page("2"));
        pollers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let (response, _) = https_get_unverified(addr, "flip.test", "/", &[]).await?;
                let text = response.text();
                let version = if text == old {
                    1
                } else if text == new {
                    2
                } else {
                    anyhow::bail!("unexpected answer {} {text:?}", response.status);
                };
                samples.push(Sample {
                    sent,
                    answered: Instant::now(),
                    version,
                });
            }
            anyhow::Ok(samples)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deployed = deploy_atomic(&cluster, "flip.test", "2", true).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for poller in pollers {
        samples.extend(poller.await??);
    }

    let deployment = deployed.deployment.context("deployment")?;
    assert_eq!(deployment.strategy(), DeployStrategy::Atomic);
    assert_eq!(deployment.state(), DeploymentState::Live);
    let mut staged = deployment.staged_nodes.clone();
    staged.sort();
    assert_eq!(staged, ["edge-0", "edge-1", "edge-2"]);
    assert_eq!(deployed.ready_nodes.len(), 3);

    // The window: from the first new-version answer to the last old-version request sent after it.
    let first_new = samples
        .iter()
        .filter(|s| s.version == 2)
        .map(|s| s.answered)
        .min()
        .context("no poll saw the new version")?;
    let window = samples
        .iter()
        .filter(|s| s.version == 1 && s.sent > first_new)
        .map(|s| s.sent - first_new)
        .max()
        .unwrap_or_default();
    let before = samples.iter().filter(|s| s.version == 1).count();
    ensure!(before > 10, "only {before} polls before the flip");
    assert!(
        window < Duration::from_millis(500),
        "an edge served the old version {window:?} after another served the new one"
    );
    all_serve(&cluster.edge_refs(), "flip.test", "2").await
}

#[tokio::test]
async fn a_failed_stage_or_missed_deadline_switches_no_edge() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    // Node records outlive a partition by 10 s, longer than the 2 s stage deadline.
    let cluster = Cluster::start_with(3, |options| {
        options.config(json!({"edge": {"leaseTtl": 10}, "deploy": {"stageTimeout": 2}}))
    })
    .await?;
    let leader = cluster.settled().await?;
    serving_v1(&cluster, "fail.test").await?;
    let api = cluster.control.admin().await?;
    let v2 = digest_of(&cluster, "2").await?;

    // A corrupt bundle on edge-1's disk: a file where the staged directory would go.
    let planted = cluster.edges[1]
        .dir()
        .join("data/bundles")
        .join(v2.trim_start_matches("sha256:"));
    std::fs::create_dir_all(planted.parent().context("bundles dir")?)?;
    std::fs::write(&planted, b"corrupt")?;
    let status = deploy_atomic(&cluster, "fail.test", "2", true)
        .await
        .expect_err("the deployment must fail");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("edge-1"), "{}", status.message());
    let history = api
        .deployments()
        .list_deployments(statiko_proto::v1::ListDeploymentsRequest {
            domain: "fail.test".into(),
        })
        .await?
        .into_inner()
        .deployments;
    let failed = &history[0];
    assert_eq!(failed.state(), DeploymentState::Failed, "{failed:?}");
    assert_eq!(failed.failed_nodes, ["edge-1"]);
    assert!(failed.reason.contains("edge edge-1"), "{}", failed.reason);
    assert_eq!(history[1].state(), DeploymentState::Live);
    all_serve(&cluster.edge_refs(), "fail.test", "1").await?;
    // stk deploy --wait: per-edge progress lines (not a terminal), non-zero naming the edge.
    let cli = cluster
        .control
        .stk([
            "deploy",
            "fail.test",
            "web@2",
            "--wait",
            "--wait-timeout",
            "30s",
        ])
        .await?;
    assert!(!cli.status.success(), "{}", cli.stdout_text());
    let stderr = cli.stderr_text();
    assert!(stderr.contains("failed on edge(s) edge-1"), "{stderr}");
    // A per-edge progress line (`<state>: staged n/3 (...)`). It may already say `failed`: the
    // leader follows the node records by watch, so edge-1's error can fail the deployment
    // before the first `staging` line is printed.
    assert!(stderr.contains(": staged "), "{stderr}");
    all_serve(&cluster.edge_refs(), "fail.test", "1").await?;
    std::fs::remove_file(&planted)?;

    // An edge partitioned from etcd (not the leader) misses the stage deadline.
    let index = (0..3)
        .find(|i| cluster.edges[*i].name() != leader)
        .context("a follower")?;
    let name = cluster.edges[index].name().to_owned();
    cluster.proxies[index].cut();
    let status = deploy_atomic(&cluster, "fail.test", "3", true)
        .await
        .expect_err("the deployment must miss its deadline");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("deadline") && status.message().contains(&name),
        "{}",
        status.message()
    );
    let others: Vec<&Edge> = cluster.edges.iter().filter(|e| e.name() != name).collect();
    all_serve(&others, "fail.test", "1").await?;
    cluster.proxies[index].heal();
    cluster.settled().await?;

    // Healed, the cluster takes the deploy.
    deploy_atomic(&cluster, "fail.test", "3", true).await?;
    all_serve(&cluster.edge_refs(), "fail.test", "3").await
}

#[tokio::test]
async fn control_and_leader_killed_mid_cutover() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let mut cluster = Cluster::start(3).await?;
    let leader = cluster.settled().await?;
    serving_v1(&cluster, "kill.test").await?;
    let leader_index = (0..3)
        .find(|i| cluster.edges[*i].name() == leader)
        .context("the leader")?;
    let stopped_index = (leader_index + 1) % 3;
    let survivor_index = (leader_index + 2) % 3;

    // One edge stopped cleanly before the deploy (it leaves the node list at once).
    cluster.edges[stopped_index].terminate().await?;
    let deployed = deploy_atomic(&cluster, "kill.test", "2", false).await?;
    let id = deployed.deployment.context("deployment")?.id;
    // Mid-cutover: the control replica that took the call and the leader die.
    cluster.control.kill().await?;
    cluster.edges[leader_index].kill().await?;
    cluster.control.restart().await?;

    let ended = wait_until(secs(60), async || {
        let d = get_deployment(&cluster, "kill.test", &id).await?;
        anyhow::Ok((d.state() != DeploymentState::Staging).then_some(d))
    })
    .await
    .with_context(|| cluster.logs())?;
    assert!(
        matches!(
            ended.state(),
            DeploymentState::Live | DeploymentState::Failed
        ),
        "{ended:?}"
    );
    let expected = if ended.state() == DeploymentState::Live {
        "2"
    } else {
        "1"
    };
    all_serve(&[&cluster.edges[survivor_index]], "kill.test", expected).await?;

    // Both come back after the cutover: they stage the live version and serve it.
    cluster.edges[stopped_index].restart().await?;
    cluster.edges[leader_index].restart().await?;
    all_serve(&cluster.edge_refs(), "kill.test", expected).await?;
    cluster.settled().await?;

    // stk deploy --wait on the healed cluster: progress lines, then every edge serves it.
    let cli = cluster
        .control
        .stk([
            "deploy",
            "kill.test",
            "web@3",
            "--wait",
            "--wait-timeout",
            "30s",
        ])
        .await?;
    cli.assert_success();
    let stderr = cli.stderr_text();
    assert!(stderr.contains("live: staged 3/3"), "{stderr}");
    assert!(stderr.contains("serving 3/3"), "{stderr}");
    assert!(
        cli.stdout_text().contains("served by 3 edge(s)"),
        "{}",
        cli.stdout_text()
    );
    all_serve(&cluster.edge_refs(), "kill.test", "3").await
}

#[tokio::test]
async fn rollback_is_served_from_retained_bundles() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = Cluster::start(3).await?;
    cluster.settled().await?;
    serving_v1(&cluster, "back.test").await?;
    deploy_atomic(&cluster, "back.test", "2", true).await?;
    all_serve(&cluster.edge_refs(), "back.test", "2").await?;

    let v1 = digest_of(&cluster, "1").await?;
    let stdout = rollback_without_the_bundle(&cluster, "back.test", &v1).await?;
    assert!(stdout.contains("web@1"), "{stdout}");
    Ok(())
}

/// Removes the bundle `digest` (web@1's) from the repository, so that only the edges' retained
/// copies remain, then rolls `domain` back (`stk deploy rollback --wait`) and checks that every
/// edge of the cluster serves web@1 again. Returns the CLI's output.
pub(crate) async fn rollback_without_the_bundle(
    cluster: &Cluster,
    domain: &str,
    digest: &str,
) -> Result<String> {
    let stored = cluster
        .control
        .repo_dir()
        .join("bundles/sha256")
        .join(digest.trim_start_matches("sha256:"));
    ensure!(stored.exists(), "no bundle at {}", stored.display());
    std::fs::remove_file(&stored)?;

    let cli = cluster
        .control
        .stk([
            "deploy",
            "rollback",
            domain,
            "--wait",
            "--wait-timeout",
            "30s",
        ])
        .await?;
    cli.assert_success();
    let stdout = cli.stdout_text();
    let edges = cluster.edges.len();
    assert!(
        stdout.contains(&format!("served by {edges} edge(s)")),
        "{stdout}"
    );
    all_serve(&cluster.edge_refs(), domain, "1").await?;
    Ok(stdout)
}
