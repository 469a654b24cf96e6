//! Unit tests for path resolution, ranges, Accept-Encoding and preconditions.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::*;
use crate::bundle::Body;

#[track_caller]
fn clean(raw: &str, key: &str, trailing_slash: bool) {
    let path = clean_path(raw).unwrap_or_else(|e| panic!("{raw}: {e:?}"));
    assert_eq!(path.key, key, "{raw}");
    assert_eq!(path.trailing_slash, trailing_slash, "{raw}");
}

#[track_caller]
fn bad(raw: &str) {
    assert_eq!(clean_path(raw), Err(PathError::BadRequest), "{raw}");
}

#[test]
fn clean_paths() {
    clean("/", "/", true);
    clean("//", "/", true);
    clean("/index.html", "/index.html", false);
    clean("/docs/", "/docs", true);
    clean("/docs//", "/docs", true);
    clean("//docs///a.html", "/docs/a.html", false);
    clean("/a//b/", "/a/b", true);
    clean("/a%20b.html", "/a b.html", false);
    clean("/%E2%9C%93.txt", "/\u{2713}.txt", false);
    clean("/caf%c3%a9/", "/caf\u{e9}", true);
    clean("/%2fetc%2fpasswd", "/etc/passwd", false);
    clean("/a%2F%2Fb", "/a/b", false);
    clean("/.well-known/x", "/.well-known/x", false);
    clean("/..foo/x..", "/..foo/x..", false);
    clean("/%25", "/%", false);
    // Decoding happens once: `%252e%252e` is the literal segment `%2e%2e`.
    clean("/%252e%252e/x", "/%2e%2e/x", false);
    // Borrowed fast path when nothing changes.
    assert!(matches!(
        clean_path("/a/b.css").unwrap().key,
        Cow::Borrowed("/a/b.css")
    ));
}

#[test]
fn hostile_paths() {
    for raw in [
        "/..",
        "/../",
        "/../etc/passwd",
        "/a/../../b",
        "/.",
        "/./a",
        "/a/.",
        "/%2e%2e/",
        "/%2E%2E/secret",
        "/..%2f",
        "/..%2fetc",
        "/a/%2e%2e%2f%2e%2e%2fb",
        "/%2e/",
        "/.%2e/",
        "/%00",
        "/a%00.html",
        "/a%5c..%5cb",
        "/a\\b",
        "/%5c",
        "/%",
        "/%2",
        "/%zz",
        "/%ff",
        "/%c3",
    ] {
        bad(raw);
    }
}

fn file(body: &'static [u8]) -> Arc<StaticFile> {
    Arc::new(
        StaticFile::new(
            body.len() as u64,
            Body::Memory(Bytes::from_static(body)),
            "text/html; charset=utf-8",
            "\"e\"",
            UNIX_EPOCH,
        )
        .unwrap(),
    )
}

fn bundle() -> StagedBundle {
    let files = HashMap::from([
        ("/index.html".to_owned(), file(b"root")),
        ("/docs/index.htm".to_owned(), file(b"docs")),
        ("/docs/a b.html".to_owned(), file(b"ab")),
        ("/_statiko.yaml".to_owned(), file(b"manifest")),
        // Listed by a bundle staged before the edge read these files.
        ("/_redirects".to_owned(), file(b"/a /b")),
        ("/_headers".to_owned(), file(b"/*")),
    ]);
    let dirs = HashSet::from(["/".to_owned(), "/docs".to_owned(), "/empty".to_owned()]);
    StagedBundle {
        digest: statiko_common::crypto::Digest::from([0; 32]),
        root: PathBuf::from("/nonexistent"),
        files,
        dirs,
        manifest: None,
        rules: Default::default(),
    }
}

