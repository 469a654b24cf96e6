//! Preview deploys on a real cluster (etcd, control with `previews.domain`, two edges):
//! - a preview is staged and served on every edge at its own host, over HTTPS with a
//!   certificate made for that host (SNI), with `X-Robots-Tag: noindex`, while the live site
//!   keeps its version; two previews of one site at once; a password asks for basic auth
//!   (401 without or with a wrong one, 200 with it); promotion makes it live (atomic);
//! - a short TTL: no edge serves it once expired, the leader deletes its record, index entry
//!   and certificate; a site deleted takes its previews with it; the version a live preview
//!   serves cannot be deleted until the preview is gone;
//! - a preview (or a site) that failed to stage (its bundle corrupt in the repository) is staged
//!   again with back-off once repaired, its record untouched;
//! - refusals: previews off, bad TTL and password naming the field, promotion of an expired,
//!   deleted or non-preview deployment, a deployer token outside its scope.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use serde_json::json;
use statiko_common::crypto::{format_digest, sha256};
use statiko_common::model::{self, CertificateKind, CertificateRecord};
use statiko_proto::v1::{
    DeleteAppRequest, DeletePreviewRequest, DeletePreviewResponse, DeployPreviewRequest,
    DeployRequest, DeployStrategy, Deployment, DeploymentState, GetDeploymentRequest,
    ListDeploymentsRequest, ListNodesRequest, ListPreviewsRequest, PromotePreviewRequest,
    PromotePreviewResponse,
};
use statiko_tests::client::Api;
use statiko_tests::cluster::Cluster;
use statiko_tests::fixtures::{self, assert_status, site};
use statiko_tests::{ControlOptions, Edge, Etcd, require_tool, secs, wait_until};
use tonic::Code;

pub(crate) const PREVIEWS: &str = "preview.statiko.test";

fn page(version: &str) -> String {
    format!("<!doctype html><title>web@{version}</title><h1>web@{version}</h1>\n")
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    })
}

pub(crate) fn with_previews(options: ControlOptions) -> ControlOptions {
    options.config(json!({ "previews": { "domain": PREVIEWS } }))
}

/// A cluster of two edges with previews on, a leader elected, `domain` serving `web@1`, and
/// `web@2`, `web@3` uploaded.
async fn cluster(domain: &str) -> Result<(Cluster, Api)> {
    let cluster = Cluster::start_with_control(2, with_previews, |o| o).await?;
    let api = cluster.control.admin().await?;
    cluster.settled().await?;
    api.sites().create_site(site(domain, &[])).await?;
    for version in ["1", "2", "3"] {
        fixtures::upload_app(&api, "web", version).await?;
    }
    api.deployments()
        .deploy(DeployRequest {
            domain: domain.to_owned(),
            app: Some(fixtures::app_ref("web", "1")),
            wait: true,
            wait_timeout: duration(secs(30)),
            strategy: DeployStrategy::Atomic as i32,
        })
        .await?;
    Ok((cluster, api))
}

pub(crate) fn preview_request(domain: &str, version: &str) -> DeployPreviewRequest {
    DeployPreviewRequest {
        domain: domain.to_owned(),
        app: Some(fixtures::app_ref("web", version)),
        wait: true,
        wait_timeout: duration(secs(30)),
        ..DeployPreviewRequest::default()
    }
}

pub(crate) async fn deploy_preview(api: &Api, request: DeployPreviewRequest) -> Result<Deployment> {
    let response = api
        .deployments()
        .deploy_preview(request)
        .await?
        .into_inner();
    ensure!(
        response.ready_nodes.len() == 2,
        "staged on {:?}",
        response.ready_nodes
    );
    response.deployment.context("a deployment")
}

fn host_of(preview: &Deployment) -> Result<String> {
    Ok(preview
        .preview
        .as_ref()
        .context("preview details")?
        .host
        .clone())
}

/// The leader's certificate record for `host`, once made.
async fn leader_cert(
    etcd: &Etcd,
    kind: CertificateKind,
    host: &str,
) -> Result<Option<CertificateRecord>> {
    let name = model::leader_certificate_name(kind, host);
    let mut client = etcd.client().await?;
    let response = client
        .get(format!("/statiko/v1/certificates/{name}"), None)
        .await?;
    Ok(match response.kvs().first() {
        Some(kv) => Some(model::decode(kv.value())?),
        None => None,
    })
}

