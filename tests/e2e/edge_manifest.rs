//! The app manifest through the whole system: a bundle with a `_statiko.yaml` is uploaded
//! through control and served by an edge with its rules; a later version with a broken
//! manifest is refused by control at upload and, planted past control, by the edge at staging,
//! each with a message naming the rule, while the previous version keeps serving with its rules
//! and other sites are unaffected.

use anyhow::{Context, Result, ensure};
use statiko_tests::fixtures::{self, Upload, site};
use statiko_tests::{Control, Edge, require_tool, secs, wait_until};

use crate::edge_cluster::plant;

/// The original documentation site's manifest, plus a custom 404 page and a rewrite.
const MANIFEST_V1: &str = r#"rules:
  - file: js
    options:
      clientCaching: 1M
  - file: css
    options:
      clientCaching: 1M
  - file: _images
    options:
      clientCaching: 1M
  - file: html
    options:
      clientCaching: 1h
  - prefix: /private/
    options:
      deny: true
  - exact: /robots.txt
    options:
      headers: {X-Robots-Tag: noindex}
rewrite:
  "^/blog/(.*)$": "/posts/$1.html"
page404: 404.html
"#;

/// Valid YAML, but rule 3's duration is not one.
const MANIFEST_V2: &str = "rules:
  - file: js
    options:
      clientCaching: 1M
  - file: css
    options:
      clientCaching: 1M
  - file: _images
    options:
      clientCaching: 1M
  - file: html
    options:
      clientCaching: 5x
";

async fn deploy(
    control: &Control,
    domain: &str,
    name: &str,
    version: &str,
    wait: bool,
) -> Result<()> {
    let api = control.admin().await?;
    fixtures::deploy(&api, domain, name, version, wait, secs(30)).await?;
    Ok(())
}

/// v1's rules, as served by `edge`.
async fn check_v1(edge: &Edge) -> Result<()> {
    let js = edge.https_get("docs.test", "/app.js").await?;
    ensure!(js.status == 200, "app.js: {}", js.status);
    ensure!(js.text() == "console.log('v1');", "app.js: {:?}", js.text());
    ensure!(
        js.header("cache-control") == Some("max-age=2592000, public"),
        "app.js cache-control {:?}",
        js.header("cache-control")
    );
    ensure!(js.header("pragma") == Some("public"));
    ensure!(
        js.header("expires").is_some_and(|v| v.ends_with(" GMT")),
        "app.js expires {:?}",
        js.header("expires")
    );
    let home = edge.https_get("docs.test", "/").await?;
    ensure!(home.status == 200 && home.text() == "<h1>v1</h1>");
    ensure!(home.header("cache-control") == Some("max-age=3600, public"));
    let robots = edge.https_get("docs.test", "/robots.txt").await?;
    ensure!(robots.header("x-robots-tag") == Some("noindex"));
    let post = edge.https_get("docs.test", "/blog/hello").await?;
    ensure!(
        post.status == 200 && post.text() == "<h1>hello</h1>",
        "rewrite: {} {:?}",
        post.status,
        post.text()
    );
    for path in ["/private/key.txt", "/_statiko.yaml", "/missing.png"] {
        let reply = edge.https_get("docs.test", path).await?;
        ensure!(reply.status == 404, "{path}: {}", reply.status);
        ensure!(
            reply.text() == "<h1>custom 404</h1>",
            "{path}: {:?}",
            reply.text()
        );
    }
    Ok(())
}

#[tokio::test]
async fn manifest_rules_are_served_and_a_broken_manifest_is_refused() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = statiko_tests::cluster::Cluster::start(1).await?;
    let (control, edge) = (&cluster.control, &cluster.edges[0]);
    let api = control.admin().await?;
    api.sites().create_site(site("docs.test", &[])).await?;
    api.sites().create_site(site("other.test", &[])).await?;
    fixtures::upload_app(&api, "other", "1").await?;
    deploy(control, "other.test", "other", "1", true).await?;

    let v1 = fixtures::tar_gz(&[
        ("index.html", b"<h1>v1</h1>"),
        ("app.js", b"console.log('v1');"),
        ("robots.txt", b"User-agent: *"),
        ("posts/hello.html", b"<h1>hello</h1>"),
        ("private/key.txt", b"secret"),
        ("404.html", b"<h1>custom 404</h1>"),
        ("_statiko.yaml", MANIFEST_V1.as_bytes()),
    ])?;
    Upload::new("docs", "1", v1).send(&api).await?;
    deploy(control, "docs.test", "docs", "1", true).await?;
    check_v1(edge).await?;

    let v2 = fixtures::tar_gz(&[
        ("index.html", b"<h1>v2</h1>"),
        ("app.js", b"console.log('v2');"),
        ("_statiko.yaml", MANIFEST_V2.as_bytes()),
    ])?;
    // Control runs the staging rules at upload, so it refuses v2 for the same reason...
    fixtures::assert_status(
        Upload::new("docs", "2", v2.clone()).send(&api).await,
        tonic::Code::InvalidArgument,
        &["invalid app manifest _statiko.yaml: rules[3].options.clientCaching"],
    );
    // ...and v2 reaches the edge only past control (a compromised repository, an older control).
    let digest = fixtures::digest_of(&v2);
    plant(&cluster.etcd, control, "docs", "2", "tar-gz", &v2, &digest).await?;
    deploy(control, "docs.test", "docs", "2", false).await?;
    let (app, error) = wait_until(secs(20), async || {
        let served = edge.served("docs.test").await?;
        anyhow::Ok(served.filter(|(_, error)| error.contains("docs@2")))
    })
    .await
    .with_context(|| format!("no manifest error reported\n{}", edge.log_tail()))?;
    assert_eq!(app, "docs@1", "{error}");
    assert!(
        error.contains("rules[3].options.clientCaching: invalid duration \"5x\""),
        "{error}"
    );
    // The previous version keeps serving, with its rules; the other site is unaffected.
    check_v1(edge).await?;
    let other = edge.https_get("other.test", "/").await?;
    assert_eq!(other.status, 200);
    assert!(other.text().contains("other@1"), "{}", other.text());
    let (_, other_error) = edge
        .served("other.test")
        .await?
        .context("other.test status")?;
    assert_eq!(other_error, "");
    Ok(())
}