#[track_caller]
fn resolves(raw: &str, expected: Option<&[u8]>) {
    let bundle = bundle();
    let resolved = resolve(&bundle, &clean_path(raw).unwrap());
    match (resolved, expected) {
        (Resolved::File(f) | Resolved::Index { file: f, .. }, Some(body)) => match &f.body {
            Body::Memory(b) => assert_eq!(&b[..], body, "{raw}"),
            Body::Disk(_) => panic!("{raw}: disk"),
        },
        (Resolved::NotFound | Resolved::NoIndex, None) => {}
        (other, _) => panic!("{raw}: {other:?}"),
    }
}

#[test]
fn resolution() {
    resolves("/", Some(b"root"));
    resolves("/index.html", Some(b"root"));
    resolves("/docs/", Some(b"docs"));
    resolves("/docs/a%20b.html", Some(b"ab"));
    resolves("//docs//a%20b.html", Some(b"ab"));
    resolves("/empty/", None);
    resolves("/missing", None);
    resolves("/missing/", None);
    resolves("/index.html/", None);
    resolves("/_statiko.yaml", None);
    resolves("/_redirects", None);
    resolves("/_headers", None);
    let bundle = bundle();
    assert!(matches!(
        resolve(&bundle, &clean_path("/docs").unwrap()),
        Resolved::AddSlash
    ));
    assert!(matches!(
        resolve(&bundle, &clean_path("/empty").unwrap()),
        Resolved::AddSlash
    ));
}

#[test]
fn index_and_no_index() {
    let bundle = bundle();
    let resolved = resolve(&bundle, &clean_path("/docs/").unwrap());
    assert!(
        matches!(
            resolved,
            Resolved::Index {
                path: "/docs/index.htm",
                ..
            }
        ),
        "{resolved:?}"
    );
    let resolved = resolve(&bundle, &clean_path("/").unwrap());
    assert!(
        matches!(
            resolved,
            Resolved::Index {
                path: "/index.html",
                ..
            }
        ),
        "{resolved:?}"
    );
    let resolved = resolve(&bundle, &clean_path("/index.html").unwrap());
    assert!(matches!(resolved, Resolved::File(_)), "{resolved:?}");
    let resolved = resolve(&bundle, &clean_path("/empty/").unwrap());
    assert!(matches!(resolved, Resolved::NoIndex), "{resolved:?}");
    let resolved = resolve(&bundle, &clean_path("/missing/").unwrap());
    assert!(matches!(resolved, Resolved::NotFound), "{resolved:?}");
}

#[test]
fn rule_paths_keep_the_trailing_slash() {
    for (raw, expected) in [
        ("/", "/"),
        ("/docs/", "/docs/"),
        ("/docs", "/docs"),
        ("//docs//", "/docs/"),
        ("/a%20b/", "/a b/"),
    ] {
        assert_eq!(clean_path(raw).unwrap().with_slash(), expected, "{raw}");
    }
}

#[test]
fn decoded_paths_are_not_decoded_again() {
    let path = clean_decoded("/100%25.html").unwrap();
    assert_eq!(path.key, "/100%25.html");
    assert_eq!(clean_decoded("posts/x").unwrap().key, "/posts/x");
    assert_eq!(clean_decoded("/a//b/").unwrap().with_slash(), "/a/b/");
    assert!(clean_decoded("/a/../b").is_err());
    assert!(clean_decoded("/a\\b").is_err());
}

#[test]
fn spa_navigation_rule() {
    const BROWSER: &[u8] = b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let nav = |path, accept, mode| is_navigation(path, accept, mode);
    assert!(nav("/users/42", Some(BROWSER), None));
    assert!(nav("/", Some(BROWSER), None));
    assert!(nav("/app/", Some(b"TEXT/HTML"), None));
    assert!(nav("/a", Some(b"application/xhtml+xml"), None));
    assert!(nav("/a", None, Some(b"navigate")));
    assert!(nav("/a", Some(b"*/*"), Some(b"Navigate")));
    // Missing assets: an extension, whatever the client asks for.
    assert!(!nav("/app.js", Some(BROWSER), None));
    assert!(!nav("/img/logo.png", Some(BROWSER), Some(b"navigate")));
    assert!(!nav("/users/john.doe", Some(BROWSER), None));
    // Not asking for HTML.
    assert!(!nav("/api/users", Some(b"*/*"), None));
    assert!(!nav("/api/users", Some(b"application/json"), None));
    assert!(!nav("/api/users", None, None));
    assert!(!nav("/api/users", Some(b"*/*"), Some(b"cors")));
}

