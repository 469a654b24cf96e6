//! Component tests of the edge server over real sockets: `serve_http` and `serve_https` on
//! loopback, driven by a rustls + hyper client, by `curl` and by raw TCP.

#![expect(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion};
use statiko_common::tls_client::AcceptAnyServerCert;
use statiko_edge::bundle::{Body, StagedBundle, StaticFile, Variant};
use statiko_edge::serve::{
    CertResolver, Handler, ServerOptions, certified_key_from_pem, serve_http, serve_https,
    server_config,
};
use statiko_edge::table::{Route, RoutingTable, SharedTable, SiteRoute};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "TOP-SECRET-OUTSIDE-THE-BUNDLE";
const APP_JS: &[u8] = b"console.log('hello from the app'); // padding padding padding padding";
const BIG_LEN: usize = 1024 * 1024;

fn big_content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn memory(body: &[u8], content_type: &str, etag: &str) -> StaticFile {
    StaticFile::new(
        body.len() as u64,
        Body::Memory(Bytes::copy_from_slice(body)),
        content_type,
        &format!("\"{etag}\""),
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    )
    .unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = brotli::CompressorWriter::new(&mut out, 4096, 9, 22);
        enc.write_all(data).unwrap();
    }
    out
}

/// A bundle under `dir/root`, with a secret file next to (outside) the root.
fn bundle(dir: &std::path::Path, big_len: usize, tag: &str) -> StagedBundle {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(dir.join("secret.txt"), SECRET).unwrap();
    let big_path = root.join("big.bin");
    std::fs::write(&big_path, big_content(big_len)).unwrap();

    let mut app = memory(APP_JS, "text/javascript; charset=utf-8", "app");
    let gz = gzip(APP_JS);
    app.gzip = Some(Variant::new(gz.len() as u64, Body::Memory(gz.into()), "\"app-gz\"").unwrap());
    let br = brotli(APP_JS);
    app.brotli =
        Some(Variant::new(br.len() as u64, Body::Memory(br.into()), "\"app-br\"").unwrap());
    let mut big = memory(b"", "application/octet-stream", "big");
    big.len = big_len as u64;
    big.body = Body::Disk(big_path);

    let html = "text/html; charset=utf-8";
    let files = HashMap::from([
        (
            "/index.html".to_owned(),
            Arc::new(memory(format!("<h1>home {tag}</h1>").as_bytes(), html, tag)),
        ),
        (
            "/style.css".to_owned(),
            Arc::new(memory(b"body{}", "text/css; charset=utf-8", "css")),
        ),
        ("/app.js".to_owned(), Arc::new(app)),
        ("/big.bin".to_owned(), Arc::new(big)),
        (
            "/docs/index.html".to_owned(),
            Arc::new(memory(b"<h1>docs</h1>", html, "docs")),
        ),
    ]);
    StagedBundle {
        digest: statiko_common::crypto::Digest::from(statiko_common::crypto::sha256(
            tag.as_bytes(),
        )),
        root,
        files,
        dirs: HashSet::from(["/".to_owned(), "/docs".to_owned()]),
        manifest: None,
        rules: Default::default(),
    }
}

fn table(bundle: Arc<StagedBundle>) -> RoutingTable {
    let mut table = RoutingTable {
        revision: 1,
        ..RoutingTable::default()
    };
    table.hosts.insert(
        "example.test".into(),
        Route::Site(Arc::new(SiteRoute {
            domain: "example.test".into(),
            app: None,
            bundle: Some(bundle),
            counters: Default::default(),
            retired: Arc::new([]),
        })),
    );
    table.hosts.insert(
        "www.example.test".into(),
        Route::Alias {
            primary: "example.test".into(),
        },
    );
    table.hosts.insert(
        "new.test".into(),
        Route::Site(Arc::new(SiteRoute {
            domain: "new.test".into(),
            app: None,
            bundle: None,
            counters: Default::default(),
            retired: Arc::new([]),
        })),
    );
    table
}

