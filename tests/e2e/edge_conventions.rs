//! Generator-shaped bundles through the whole system: uploaded through control, staged and
//! served over HTTPS by an edge, with `_redirects`, `_headers`, `_statiko.yaml` and the
//! conventions (404.html, pretty URLs, immutable hashed assets, HTML no-cache); and malformed
//! `_redirects` / `_headers` refused at upload with their line number.

use anyhow::{Result, ensure};
use statiko_tests::fixtures::{self, Upload, assert_status, site};
use statiko_tests::net::HttpResponse;
use statiko_tests::{Control, ControlOptions, Edge, Etcd, StateStore, require_tool, secs};

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A Vite single-page app: hashed assets and the usual catch-all rewrite.
fn spa_bundle() -> Result<Vec<u8>> {
    fixtures::tar_gz(&[
        ("index.html", b"<div id=app></div>"),
        ("assets/index-BkHx0aQ2.js", b"app()"),
        ("assets/index-C0Hs5KDq.css", b"body{}"),
        ("favicon.ico", b"ico"),
        ("_redirects", b"# Vite SPA\n/*  /index.html  200\n"),
    ])
}

/// A Docusaurus-like docs site under one top folder (flattened): nested `index.html` pages,
/// a page written as `name.html`, hashed assets, a `404.html` and a `_headers`.
fn docs_bundle() -> Result<Vec<u8>> {
    fixtures::tar_gz(&[
        ("build/index.html", b"<h1>docs</h1>"),
        ("build/docs/intro/index.html", b"<h1>intro</h1>"),
        ("build/docs/guide/index.html", b"<h1>guide</h1>"),
        ("build/blog/first-post.html", b"<h1>first post</h1>"),
        ("build/assets/js/main.3f9a1c2b.js", b"main()"),
        ("build/assets/css/styles.5e6f7a8b.css", b"h1{}"),
        ("build/img/logo.svg", b"<svg/>"),
        ("build/404.html", b"<h1>docs 404</h1>"),
        (
            "build/_headers",
            b"/*\n  X-Frame-Options: DENY\n/img/*\n  Cache-Control: public, max-age=3600\n/docs/:section/\n  X-Doc: section\n",
        ),
    ])
}

