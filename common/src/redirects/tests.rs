//! Unit tests of `_redirects`: every status, placeholders and splats, forcing and shadowing,
//! query strings, and every refused input with its line number.

use super::*;

#[track_caller]
fn parse(text: &str) -> Redirects {
    match Redirects::parse(text.as_bytes()) {
        Ok(redirects) => redirects,
        Err(err) => panic!("refused: {err}\n{text}"),
    }
}

#[track_caller]
fn check_err(text: &str, line: usize, parts: &[&str]) {
    let err = Redirects::parse(text.as_bytes()).expect_err(text);
    assert_eq!(err.line, Some(line), "{err}");
    assert_eq!(err.file, "_redirects");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("_redirects line {line}: ")),
        "{message}"
    );
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

/// The outcome for `path` when it is not a file.
fn outcome(redirects: &Redirects, path: &str, query: Option<&str>) -> Option<Outcome> {
    redirects.find(path, query, |_| false).map(|(_, o)| o)
}

fn redirect(status: u16, location: &str) -> Option<Outcome> {
    Some(Outcome::Redirect {
        status,
        location: location.into(),
    })
}

const BLOG: &str = "
# A blog moving house.
/old-page        /new-page
/blog/:year/:slug  /posts/:year/:slug/   302   # placeholders
/news/*          /blog/:splat             # splat
/docs/*          https://docs.example.com/:splat 308
/app/*           /app/index.html          200
/gone            /errors/gone.html        410
/secret          /errors/404.html         404
/promo           /sale?from=promo         307
/forced          /elsewhere               301!
/see-other       /form                    303
";

#[test]
fn every_status_and_target_kind() {
    let r = parse(BLOG);
    assert_eq!(r.len(), 10);
    assert_eq!(outcome(&r, "/old-page", None), redirect(301, "/new-page"));
    assert_eq!(
        outcome(&r, "/blog/2024/hello", None),
        redirect(302, "/posts/2024/hello/")
    );
    assert_eq!(
        outcome(&r, "/news/2023/01/story", None),
        redirect(301, "/blog/2023/01/story")
    );
    assert_eq!(
        outcome(&r, "/docs/guide/intro", None),
        redirect(308, "https://docs.example.com/guide/intro")
    );
    assert_eq!(
        outcome(&r, "/app/users/42", None),
        Some(Outcome::Rewrite {
            path: "/app/index.html".into()
        })
    );
    assert_eq!(
        outcome(&r, "/gone", None),
        Some(Outcome::Serve {
            status: 410,
            path: "/errors/gone.html".into()
        })
    );
    assert_eq!(
        outcome(&r, "/secret/", None),
        Some(Outcome::Serve {
            status: 404,
            path: "/errors/404.html".into()
        })
    );
    assert_eq!(outcome(&r, "/see-other", None), redirect(303, "/form"));
    assert_eq!(outcome(&r, "/nothing", None), None);
    let (rule, _) = r.find("/gone", None, |_| false).unwrap();
    assert_eq!((rule.line, rule.status, rule.force), (8, 410, false));
}

#[test]
fn query_strings_are_passed_on_to_redirects() {
    let r = parse(BLOG);
    assert_eq!(
        outcome(&r, "/old-page", Some("a=1&b=2")),
        redirect(301, "/new-page?a=1&b=2")
    );
    assert_eq!(
        outcome(&r, "/promo", Some("utm=x")),
        redirect(307, "/sale?from=promo&utm=x")
    );
    assert_eq!(
        outcome(&r, "/old-page", Some("")),
        redirect(301, "/new-page")
    );
    let r = parse("/a /b#top\n");
    assert_eq!(outcome(&r, "/a", Some("q=1")), redirect(301, "/b?q=1#top"));
    // Rewrites and status rules do not carry the query (they serve a file).
    assert_eq!(
        outcome(&parse(BLOG), "/app/x", Some("q=1")),
        Some(Outcome::Rewrite {
            path: "/app/index.html".into()
        })
    );
}

#[test]
fn substituted_values_are_encoded_in_locations_only() {
    let r = parse("/r/*  /to/:splat  302\n/w/:name /files/:name.html 200\n");
    assert_eq!(
        outcome(&r, "/r/a b/é?", None),
        redirect(302, "/to/a%20b/%C3%A9%3F")
    );
    assert_eq!(
        outcome(&r, "/w/a b", None),
        Some(Outcome::Rewrite {
            path: "/files/a b.html".into()
        })
    );
    // A literal non-ASCII target is sent encoded; an encoded 200 target is decoded.
    let r = parse("/café /caf%C3%A9-new\n/x /y%20z.html 200\n");
    assert_eq!(outcome(&r, "/café", None), redirect(301, "/caf%C3%A9-new"));
    assert_eq!(
        outcome(&r, "/x", None),
        Some(Outcome::Rewrite {
            path: "/y z.html".into()
        })
    );
}

#[test]
fn files_shadow_rules_unless_forced() {
    let r = parse("/a/*  /x/:splat\n/a/b  /forced 302!\n/c   /d\n");
    // The path is no file: the first match applies.
    assert_eq!(outcome(&r, "/a/b", None), redirect(301, "/x/b"));
    // The path is a file: only forced rules apply, the first forced one wins.
    let found = r.find("/a/b", None, |_| true).map(|(_, o)| o);
    assert_eq!(found, redirect(302, "/forced"));
    assert!(r.find("/c", None, |_| true).is_none());
    // `exists` is not asked when the first match is forced.
    let r = parse("/c /d 301!\n");
    let found = r.find("/c", None, |_| panic!("asked")).map(|(_, o)| o);
    assert_eq!(found, redirect(301, "/d"));
    // Nor when nothing matches.
    assert!(r.find("/zzz", None, |_| panic!("asked")).is_none());
    // `!` alone forces the default status.
    let r = parse("/e /f !\n");
    assert_eq!(
        r.find("/e", None, |_| true).map(|(_, o)| o),
        redirect(301, "/f")
    );
}

#[test]
fn first_match_wins_in_file_order() {
    let r = parse("/blog/*  /one\n/blog/special /two\n/:any/special /three\n");
    assert_eq!(outcome(&r, "/blog/special", None), redirect(301, "/one"));
    assert_eq!(outcome(&r, "/news/special", None), redirect(301, "/three"));
}

#[test]
fn comments_blank_lines_and_whitespace() {
    let r = parse("# header\n\n   \t\n  /a\t/b   302  # trailing comment\r\n#/c /d\n");
    assert_eq!(r.len(), 1);
    assert_eq!(outcome(&r, "/a", None), redirect(302, "/b"));
    assert!(parse("").is_empty());
}

#[test]
fn bad_lines_are_refused_with_their_number() {
    check_err("/a /b\n/c\n", 2, &["has no target"]);
    check_err("\n\n/a /b 399\n", 3, &["unsupported status 399"]);
    check_err("/a /b 301 extra\n", 1, &["unexpected field \"extra\""]);
    check_err(
        "/store id=:id /blog/:id 301\n",
        1,
        &["only \"from to [status][!]\""],
    );
    check_err(
        "/a /b Country=us\n",
        1,
        &["unexpected field \"Country=us\""],
    );
    check_err("a /b\n", 1, &["from", "must be a path"]);
    check_err(
        "https://old.example.com/* https://new.example.com/:splat 301!\n",
        1,
        &["domain rules are not supported"],
    );
    check_err("/a b\n", 1, &["target \"b\" must be a path"]);
    check_err("/a //evil.example/x\n", 1, &["single \"/\""]);
    check_err("/a mailto:x@example.com\n", 1, &["must be a path"]);
    check_err("/a https:///x\n", 1, &["has no host"]);
    check_err(
        "/api/* https://api.example.com/:splat 200\n",
        1,
        &["would proxy to another origin", "Statiko is not a proxy"],
    );
    check_err("/a https://x.example/404 404\n", 1, &["must be a path"]);
    check_err("/a/* /../etc/passwd 200\n", 1, &["leaves the bundle"]);
    check_err("/a/* /x/%2e%2e/y 200\n", 1, &["leaves the bundle"]);
    check_err("/a /b?x=1 200\n", 1, &["cannot carry a query string"]);
    check_err("/a /b%zz 200\n", 1, &["invalid percent-encoding"]);
    check_err(
        "/a/:id /b/:slug\n",
        1,
        &["\":slug\"", "not a placeholder of from"],
    );
    check_err("/a/:id /b/:splat\n", 1, &["\":splat\"", "no \"*\""]);
    check_err("/a/*/b /c\n", 1, &["only as the last segment"]);
    check_err("/a\u{1}b /c\n", 1, &["control characters"]);
}