async fn key_exists(etcd: &Etcd, key: String) -> Result<bool> {
    let mut client = etcd.client().await?;
    Ok(!client.get(key, None).await?.kvs().is_empty())
}

/// Every edge serves `host` with `version`, `noindex`, and the leader's certificate made for
/// exactly that host (SNI picks it).
async fn served_everywhere(
    cluster: &Cluster,
    host: &str,
    version: &str,
    auth: &[(&str, &str)],
) -> Result<()> {
    let cert = wait_until(secs(20), async || {
        leader_cert(&cluster.etcd, CertificateKind::SelfSigned, host).await
    })
    .await?;
    ensure!(
        cert.domains == [host.to_owned()],
        "certificate names {:?}",
        cert.domains
    );
    for edge in &cluster.edges {
        wait_until(secs(20), async || {
            let (response, leaf) = edge.https_get_with(host, "/", auth).await?;
            ensure!(
                response.status == 200,
                "{} answered {}",
                edge.name(),
                response.status
            );
            ensure!(
                response.text() == page(version),
                "{}: {:?}",
                edge.name(),
                response.text()
            );
            ensure!(
                response.header("x-robots-tag") == Some("noindex"),
                "{}: no noindex header",
                edge.name()
            );
            ensure!(
                format_digest(&sha256(&leaf)) == cert.fingerprint,
                "{} does not present the preview's certificate for {host}",
                edge.name()
            );
            anyhow::Ok(())
        })
        .await?;
    }
    Ok(())
}

async fn live_everywhere(cluster: &Cluster, domain: &str, version: &str) -> Result<()> {
    for edge in &cluster.edges {
        let response = edge.https_get(domain, "/").await?;
        ensure!(
            response.text() == page(version),
            "{} serves {domain} as {:?}, expected web@{version}",
            edge.name(),
            response.text()
        );
        ensure!(
            response.header("x-robots-tag").is_none(),
            "the live site is not a preview"
        );
    }
    Ok(())
}

async fn gone_everywhere(edges: &[Edge], host: &str) -> Result<()> {
    for edge in edges {
        wait_until(secs(10), async || {
            let response = edge.https_get(host, "/").await?;
            anyhow::Ok(response.status == 404)
        })
        .await
        .with_context(|| format!("{} still serves {host}", edge.name()))?;
    }
    Ok(())
}

fn basic(password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("reviewer:{password}"))
    )
}