struct Server {
    http: SocketAddr,
    https: SocketAddr,
    table: SharedTable,
    resolver: Arc<CertResolver>,
    site_cert: CertificateDer<'static>,
    opts: ServerOptions,
    shutdown: CancellationToken,
    http_task: JoinHandle<()>,
    https_task: JoinHandle<()>,
    dir: tempfile::TempDir,
}

async fn start(opts: ServerOptions) -> Server {
    start_with(opts, BIG_LEN).await
}

async fn start_with(opts: ServerOptions, big_len: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let bundle = Arc::new(bundle(dir.path(), big_len, "v1"));
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(table(bundle)));

    let site = rcgen::generate_simple_self_signed(vec![
        "example.test".to_owned(),
        "www.example.test".to_owned(),
    ])
    .unwrap();
    let key = certified_key_from_pem(&site.cert.pem(), &site.signing_key.serialize_pem()).unwrap();
    let resolver = Arc::new(CertResolver::new().unwrap());
    resolver.replace(HashMap::from([
        ("example.test".to_owned(), key.clone()),
        ("www.example.test".to_owned(), key),
    ]));
    let tls = server_config(resolver.clone()).unwrap();

    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = http_listener.local_addr().unwrap();
    let https = https_listener.local_addr().unwrap();
    let handler = Handler::new(table.clone()).with_https_port(https.port());
    let shutdown = CancellationToken::new();
    let http_task = tokio::spawn(serve_http(
        http_listener,
        handler.clone(),
        opts.clone(),
        shutdown.child_token(),
    ));
    let https_task = tokio::spawn(serve_https(
        https_listener,
        tls,
        handler,
        opts.clone(),
        shutdown.child_token(),
    ));
    Server {
        http,
        https,
        table,
        resolver,
        site_cert: site.cert.der().clone(),
        opts,
        shutdown,
        http_task,
        https_task,
        dir,
    }
}

impl Server {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), async {
            self.http_task.await.unwrap();
            self.https_task.await.unwrap();
        })
        .await
        .expect("servers stop");
    }
}

// ---- curl ----

#[derive(Debug)]
struct Curl {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    stderr: String,
    /// The `-w` output, when asked for.
    written: String,
}