#[test]
fn invalid_utf8_names_its_line() {
    let err = Redirects::parse(b"/a /b\n/c /d\n/e\xff /f\n").unwrap_err();
    assert_eq!(err.line, Some(3));
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
}

#[test]
fn forced_redirect_loops_are_refused() {
    check_err("/a /a !\n", 1, &["same forced rule", "a redirect loop"]);
    check_err("/ok /fine\n/about/ /about 301!\n", 2, &["a redirect loop"]);
    check_err("/* /index.html 302!\n", 1, &["a redirect loop"]);
    check_err("/:lang/* /en/:splat 301!\n", 1, &["a redirect loop"]);
    check_err("/x/:id /x/:id?ref=1 302!\n", 1, &["a redirect loop"]);
    // Rewrites are single-pass and absolute targets leave the site: no loop.
    parse("/* /index.html 200\n/a/* https://example.com/a/:splat\n/b /b.html 200\n");
    // A target the pattern does not match is fine.
    parse("/en/* /fr/:splat\n");
}

#[test]
fn sizes_are_bounded() {
    let long = format!("/a /{}\n", "b".repeat(MAX_LINE_LEN));
    check_err(&long, 1, &["over the 2048-byte limit"]);
    let mut many = String::new();
    for i in 0..=MAX_RULES {
        many.push_str(&format!("/r{i} /t{i}\n"));
    }
    check_err(&many, MAX_RULES + 1, &["more than 20000 rules"]);
    let huge = vec![b'#'; MAX_REDIRECTS_LEN + 1];
    let err = Redirects::parse(&huge).unwrap_err();
    assert_eq!(err.line, None);
    assert!(
        err.to_string().starts_with("_redirects: the file is"),
        "{err}"
    );
}

