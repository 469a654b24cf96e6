//! The app manifest end to end inside the edge: bundles with a `_statiko.yaml` are staged from
//! a local repository by the real `Stager` and served by the real `Handler`. Covers every rule
//! kind and option, the precedence order, rewrites, custom error pages, the single-page-app
//! fallback, and a broken manifest that is refused while the previous version keeps serving.

#![expect(clippy::unwrap_used)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use statiko_common::config::{LimitsConfig, RepoConfig, RepoKind};
use statiko_common::crypto::{Digest, hex, sha256};
use statiko_common::model::{AppRecord, BundleFormat};
use statiko_common::repo::BundleRepo;
use statiko_edge::bundle::StagedBundle;
use statiko_edge::serve::{Handler, Scheme};
use statiko_edge::stage::{StageError, Stager};
use statiko_edge::table::{Route, RoutingTable, SiteRoute};

const HOST: &str = "app.test";
const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

struct Env {
    tmp: tempfile::TempDir,
    repo: BundleRepo,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = RepoConfig {
        kind: RepoKind::Local,
        ..RepoConfig::default()
    };
    config.local.path = tmp.path().join("repo");
    let repo = BundleRepo::from_config(&config).unwrap();
    Env { tmp, repo }
}

impl Env {
    fn stager(&self) -> Stager {
        Stager::new(
            &self.tmp.path().join("data"),
            self.repo.clone(),
            LimitsConfig::default(),
            None,
            false,
        )
    }

    async fn publish(&self, version: &str, files: &[(&str, &[u8])]) -> AppRecord {
        let bytes = tar_gz(files);
        let digest = sha256(&bytes);
        let path = self.tmp.path().join(format!("upload-{}", hex(&digest)));
        std::fs::write(&path, &bytes).unwrap();
        self.repo.put_file(&hex(&digest), &path).await.unwrap();
        AppRecord {
            name: "app".into(),
            version: version.into(),
            digest: Digest::from(digest),
            size: bytes.len() as u64,
            format: BundleFormat::TarGz,
            signature: None,
            created_at: 0,
        }
    }

    /// Publishes and stages `files`, returning a handler serving them at [`HOST`].
    async fn serve(&self, files: &[(&str, &[u8])]) -> (Handler, Arc<StagedBundle>) {
        let record = self.publish("1", files).await;
        let bundle = self.stager().stage(&record).await.unwrap();
        (handler(bundle.clone()), bundle)
    }
}

fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_600_000_000);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&tar).unwrap();
    enc.finish().unwrap()
}

