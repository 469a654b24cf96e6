//! Unit tests of path patterns and the router: syntax errors, first-match-wins across
//! overlapping literal, placeholder and splat patterns, and every match in order.

use super::*;

fn router(patterns: &[&str]) -> Router {
    let mut router = Router::default();
    for (index, text) in patterns.iter().enumerate() {
        router.insert(&Pattern::parse(text).unwrap(), index);
    }
    router
}

#[test]
fn patterns_parse_into_segments() {
    let pattern = Pattern::parse("/blog/:year/:slug/").unwrap();
    assert_eq!(
        pattern.segments,
        [
            Segment::Literal("blog".into()),
            Segment::Placeholder("year".into()),
            Segment::Placeholder("slug".into()),
        ]
    );
    assert!(!pattern.splat);
    assert_eq!(pattern.placeholder_index("slug"), Some(1));
    assert_eq!(pattern.placeholder_index("nope"), None);
    let pattern = Pattern::parse("/*").unwrap();
    assert!(pattern.segments.is_empty() && pattern.splat);
    assert_eq!(Pattern::parse("/").unwrap().segments, []);
}

#[test]
fn bad_patterns_are_refused_with_a_reason() {
    for (text, reason) in [
        ("blog/*", "must be a path starting with \"/\""),
        ("https://example.com/*", "must be a path"),
        ("/a/*/b", "only as the last segment"),
        ("/a*", "must be a whole segment"),
        ("/a/:", "placeholder \":\""),
        ("/a/:1x", "placeholder \":1x\""),
        ("/a/:x-y", "placeholder"),
        ("/:x/:x", "appears twice"),
        ("/:splat", "not a placeholder"),
        ("/a/../b", "\"..\" segments"),
        ("/search?q=:q", "query strings"),
    ] {
        let err = Pattern::parse(text).unwrap_err();
        assert!(err.contains(reason), "{text}: {err}");
    }
}

#[test]
fn first_match_wins_across_kinds() {
    let router = router(&[
        "/blog/special",   // 0
        "/blog/:slug",     // 1
        "/blog/*",         // 2
        "/:lang/blog/:id", // 3
        "/en/blog/:id",    // 4 (shadowed by 3)
        "/*",              // 5
    ]);
    let first = |path| router.first(path).map(|m| m.index);
    assert_eq!(first("/blog/special"), Some(0));
    assert_eq!(first("/blog/other"), Some(1));
    assert_eq!(first("/blog/a/b"), Some(2));
    assert_eq!(first("/blog"), Some(2));
    assert_eq!(first("/en/blog/7"), Some(3));
    assert_eq!(first("/anything/else"), Some(5));
    assert_eq!(first("/"), Some(5));
    // A later literal does not beat an earlier placeholder.
    let router = super::tests::router(&["/:page", "/about"]);
    assert_eq!(router.first("/about").unwrap().index, 0);
    let router = super::tests::router(&["/about", "/contact"]);
    assert!(router.first("/pricing").is_none());
    assert!(router.first("/about/team").is_none());
}

#[test]
fn captures_placeholders_and_splat() {
    let router = router(&["/blog/:year/:month/*", "/news/*", "/p/:id"]);
    let m = router.first("/blog/2024/05/hello/world/").unwrap();
    assert_eq!(m.index, 0);
    assert_eq!(m.placeholders, ["2024", "05"]);
    assert_eq!(m.splat, Some("hello/world"));
    let m = router.first("/news").unwrap();
    assert_eq!((m.index, m.splat), (1, Some("")));
    let m = router.first("/news/").unwrap();
    assert_eq!(m.splat, Some(""));
    let m = router.first("/p/42/").unwrap();
    assert_eq!((m.placeholders, m.splat), (vec!["42"], None));
    // A placeholder matches exactly one segment.
    assert!(router.first("/p").is_none());
    assert!(router.first("/p/1/2").is_none());
}

#[test]
fn trailing_slashes_and_case() {
    let router = router(&["/about/"]);
    assert!(router.first("/about").is_some());
    assert!(router.first("/about/").is_some());
    assert!(router.first("/About").is_none());
}

#[test]
fn all_returns_every_match_in_order() {
    let router = router(&[
        "/*",
        "/assets/*",
        "/assets/:file",
        "/other",
        "/assets/app.js",
    ]);
    assert_eq!(router.all("/assets/app.js"), [0, 1, 2, 4]);
    assert_eq!(router.all("/other"), [0, 3]);
    assert_eq!(router.all("/"), [0]);
    assert_eq!(router.len(), 5);
    assert!(!router.is_empty());
    assert!(Router::default().all("/x").is_empty());
}

/// Thousands of overlapping patterns still give the lowest index; checked against a plain
/// scan of every pattern.
#[test]
fn agrees_with_a_linear_scan() {
    let mut texts = Vec::new();
    for i in 0..300 {
        texts.push(format!("/s{}/page{i}", i % 7));
        texts.push(format!("/s{}/:p/x{}", i % 5, i % 11));
        texts.push(format!("/d{}/*", i % 13));
        texts.push(format!("/:a/:b/c{}", i % 17));
    }
    let patterns: Vec<Pattern> = texts.iter().map(|t| Pattern::parse(t).unwrap()).collect();
    let mut router = Router::default();
    for (i, p) in patterns.iter().enumerate() {
        router.insert(p, i);
    }
    let matches = |p: &Pattern, path: &str| {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if p.splat {
            if segs.len() < p.segments.len() {
                return false;
            }
        } else if segs.len() != p.segments.len() {
            return false;
        }
        p.segments.iter().zip(&segs).all(|(s, seg)| match s {
            Segment::Literal(l) => l == seg,
            Segment::Placeholder(_) => true,
        })
    };
    for path in [
        "/s3/page3",
        "/s1/q/x1",
        "/s2/page9/x9",
        "/d4/a/b",
        "/d4",
        "/z/y/c5",
        "/s0/page0",
        "/nothing",
        "/s1/page8/c8",
    ] {
        let linear = patterns.iter().position(|p| matches(p, path));
        assert_eq!(router.first(path).map(|m| m.index), linear, "{path}");
        let all: Vec<usize> = (0..patterns.len())
            .filter(|&i| matches(&patterns[i], path))
            .collect();
        assert_eq!(router.all(path), all, "{path}");
    }
}
