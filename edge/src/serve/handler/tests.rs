//! Service-level tests of the handler: requests in, responses out, no sockets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;

use super::*;
use crate::bundle::{Body, StagedBundle, StaticFile, Variant};
use crate::table::SiteRoute;

fn memory(body: &'static [u8], etag: &str) -> StaticFile {
    StaticFile::new(
        body.len() as u64,
        Body::Memory(Bytes::from_static(body)),
        "text/plain; charset=utf-8",
        etag,
        UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    )
    .unwrap()
}

fn handler(disk: Option<std::path::PathBuf>) -> Handler {
    let mut app = memory(b"0123456789", "\"app\"");
    app.gzip =
        Some(Variant::new(4, Body::Memory(Bytes::from_static(b"GZIP")), "\"app-gz\"").unwrap());
    app.brotli =
        Some(Variant::new(2, Body::Memory(Bytes::from_static(b"BR")), "\"app-br\"").unwrap());
    let mut files = HashMap::from([
        (
            "/index.html".to_owned(),
            Arc::new(memory(b"home", "\"home\"")),
        ),
        ("/app.js".to_owned(), Arc::new(app)),
        (
            "/docs/index.html".to_owned(),
            Arc::new(memory(b"docs", "\"d\"")),
        ),
    ]);
    if let Some(path) = disk {
        let mut big = memory(b"", "\"big\"");
        big.len = 10;
        big.body = Body::Disk(path);
        files.insert("/big.bin".to_owned(), Arc::new(big));
    }
    let bundle = StagedBundle {
        digest: statiko_common::crypto::Digest::from([0; 32]),
        root: "/nonexistent".into(),
        files,
        dirs: HashSet::from(["/".to_owned(), "/docs".to_owned()]),
        manifest: None,
        rules: Default::default(),
    };
    let mut table = RoutingTable::default();
    table.hosts.insert(
        "example.test".into(),
        Route::Site(Arc::new(SiteRoute {
            domain: "example.test".into(),
            app: None,
            bundle: Some(Arc::new(bundle)),
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
    Handler::new(Arc::new(ArcSwap::from_pointee(table))).with_https_port(8443)
}

fn get(host: &str, uri: &str) -> http::request::Builder {
    Request::get(uri).header(header::HOST, host)
}

async fn send(
    handler: &Handler,
    req: http::request::Builder,
    scheme: Scheme,
) -> (StatusCode, HeaderMap, Bytes) {
    let response = handler.handle(req.body(()).unwrap(), scheme).await;
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[test]
fn handle_future_is_send() {
    fn is_send<T: Send>(_: &T) {}
    let handler = handler(None);
    let future = handler.handle(Request::new(()), Scheme::Https);
    is_send(&future);
}

#[tokio::test]
async fn routing_and_redirects() {
    let h = handler(None);
    let (status, headers, _) = send(&h, get("example.test", "/a/b?x=1&y"), Scheme::Http).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        headers[header::LOCATION],
        "https://example.test:8443/a/b?x=1&y"
    );

    let (status, headers, _) = send(&h, get("WWW.example.test:80", "/p?q"), Scheme::Http).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers[header::LOCATION], "https://example.test:8443/p?q");

    let (status, headers, _) = send(&h, get("www.example.test", "/p?q"), Scheme::Https).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers[header::LOCATION], "https://example.test:8443/p?q");

    let h443 = h.clone().with_https_port(443);
    let (_, headers, _) = send(&h443, get("example.test", "/"), Scheme::Http).await;
    assert_eq!(headers[header::LOCATION], "https://example.test/");

    let acme = "/.well-known/acme-challenge/token";
    let (status, headers, _) = send(&h, get("example.test", acme), Scheme::Http).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(headers.get(header::LOCATION).is_none());

    for scheme in [Scheme::Http, Scheme::Https] {
        let (status, _, body) = send(&h, get("other.test", "/"), scheme).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(!body.windows(4).any(|w| w == b"home"));
    }

    let (status, _, _) = send(&h, Request::get("/"), Scheme::Https).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, headers, _) = send(
        &h,
        get("example.test", "/").method(Method::POST),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET, HEAD");

    let (status, _, body) = send(&h, get("new.test", "/anything"), Scheme::Https).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("No app has been deployed"));

    // Absolute-form / HTTP/2 authority wins over the Host header.
    let (status, _, body) = send(
        &h,
        Request::get("https://example.test/").header(header::HOST, "other.test"),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"home");
}

#[tokio::test]
async fn plain_http_serves_when_redirects_are_off() {
    let h = handler(None).with_http_redirect(false);
    let (status, _, body) = send(&h, get("example.test", "/"), Scheme::Http).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"home");
    // Aliases still point at the primary domain, and unknown hosts still get the 404 page.
    let (status, headers, _) = send(&h, get("www.example.test", "/p"), Scheme::Http).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers[header::LOCATION], "https://example.test:8443/p");
    let (status, _, _) = send(&h, get("other.test", "/"), Scheme::Http).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn files_and_directories() {
    let h = handler(None);
    let (status, headers, body) = send(&h, get("example.test", "/"), Scheme::Https).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"home");
    assert_eq!(headers[header::CONTENT_LENGTH], "4");
    assert_eq!(headers[header::ETAG], "\"home\"");
    assert_eq!(
        headers[header::LAST_MODIFIED],
        "Tue, 14 Nov 2023 22:13:20 GMT"
    );
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert!(headers.get(header::VARY).is_none());
    assert!(headers.get(header::SERVER).is_none());

    let (status, headers, _) = send(&h, get("example.test", "/docs?a=1"), Scheme::Https).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers[header::LOCATION], "/docs/?a=1");
    // The redirect never becomes protocol-relative.
    let (_, headers, _) = send(&h, get("example.test", "//docs"), Scheme::Https).await;
    assert_eq!(headers[header::LOCATION], "/docs/");

    let (status, _, body) = send(&h, get("example.test", "/docs/"), Scheme::Https).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"docs"[..]));

    for bad in ["/%2e%2e/x", "/..%2f", "/%00", "/a%5cb"] {
        let (status, _, _) = send(&h, get("example.test", bad), Scheme::Https).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _, _) = send(&h, get("example.test", "/nope"), Scheme::Https).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn negotiation_conditionals_and_ranges() {
    let h = handler(None);
    let ae = |v: &str| get("example.test", "/app.js").header(header::ACCEPT_ENCODING, v);
    let (_, headers, body) = send(&h, ae("gzip, br"), Scheme::Https).await;
    assert_eq!(&body[..], b"BR");
    assert_eq!(headers[header::CONTENT_ENCODING], "br");
    assert_eq!(headers[header::ETAG], "\"app-br\"");
    assert_eq!(headers[header::VARY], "Accept-Encoding");
    assert_eq!(headers[header::CONTENT_LENGTH], "2");
    let (_, headers, body) = send(&h, ae("gzip"), Scheme::Https).await;
    assert_eq!(&body[..], b"GZIP");
    assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
    let (_, headers, body) = send(&h, ae("identity"), Scheme::Https).await;
    assert_eq!(&body[..], b"0123456789");
    assert!(headers.get(header::CONTENT_ENCODING).is_none());
    assert_eq!(headers[header::VARY], "Accept-Encoding");

    let (status, headers, body) = send(
        &h,
        ae("gzip").header(header::IF_NONE_MATCH, "\"app-gz\""),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers[header::ETAG], "\"app-gz\"");
    assert_eq!(headers[header::VARY], "Accept-Encoding");

    let (status, headers, body) = send(
        &h,
        ae("gzip, br").header(header::RANGE, "bytes=2-4"),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&body[..], b"234");
    assert_eq!(headers[header::CONTENT_RANGE], "bytes 2-4/10");
    assert!(headers.get(header::CONTENT_ENCODING).is_none());

    let (status, headers, _) = send(
        &h,
        ae("gzip").header(header::RANGE, "bytes=10-"),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers[header::CONTENT_RANGE], "bytes */10");

    let (status, _, body) = send(
        &h,
        ae("")
            .header(header::RANGE, "bytes=0-1")
            .header(header::IF_RANGE, "\"stale\""),
        Scheme::Https,
    )
    .await;
    assert_eq!((status, body.len()), (StatusCode::OK, 10));

    let (status, headers, body) = send(
        &h,
        get("example.test", "/app.js")
            .method(Method::HEAD)
            .header(header::ACCEPT_ENCODING, "gzip"),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(headers[header::CONTENT_LENGTH], "4");

    let (status, _, _) = send(
        &h,
        ae("").header(header::IF_MATCH, "\"other\""),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn conditionals_answer_with_the_staged_headers() {
    let h = handler(None);
    let req =
        |name: header::HeaderName, value: &str| get("example.test", "/app.js").header(name, value);
    let (status, headers, _) = send(&h, get("example.test", "/app.js"), Scheme::Https).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(headers[header::ETAG], "\"app\"");
    let modified = headers[header::LAST_MODIFIED].clone();
    assert_eq!(modified, "Tue, 14 Nov 2023 22:13:20 GMT");

    // If-None-Match on the identity representation: 304 with the validators, no body.
    let (status, headers, body) = send(
        &h,
        req(header::IF_NONE_MATCH, "\"x\", W/\"app\""),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(headers[header::ETAG], "\"app\"");
    assert_eq!(headers[header::LAST_MODIFIED], modified);
    let (status, _, _) = send(&h, req(header::IF_NONE_MATCH, "\"app-gz\""), Scheme::Https).await;
    assert_eq!(status, StatusCode::OK);

    // If-Modified-Since: the same or a later date is not modified, an earlier one is.
    for (date, expected) in [
        ("Tue, 14 Nov 2023 22:13:20 GMT", StatusCode::NOT_MODIFIED),
        ("Wed, 15 Nov 2023 00:00:00 GMT", StatusCode::NOT_MODIFIED),
        ("Tue, 14 Nov 2023 22:13:19 GMT", StatusCode::OK),
        ("not a date", StatusCode::OK),
    ] {
        let (status, headers, _) =
            send(&h, req(header::IF_MODIFIED_SINCE, date), Scheme::Https).await;
        assert_eq!(status, expected, "{date}");
        assert_eq!(headers[header::LAST_MODIFIED], modified, "{date}");
    }
    // If-None-Match wins over If-Modified-Since.
    let (status, _, _) = send(
        &h,
        req(header::IF_NONE_MATCH, "\"other\"")
            .header(header::IF_MODIFIED_SINCE, "Wed, 15 Nov 2023 00:00:00 GMT"),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // If-Unmodified-Since before the modification fails.
    let (status, _, _) = send(
        &h,
        req(header::IF_UNMODIFIED_SINCE, "Tue, 14 Nov 2023 22:13:19 GMT"),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);

    // If-Range with the exact Last-Modified date or the strong ETag keeps the range.
    for validator in ["Tue, 14 Nov 2023 22:13:20 GMT", "\"app\""] {
        let (status, _, body) = send(
            &h,
            req(header::RANGE, "bytes=0-1").header(header::IF_RANGE, validator),
            Scheme::Https,
        )
        .await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::PARTIAL_CONTENT, &b"01"[..])
        );
    }
}

#[tokio::test]
async fn disk_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    std::fs::write(&path, b"abcdefghij").unwrap();
    let h = handler(Some(path.clone()));
    let (status, _, body) = send(&h, get("example.test", "/big.bin"), Scheme::Https).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"abcdefghij"[..]));
    let (status, _, body) = send(
        &h,
        get("example.test", "/big.bin").header(header::RANGE, "bytes=-3"),
        Scheme::Https,
    )
    .await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::PARTIAL_CONTENT, &b"hij"[..])
    );
    std::fs::remove_file(&path).unwrap();
    let (status, _, body) = send(&h, get("example.test", "/big.bin"), Scheme::Https).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!String::from_utf8_lossy(&body).contains("big.bin"));
}