#[tokio::test]
async fn previews_are_served_apart_from_the_live_site_and_promote() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let domain = "shop.statiko.test";
    let (cluster, api) = cluster(domain).await?;

    // Two previews of the same site at once, each at its own host.
    let first = deploy_preview(&api, preview_request(domain, "2")).await?;
    let second = deploy_preview(&api, preview_request(domain, "3")).await?;
    ensure!(first.state() == DeploymentState::Preview, "{first:?}");
    let (host_2, host_3) = (host_of(&first)?, host_of(&second)?);
    ensure!(
        host_2 == format!("{}--shop-statiko-test.{PREVIEWS}", first.id),
        "host {host_2}"
    );
    let url = &first.preview.as_ref().context("preview")?.url;
    ensure!(*url == format!("https://{host_2}"), "url {url}");
    served_everywhere(&cluster, &host_2, "2", &[]).await?;
    served_everywhere(&cluster, &host_3, "3", &[]).await?;
    live_everywhere(&cluster, domain, "1").await?;
    // The same serving rules as the site: a missing page is the bundle's 404, still noindex.
    let missing = cluster.edges[0].https_get(&host_2, "/nope").await?;
    ensure!(missing.status == 404 && missing.header("x-robots-tag") == Some("noindex"));
    // Plain HTTP redirects to the preview's own host.
    let plain = cluster.edges[1].http_get(&host_2, "/x?y=1").await?;
    ensure!(plain.status == 301, "plain HTTP: {}", plain.status);
    ensure!(
        plain
            .header("location")
            .is_some_and(|l| l.starts_with(&format!("https://{host_2}"))),
        "{:?}",
        plain.header("location")
    );

    // In the history, marked as previews; and listed.
    let history = api
        .deployments()
        .list_deployments(ListDeploymentsRequest {
            domain: domain.into(),
        })
        .await?
        .into_inner()
        .deployments;
    let states: Vec<_> = history.iter().map(|d| (d.id.clone(), d.state())).collect();
    ensure!(
        states.contains(&(first.id.clone(), DeploymentState::Preview)),
        "{states:?}"
    );
    let listed = api
        .deployments()
        .list_previews(ListPreviewsRequest::default())
        .await?
        .into_inner()
        .previews;
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    ensure!(ids == [second.id.as_str(), first.id.as_str()], "{ids:?}");

    // A password: 401 (with a challenge) without it or with a wrong one, 200 with it.
    let mut locked = preview_request(domain, "3");
    locked.password = "open sesame".into();
    let locked = deploy_preview(&api, locked).await?;
    ensure!(
        locked
            .preview
            .as_ref()
            .is_some_and(|p| p.password_protected)
    );
    let host_locked = host_of(&locked)?;
    let right = basic("open sesame");
    served_everywhere(&cluster, &host_locked, "3", &[("authorization", &right)]).await?;
    for edge in &cluster.edges {
        for headers in [vec![], vec![("authorization", basic("open sesame!"))]] {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (response, _) = edge.https_get_with(&host_locked, "/", &headers).await?;
            ensure!(
                response.status == 401,
                "{}: {}",
                edge.name(),
                response.status
            );
            ensure!(
                response
                    .header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Basic")),
                "no challenge"
            );
            ensure!(response.header("x-robots-tag") == Some("noindex"));
        }
    }
    // The hash is all that is stored.
    let mut client = cluster.etcd.client().await?;
    let stored = client
        .get(
            format!("/statiko/v1/deployments/{domain}/{}", locked.id),
            None,
        )
        .await?;
    let stored = String::from_utf8_lossy(stored.kvs()[0].value()).into_owned();
    ensure!(
        stored.contains("$argon2id$") && !stored.contains("open sesame"),
        "{stored}"
    );

    // Deleted: gone from every edge; promoting it is NOT_FOUND.
    let DeletePreviewResponse {} = api
        .deployments()
        .delete_preview(DeletePreviewRequest {
            domain: domain.into(),
            id: second.id.clone(),
        })
        .await?
        .into_inner();
    gone_everywhere(&cluster.edges, &host_3).await?;
    let promote = |id: &str| PromotePreviewRequest {
        domain: domain.into(),
        id: id.to_owned(),
        wait: true,
        wait_timeout: duration(secs(30)),
    };
    assert_status(
        api.deployments().promote_preview(promote(&second.id)).await,
        Code::NotFound,
        &[&second.id, "not found"],
    );
    // Not a preview.
    let live_id = history
        .iter()
        .find(|d| d.state() == DeploymentState::Live)
        .map(|d| d.id.clone())
        .context("a live deployment")?;
    assert_status(
        api.deployments().promote_preview(promote(&live_id)).await,
        Code::FailedPrecondition,
        &["not a preview"],
    );

    // Promoted: live everywhere through the atomic cutover; the preview stays until it expires.
    let PromotePreviewResponse {
        deployment,
        ready_nodes,
    } = api
        .deployments()
        .promote_preview(promote(&first.id))
        .await?
        .into_inner();
    let deployment = deployment.context("the promoted deployment")?;
    ensure!(
        deployment.state() == DeploymentState::Live,
        "{deployment:?}"
    );
    ensure!(deployment.promoted_from == first.id);
    ensure!(deployment.strategy() == DeployStrategy::Atomic);
    ensure!(ready_nodes.len() == 2, "{ready_nodes:?}");
    live_everywhere(&cluster, domain, "2").await?;
    served_everywhere(&cluster, &host_2, "2", &[]).await?;
    Ok(())
}