#[test]
fn location_encoding() {
    let mut out = String::new();
    encode_path("/docs/a b/\u{e9}?#%", &mut out);
    assert_eq!(out, "/docs/a%20b/%C3%A9%3F%23%25");
}

#[test]
fn ranges() {
    use RangeRequest::*;
    let p = |s: u64, e: u64| Partial { start: s, end: e };
    let cases: &[(&str, u64, RangeRequest)] = &[
        ("bytes=0-0", 10, p(0, 0)),
        ("bytes=0-9", 10, p(0, 9)),
        ("bytes=2-5", 10, p(2, 5)),
        ("bytes=5-100", 10, p(5, 9)),
        ("bytes=5-", 10, p(5, 9)),
        ("bytes=-3", 10, p(7, 9)),
        ("bytes=-30", 10, p(0, 9)),
        ("Bytes = 1-2", 10, p(1, 2)),
        ("bytes=10-", 10, Unsatisfiable),
        ("bytes=10-20", 10, Unsatisfiable),
        ("bytes=-0", 10, Unsatisfiable),
        ("bytes=0-1,3-4", 10, Full),
        ("bytes=5-2", 10, Full),
        ("bytes=a-b", 10, Full),
        ("bytes=-", 10, Full),
        ("bytes=+1-2", 10, Full),
        ("items=0-1", 10, Full),
        ("bytes", 10, Full),
        ("bytes=0-", 0, Full),
        ("bytes=99999999999999999999999-", 10, Full),
    ];
    for (header, len, expected) in cases {
        assert_eq!(parse_range(header.as_bytes(), *len), *expected, "{header}");
    }
}

#[test]
fn accept_encoding() {
    use Coding::*;
    let cases: &[(Option<&str>, bool, bool, Coding)] = &[
        (None, true, true, Identity),
        (Some(""), true, true, Identity),
        (Some("gzip, deflate, br"), true, true, Brotli),
        (Some("gzip, deflate, br"), true, false, Gzip),
        (Some("gzip, deflate, br"), false, true, Brotli),
        (Some("br"), true, false, Identity),
        (Some("gzip;q=1.0, br;q=0.5"), true, true, Gzip),
        (Some("gzip;q=0.5, br;q=0.5"), true, true, Brotli),
        (Some("br;q=0, gzip"), true, true, Gzip),
        (Some("BR ; Q=0.8 , GZIP;q=0.9"), true, true, Gzip),
        (Some("*"), true, true, Brotli),
        (Some("*;q=0"), true, true, Identity),
        (Some("*;q=0, gzip"), true, true, Gzip),
        (Some("identity;q=0"), true, true, Identity),
        (Some("identity;q=0, gzip"), true, true, Gzip),
        (Some("x-gzip"), true, false, Gzip),
        (Some("gzip;q=0.000"), true, false, Identity),
        (Some("gzip;q=0.001"), true, false, Gzip),
        (Some("gzip;q=2"), true, false, Identity),
        (Some("gzip;q=abc"), true, false, Identity),
        (Some("deflate"), true, true, Identity),
        (Some("gzip"), false, false, Identity),
    ];
    for (header, gzip, br, expected) in cases {
        assert_eq!(
            negotiate(header.map(str::as_bytes), *gzip, *br),
            *expected,
            "{header:?} gzip={gzip} br={br}"
        );
    }
}