impl Curl {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs curl against the HTTPS listener (`https == true`) or the HTTP one, with `host`
/// resolving to loopback. Headers go to a file, the body to stdout.
async fn curl(server: &Server, https: bool, host: &str, path: &str, extra: &[&str]) -> Curl {
    let (scheme, port) = if https {
        ("https", server.https.port())
    } else {
        ("http", server.http.port())
    };
    let headers_file = server.dir.path().join(format!(
        "curl-headers-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let output = tokio::process::Command::new("curl")
        .args(["-sSk", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("-D")
        .arg(&headers_file)
        .args(extra)
        .arg(format!("{scheme}://{host}:{port}{path}"))
        .output()
        .await
        .expect("run curl");
    let raw = std::fs::read_to_string(&headers_file).unwrap_or_default();
    let _ = std::fs::remove_file(&headers_file);
    let mut lines = raw.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let written_marker = b"\n--written--";
    let (body, written) = match output
        .stdout
        .windows(written_marker.len())
        .rposition(|w| w == written_marker)
    {
        Some(i) => (
            output.stdout[..i].to_vec(),
            String::from_utf8_lossy(&output.stdout[i + written_marker.len()..]).into_owned(),
        ),
        None => (output.stdout.clone(), String::new()),
    };
    Curl {
        status,
        headers,
        body,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        written,
    }
}

// ---- rustls + hyper client ----

fn client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(&provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

struct TlsInfo {
    cert: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> (ClientTls, TlsInfo) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let conn = tls.get_ref().1;
    let info = TlsInfo {
        cert: conn.peer_certificates().unwrap()[0].clone().into_owned(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
    };
    (tls, info)
}

/// One GET over a fresh TLS connection, HTTP/2 when ALPN picked it.
async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    config: Arc<ClientConfig>,
) -> (TlsInfo, StatusCode, http::HeaderMap, Bytes) {
    let (tls, info) = tls_connect(addr, sni, config).await;
    let io = TokioIo::new(tls);
    let response = if info.alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(req).await.unwrap()
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (info, parts.status, parts.headers, body)
}

// ---- tests ----

#[tokio::test]
async fn sni_picks_the_site_certificate_and_unknown_names_get_the_default() {
    let server = start(ServerOptions::default()).await;
    let config = client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);

    let (info, status, _, body) = tls_get(
        server.https,
        "example.test",
        "example.test",
        "/",
        config.clone(),
    )
    .await;
    assert_eq!(info.cert, server.site_cert);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"<h1>home v1</h1>");

    let (info, status, _, body) = tls_get(
        server.https,
        "WWW.Example.Test",
        "www.example.test",
        "/x",
        config.clone(),
    )
    .await;
    assert_eq!(info.cert, server.site_cert);
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert!(body.is_empty());

    let default = server.resolver.default_key().cert[0].clone();
    let (info, status, _, body) = tls_get(
        server.https,
        "unknown.test",
        "unknown.test",
        "/",
        config.clone(),
    )
    .await;
    assert_eq!(info.cert, default);
    assert_ne!(info.cert, server.site_cert);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&body).contains("home"));

    // No SNI at all (an IP address): the default certificate.
    let (_, info) = tls_connect(
        server.https,
        "127.0.0.1",
        client_config(rustls::DEFAULT_VERSIONS, &[]),
    )
    .await;
    assert_eq!(info.cert, default);

    // curl sees the site certificate's names.
    let out = curl(&server, true, "example.test", "/", &["-v"]).await;
    assert_eq!(out.status, 200);
    assert!(
        out.stderr.contains("example.test"),
        "curl -v should show the certificate: {}",
        out.stderr
    );
    let stats = server.opts.stats.snapshot();
    assert!(stats.tls_handshakes >= 4, "{stats:?}");
    server.stop().await;
}

#[tokio::test]
async fn http2_and_http1_over_alpn() {
    let server = start(ServerOptions::default()).await;
    let (info, status, _, body) = tls_get(
        server.https,
        "example.test",
        "example.test",
        "/docs/",
        client_config(rustls::DEFAULT_VERSIONS, &[b"h2", b"http/1.1"]),
    )
    .await;
    assert_eq!(info.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"<h1>docs</h1>"[..]));

    let (info, status, _, _) = tls_get(
        server.https,
        "example.test",
        "example.test",
        "/",
        client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]),
    )
    .await;
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(status, StatusCode::OK);

    let out = curl(
        &server,
        true,
        "example.test",
        "/",
        &["--http2", "-w", "\n--written--%{http_version}"],
    )
    .await;
    assert_eq!((out.status, out.written.as_str()), (200, "2"));
    assert!(out.header("date").is_some());
    assert!(out.header("server").is_none());
    let out = curl(
        &server,
        true,
        "example.test",
        "/",
        &["--http1.1", "-w", "\n--written--%{http_version}"],
    )
    .await;
    assert_eq!((out.status, out.written.as_str()), (200, "1.1"));
    assert!(out.header("date").is_some());
    assert!(out.header("server").is_none());
    server.stop().await;
}