#[tokio::test]
async fn previews_expire_on_time_and_go_with_their_site() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let domain = "blog.statiko.test";
    let (cluster, api) = cluster(domain).await?;
    let ttl = secs(6);
    let mut short = preview_request(domain, "2");
    short.ttl = duration(ttl);
    let made = Instant::now();
    let short = deploy_preview(&api, short).await?;
    let host = host_of(&short)?;
    served_everywhere(&cluster, &host, "2", &[]).await?;
    let expires = short
        .preview
        .as_ref()
        .and_then(|p| p.expires_at)
        .context("expiry")?;
    let created = short.created_at.context("created")?;
    ensure!(
        expires.seconds - created.seconds == 6,
        "{expires:?} vs {created:?}"
    );

    // Expired: no edge serves it (on time: within a second of the TTL), and the leader
    // deletes the record, its index entry and its certificate.
    gone_everywhere(&cluster.edges, &host).await?;
    let late = made.elapsed();
    ensure!(
        late >= ttl - secs(1) && late <= ttl + secs(3),
        "gone after {late:?}"
    );
    let record = format!("/statiko/v1/deployments/{domain}/{}", short.id);
    let index = format!("/statiko/v1/previews/{}", short.id);
    wait_until(secs(10), async || {
        anyhow::Ok(
            !key_exists(&cluster.etcd, record.clone()).await?
                && !key_exists(&cluster.etcd, index.clone()).await?,
        )
    })
    .await
    .context("the leader deletes an expired preview")?;
    wait_until(secs(20), async || {
        anyhow::Ok(
            leader_cert(&cluster.etcd, CertificateKind::SelfSigned, &host)
                .await?
                .is_none(),
        )
    })
    .await
    .context("the leader deletes an expired preview's certificate")?;
    assert_status(
        api.deployments()
            .get_deployment(GetDeploymentRequest {
                domain: domain.into(),
                id: short.id.clone(),
            })
            .await,
        Code::NotFound,
        &[],
    );

    // A site deleted takes its previews (records, index entries, hosts) with it.
    let kept = deploy_preview(&api, preview_request(domain, "3")).await?;
    let kept_host = host_of(&kept)?;
    served_everywhere(&cluster, &kept_host, "3", &[]).await?;
    // The version a live preview serves cannot be deleted (as a site's cannot); once the
    // preview is gone (with its site, below) it can.
    let delete_web_3 = || DeleteAppRequest {
        name: "web".into(),
        version: "3".into(),
    };
    assert_status(
        api.apps().delete_app(delete_web_3()).await,
        Code::FailedPrecondition,
        &["web@3", "in use by preview", &kept.id, domain],
    );
    api.sites()
        .delete_site(statiko_proto::v1::DeleteSiteRequest {
            domain: domain.into(),
        })
        .await?;
    gone_everywhere(&cluster.edges, &kept_host).await?;
    ensure!(!key_exists(&cluster.etcd, format!("/statiko/v1/previews/{}", kept.id)).await?);
    let listed = api
        .deployments()
        .list_previews(ListPreviewsRequest::default())
        .await?
        .into_inner()
        .previews;
    ensure!(listed.is_empty(), "{listed:?}");
    api.apps().delete_app(delete_web_3()).await?;
    Ok(())
}

/// Corrupts the bundle of `web@version` in the cluster's repository; returns its path and the
/// good bytes.
async fn corrupt_bundle(cluster: &Cluster, version: &str) -> Result<(std::path::PathBuf, Vec<u8>)> {
    let mut client = cluster.etcd.client().await?;
    let app = client
        .get(format!("/statiko/v1/apps/web/{version}"), None)
        .await?;
    let app: model::AppRecord = model::decode(app.kvs().first().context("the app")?.value())?;
    let hex = app.digest.hex();
    let object = cluster
        .control
        .repo_dir()
        .join("bundles")
        .join("sha256")
        .join(hex);
    let good = std::fs::read(&object).with_context(|| format!("read {}", object.display()))?;
    std::fs::write(&object, b"not a bundle")?;
    Ok((object, good))
}

