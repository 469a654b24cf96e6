//! Skew protection through the handler: requests in, responses out, no sockets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use statiko_common::manifest::Manifest;
use statiko_common::model::now_ms;

use super::DEPLOYMENT_HEADER;
use crate::bundle::{Body, StagedBundle, StaticFile};
use crate::serve::{Handler, Scheme};
use crate::table::{Retired, Route, RoutingTable, SiteRoute};

fn file(body: &'static [u8], content_type: &str) -> Arc<StaticFile> {
    Arc::new(
        StaticFile::new(
            body.len() as u64,
            Body::Memory(Bytes::from_static(body)),
            content_type,
            &format!("\"{}\"", body.len()),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
        .unwrap(),
    )
}

fn bundle(digest: u8, files: &[(&str, &'static [u8])], manifest: Option<&str>) -> StagedBundle {
    let files = files
        .iter()
        .map(|(path, body)| {
            let content_type = if path.ends_with(".html") {
                "text/html; charset=utf-8"
            } else {
                "text/javascript; charset=utf-8"
            };
            ((*path).to_owned(), file(body, content_type))
        })
        .collect::<HashMap<_, _>>();
    StagedBundle {
        digest: statiko_common::crypto::Digest::from([digest; 32]),
        root: "/nonexistent".into(),
        files,
        dirs: HashSet::from(["/".to_owned(), "/assets".to_owned()]),
        manifest: manifest.map(|m| Arc::new(Manifest::parse(m).unwrap())),
        rules: Default::default(),
    }
}

fn retired(id: &str, bundle: StagedBundle, until_ms: i64) -> Retired {
    Retired {
        deployment: http::HeaderValue::from_str(id).unwrap(),
        bundle: Arc::new(bundle),
        until_ms,
    }
}

/// `skew.test` serving the live bundle, with two retired deployments: `d2` within its window,
/// `d1` past it. The live manifest denies `/private/`.
fn handler() -> Handler {
    let live = bundle(
        3,
        &[
            ("/index.html", b"<h1>v3</h1>"),
            ("/assets/app-v3.js", b"v3 js"),
        ],
        Some("rules:\n  - prefix: /private/\n    options: {deny: true}\n"),
    );
    let d2 = bundle(
        2,
        &[
            ("/index.html", b"<h1>v2</h1>"),
            ("/old.html", b"<h1>old page</h1>"),
            ("/assets/app-v2.js", b"v2 js"),
            ("/assets/shared.js", b"shared from v2"),
            ("/private/key.js", b"secret"),
            ("/assets/hidden.js", b"hidden in v2"),
            ("/data", b"v2 data"),
        ],
        Some("rules:\n  - exact: /assets/hidden.js\n    options: {deny: true}\n"),
    );
    let d1 = bundle(
        1,
        &[
            ("/assets/app-v1.js", b"v1 js"),
            ("/assets/shared.js", b"shared from v1"),
        ],
        None,
    );
    let now = now_ms();
    let mut table = RoutingTable::default();
    table.hosts.insert(
        "skew.test".into(),
        Route::Site(Arc::new(SiteRoute {
            domain: "skew.test".into(),
            app: None,
            bundle: Some(Arc::new(live)),
            counters: Default::default(),
            retired: Arc::new([retired("d2", d2, now + 60_000), retired("d1", d1, now - 1)]),
        })),
    );
    Handler::new(Arc::new(ArcSwap::from_pointee(table)))
}

async fn send(handler: &Handler, req: http::request::Builder) -> (StatusCode, HeaderMap, Bytes) {
    let req = req.header(header::HOST, "skew.test").body(()).unwrap();
    let response = handler.handle(req, Scheme::Https).await;
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[track_caller]
fn assert_live_404(answer: &(StatusCode, HeaderMap, Bytes)) {
    assert_eq!(answer.0, StatusCode::NOT_FOUND, "{answer:?}");
    assert!(answer.1.get(DEPLOYMENT_HEADER).is_none(), "{answer:?}");
}

#[tokio::test]
async fn old_assets_are_served_within_the_window_with_a_header() {
    let h = handler();
    let (status, headers, body) = send(&h, Request::get("/assets/app-v2.js")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v2 js");
    assert_eq!(headers[DEPLOYMENT_HEADER], "d2");
    // The newest retired deployment that has the file wins.
    let (_, headers, body) = send(&h, Request::get("/assets/shared.js")).await;
    assert_eq!(body, "shared from v2");
    assert_eq!(headers[DEPLOYMENT_HEADER], "d2");
    // Conditional requests work as for any file.
    let (status, headers, _) = send(
        &h,
        Request::get("/assets/app-v2.js").header(header::IF_NONE_MATCH, "\"5\""),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers[DEPLOYMENT_HEADER], "d2");
    let (status, headers, body) = send(&h, Request::head("/assets/app-v2.js")).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(headers[DEPLOYMENT_HEADER], "d2");
    // A non-navigation fetch of an extensionless asset.
    let (status, headers, _) = send(&h, Request::get("/data").header(header::ACCEPT, "*/*")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[DEPLOYMENT_HEADER], "d2");
}

#[tokio::test]
async fn live_files_pages_and_navigations_come_from_the_live_version() {
    let h = handler();
    let (status, headers, body) = send(&h, Request::get("/assets/app-v3.js")).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"v3 js"[..]));
    assert!(headers.get(DEPLOYMENT_HEADER).is_none());
    let (_, _, body) = send(&h, Request::get("/")).await;
    assert_eq!(body, "<h1>v3</h1>");
    // HTML is never served from an older deployment.
    assert_live_404(&send(&h, Request::get("/old.html")).await);
    // Nor is a navigation.
    assert_live_404(
        &send(
            &h,
            Request::get("/data").header(header::ACCEPT, "text/html,*/*"),
        )
        .await,
    );
    assert_live_404(
        &send(
            &h,
            Request::get("/data").header("sec-fetch-mode", "navigate"),
        )
        .await,
    );
}

#[tokio::test]
async fn outside_the_window_or_denied_is_the_live_404() {
    let h = handler();
    // d1's window has passed.
    assert_live_404(&send(&h, Request::get("/assets/app-v1.js")).await);
    assert_live_404(&send(&h, Request::get("/assets/nowhere.js")).await);
    // The live manifest denies it: its 404 stands.
    assert_live_404(&send(&h, Request::get("/private/key.js")).await);
    // The old deployment's own manifest denied it.
    assert_live_404(&send(&h, Request::get("/assets/hidden.js")).await);
    // Bad paths stay bad requests.
    let (status, _, _) = send(&h, Request::get("/assets/%2e%2e/%2e%2e/etc/passwd")).await;
    assert_ne!(status, StatusCode::OK);
}
