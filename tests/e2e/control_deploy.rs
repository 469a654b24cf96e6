//! DeploymentService and ClusterService end to end on etcd: deploying an unknown app or to an
//! unknown site is NOT_FOUND; a deploy sets the site's app; `wait` without any edge and with a
//! lagging (fake, leased) edge status is DEADLINE_EXCEEDED naming the edge; `wait` returns the
//! ready nodes once the edge reports the deploy's revision. ListNodes shows the leased records
//! and drops them when their lease is revoked.

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;
use statiko_proto::v1::{DeployRequest, ListNodesRequest};
use statiko_tests::fixtures::{app_ref, assert_status, put_node_status, site, upload_app};
use statiko_tests::{ControlOptions, secs, wait_until};
use tonic::Code;

use crate::control_common::{Backend, get_site, start};

fn deploy(domain: &str, version: &str, wait_seconds: Option<i64>) -> DeployRequest {
    DeployRequest {
        domain: domain.to_owned(),
        app: Some(app_ref("web", version)),
        wait: wait_seconds.is_some(),
        wait_timeout: wait_seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
        ..DeployRequest::default()
    }
}

#[tokio::test]
async fn deploy_and_wait_for_edges() -> Result<()> {
    let Some(running) = start(Backend::Etcd, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;
    let etcd = running.etcd.as_ref().context("etcd")?;
    let admin = control.admin().await?;
    admin
        .sites()
        .create_site(site("deploy.example.com", &["www.deploy.example.com"]))
        .await?;
    upload_app(&admin, "web", "1.0.0").await?;
    upload_app(&admin, "web", "2.0.0").await?;
    let mut deployments = admin.deployments();

    // Unknown app, unknown site, and a malformed request.
    assert_status(
        deployments
            .deploy(deploy("deploy.example.com", "9.9.9", None))
            .await,
        Code::NotFound,
        &["web@9.9.9"],
    );
    assert_status(
        deployments
            .deploy(deploy("nosite.example.com", "1.0.0", None))
            .await,
        Code::NotFound,
        &["nosite.example.com"],
    );
    assert_status(
        deployments
            .deploy(DeployRequest {
                app: None,
                ..deploy("deploy.example.com", "1.0.0", None)
            })
            .await,
        Code::InvalidArgument,
        &["app"],
    );
    assert!(get_site(&admin, "deploy.example.com").await?.app.is_none());

    // A deploy (by alias) sets the site's app.
    let deployed = deployments
        .deploy(deploy("www.deploy.example.com", "1.0.0", None))
        .await?
        .into_inner();
    let site_after = deployed.site.context("site")?;
    assert_eq!(site_after.app, Some(app_ref("web", "1.0.0")));
    assert!(site_after.deployed_at.is_some());
    assert_eq!(site_after.revision, deployed.revision);
    assert!(deployed.ready_nodes.is_empty());
    let got = get_site(&admin, "deploy.example.com").await?;
    assert_eq!(got.app, Some(app_ref("web", "1.0.0")));
    assert_eq!(got.revision, deployed.revision);

    // wait with no live edge: DEADLINE_EXCEEDED after the wait timeout (the write stays).
    let started = Instant::now();
    assert_status(
        deployments
            .deploy(deploy("deploy.example.com", "2.0.0", Some(1)))
            .await,
        Code::DeadlineExceeded,
        &["no live edge", "web@2.0.0"],
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= secs(1) && elapsed < secs(10),
        "waited {elapsed:?}"
    );
    assert_eq!(
        get_site(&admin, "deploy.example.com").await?.app,
        Some(app_ref("web", "2.0.0"))
    );

    // A lagging edge: still serving 1.0.0 at an old revision.
    let mut client = etcd.client().await?;
    let lagging = json!({
        "name": "edge-a",
        "appliedRevision": 1,
        "sites": [{"domain": "deploy.example.com", "app": {"name": "web", "version": "1.0.0"}, "healthy": true}],
    });
    let lease = put_node_status(&mut client, "/statiko", &lagging, None).await?;
    let status = assert_status(
        deployments
            .deploy(deploy("deploy.example.com", "1.0.0", Some(1)))
            .await,
        Code::DeadlineExceeded,
        &["edge-a"],
    );
    assert!(
        !status.message().contains("no live edge"),
        "{}",
        status.message()
    );

    // An edge that catches up with the deploy while the call waits.
    // Both run on this task (join, no spawn): the deploy waits, the "edge" catches up.
    let mut edge_client = etcd.client().await?;
    let catch_up = async {
        let revision = wait_until(secs(20), async || {
            let site = get_site(&admin, "deploy.example.com").await?;
            anyhow::Ok((site.app == Some(app_ref("web", "2.0.0"))).then_some(site.revision))
        })
        .await?;
        let ready = json!({
            "name": "edge-a",
            "appliedRevision": revision,
            "sites": [{"domain": "deploy.example.com", "app": {"name": "web", "version": "2.0.0"}, "healthy": true}],
        });
        put_node_status(&mut edge_client, "/statiko", &ready, Some(lease)).await?;
        anyhow::Ok(revision)
    };
    let mut waiting_client = admin.deployments();
    let (waited, revision) = tokio::join!(
        waiting_client.deploy(deploy("deploy.example.com", "2.0.0", Some(30))),
        catch_up
    );
    let waited = waited?.into_inner();
    let revision = revision?;
    assert_eq!(waited.ready_nodes, ["edge-a"]);
    assert_eq!(waited.revision, revision);

    // An edge with more sites than its record lists (`sitesOmitted`) lists only the unhealthy
    // ones: a site left out serves the desired state at the applied revision...
    let compact_catch_up = async {
        let revision = wait_until(secs(20), async || {
            let site = get_site(&admin, "deploy.example.com").await?;
            anyhow::Ok((site.app == Some(app_ref("web", "1.0.0"))).then_some(site.revision))
        })
        .await?;
        let compact = json!({"name": "edge-a", "appliedRevision": revision, "sites": [], "sitesOmitted": 5000});
        put_node_status(&mut edge_client, "/statiko", &compact, Some(lease)).await?;
        anyhow::Ok(())
    };
    let (waited, caught_up) = tokio::join!(
        waiting_client.deploy(deploy("deploy.example.com", "1.0.0", Some(30))),
        compact_catch_up
    );
    caught_up?;
    assert_eq!(waited?.into_inner().ready_nodes, ["edge-a"]);
    // ...and a listed one is not served as deployed, whatever the applied revision.
    let failing = json!({
        "name": "edge-a",
        "appliedRevision": 1_000_000,
        "sites": [{"domain": "deploy.example.com", "app": {"name": "web", "version": "1.0.0"},
                   "healthy": false, "error": "staging web@2.0.0 failed: boom"}],
        "sitesOmitted": 4999,
    });
    put_node_status(&mut edge_client, "/statiko", &failing, Some(lease)).await?;
    assert_status(
        waiting_client
            .deploy(deploy("deploy.example.com", "2.0.0", Some(1)))
            .await,
        Code::DeadlineExceeded,
        &["edge-a", "boom"],
    );
    Ok(())
}

#[tokio::test]
async fn list_nodes_follows_leases() -> Result<()> {
    let Some(running) = start(Backend::Etcd, ControlOptions::default()).await? else {
        return Ok(());
    };
    let control = &running.control;
    let etcd = running.etcd.as_ref().context("etcd")?;
    let readonly = control.readonly().await?;
    let mut client = etcd.client().await?;
    let empty = readonly
        .cluster()
        .list_nodes(ListNodesRequest::default())
        .await?
        .into_inner();
    assert!(empty.nodes.is_empty());

    let lease_a = put_node_status(
        &mut client,
        "/statiko",
        &json!({
            "name": "edge-a",
            "version": "0.1.0",
            "leader": true,
            "appliedRevision": 7,
            "updatedAt": 1_700_000_000_000_i64,
            "sites": [{"domain": "x.example.com", "app": {"name": "web", "version": "1.0.0"}, "healthy": true}],
            "certificates": [{"name": "x-cert", "notAfter": 1_800_000_000_000_i64}],
            "someFutureField": "ignored",
        }),
        None,
    )
    .await?;
    let lease_b = put_node_status(
        &mut client,
        "/statiko",
        &json!({"name": "edge-b", "appliedRevision": 5, "disallowLeadership": true,
                "sites": [{"domain": "x.example.com", "healthy": false, "error": "staging failed"}]}),
        None,
    )
    .await?;
    let listed = readonly
        .cluster()
        .list_nodes(ListNodesRequest::default())
        .await?
        .into_inner();
    // The listed revision is the desired state's: node status writes do not move it.
    assert_eq!(listed.revision, 0, "no desired-state change was made yet");
    let admin = control.admin().await?;
    let created = admin
        .sites()
        .create_site(statiko_tests::fixtures::site("rev.example.com", &[]))
        .await?
        .into_inner()
        .site
        .expect("a created site");
    let relisted = readonly
        .cluster()
        .list_nodes(ListNodesRequest::default())
        .await?
        .into_inner();
    assert_eq!(relisted.revision, created.revision);
    let names: Vec<&str> = listed.nodes.iter().map(|node| node.name.as_str()).collect();
    assert_eq!(names, ["edge-a", "edge-b"]);
    let a = &listed.nodes[0];
    assert!(a.leader && a.version == "0.1.0" && a.applied_revision == 7);
    assert_eq!(a.sites[0].app, Some(app_ref("web", "1.0.0")));
    assert!(a.sites[0].healthy);
    assert_eq!(a.certificates[0].name, "x-cert");
    assert_eq!(
        a.updated_at.as_ref().map(|t| t.seconds),
        Some(1_700_000_000)
    );
    let b = &listed.nodes[1];
    assert!(b.disallow_leadership && !b.leader && b.applied_revision == 5);
    assert_eq!(b.sites[0].error, "staging failed");

    // Revoking a lease removes that node only.
    client.lease_revoke(lease_a).await?;
    let remaining = wait_until(secs(10), async || {
        let nodes = readonly
            .cluster()
            .list_nodes(ListNodesRequest::default())
            .await?
            .into_inner()
            .nodes;
        anyhow::Ok((nodes.len() == 1).then_some(nodes))
    })
    .await?;
    assert_eq!(remaining[0].name, "edge-b");
    client.lease_revoke(lease_b).await?;
    wait_until(secs(10), async || {
        let nodes = readonly
            .cluster()
            .list_nodes(ListNodesRequest::default())
            .await?
            .into_inner()
            .nodes;
        anyhow::Ok(nodes.is_empty())
    })
    .await?;
    Ok(())
}