/// 10,000 rules (2,000 static, the rest with placeholders and splats) compile, and a lookup
/// gives what the rule at its line says.
#[test]
fn ten_thousand_rules() {
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!("/static/page-{i} /new/page-{i}\n"));
    }
    for i in 0..4000 {
        text.push_str(&format!("/p{i}/:year/:slug /posts{i}/:year/:slug 302\n"));
    }
    for i in 0..4000 {
        text.push_str(&format!("/s{i}/* /splat{i}/:splat 200\n"));
    }
    let r = parse(&text);
    assert_eq!(r.len(), 10_000);
    assert_eq!(
        outcome(&r, "/static/page-1999", None),
        redirect(301, "/new/page-1999")
    );
    assert_eq!(
        outcome(&r, "/p3999/2024/x", None),
        redirect(302, "/posts3999/2024/x")
    );
    assert_eq!(
        outcome(&r, "/s3999/a/b", None),
        Some(Outcome::Rewrite {
            path: "/splat3999/a/b".into()
        })
    );
    assert_eq!(outcome(&r, "/unmatched/path", None), None);
}

#[test]
fn routing_files_are_checked_by_name() {
    let good = vec![
        ("_redirects".to_owned(), b"/a /b\n".to_vec()),
        ("_headers".to_owned(), b"/*\n  X-A: 1\n".to_vec()),
        ("index.html".to_owned(), b"/not parsed".to_vec()),
    ];
    check_routing_files(&good).unwrap();
    let bad = vec![("_headers".to_owned(), b"/*\n  Connection: close\n".to_vec())];
    let err = check_routing_files(&bad).unwrap_err();
    assert_eq!((err.file, err.line), ("_headers", Some(2)));
    let bad = vec![("_redirects".to_owned(), b"/a /b 299\n".to_vec())];
    assert_eq!(check_routing_files(&bad).unwrap_err().line, Some(1));
}

/// A rule that is not forced and redirects to a path it matches itself loops only when the
/// target is no file: then the answer is `Loop`, not a redirect.
#[test]
fn unforced_self_redirects_are_answered_without_a_loop() {
    let r = parse("/docs/* /docs/ 302\n/:lang/* /en/:splat\n/a /a\n");
    // The target exists: a plain redirect, which the file answers next time.
    let docs_exist = |path: &str| path == "/docs/" || path == "/docs";
    let found = r.find("/docs/old", None, docs_exist).map(|(_, o)| o);
    assert_eq!(found, redirect(302, "/docs/"));
    // It does not: the same rule would answer the target again.
    assert_eq!(outcome(&r, "/docs/old", None), Some(Outcome::Loop));
    assert_eq!(outcome(&r, "/a", Some("q=1")), Some(Outcome::Loop));
    assert_eq!(outcome(&r, "/fr/page", None), Some(Outcome::Loop));
    let exists = |path: &str| path == "/en/page";
    let found = r.find("/fr/page", None, exists).map(|(_, o)| o);
    assert_eq!(found, redirect(301, "/en/page"));
    // A target another, earlier rule answers is not this rule's loop.
    let r = parse("/en/* /english/:splat 302\n/:lang/* /en/:splat\n");
    assert_eq!(outcome(&r, "/fr/page", None), redirect(301, "/en/page"));
}