/// A preview whose bundle is corrupt in the repository fails to stage on every edge (the deploy
/// says so); once the bundle is repaired, every edge stages it on a retry and serves it, its
/// record untouched. The same for a site deployed immediately: the previous version serves
/// until the repaired bundle stages on a retry.
#[tokio::test]
async fn a_preview_or_site_that_failed_to_stage_is_retried() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let domain = "retry.statiko.test";
    let (cluster, api) = cluster(domain).await?;
    // web@2 and web@3 were uploaded, never staged: corrupt their bundles in the repository.
    let mut client = cluster.etcd.client().await?;
    let (object, good) = corrupt_bundle(&cluster, "2").await?;
    let (object_3, good_3) = corrupt_bundle(&cluster, "3").await?;

    assert_status(
        api.deployments()
            .deploy_preview(preview_request(domain, "2"))
            .await,
        Code::FailedPrecondition,
        &["failed to stage", "web@2"],
    );
    let listed = api
        .deployments()
        .list_previews(ListPreviewsRequest {
            domain: domain.into(),
        })
        .await?
        .into_inner()
        .previews;
    let [preview] = listed.as_slice() else {
        anyhow::bail!("previews {listed:?}");
    };
    let record_key = format!("/statiko/v1/deployments/{domain}/{}", preview.id);
    let revision = |response: etcd_client::GetResponse| {
        response
            .kvs()
            .first()
            .map(etcd_client::KeyValue::mod_revision)
    };
    let before = revision(client.get(record_key.as_str(), None).await?);
    ensure!(before.is_some(), "the preview record exists");
    // Failing still: the same answer, no edge serves the preview.
    for edge in &cluster.edges {
        let response = edge
            .https_get(&preview.preview.as_ref().context("details")?.host, "/")
            .await?;
        ensure!(
            response.status != 200,
            "{} serves a bundle it could not stage",
            edge.name()
        );
    }

    // Repaired: every edge retries on its own (back-off from 1 s) and serves it.
    std::fs::write(&object, &good)?;
    served_everywhere(&cluster, &host_of(preview)?, "2", &[]).await?;
    let after = revision(client.get(record_key.as_str(), None).await?);
    ensure!(
        after == before,
        "the preview record changed: {before:?} -> {after:?}"
    );
    live_everywhere(&cluster, domain, "1").await?;

    // The site itself, deployed immediately to the corrupt web@3: web@1 keeps serving, every
    // edge reports the error, and once repaired web@3 goes live with no new deploy.
    api.deployments()
        .deploy(DeployRequest {
            domain: domain.to_owned(),
            app: Some(fixtures::app_ref("web", "3")),
            wait: false,
            wait_timeout: None,
            strategy: DeployStrategy::Unspecified as i32,
        })
        .await?;
    wait_until(secs(20), async || {
        let nodes = api.cluster().list_nodes(ListNodesRequest {}).await?;
        let failing = nodes
            .into_inner()
            .nodes
            .iter()
            .filter(|n| {
                n.sites
                    .iter()
                    .any(|s| s.domain == domain && s.error.contains("web@3"))
            })
            .count();
        anyhow::Ok(failing == 2)
    })
    .await
    .context("every edge reports the staging error")?;
    live_everywhere(&cluster, domain, "1").await?;
    std::fs::write(&object_3, &good_3)?;
    wait_until(secs(20), async || {
        anyhow::Ok(live_everywhere(&cluster, domain, "3").await.is_ok())
    })
    .await
    .context("web@3 live everywhere after the repair, with no new deploy")?;
    Ok(())
}