const BLOG_REDIRECTS: &str = "\
/old/*         /posts/:splat                  301
/blog/:year/:slug  /posts/:year/:slug         302
/feed          https://feeds.example.com/blog 308
/latest        /posts/2024/hello.html         200
/news          /archive/                      301!
/about         /elsewhere                     301
/gone          /errors/gone.html              410
/secret/*      /private/notes.html            200
/archive/*     /archive/                      302
/loop/*        /loop/start                    302
/files/*       /posts/:splat                  200
/missing       /nowhere.html                  200
";

const BLOG_HEADERS: &str = "\
/*
  X-Frame-Options: DENY
  X-Blog: yes
/about
  X-About: 1
";

const BLOG_MANIFEST: &str = "\
conventions: {htmlNoCache: true}
rules:
  - prefix: /private/
    options: {deny: true}
  - exact: /about.html
    options:
      headers: {X-Frame-Options: SAMEORIGIN}
";

/// A blog with all three files.
fn blog_bundle() -> Result<Vec<u8>> {
    fixtures::tar_gz(&[
        ("index.html", b"<h1>blog</h1>"),
        ("posts/2024/hello.html", b"<h1>hello</h1>"),
        ("about.html", b"<h1>about</h1>"),
        ("news.html", b"<h1>news</h1>"),
        ("archive/index.html", b"<h1>archive</h1>"),
        ("errors/gone.html", b"<h1>gone</h1>"),
        ("404.html", b"<h1>blog 404</h1>"),
        ("private/notes.html", b"private"),
        ("app.css", b"p{}"),
        ("_redirects", BLOG_REDIRECTS.as_bytes()),
        ("_headers", BLOG_HEADERS.as_bytes()),
        ("_statiko.yaml", BLOG_MANIFEST.as_bytes()),
    ])
}

#[track_caller]
fn expect(reply: &HttpResponse, status: u16, what: &str) -> Result<()> {
    ensure!(
        reply.status.as_u16() == status,
        "{what}: status {} (expected {status}), body {:?}",
        reply.status,
        reply.text()
    );
    Ok(())
}

fn header_is(reply: &HttpResponse, name: &str, value: Option<&str>, what: &str) -> Result<()> {
    ensure!(
        reply.header(name) == value,
        "{what}: {name} {:?} (expected {value:?})",
        reply.header(name)
    );
    Ok(())
}

async fn check_spa(edge: &Edge) -> Result<()> {
    let host = "spa.test";
    let home = edge.https_get(host, "/").await?;
    expect(&home, 200, "/")?;
    ensure!(home.text() == "<div id=app></div>");
    header_is(&home, "cache-control", Some("no-cache"), "/")?;
    let js = edge.https_get(host, "/assets/index-BkHx0aQ2.js").await?;
    expect(&js, 200, "js")?;
    ensure!(js.text() == "app()");
    header_is(&js, "cache-control", Some(IMMUTABLE), "js")?;
    let css = edge.https_get(host, "/assets/index-C0Hs5KDq.css").await?;
    header_is(&css, "cache-control", Some(IMMUTABLE), "css")?;
    let icon = edge.https_get(host, "/favicon.ico").await?;
    expect(&icon, 200, "favicon")?;
    header_is(&icon, "cache-control", None, "favicon")?;
    // Client-side routes get index.html through the 200 rewrite, with HTML's caching.
    for path in ["/users/42", "/settings/", "/_redirects"] {
        let reply = edge.https_get(host, path).await?;
        expect(&reply, 200, path)?;
        ensure!(
            reply.text() == "<div id=app></div>",
            "{path}: {:?}",
            reply.text()
        );
        header_is(&reply, "cache-control", Some("no-cache"), path)?;
        header_is(&reply, "location", None, path)?;
    }
    // HTML is revalidated through its ETag.
    let etag = home.header("etag").unwrap_or_default().to_owned();
    let (revalidated, _) = edge
        .https_get_with(host, "/", &[("if-none-match", &etag)])
        .await?;
    expect(&revalidated, 304, "revalidation")?;
    header_is(&revalidated, "cache-control", Some("no-cache"), "304")?;
    Ok(())
}

async fn check_docs(edge: &Edge) -> Result<()> {
    let host = "docs.test";
    let intro = edge.https_get(host, "/docs/intro/").await?;
    expect(&intro, 200, "/docs/intro/")?;
    ensure!(intro.text() == "<h1>intro</h1>");
    header_is(&intro, "cache-control", Some("no-cache"), "intro")?;
    header_is(&intro, "x-frame-options", Some("DENY"), "intro")?;
    header_is(&intro, "x-doc", Some("section"), "intro")?;
    let slashless = edge.https_get(host, "/docs/guide").await?;
    expect(&slashless, 301, "/docs/guide")?;
    header_is(&slashless, "location", Some("/docs/guide/"), "/docs/guide")?;
    let post = edge.https_get(host, "/blog/first-post").await?;
    expect(&post, 200, "pretty URL")?;
    ensure!(post.text() == "<h1>first post</h1>");
    header_is(&post, "cache-control", Some("no-cache"), "pretty")?;
    let ugly = edge.https_get(host, "/blog/first-post.html?ref=x").await?;
    expect(&ugly, 301, ".html")?;
    header_is(&ugly, "location", Some("/blog/first-post?ref=x"), ".html")?;
    let js = edge.https_get(host, "/assets/js/main.3f9a1c2b.js").await?;
    expect(&js, 200, "js")?;
    header_is(&js, "cache-control", Some(IMMUTABLE), "js")?;
    header_is(&js, "x-frame-options", Some("DENY"), "js")?;
    // An explicit `_headers` Cache-Control wins over the conventions.
    let logo = edge.https_get(host, "/img/logo.svg").await?;
    header_is(&logo, "cache-control", Some("public, max-age=3600"), "logo")?;
    for path in ["/nope", "/docs/missing/", "/_headers", "/build/index.html"] {
        let missing = edge.https_get(host, path).await?;
        expect(&missing, 404, path)?;
        ensure!(
            missing.text() == "<h1>docs 404</h1>",
            "{path}: {:?}",
            missing.text()
        );
        header_is(&missing, "x-frame-options", None, path)?;
    }
    Ok(())
}

async fn check_blog(edge: &Edge) -> Result<()> {
    let host = "blog.test";
    for (path, status, location) in [
        ("/old/2024/hello?utm=x", 301, "/posts/2024/hello?utm=x"),
        ("/blog/2024/hello", 302, "/posts/2024/hello"),
        ("/feed", 308, "https://feeds.example.com/blog"),
        // Forced: news.html exists (pretty URL), the rule still applies.
        ("/news", 301, "/archive/"),
        ("/about.html", 301, "/about"),
    ] {
        let reply = edge.https_get(host, path).await?;
        expect(&reply, status, path)?;
        header_is(&reply, "location", Some(location), path)?;
        header_is(&reply, "x-blog", None, path)?;
    }
    // A rule redirecting to a path it matches itself: a redirect while the target exists
    // (it shadows the rule), "not found" instead of a loop when it does not.
    let archived = edge.https_get(host, "/archive/2019/x").await?;
    expect(&archived, 302, "/archive/2019/x")?;
    header_is(&archived, "location", Some("/archive/"), "/archive/2019/x")?;
    let archive = edge.https_get(host, "/archive/").await?;
    expect(&archive, 200, "/archive/")?;
    let looping = edge.https_get(host, "/loop/x").await?;
    expect(&looping, 404, "/loop/x")?;
    ensure!(looping.text() == "<h1>blog 404</h1>");
    header_is(&looping, "location", None, "/loop/x")?;
    let hello = edge.https_get(host, "/posts/2024/hello").await?;
    expect(&hello, 200, "hello")?;
    ensure!(hello.text() == "<h1>hello</h1>");
    header_is(&hello, "x-blog", Some("yes"), "hello")?;
    header_is(&hello, "cache-control", Some("no-cache"), "hello")?;
    let latest = edge.https_get(host, "/latest").await?;
    expect(&latest, 200, "rewrite")?;
    ensure!(latest.text() == "<h1>hello</h1>");
    // A splat rewrite stays inside the bundle: a splat that would climb out of it is refused
    // before any rule is looked at, and the rule files are never served through it.
    let through = edge.https_get(host, "/files/2024/hello.html").await?;
    expect(&through, 200, "splat rewrite")?;
    ensure!(through.text() == "<h1>hello</h1>");
    for climb in [
        "/files/%2e%2e/_redirects",
        "/files/..%2f..%2f_statiko.yaml",
        "/files/%2E%2E/%2e%2e/etc/passwd",
    ] {
        let reply = edge.https_get(host, climb).await?;
        expect(&reply, 400, climb)?;
    }
    let rules = edge.https_get(host, "/files/../_redirects").await?;
    ensure!(
        rules.status.as_u16() != 200 && !rules.text().contains("/posts/:splat"),
        "/files/../_redirects: {} {:?}",
        rules.status,
        rules.text()
    );
    // A rewrite to a file the bundle does not have: the bundle's not-found page.
    let missing = edge.https_get(host, "/missing").await?;
    expect(&missing, 404, "/missing")?;
    ensure!(missing.text() == "<h1>blog 404</h1>");
    // Not forced, and /about resolves to about.html: the page, with `_headers` for the
    // request path and the manifest's rule (for the file) winning over `_headers`.
    let about = edge.https_get(host, "/about").await?;
    expect(&about, 200, "/about")?;
    ensure!(about.text() == "<h1>about</h1>");
    header_is(&about, "x-about", Some("1"), "/about")?;
    header_is(&about, "x-frame-options", Some("SAMEORIGIN"), "/about")?;
    let gone = edge.https_get(host, "/gone").await?;
    expect(&gone, 410, "/gone")?;
    ensure!(gone.text() == "<h1>gone</h1>");
    let css = edge.https_get(host, "/app.css").await?;
    expect(&css, 200, "css")?;
    header_is(&css, "cache-control", None, "css")?;
    // Deny wins over a rewrite; the three files are never served.
    for path in [
        "/secret/x",
        "/private/notes.html",
        "/_statiko.yaml",
        "/_redirects",
        "/_headers",
        "/missing",
    ] {
        let reply = edge.https_get(host, path).await?;
        expect(&reply, 404, path)?;
        ensure!(
            reply.text() == "<h1>blog 404</h1>",
            "{path}: {:?}",
            reply.text()
        );
    }
    Ok(())
}

#[tokio::test]
async fn generator_bundles_are_served_with_their_conventions() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    let cluster = statiko_tests::cluster::Cluster::start(1).await?;
    let (control, edge) = (&cluster.control, &cluster.edges[0]);
    let api = control.admin().await?;
    for (domain, name, bundle) in [
        ("spa.test", "spa", spa_bundle()?),
        ("docs.test", "docs", docs_bundle()?),
        ("blog.test", "blog", blog_bundle()?),
    ] {
        api.sites().create_site(site(domain, &[])).await?;
        Upload::new(name, "1", bundle).send(&api).await?;
        fixtures::deploy(&api, domain, name, "1", true, secs(30)).await?;
    }
    check_spa(edge).await?;
    check_docs(edge).await?;
    check_blog(edge).await?;
    Ok(())
}

#[tokio::test]
async fn malformed_redirects_and_headers_are_refused_at_upload() -> Result<()> {
    if !require_tool("etcd") {
        return Ok(());
    }
    statiko_tests::init();
    let etcd = Etcd::start().await?;
    let control = Control::start(ControlOptions::default().store(StateStore::etcd(&etcd))).await?;
    let api = control.admin().await?;
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "_redirects",
            "# ok\n/a /b\n/c /d 399\n",
            &["_redirects line 3", "unsupported status 399"],
        ),
        (
            "_redirects",
            "/api/* https://api.example.com/:splat 200\n",
            &["_redirects line 1", "Statiko is not a proxy"],
        ),
        (
            "_redirects",
            "/x /y\n/* /index.html 302!\n",
            &["_redirects line 2", "redirect loop"],
        ),
        (
            "_redirects",
            "/a/* /../../etc/passwd 200\n",
            &["_redirects line 1", "leaves the bundle"],
        ),
        (
            "_headers",
            "/*\n  X-Frame-Options: DENY\n  Connection: close\n",
            &["_headers line 3", "hop-by-hop"],
        ),
        (
            "_headers",
            "  X-A: 1\n",
            &["_headers line 1", "before any path pattern"],
        ),
    ];
    for (i, (file, text, needles)) in cases.iter().enumerate() {
        // Under a single top folder too: checked at the root once flattened.
        let path = if i % 2 == 0 {
            (*file).to_owned()
        } else {
            format!("site/{file}")
        };
        let index = if i % 2 == 0 {
            "index.html"
        } else {
            "site/index.html"
        };
        let bundle = fixtures::tar_gz(&[(index, b"x"), (&path, text.as_bytes())])?;
        let result = Upload::new("bad", &format!("{i}"), bundle).send(&api).await;
        let status = assert_status(result, tonic::Code::InvalidArgument, needles);
        assert!(
            status.message().starts_with("bundle refused: "),
            "{}",
            status.message()
        );
    }
    // The same files deeper in the tree are content, not rules: accepted.
    let bundle = fixtures::tar_gz(&[
        ("index.html", b"x"),
        ("docs/_redirects", b"not rules at all"),
    ])?;
    Upload::new("bad", "deep", bundle).send(&api).await?;
    Ok(())
}