#[tokio::test]
async fn tls_versions() {
    let server = start(ServerOptions::default()).await;
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let (info, status, _, _) = tls_get(
            server.https,
            "example.test",
            "example.test",
            "/",
            client_config(&[version], &[b"http/1.1"]),
        )
        .await;
        assert_eq!(info.version, Some(expected));
        assert_eq!(status, StatusCode::OK);
    }
    // TLS 1.1: refused. SECLEVEL=0 lets OpenSSL 3 offer it at all.
    let output = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-connect",
        ])
        .arg(server.https.to_string())
        .args(["-servername", "example.test"])
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    if let Ok(output) = output {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success(),
            "tls 1.1 handshake succeeded: {all}"
        );
        assert!(
            all.contains("Cipher is (NONE)")
                && (all.contains("alert handshake failure")
                    || all.contains("alert protocol version")),
            "expected the server to answer a TLS 1.1 hello with an alert: {all}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn http_redirects_to_https_except_acme() {
    let server = start(ServerOptions::default()).await;
    let port = server.https.port();
    let out = curl(&server, false, "example.test", "/a/b.html?x=1&y=%20", &[]).await;
    assert_eq!(out.status, 301);
    assert_eq!(
        out.header("location"),
        Some(format!("https://example.test:{port}/a/b.html?x=1&y=%20").as_str())
    );
    // An alias on HTTP goes straight to the primary domain.
    let out = curl(&server, false, "www.example.test", "/p?q", &[]).await;
    assert_eq!(
        out.header("location"),
        Some(format!("https://example.test:{port}/p?q").as_str())
    );
    let out = curl(
        &server,
        false,
        "example.test",
        "/.well-known/acme-challenge/abc",
        &[],
    )
    .await;
    assert_eq!(out.status, 404);
    assert!(out.header("location").is_none());
    let out = curl(&server, false, "unknown.test", "/", &[]).await;
    assert_eq!(out.status, 404);
    assert!(out.header("location").is_none());

    // Alias on HTTPS.
    let out = curl(&server, true, "www.example.test", "/docs/?a=b", &[]).await;
    assert_eq!(out.status, 301);
    assert_eq!(
        out.header("location"),
        Some(format!("https://example.test:{port}/docs/?a=b").as_str())
    );
    // Missing Host on HTTP/1.1 (curl sends an empty one when asked).
    let out = curl(&server, true, "example.test", "/", &["-H", "Host:"]).await;
    assert_eq!(out.status, 400);
    server.stop().await;
}