fn handler(bundle: Arc<StagedBundle>) -> Handler {
    let mut table = RoutingTable::default();
    table.hosts.insert(
        HOST.into(),
        Route::Site(Arc::new(SiteRoute {
            domain: HOST.into(),
            app: None,
            bundle: Some(bundle),
            counters: Default::default(),
            retired: Arc::new([]),
        })),
    );
    Handler::new(Arc::new(ArcSwap::from_pointee(table)))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn request(handler: &Handler, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, HOST);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = handler
        .handle(builder.body(()).unwrap(), Scheme::Https)
        .await;
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn get(handler: &Handler, path: &str) -> Reply {
    request(handler, Method::GET, path, &[]).await
}

async fn browse(handler: &Handler, path: &str) -> Reply {
    request(handler, Method::GET, path, &[("accept", BROWSER_ACCEPT)]).await
}

/// `Cache-Control`, `Pragma` and an `Expires` about `max_age` seconds from now.
#[track_caller]
fn assert_cached(reply: &Reply, max_age: u64) {
    assert_eq!(
        reply.header("cache-control"),
        Some(format!("max-age={max_age}, public").as_str())
    );
    assert_eq!(reply.header("pragma"), Some("public"));
    let expires = httpdate::parse_http_date(reply.header("expires").unwrap()).unwrap();
    let expected = SystemTime::now() + Duration::from_secs(max_age);
    let delta = expected
        .duration_since(expires)
        .unwrap_or_else(|e| e.duration());
    assert!(delta < Duration::from_secs(5), "expires {expires:?}");
}

#[track_caller]
fn assert_not_cached(reply: &Reply) {
    assert!(reply.header("expires").is_none());
    assert!(reply.header("pragma").is_none());
}

/// The original documentation site's manifest, unchanged.
const DOCS_MANIFEST: &str = "rules:
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
";

#[tokio::test]
async fn original_docs_site_manifest_works_unchanged() {
    let env = env();
    let (handler, bundle) = env
        .serve(&[
            ("index.html", b"<h1>docs</h1>"),
            ("guide/index.html", b"<h1>guide</h1>"),
            ("app.js", b"console.log(1)"),
            ("style.css", b"body{}"),
            ("logo.svg", b"<svg/>"),
            ("photo.JPG", b"jpg"),
            ("data.json", b"{}"),
            ("_statiko.yaml", DOCS_MANIFEST.as_bytes()),
        ])
        .await;
    assert_eq!(bundle.manifest.as_ref().unwrap().rule_count(), 4);
    let month = 30 * 86_400;
    for (path, age) in [
        ("/app.js", month),
        ("/style.css", month),
        ("/logo.svg", month),
        ("/photo.JPG", month),
        ("/index.html", 3600),
        // The index is an internal redirect, so the html rule applies to directories.
        ("/", 3600),
        ("/guide/", 3600),
    ] {
        let reply = get(&handler, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_cached(&reply, age);
    }
    let reply = get(&handler, "/data.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_not_cached(&reply);
    assert!(reply.header("cache-control").is_none());
    // Conditional requests keep the caching headers (nginx's `expires` covers 304).
    let etag = get(&handler, "/app.js")
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let reply = request(
        &handler,
        Method::GET,
        "/app.js",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_MODIFIED);
    assert_cached(&reply, month);
    // The manifest itself is never served.
    assert_eq!(
        get(&handler, "/_statiko.yaml").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(!bundle.files.contains_key("/_statiko.yaml"));
}

const RULES_MANIFEST: &str = r#"
rules:
  - file: html
    options:
      headers: {X-Rule: ext-html}
  - match: '\.HTML$'
    options:
      headers: {X-Rule: regex-html}
  - match: '^/Blog/'
    caseSensitive: true
    options:
      headers: {X-Rule: regex-blog}
  - prefix: /blog/
    options:
      headers: {X-Rule: prefix-blog}
      clientCaching: 10m
  - exact: /blog/special.html
    options:
      headers:
        X-Rule: exact
        Content-Type: text/plain; charset=utf-8
        X-Content-Type-Options: nosniff-custom
  - prefix: /private/
    options:
      deny: true
  - match: '\.bak$'
    options:
      deny: true
  - prefix: /
    options:
      headers: {X-Rule: root}
  - file: txt,_fonts
    options:
      headers: {X-Rule: ext-txt-fonts, Content-Security-Policy: "default-src 'self'"}
page404: errors/404.html
page403: /errors/403.html
"#;

fn rules_bundle() -> Vec<(&'static str, &'static [u8])> {
    vec![
        ("index.html", b"<h1>home</h1>"),
        ("page.html", b"<h1>page</h1>"),
        ("notes.txt", b"notes"),
        ("font.woff2", b"font"),
        ("blog/post.html", b"<h1>post</h1>"),
        ("blog/special.html", b"<h1>special</h1>"),
        ("Blog/upper.html", b"<h1>upper</h1>"),
        ("private/secret.html", b"secret"),
        ("private/index.html", b"secret index"),
        ("old.bak", b"backup"),
        ("assets/empty-dir/.keep", b""),
        ("errors/404.html", b"<h1>custom 404</h1>"),
        ("errors/403.html", b"<h1>custom 403</h1>"),
        ("_statiko.yaml", RULES_MANIFEST.as_bytes()),
    ]
}

#[tokio::test]
async fn rule_kinds_options_and_precedence() {
    let env = env();
    let (handler, _) = env.serve(&rules_bundle()).await;
    let rule = async |path: &str| {
        let reply = get(&handler, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        reply.header("x-rule").map(str::to_owned)
    };
    // Exact beats the prefix and the regexes.
    assert_eq!(rule("/blog/special.html").await.as_deref(), Some("exact"));
    // The longest prefix beats regexes and extensions.
    assert_eq!(
        rule("/blog/post.html").await.as_deref(),
        Some("prefix-blog")
    );
    // Regexes in manifest order (case-insensitive by default) beat extensions.
    assert_eq!(rule("/page.html").await.as_deref(), Some("regex-html"));
    assert_eq!(
        rule("/Blog/upper.html").await.as_deref(),
        Some("regex-html")
    );
    // Extensions, including groups, beat the root prefix.
    assert_eq!(rule("/notes.txt").await.as_deref(), Some("ext-txt-fonts"));
    assert_eq!(rule("/font.woff2").await.as_deref(), Some("ext-txt-fonts"));
    // The root prefix is the fallback.
    assert_eq!(rule("/").await.as_deref(), Some("regex-html"));

    // Headers replace the server's own of the same name.
    let reply = get(&handler, "/blog/special.html").await;
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        reply.header("x-content-type-options"),
        Some("nosniff-custom")
    );
    assert_not_cached(&reply);
    let reply = get(&handler, "/notes.txt").await;
    assert_eq!(
        reply.header("content-security-policy"),
        Some("default-src 'self'")
    );
    // Client caching.
    assert_cached(&get(&handler, "/blog/post.html").await, 600);
    // Options apply to partial content, not to failed preconditions (nginx's status list).
    let reply = request(
        &handler,
        Method::GET,
        "/blog/post.html",
        &[("range", "bytes=0-3")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(reply.header("x-rule"), Some("prefix-blog"));
    assert_cached(&reply, 600);
    let reply = request(
        &handler,
        Method::GET,
        "/blog/post.html",
        &[("if-match", "\"nope\"")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert!(reply.header("x-rule").is_none());
    assert!(reply.header("expires").is_none());

    // Deny answers 404 with the custom page, also for directories, indexes and HEAD.
    for path in ["/private/secret.html", "/private/", "/private", "/old.bak"] {
        let reply = get(&handler, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.text(), "<h1>custom 404</h1>", "{path}");
        assert!(reply.header("x-rule").is_none(), "{path}");
        assert!(reply.header("location").is_none(), "{path}");
    }
    let reply = request(&handler, Method::HEAD, "/private/secret.html", &[]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("content-length"), Some("19"));
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    // A missing path gets the custom 404 page with a 404 status, without the rule's headers.
    let reply = get(&handler, "/missing.html").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.text(), "<h1>custom 404</h1>");
    assert!(reply.header("x-rule").is_none());
    // The manifest is never served.
    let reply = get(&handler, "/_statiko.yaml").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.text(), "<h1>custom 404</h1>");
    // A directory without an index answers 403 with the custom page, since page403 is set.
    let reply = get(&handler, "/assets/empty-dir/").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.text(), "<h1>custom 403</h1>");
    let reply = request(&handler, Method::HEAD, "/assets/empty-dir/", &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body.is_empty());
    // Directory redirects keep working, with the rule of the directory's path.
    let reply = get(&handler, "/blog").await;
    assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(reply.header("location"), Some("/blog/"));
    assert_eq!(reply.header("x-rule"), Some("root"));
    // Error pages can be requested directly too.
    let reply = get(&handler, "/errors/404.html").await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// A rule that sets `Content-Encoding` declares the file stored encoded: it is sent as stored,
/// never as one of the edge's own compressed variants.
#[tokio::test]
async fn content_encoding_rule_serves_the_stored_bytes() {
    let env = env();
    let text = "console.log('stored pre-encoded');\n".repeat(64);
    let manifest = "rules:
  - exact: /pre.js
    options:
      headers: {Content-Encoding: gzip}
";
    let (handler, bundle) = env
        .serve(&[
            ("pre.js", text.as_bytes()),
            ("plain.js", text.as_bytes()),
            ("_statiko.yaml", manifest.as_bytes()),
        ])
        .await;
    assert!(bundle.files["/pre.js"].brotli.is_some());
    let accept = [("accept-encoding", "br, gzip")];
    let reply = request(&handler, Method::GET, "/pre.js", &accept).await;
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(reply.body, text.as_bytes());
    assert!(reply.header("vary").is_none());
    let reply = request(&handler, Method::GET, "/plain.js", &accept).await;
    assert_eq!(reply.header("content-encoding"), Some("br"));
}

#[tokio::test]
async fn rewrites_with_captures() {
    let env = env();
    let manifest = r#"
rewrite:
  "^/blog/(\\d{4})/(.*)$": "/posts/$1-$2.html"
  "^/blog/(.*)$": "/posts/$1.html"
  "^/docs/?$": "/documentation/"
  "^/hidden$": "/_statiko.yaml"
  "^/loop/(.*)$": "/blog/$1"
rules:
  - prefix: /posts/
    options:
      headers: {X-Rule: posts}
  - exact: /posts/denied.html
    options:
      deny: true
"#;
    let (handler, _) = env
        .serve(&[
            ("index.html", b"home"),
            ("posts/hello.html", b"hello post"),
            ("posts/2024-recap.html", b"recap post"),
            ("posts/denied.html", b"denied post"),
            ("documentation/index.html", b"documentation"),
            ("_statiko.yaml", manifest.as_bytes()),
        ])
        .await;
    let reply = get(&handler, "/blog/hello").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello post");
    // Rules match the rewritten path.
    assert_eq!(reply.header("x-rule"), Some("posts"));
    // The first matching rewrite wins.
    assert_eq!(get(&handler, "/blog/2024/recap").await.text(), "recap post");
    // Percent-encoded requests are decoded before rewriting.
    assert_eq!(get(&handler, "/blog/hel%6co").await.text(), "hello post");
    assert_eq!(get(&handler, "/docs").await.text(), "documentation");
    assert_eq!(get(&handler, "/docs/").await.text(), "documentation");
    // A rewrite is internal and the rewritten path is still subject to deny and to the
    // manifest's protection.
    assert_eq!(
        get(&handler, "/blog/denied").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&handler, "/hidden").await.status, StatusCode::NOT_FOUND);
    // One pass only: /loop/hello becomes /blog/hello, which is not rewritten again.
    assert_eq!(
        get(&handler, "/loop/hello").await.status,
        StatusCode::NOT_FOUND
    );
    // Paths no rewrite matches are served as they are.
    assert_eq!(
        get(&handler, "/posts/hello.html").await.text(),
        "hello post"
    );
}

#[tokio::test]
async fn spa_fallback_but_missing_assets_are_404() {
    let env = env();
    let manifest = "spa: true
page404: 404.html
rules:
  - exact: /index.html
    options:
      clientCaching: 5m
  - prefix: /admin/
    options:
      deny: true
";
    let (handler, _) = env
        .serve(&[
            ("index.html", b"<div id=app></div>"),
            ("app.js", b"app()"),
            ("404.html", b"not here"),
            ("static/.keep", b""),
            ("_statiko.yaml", manifest.as_bytes()),
        ])
        .await;
    // Navigations to unknown paths get index.html, with its rule.
    for path in ["/users/42", "/settings/", "/static/", "/deep/link/here"] {
        let reply = browse(&handler, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.text(), "<div id=app></div>", "{path}");
        assert_cached(&reply, 300);
    }
    let reply = request(
        &handler,
        Method::GET,
        "/x",
        &[("sec-fetch-mode", "navigate")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = request(
        &handler,
        Method::HEAD,
        "/users/42",
        &[("accept", BROWSER_ACCEPT)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
    // Missing assets (an extension) still get 404, even from a browser.
    for path in ["/missing.js", "/img/logo.png", "/users/john.doe"] {
        let reply = browse(&handler, path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.text(), "not here", "{path}");
    }
    // Requests that do not ask for HTML get 404.
    for accept in [None, Some("*/*"), Some("application/json")] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let reply = request(&handler, Method::GET, "/api/users", &headers).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{accept:?}");
    }
    // Deny still wins over the fallback.
    assert_eq!(
        browse(&handler, "/admin/panel").await.status,
        StatusCode::NOT_FOUND
    );
    // Existing files are served as usual.
    assert_eq!(browse(&handler, "/app.js").await.text(), "app()");
}

#[tokio::test]
async fn broken_manifest_is_refused_and_the_previous_version_keeps_serving() {
    let env = env();
    let stager = env.stager();
    let v1 = env
        .publish(
            "1",
            &[
                ("index.html", b"v1"),
                ("app.js", b"js"),
                ("_statiko.yaml", DOCS_MANIFEST.as_bytes()),
            ],
        )
        .await;
    let served = stager.stage(&v1).await.unwrap();
    let handler = handler(served.clone());

    let cases: &[(&str, &str, &[&str])] = &[
        (
            "bad duration",
            "rules:\n  - file: js\n  - file: css\n    options: {clientCaching: 5x}\n",
            &["rules[1].options.clientCaching", "invalid duration \"5x\""],
        ),
        (
            "bad regex",
            "rules:\n  - match: '(unclosed'\n",
            &["rules[0].match", "invalid regex"],
        ),
        (
            "unknown option",
            "rules:\n  - prefix: /\n    options: {proxy: 'http://backend'}\n",
            &["rules[0].options", "unknown field `proxy`"],
        ),
        ("bad yaml", "rules: [\n", &["line 1"]),
        (
            "forbidden header",
            "rules:\n  - prefix: /\n    options: {headers: {Connection: close}}\n",
            &["rules[0].options.headers.Connection"],
        ),
        (
            "missing error page",
            "page404: missing.html\n",
            &["page404", "not in the bundle"],
        ),
        ("spa without index", "spa: true\n", &["spa", "index.html"]),
    ];
    for (i, (case, yaml, expected)) in cases.iter().enumerate() {
        let mut files: Vec<(&str, &[u8])> =
            vec![("app.js", b"js v2"), ("_statiko.yaml", yaml.as_bytes())];
        if *case != "spa without index" {
            files.push(("index.html", b"v2"));
        }
        let v2 = env.publish(&format!("2.{i}"), &files).await;
        let err = stager.stage(&v2).await.unwrap_err();
        assert!(matches!(err, StageError::Manifest(_)), "{case}: {err}");
        let message = err.to_string();
        assert!(
            message.starts_with("invalid app manifest _statiko.yaml: "),
            "{case}: {message}"
        );
        for part in *expected {
            assert!(message.contains(part), "{case}: {message:?} lacks {part:?}");
        }
        // Nothing of the refused bundle is kept.
        assert!(stager.cached(&v2.digest).is_none(), "{case}");
        let dir = env.tmp.path().join("data/bundles").join(v2.digest.hex());
        assert!(!dir.exists(), "{case}");
        // The previous version is untouched and keeps serving with its rules.
        assert!(stager.cached(&v1.digest).is_some(), "{case}");
        let reply = get(&handler, "/app.js").await;
        assert_eq!(reply.text(), "js", "{case}");
        assert_cached(&reply, 30 * 86_400);
    }
}

#[tokio::test]
async fn manifest_survives_a_restart() {
    let env = env();
    let record = env
        .publish(
            "1",
            &[
                ("index.html", b"home"),
                ("app.js", b"js"),
                ("_statiko.yaml", DOCS_MANIFEST.as_bytes()),
            ],
        )
        .await;
    env.stager().stage(&record).await.unwrap();
    // A new stager (a restarted edge) loads the staged bundle from disk, manifest included.
    let bundle = env.stager().stage(&record).await.unwrap();
    assert!(bundle.manifest.is_some());
    let handler = handler(bundle);
    assert_cached(&get(&handler, "/app.js").await, 30 * 86_400);
}

#[tokio::test]
async fn bundles_without_a_manifest_behave_as_before() {
    let env = env();
    let (handler, bundle) = env
        .serve(&[("index.html", b"home"), ("empty/.keep", b"")])
        .await;
    assert!(bundle.manifest.is_none());
    let reply = get(&handler, "/").await;
    assert_eq!(reply.text(), "home");
    assert!(reply.header("cache-control").is_none());
    assert_eq!(get(&handler, "/empty/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        browse(&handler, "/route").await.status,
        StatusCode::NOT_FOUND
    );
}