#[test]
fn etags() {
    assert!(none_match(b"\"a\"", b"\"a\""));
    assert!(none_match(b"W/\"a\"", b"\"a\""));
    assert!(none_match(b"\"a\"", b"W/\"a\""));
    assert!(none_match(b"\"x\", \"a\"", b"\"a\""));
    assert!(none_match(b"\"x\",W/\"a\"", b"\"a\""));
    assert!(none_match(b" * ", b"\"a\""));
    assert!(none_match(b"\"a,b\"", b"\"a,b\""));
    assert!(!none_match(b"\"b\"", b"\"a\""));
    assert!(!none_match(b"a", b"\"a\""));
    assert!(!none_match(b"\"a", b"\"a\""));
    assert!(!none_match(b"", b"\"a\""));
    assert!(any_match(b"\"a\"", b"\"a\""));
    assert!(any_match(b"*", b"\"a\""));
    assert!(!any_match(b"W/\"a\"", b"\"a\""));
    assert!(!any_match(b"\"a\"", b"W/\"a\""));
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn date(secs: u64) -> String {
    httpdate::fmt_http_date(at(secs))
}

#[test]
fn preconditions() {
    use Precondition::*;
    let etag = b"\"v1\"";
    // Sub-second modification times compare by whole seconds.
    let modified = http_seconds(at(1_700_000_000) + Duration::from_millis(900));
    let check = |pre: Preconditions<'_>| evaluate(&pre, etag, modified);
    assert_eq!(check(Preconditions::default()), Proceed);
    let inm = |v: &'static str| Preconditions {
        if_none_match: Some(v.as_bytes()),
        ..Preconditions::default()
    };
    assert_eq!(check(inm("\"v1\"")), NotModified);
    assert_eq!(check(inm("W/\"v1\"")), NotModified);
    assert_eq!(check(inm("*")), NotModified);
    assert_eq!(check(inm("\"v0\"")), Proceed);

    let same = date(1_700_000_000);
    let later = date(1_700_000_100);
    let earlier = date(1_600_000_000);
    let ims = |v: &str| {
        evaluate(
            &Preconditions {
                if_modified_since: Some(v.as_bytes()),
                ..Preconditions::default()
            },
            etag,
            modified,
        )
    };
    assert_eq!(ims(&same), NotModified);
    assert_eq!(ims(&later), NotModified);
    assert_eq!(ims(&earlier), Proceed);
    assert_eq!(ims("not a date"), Proceed);
    // If-None-Match wins over If-Modified-Since.
    let both = Preconditions {
        if_none_match: Some(b"\"v0\""),
        if_modified_since: Some(same.as_bytes()),
        ..Preconditions::default()
    };
    assert_eq!(evaluate(&both, etag, modified), Proceed);

    let im = |v: &'static str| Preconditions {
        if_match: Some(v.as_bytes()),
        ..Preconditions::default()
    };
    assert_eq!(check(im("\"v1\"")), Proceed);
    assert_eq!(check(im("*")), Proceed);
    assert_eq!(check(im("\"v0\"")), Failed);
    assert_eq!(check(im("W/\"v1\"")), Failed);
    let ius = |v: &str| {
        evaluate(
            &Preconditions {
                if_unmodified_since: Some(v.as_bytes()),
                ..Preconditions::default()
            },
            etag,
            modified,
        )
    };
    assert_eq!(ius(&same), Proceed);
    assert_eq!(ius(&earlier), Failed);
}

#[test]
fn if_range() {
    let modified = http_seconds(at(1_700_000_000));
    assert!(if_range_matches(b"\"v1\"", b"\"v1\"", modified));
    assert!(!if_range_matches(b"\"v0\"", b"\"v1\"", modified));
    assert!(!if_range_matches(b"W/\"v1\"", b"\"v1\"", modified));
    assert!(if_range_matches(
        date(1_700_000_000).as_bytes(),
        b"\"v1\"",
        modified
    ));
    assert!(!if_range_matches(
        date(1_700_000_001).as_bytes(),
        b"\"v1\"",
        modified
    ));
    assert!(!if_range_matches(b"garbage", b"\"v1\"", modified));
}