#[tokio::test]
async fn preview_requests_are_validated() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    // Previews off: a clear refusal naming the key.
    let off = Cluster::start(0).await?;
    let api = off.control.admin().await?;
    api.sites().create_site(site("a.statiko.test", &[])).await?;
    fixtures::upload_app(&api, "web", "1").await?;
    let mut request = preview_request("a.statiko.test", "1");
    request.wait = false;
    assert_status(
        api.deployments().deploy_preview(request.clone()).await,
        Code::FailedPrecondition,
        &["previews.domain"],
    );
    drop(api);
    drop(off);

    // No edge: nothing collects an expired preview, so promoting it meets the expiry check.
    let cluster = Cluster::start_with_control(0, with_previews, |o| o).await?;
    let api = cluster.control.admin().await?;
    api.sites().create_site(site("a.statiko.test", &[])).await?;
    fixtures::upload_app(&api, "web", "1").await?;
    for (ttl, needle) in [(Duration::from_secs(1), "ttl"), (secs(91 * 86_400), "ttl")] {
        let mut bad = request.clone();
        bad.ttl = duration(ttl);
        assert_status(
            api.deployments().deploy_preview(bad).await,
            Code::InvalidArgument,
            &[needle],
        );
    }
    let mut bad = request.clone();
    bad.ttl = Some(prost_types::Duration {
        seconds: -5,
        nanos: 0,
    });
    assert_status(
        api.deployments().deploy_preview(bad).await,
        Code::InvalidArgument,
        &["ttl"],
    );
    for password in ["line\n".to_owned(), "x".repeat(1025)] {
        let mut bad = request.clone();
        bad.password = password;
        assert_status(
            api.deployments().deploy_preview(bad).await,
            Code::InvalidArgument,
            &["password"],
        );
    }
    let mut bad = request.clone();
    bad.app = Some(fixtures::app_ref("web", "9"));
    assert_status(
        api.deployments().deploy_preview(bad).await,
        Code::NotFound,
        &["web@9"],
    );

    // Names under previews.domain are the previews' own.
    for (domain, aliases) in [
        (format!("x.{PREVIEWS}"), vec![]),
        ("b.statiko.test".to_owned(), vec![PREVIEWS]),
    ] {
        assert_status(
            api.sites().create_site(site(&domain, &aliases)).await,
            Code::InvalidArgument,
            &["previews.domain", "reserved for preview hosts"],
        );
    }

    let mut short = request.clone();
    short.ttl = duration(secs(5));
    let preview = api
        .deployments()
        .deploy_preview(short)
        .await?
        .into_inner()
        .deployment
        .context("a preview")?;
    tokio::time::sleep(secs(6)).await;
    assert_status(
        api.deployments()
            .promote_preview(PromotePreviewRequest {
                domain: "a.statiko.test".into(),
                id: preview.id.clone(),
                ..PromotePreviewRequest::default()
            })
            .await,
        Code::FailedPrecondition,
        &[&preview.id, "expired"],
    );

    // The CLI: the password from standard input (never an argument), list, promote, delete.
    let mut stk = tokio::process::Command::new(statiko_tests::bins::bin_path("stk"));
    stk.args([
        "--output",
        "json",
        "deploy",
        "a.statiko.test",
        "web@1",
        "--preview",
    ])
    .args(["--ttl", "1h", "--password-stdin"])
    .envs(cluster.control.stk_env(statiko_tests::ADMIN_TOKEN))
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = stk.spawn()?;
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(b"from stdin\n").await?;
    }
    let output = child.wait_with_output().await?;
    ensure!(output.status.success(), "{output:?}");
    let made: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let id = made["deployment"]["id"].as_str().context("id")?.to_owned();
    ensure!(
        made["deployment"]["state"] == "DEPLOYMENT_STATE_PREVIEW",
        "{made}"
    );
    ensure!(
        made["deployment"]["preview"]["password_protected"] == true,
        "{made}"
    );
    let url = made["deployment"]["preview"]["url"]
        .as_str()
        .context("url")?;
    ensure!(
        url.ends_with(&format!("--a-statiko-test.{PREVIEWS}")),
        "{url}"
    );
    let list = cluster.control.stk(["preview", "list"]).await?;
    ensure!(
        list.status.success() && String::from_utf8_lossy(&list.stdout).contains(&id),
        "{list:?}"
    );
    let history = cluster
        .control
        .stk(["deploy", "history", "a.statiko.test"])
        .await?;
    let history = String::from_utf8_lossy(&history.stdout).into_owned();
    ensure!(
        history.contains(&id) && history.contains("preview"),
        "{history}"
    );
    let promoted = cluster.control.stk(["deploy", "promote", &id]).await?;
    ensure!(promoted.status.success(), "{promoted:?}");
    ensure!(
        String::from_utf8_lossy(&promoted.stdout).contains(&format!("promoted preview {id}")),
        "{promoted:?}"
    );
    let deleted = cluster.control.stk(["preview", "delete", &id]).await?;
    ensure!(deleted.status.success(), "{deleted:?}");
    let again = cluster.control.stk(["preview", "delete", &id]).await?;
    ensure!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not found"),
        "{again:?}"
    );
    let no_preview = cluster
        .control
        .stk(["deploy", "a.statiko.test", "web@1", "--ttl", "1h"])
        .await?;
    ensure!(
        !no_preview.status.success(),
        "--ttl without --preview: {no_preview:?}"
    );

    // A deployer token may preview within its scope only.
    let outside = cluster
        .control
        .stk([
            "token",
            "create",
            "ci",
            "--role",
            "deployer",
            "--scope",
            "*.other.test",
        ])
        .await?;
    ensure!(outside.status.success(), "{outside:?}");
    let secret = String::from_utf8(outside.stdout)?
        .split_whitespace()
        .find(|w| w.starts_with("stk_"))
        .context("the token's secret")?
        .to_owned();
    let deployer = api.with_token(&secret)?;
    assert_status(
        deployer.deployments().deploy_preview(request.clone()).await,
        Code::PermissionDenied,
        &["may not deploy a preview to a.statiko.test"],
    );
    let listed = deployer
        .deployments()
        .list_previews(ListPreviewsRequest::default())
        .await?
        .into_inner()
        .previews;
    ensure!(
        listed.is_empty(),
        "a deployer sees only its scope: {listed:?}"
    );
    Ok(())
}
