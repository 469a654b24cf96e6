//! Unit tests of `_headers`: blocks, every matching block in order, removal, joined repeats,
//! and every refused input with its line number.

use super::*;

#[track_caller]
fn parse(text: &str) -> HeaderRules {
    match HeaderRules::parse(text.as_bytes()) {
        Ok(rules) => rules,
        Err(err) => panic!("refused: {err}\n{text}"),
    }
}

#[track_caller]
fn check_err(text: &str, line: usize, parts: &[&str]) {
    let err = HeaderRules::parse(text.as_bytes()).expect_err(text);
    assert_eq!(err.line, Some(line), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("_headers line {line}: ")),
        "{message}"
    );
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
}

fn applied(rules: &HeaderRules, path: &str, start: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut headers = HeaderMap::new();
    for (name, value) in start {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    rules.apply(path, &mut headers);
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = list
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    out.sort();
    out
}

const SITE: &str = "# site headers
/*
  X-Frame-Options: DENY
  Referrer-Policy: no-referrer

/assets/*
  Cache-Control: public, max-age=31536000, immutable
  X-Frame-Options: SAMEORIGIN

/embed/:widget
  ! X-Frame-Options
  Content-Security-Policy: frame-ancestors *
\tContent-Security-Policy: default-src 'self'
";

#[test]
fn every_matching_block_applies_in_order() {
    let rules = parse(SITE);
    assert_eq!(rules.len(), 3);
    assert_eq!(
        applied(&rules, "/index.html", &[]),
        pairs(&[
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer")
        ])
    );
    // The later block replaces X-Frame-Options and the server's own Cache-Control.
    assert_eq!(
        applied(&rules, "/assets/app.js", &[("cache-control", "no-cache")]),
        pairs(&[
            ("x-frame-options", "SAMEORIGIN"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "public, max-age=31536000, immutable"),
        ])
    );
    // `! Name` removes what an earlier block set; repeated names in a block are joined.
    assert_eq!(
        applied(&rules, "/embed/map", &[]),
        pairs(&[
            ("referrer-policy", "no-referrer"),
            (
                "content-security-policy",
                "frame-ancestors *, default-src 'self'"
            ),
        ])
    );
    let lines: Vec<usize> = rules.matching("/embed/map/").map(|b| b.line).collect();
    assert_eq!(lines, [2, 10]);
    // Removal applies to headers the server set too.
    let rules = parse("/raw/*\n  ! Cache-Control\n");
    assert_eq!(
        applied(&rules, "/raw/x", &[("cache-control", "no-cache")]),
        []
    );
}

#[test]
fn set_after_remove_in_one_block_is_not_joined() {
    let rules = parse("/a\n  X-A: 1\n  ! X-A\n  X-A: 2\n");
    assert_eq!(applied(&rules, "/a", &[]), pairs(&[("x-a", "2")]));
}

#[test]
fn empty_files_and_blocks() {
    assert!(parse("").is_empty());
    assert!(parse("# nothing\n\n").is_empty());
    let rules = parse("/a\n/b\n  X-B: 1\n");
    assert_eq!(rules.len(), 2);
    assert_eq!(applied(&rules, "/a", &[]), []);
}

#[test]
fn bad_lines_are_refused_with_their_number() {
    check_err("  X-A: 1\n", 1, &["comes before any path pattern"]);
    check_err("/a\n  X-A 1\n", 2, &["not a \"Name: value\" header line"]);
    check_err("/a\n  X-A:\n", 2, &["empty value"]);
    check_err("/a\n  Bad Name: 1\n", 2, &["invalid header name"]);
    check_err(
        "/a\n\n  Connection: close\n",
        3,
        &["\"Connection\"", "hop-by-hop"],
    );
    check_err("/a\n  Transfer-Encoding: chunked\n", 2, &["hop-by-hop"]);
    check_err("/a\n  Content-Length: 5\n", 2, &["framing"]);
    check_err("/a\n  Proxy-Authenticate: x\n", 2, &["hop-by-hop"]);
    check_err("/a\n  ! Keep-Alive\n", 2, &["hop-by-hop"]);
    check_err("/a\n  X-A: \u{1}\n", 2, &["control characters"]);
    check_err("/a\nX-A: 1\n", 2, &["path pattern", "must be indented"]);
    check_err(
        "https://example.com/*\n  X-A: 1\n",
        1,
        &["host patterns are not supported"],
    );
    check_err("/a/*/b\n  X-A: 1\n", 1, &["only as the last segment"]);
    check_err("/a\n  X-A: caf\u{e9}\n", 2, &["invalid header value"]);
    let long = format!("/a\n  X-A: {}\n", "v".repeat(3000));
    check_err(&long, 2, &["over the 2048-byte limit"]);
    let mut many = String::new();
    for i in 0..=MAX_BLOCKS {
        many.push_str(&format!("/b{i}\n  X-N: {i}\n"));
    }
    check_err(&many, 2 * MAX_BLOCKS + 1, &["more than 5000 path blocks"]);
    let err = HeaderRules::parse(&vec![b'#'; MAX_HEADERS_LEN + 1]).unwrap_err();
    assert_eq!(err.line, None);
    let err = HeaderRules::parse(b"/a\n  X-A: 1\n  X-B: \xff\n").unwrap_err();
    assert_eq!(err.line, Some(3));
}