#[tokio::test]
async fn pages_index_directories_and_mime() {
    let server = start(ServerOptions::default()).await;
    let out = curl(&server, true, "new.test", "/", &[]).await;
    assert_eq!(out.status, 200);
    assert!(out.body_str().contains("Statiko is running"));
    assert_eq!(out.header("content-type"), Some("text/html; charset=utf-8"));

    let out = curl(&server, true, "example.test", "/", &[]).await;
    assert_eq!(
        (out.status, out.body_str().as_str()),
        (200, "<h1>home v1</h1>")
    );
    assert_eq!(out.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(out.header("accept-ranges"), Some("bytes"));
    assert_eq!(out.header("content-length"), Some("16"));
    assert_eq!(
        out.header("last-modified"),
        Some("Tue, 14 Nov 2023 22:13:20 GMT")
    );

    let out = curl(&server, true, "example.test", "/docs?x=1", &[]).await;
    assert_eq!(out.status, 301);
    assert_eq!(out.header("location"), Some("/docs/?x=1"));
    let out = curl(&server, true, "example.test", "/docs/", &[]).await;
    assert_eq!(
        (out.status, out.body_str().as_str()),
        (200, "<h1>docs</h1>")
    );

    let out = curl(&server, true, "example.test", "/style.css", &[]).await;
    assert_eq!(out.header("content-type"), Some("text/css; charset=utf-8"));
    let out = curl(&server, true, "example.test", "/app.js", &[]).await;
    assert_eq!(
        out.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(out.header("vary"), Some("Accept-Encoding"));

    let out = curl(&server, true, "example.test", "/missing", &[]).await;
    assert_eq!(out.status, 404);
    assert!(out.body_str().contains("404"));
    let out = curl(&server, true, "example.test", "/", &["-X", "POST"]).await;
    assert_eq!(out.status, 405);
    assert_eq!(out.header("allow"), Some("GET, HEAD"));

    let out = curl(&server, true, "example.test", "/big.bin", &["-I"]).await;
    assert_eq!(out.status, 200);
    assert_eq!(
        out.header("content-length"),
        Some(BIG_LEN.to_string().as_str())
    );
    // `-I` prints the headers to stdout too; no body bytes follow them.
    assert!(out.body.len() < 1024);
    server.stop().await;
}

#[tokio::test]
async fn conditional_requests() {
    let server = start(ServerOptions::default()).await;
    let out = curl(&server, true, "example.test", "/", &[]).await;
    let etag = out.header("etag").unwrap().to_owned();
    let modified = out.header("last-modified").unwrap().to_owned();
    for http in ["--http1.1", "--http2"] {
        let inm = format!("If-None-Match: {etag}");
        let out = curl(&server, true, "example.test", "/", &[http, "-H", &inm]).await;
        assert_eq!(out.status, 304, "{http}");
        assert!(out.body.is_empty());
        assert_eq!(out.header("etag"), Some(etag.as_str()));
        let weak = format!("If-None-Match: \"other\", W/{etag}");
        let out = curl(&server, true, "example.test", "/", &[http, "-H", &weak]).await;
        assert_eq!(out.status, 304);
        let ims = format!("If-Modified-Since: {modified}");
        let out = curl(&server, true, "example.test", "/", &[http, "-H", &ims]).await;
        assert_eq!(out.status, 304);
        // If-None-Match takes precedence over If-Modified-Since.
        let out = curl(
            &server,
            true,
            "example.test",
            "/",
            &[http, "-H", &ims, "-H", "If-None-Match: \"stale\""],
        )
        .await;
        assert_eq!(out.status, 200);
        let old = "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT";
        let out = curl(&server, true, "example.test", "/", &[http, "-H", old]).await;
        assert_eq!(out.status, 200);
    }
    // 304 of a file with variants keeps Vary and the variant's ETag.
    let out = curl(
        &server,
        true,
        "example.test",
        "/app.js",
        &[
            "-H",
            "Accept-Encoding: gzip",
            "-H",
            "If-None-Match: \"app-gz\"",
        ],
    )
    .await;
    assert_eq!(out.status, 304);
    assert_eq!(out.header("vary"), Some("Accept-Encoding"));
    assert_eq!(out.header("etag"), Some("\"app-gz\""));
    server.stop().await;
}

#[tokio::test]
async fn ranges_memory_and_disk() {
    let server = start(ServerOptions::default()).await;
    let big = big_content(BIG_LEN);
    let out = curl(
        &server,
        true,
        "example.test",
        "/big.bin",
        &["-r", "100-199"],
    )
    .await;
    assert_eq!(out.status, 206);
    assert_eq!(out.body, big[100..200]);
    assert_eq!(
        out.header("content-range"),
        Some(format!("bytes 100-199/{BIG_LEN}").as_str())
    );
    let out = curl(&server, true, "example.test", "/big.bin", &["-r", "-10"]).await;
    assert_eq!(out.body, big[BIG_LEN - 10..]);
    let out = curl(
        &server,
        true,
        "example.test",
        "/big.bin",
        &["-r", "1000000-"],
    )
    .await;
    assert_eq!(out.body, big[1_000_000..]);
    let out = curl(&server, true, "example.test", "/big.bin", &["--http2"]).await;
    assert_eq!(out.status, 200);
    assert!(out.body == big, "full disk body over HTTP/2");

    let out = curl(&server, true, "example.test", "/app.js", &["-r", "0-6"]).await;
    assert_eq!((out.status, &out.body[..]), (206, &b"console"[..]));
    assert!(out.header("content-encoding").is_none());
    let out = curl(&server, true, "example.test", "/app.js", &["-r", "5000-"]).await;
    assert_eq!(out.status, 416);
    assert_eq!(
        out.header("content-range"),
        Some(format!("bytes */{}", APP_JS.len()).as_str())
    );
    let out = curl(&server, true, "example.test", "/app.js", &["-r", "0-1,4-5"]).await;
    assert_eq!((out.status, &out.body[..]), (200, APP_JS));
    let out = curl(
        &server,
        true,
        "example.test",
        "/app.js",
        &["-r", "0-6", "-H", "If-Range: \"app\""],
    )
    .await;
    assert_eq!(out.status, 206);
    let out = curl(
        &server,
        true,
        "example.test",
        "/app.js",
        &["-r", "0-6", "-H", "If-Range: \"old\""],
    )
    .await;
    assert_eq!(out.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn precompressed_variants() {
    let server = start(ServerOptions::default()).await;
    for (accept, encoding, etag) in [
        ("br", Some("br"), "\"app-br\""),
        ("gzip, deflate, br", Some("br"), "\"app-br\""),
        ("gzip", Some("gzip"), "\"app-gz\""),
        ("gzip;q=1, br;q=0.1", Some("gzip"), "\"app-gz\""),
        ("identity", None, "\"app\""),
        ("br;q=0, gzip;q=0", None, "\"app\""),
    ] {
        let ae = format!("Accept-Encoding: {accept}");
        let out = curl(&server, true, "example.test", "/app.js", &["-H", &ae]).await;
        assert_eq!(out.status, 200, "{accept}");
        assert_eq!(out.header("content-encoding"), encoding, "{accept}");
        assert_eq!(out.header("etag"), Some(etag), "{accept}");
        assert_eq!(out.header("vary"), Some("Accept-Encoding"), "{accept}");
        assert_eq!(
            out.header("content-length"),
            Some(out.body.len().to_string().as_str())
        );
    }
    // curl decodes both and gets the original bytes back.
    for accept in ["br", "gzip"] {
        let ae = format!("Accept-Encoding: {accept}");
        let out = curl(
            &server,
            true,
            "example.test",
            "/app.js",
            &["--compressed", "-H", &ae],
        )
        .await;
        assert_eq!(out.body, APP_JS, "{accept}");
    }
    // Files without variants carry no Vary.
    let out = curl(
        &server,
        true,
        "example.test",
        "/",
        &["-H", "Accept-Encoding: gzip"],
    )
    .await;
    assert!(out.header("vary").is_none());
    assert!(out.header("content-encoding").is_none());
    server.stop().await;
}

#[tokio::test]
async fn traversal_never_leaves_the_bundle() {
    let server = start(ServerOptions::default()).await;
    for path in [
        "/../secret.txt",
        "/../../secret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/docs/..%2f..%2fsecret.txt",
        "/secret.txt%00.html",
        "/%00",
        "/./index.html",
        "//../secret.txt",
        "/big.bin/../../secret.txt",
        "/_statiko.yaml",
    ] {
        for https in [true, false] {
            let out = curl(&server, https, "example.test", path, &["--path-as-is"]).await;
            if https {
                assert!(
                    out.status == 400 || out.status == 404,
                    "{path}: {}",
                    out.status
                );
            }
            assert!(!out.body_str().contains(SECRET), "{path}");
        }
    }
    server.stop().await;
}

async fn read_to_end_or_reset(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .expect("the server closes the connection");
    buf
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let server = start(ServerOptions::default()).await;
    let mut stream = TcpStream::connect(server.http).await.unwrap();
    let big = "a".repeat(32 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: example.test\r\nX-Big: {big}\r\n\r\n");
    let _ = stream.write_all(req.as_bytes()).await;
    let response = read_to_end_or_reset(&mut stream).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");

    // HTTP/2 over TLS: curl's request fails or is refused.
    let header = format!("X-Big: {big}");
    let out = curl(
        &server,
        true,
        "example.test",
        "/",
        &["--http2", "-H", &header],
    )
    .await;
    assert_ne!(out.status, 200, "{}", out.stderr);

    // A normal request still works.
    let out = curl(&server, true, "example.test", "/", &[]).await;
    assert_eq!(out.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let opts = ServerOptions {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(400),
        tls_handshake_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = start(opts).await;
    // A request head that never completes.
    let mut stream = TcpStream::connect(server.http).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let response = read_to_end_or_reset(&mut stream).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = String::from_utf8_lossy(&response);
    // hyper closes without a response; a 408 would be fine too.
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );

    // A TLS client that never says hello.
    let mut stream = TcpStream::connect(server.https).await.unwrap();
    let response = read_to_end_or_reset(&mut stream).await;
    assert!(response.is_empty());

    // An idle HTTP/2 connection is closed.
    let (tls, info) = tls_connect(
        server.https,
        "example.test",
        client_config(rustls::DEFAULT_VERSIONS, &[b"h2"]),
    )
    .await;
    assert_eq!(info.alpn.as_deref(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("https://example.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("idle h2 connection closed by the server")
        .unwrap()
        .ok();
    assert!(server.opts.stats.snapshot().tls_handshake_failures >= 1);
    server.stop().await;
}

#[tokio::test]
async fn connection_cap() {
    let opts = ServerOptions {
        max_connections: 1,
        ..ServerOptions::default()
    };
    let server = start(opts).await;
    let mut first = TcpStream::connect(server.http).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 301"));

    // The first connection is kept alive and holds the only slot.
    let mut second = TcpStream::connect(server.http).await.unwrap();
    let _ = second
        .write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        .await;
    assert!(read_to_end_or_reset(&mut second).await.is_empty());
    assert!(server.opts.stats.snapshot().connections_rejected >= 1);

    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut third = TcpStream::connect(server.http).await.unwrap();
        third
            .write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let response = read_to_end_or_reset(&mut third).await;
        if response.starts_with(b"HTTP/1.1 301") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn table_swaps_are_atomic_per_request() {
    let server = start(ServerOptions::default()).await;
    let old = server.table.load_full();
    let new_dir = tempfile::tempdir().unwrap();
    let new = Arc::new(table(Arc::new(bundle(new_dir.path(), 16, "v2"))));
    let swapping = CancellationToken::new();
    let swapper = {
        let table = server.table.clone();
        let (old, new) = (old.clone(), new.clone());
        let swapping = swapping.clone();
        tokio::spawn(async move {
            let mut flip = false;
            while !swapping.is_cancelled() {
                table.store(if flip { old.clone() } else { new.clone() });
                flip = !flip;
                tokio::task::yield_now().await;
            }
        })
    };
    let config = client_config(rustls::DEFAULT_VERSIONS, &[b"h2"]);
    let (tls, _) = tls_connect(server.https, "example.test", config).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut seen = HashSet::new();
    for _ in 0..300 {
        let req = Request::get("https://example.test/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        let etag = response.headers()[header::ETAG]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        match etag.as_str() {
            "\"v1\"" => assert_eq!(body, "<h1>home v1</h1>"),
            "\"v2\"" => assert_eq!(body, "<h1>home v2</h1>"),
            other => panic!("unexpected etag {other}"),
        }
        seen.insert(etag);
    }
    swapping.cancel();
    swapper.await.unwrap();
    assert_eq!(seen.len(), 2, "both versions were served: {seen:?}");
    server.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_drains_in_flight_requests() {
    const LEN: usize = 32 * 1024 * 1024;
    let opts = ServerOptions {
        shutdown_grace: Duration::from_secs(20),
        ..ServerOptions::default()
    };
    let server = start_with(opts, LEN).await;
    let (tls, _) = tls_connect(
        server.https,
        "example.test",
        client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]),
    )
    .await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/big.bin")
        .header(header::HOST, "example.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Shut down while the body is still streaming.
    server.shutdown.cancel();
    let mut body = response.into_body();
    let mut received = 0usize;
    let mut first_chunk = true;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            received += data.len();
        }
        if first_chunk {
            first_chunk = false;
            // New connections are refused once accepting stopped.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while TcpStream::connect(server.https).await.is_ok() {
                assert!(tokio::time::Instant::now() < deadline, "still accepting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                !server.https_task.is_finished(),
                "drain waited for the request"
            );
        }
    }
    assert_eq!(received, LEN);
    tokio::time::timeout(Duration::from_secs(10), async {
        let Server {
            http_task,
            https_task,
            ..
        } = server;
        http_task.await.unwrap();
        https_task.await.unwrap();
    })
    .await
    .expect("servers return after draining");
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let opts = ServerOptions {
        shutdown_grace: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = start_with(opts, 32 * 1024 * 1024).await;
    let mut stream = TcpStream::connect(server.http).await.unwrap();
    // Hold an HTTP/1 request mid-head: graceful shutdown cannot finish it.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = tokio::time::Instant::now();
    server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(stream);
}