#[tokio::test]
async fn duplicate_host_and_rate_limits() {
    let h = handler(None);
    let twice = get("example.test", "/").header(header::HOST, "other.test");
    let (status, _, _) = send(&h, twice, Scheme::Https).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let mut config = statiko_common::config::EdgeLimitsConfig::default();
    config.per_client.requests_per_second = 0.001;
    config.per_client.request_burst = 2;
    config.per_site.requests_per_second = 0.001;
    config.per_site.request_burst = 3;
    let h = h.with_limits(Arc::new(crate::serve::ClientLimits::new(&config)));
    let from = |ip: &str| {
        let addr = crate::serve::ClientAddr(format!("{ip}:1000").parse().unwrap());
        get("example.test", "/").extension(addr)
    };
    let mut statuses = Vec::new();
    for ip in [
        "192.0.2.1",
        "192.0.2.1",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
    ] {
        let (status, headers, _) = send(&h, from(ip), Scheme::Https).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(headers[header::RETRY_AFTER], "1");
        }
        statuses.push(status.as_u16());
    }
    // 192.0.2.1's burst is 2; the site's burst of 3 is spent by then.
    assert_eq!(statuses, [200, 200, 429, 200, 429]);
    // Another site has its own bucket.
    let (status, _, _) = send(
        &h,
        get("new.test", "/").extension(crate::serve::ClientAddr("192.0.2.4:1".parse().unwrap())),
        Scheme::Https,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
