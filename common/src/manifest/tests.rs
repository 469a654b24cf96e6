//! Unit tests of the manifest: every rule kind and option, the precedence order, every
//! validation error, and the original documentation site's manifest.

use super::*;

#[track_caller]
fn parse(yaml: &str) -> Manifest {
    match Manifest::parse(yaml) {
        Ok(manifest) => manifest,
        Err(err) => panic!("manifest refused: {err}\n{yaml}"),
    }
}

/// The manifest is refused with a message containing every one of `expected`.
#[track_caller]
fn check_err(yaml: &str, expected: &[&str]) {
    match Manifest::parse(yaml) {
        Ok(_) => panic!("manifest accepted:\n{yaml}"),
        Err(err) => {
            let message = err.to_string();
            for part in expected {
                assert!(
                    message.contains(part),
                    "error {message:?} should contain {part:?}"
                );
            }
            assert!(!message.contains('\n'), "multi-line error {message:?}");
        }
    }
}

#[track_caller]
fn check_rule(manifest: &Manifest, path: &str, expected: Option<usize>) {
    assert_eq!(manifest.matching_rule(path), expected, "path {path:?}");
}

#[test]
fn empty_documents_are_empty_manifests() {
    for yaml in ["", "\n", "# only a comment\n", "---\n", "{}", "rules:\n"] {
        let manifest = parse(yaml);
        assert_eq!(manifest.rule_count(), 0);
        assert!(manifest.options_for("/index.html").is_none());
        assert!(manifest.rewrite("/a").is_none());
        assert!(manifest.page404().is_none());
        assert!(!manifest.spa());
    }
}

/// statiko.dev's own `_statiko.yaml` works unchanged.
#[test]
fn original_docs_site_manifest() {
    let manifest = parse(
        "rules:
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
",
    );
    let month = 30 * 86_400;
    for (path, age) in [
        ("/app.js", month),
        ("/assets/site.CSS", month),
        ("/img/logo.png", month),
        ("/favicon.ico", month),
        ("/a/b.svg", month),
        ("/index.html", 3600),
        ("/docs/page.html", 3600),
    ] {
        let caching = manifest
            .options_for(path)
            .and_then(|o| o.client_caching.clone())
            .unwrap_or_else(|| panic!("{path} has no caching"));
        assert_eq!(caching.max_age, age, "{path}");
        assert_eq!(
            caching.cache_control.to_str().unwrap(),
            format!("max-age={age}, public")
        );
    }
    assert!(manifest.options_for("/data.json").is_none());
    assert!(manifest.options_for("/docs/").is_none());
    assert!(manifest.options_for("/noext").is_none());
}

#[test]
fn exact_rules() {
    let manifest = parse(
        "rules:
  - exact: /about.html
    options: {headers: {X-Page: about}}
  - exact: /dir/
    options: {deny: true}
",
    );
    check_rule(&manifest, "/about.html", Some(0));
    check_rule(&manifest, "/about.html/", None);
    check_rule(&manifest, "/About.html", None);
    check_rule(&manifest, "/about.htm", None);
    check_rule(&manifest, "/dir/", Some(1));
    check_rule(&manifest, "/dir", None);
    let options = manifest.options_for("/about.html").unwrap();
    assert_eq!(options.headers.len(), 1);
    assert_eq!(options.headers[0].0.as_str(), "x-page");
    assert_eq!(options.headers[0].1, "about");
    assert!(!options.deny);
    assert!(manifest.options_for("/dir/").unwrap().deny);
}

#[test]
fn prefix_rules_longest_first() {
    let manifest = parse(
        "rules:
  - prefix: /docs/
    options: {headers: {X-Rule: docs}}
  - prefix: /docs/api/
    options: {headers: {X-Rule: api}}
  - prefix: /d
    options: {headers: {X-Rule: d}}
",
    );
    check_rule(&manifest, "/docs/api/x.html", Some(1));
    check_rule(&manifest, "/docs/x.html", Some(0));
    check_rule(&manifest, "/docs", Some(2));
    check_rule(&manifest, "/dx", Some(2));
    check_rule(&manifest, "/x", None);
    check_rule(&manifest, "/Docs/x", None);
}

#[test]
fn regex_rules_case_and_order() {
    let manifest = parse(
        r#"rules:
  - match: '\.(?:bak|old)$|^/tmp/'
    options: {deny: true}
  - match: '^/CaseSensitive/'
    caseSensitive: true
    options: {headers: {X-Rule: cs}}
  - match: '^/casesensitive/'
    options: {headers: {X-Rule: ci}}
  - match: 'x'
    caseSensitive: false
    options: {headers: {X-Rule: x}}
"#,
    );
    // Case-insensitive by default, across alternations.
    check_rule(&manifest, "/a.BAK", Some(0));
    check_rule(&manifest, "/TMP/file", Some(0));
    check_rule(&manifest, "/CaseSensitive/a", Some(1));
    check_rule(&manifest, "/casesensitive/a", Some(2));
    check_rule(&manifest, "/CASESENSITIVE/a", Some(2));
    // The first regex in manifest order wins.
    check_rule(&manifest, "/x.bak", Some(0));
    check_rule(&manifest, "/X", Some(3));
    check_rule(&manifest, "/none", None);
}

#[test]
fn file_rules_lists_and_groups() {
    let manifest = parse(
        "rules:
  - file: 'jpg, .PNG'
    options: {clientCaching: 1d}
  - file: _fonts
    options: {clientCaching: 1y}
  - file: _videos
    options: {clientCaching: 1w}
  - file: _audios,wasm
    options: {clientCaching: 2h}
",
    );
    check_rule(&manifest, "/a.jpg", Some(0));
    check_rule(&manifest, "/a.JPG", Some(0));
    check_rule(&manifest, "/a.png", Some(0));
    check_rule(&manifest, "/f/x.woff2", Some(1));
    check_rule(&manifest, "/v.mkv", Some(2));
    // mp4 and ogg are in both groups: the later rule wins.
    check_rule(&manifest, "/v.mp4", Some(3));
    check_rule(&manifest, "/v.ogg", Some(3));
    check_rule(&manifest, "/s.mp3", Some(3));
    check_rule(&manifest, "/m.wasm", Some(3));
    check_rule(&manifest, "/jpg", None);
    check_rule(&manifest, "/a.jpg/", None);
    check_rule(&manifest, "/dir.png/x", None);
    check_rule(&manifest, "/x.", None);
    for group in [IMAGES, VIDEOS, AUDIOS, FONTS] {
        assert!(!group.is_empty());
    }
}

#[test]
fn precedence_exact_prefix_regex_extension_root() {
    let manifest = parse(
        r#"rules:
  - file: html
    options: {headers: {X-Rule: ext}}
  - match: '\.html$'
    options: {headers: {X-Rule: regex-1}}
  - match: '^/blog/'
    options: {headers: {X-Rule: regex-2}}
  - prefix: /blog/
    options: {headers: {X-Rule: prefix}}
  - exact: /blog/index.html
    options: {headers: {X-Rule: exact}}
  - prefix: /
    options: {headers: {X-Rule: root}}
  - prefix: /blog/2024/
    options: {headers: {X-Rule: longer-prefix}}
"#,
    );
    // Exact beats everything.
    check_rule(&manifest, "/blog/index.html", Some(4));
    // The longest prefix beats a shorter one and every regex.
    check_rule(&manifest, "/blog/2024/a.html", Some(6));
    check_rule(&manifest, "/blog/a.html", Some(3));
    // Regexes beat extensions; the first in manifest order wins.
    check_rule(&manifest, "/other.html", Some(1));
    // Extensions beat the root prefix.
    let manifest2 = parse(
        "rules:
  - prefix: /
    options: {headers: {X-Rule: root}}
  - file: js
    options: {clientCaching: 1M}
",
    );
    check_rule(&manifest2, "/app.js", Some(1));
    check_rule(&manifest2, "/app.css", Some(0));
    check_rule(&manifest, "/plain", Some(5));
}

#[test]
fn duplicate_matchers_last_wins() {
    let manifest = parse(
        "rules:
  - exact: /a
    options: {headers: {X-N: '1'}}
  - exact: /a
    options: {headers: {X-N: '2'}}
  - prefix: /p/
  - prefix: /p/
    options: {deny: true}
",
    );
    check_rule(&manifest, "/a", Some(1));
    check_rule(&manifest, "/p/x", Some(3));
}

#[test]
fn headers_option() {
    let manifest = parse(
        "rules:
  - prefix: /
    options:
      headers:
        X-Frame-Options: DENY
        Content-Security-Policy: \"default-src 'self'; img-src $host\"
        X-Count: 5
        X-Bool: true
        Cache-Control: no-store
        x-frame-options: SAMEORIGIN
        Content-Encoding: gzip
",
    );
    let options = manifest.options_for("/").unwrap();
    let headers: Vec<(&str, &str)> = options
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(
        headers,
        [
            (
                "content-security-policy",
                "default-src 'self'; img-src $host"
            ),
            ("x-count", "5"),
            ("x-bool", "true"),
            ("cache-control", "no-store"),
            ("x-frame-options", "SAMEORIGIN"),
            ("content-encoding", "gzip"),
        ]
    );
    assert!(options.sets_content_encoding());
    assert!(options.client_caching.is_none());
}

#[test]
fn client_caching_durations() {
    for (value, seconds) in [
        ("1500ms", 1),
        ("999ms", 0),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86_400),
        ("1w", 604_800),
        ("1M", 2_592_000),
        ("1y", 31_536_000),
        ("1000y", MAX_CACHE_AGE),
        ("99999999999999999999y", MAX_CACHE_AGE),
    ] {
        assert_eq!(parse_duration(value), Some(seconds), "{value}");
    }
    for value in [
        "", "0", "0s", "01s", "5", "5x", "s", "1 s", "-1s", "1.5h", "1S", "1H", "1ms5",
    ] {
        assert_eq!(parse_duration(value), None, "{value:?}");
    }
    let manifest = parse("rules:\n  - file: js\n    options: {clientCaching: 10m}\n");
    let caching = manifest
        .options_for("/a.js")
        .unwrap()
        .client_caching
        .clone()
        .unwrap();
    assert_eq!(caching.max_age, 600);
    assert_eq!(caching.cache_control, "max-age=600, public");
    assert_eq!(manifest.options_for("/a.js").unwrap().pragma(), "public");
}

#[test]
fn deny_option() {
    let manifest = parse(
        "rules:
  - prefix: /private/
    options:
      deny: true
  - exact: /public.txt
    options:
      deny: false
",
    );
    assert!(manifest.options_for("/private/x").unwrap().deny);
    assert!(!manifest.options_for("/public.txt").unwrap().deny);
}

#[test]
fn rewrites_with_captures_in_order() {
    let manifest = parse(
        r#"rewrite:
  "^/blog/(\\d+)/(.*)$": "/posts/$2-$1.html"
  "^/blog/(.*)$": "/posts/$1"
  "^/app/": /index.html
  "^/old(/.*)$": "$1"
  "^/q/(.*)$": "/search.html?q=$1"
  "^/b/(.*)$": "/x/${1}a"
"#,
    );
    assert_eq!(
        manifest.rewrite("/blog/2024/hello").as_deref(),
        Some("/posts/hello-2024.html")
    );
    assert_eq!(
        manifest.rewrite("/blog/hello").as_deref(),
        Some("/posts/hello")
    );
    assert_eq!(
        manifest.rewrite("/app/deep/link").as_deref(),
        Some("/index.html")
    );
    assert_eq!(manifest.rewrite("/old/x/y").as_deref(), Some("/x/y"));
    assert_eq!(manifest.rewrite("/q/term").as_deref(), Some("/search.html"));
    assert_eq!(manifest.rewrite("/b/z").as_deref(), Some("/x/za"));
    // Rewrites are case-sensitive, as nginx's are.
    assert_eq!(manifest.rewrite("/BLOG/x"), None);
    assert_eq!(manifest.rewrite("/other"), None);
}

#[test]
fn error_pages_and_spa() {
    let manifest = parse("page404: 404.html\npage403: /errors/403.html\nspa: true\n");
    assert_eq!(manifest.page404(), Some("/404.html"));
    assert_eq!(manifest.page403(), Some("/errors/403.html"));
    assert!(manifest.spa());
    assert_eq!(parse("page404: 404\n").page404(), Some("/404"));
    assert!(!parse("spa: false\n").spa());
}

#[test]
fn extension_of_the_last_segment() {
    assert_eq!(extension("/a/b.js"), Some("js"));
    assert_eq!(extension("/a.b/c"), None);
    assert_eq!(extension("/a/b.tar.gz"), Some("gz"));
    assert_eq!(extension("/a/b."), None);
    assert_eq!(extension("/a/.env"), Some("env"));
    assert_eq!(extension("/"), None);
}

#[test]
fn validation_errors_name_the_key() {
    // Not YAML.
    check_err("rules: [\n", &["line"]);
    check_err("rules:\n  - exact: /a\n   bad indent: x\n", &["line"]);
    // The wrong shape.
    check_err("- a\n- b\n", &["mapping"]);
    check_err("rules: yes\n", &["rules"]);
    check_err("locations: []\n", &["unknown field `locations`"]);
    check_err(
        "rules:\n  - exact: /a\n  - prefix: /b\n    options: {proxy: 'http://x'}\n",
        &["rules[1].options", "unknown field `proxy`"],
    );
    check_err(
        "rules:\n  - exact: /a\n    options: {cache: 1h}\n",
        &["rules[0].options", "unknown field `cache`"],
    );
    check_err(
        "rules:\n  - exact: /a\n    option: {deny: true}\n",
        &["rules[0]", "unknown field `option`"],
    );
    check_err(
        "rules:\n  - exact: /a\n    options: {deny: maybe}\n",
        &["rules[0].options.deny"],
    );
    check_err(
        "rules:\n  - exact: /a\n    options: {headers: [a]}\n",
        &["rules[0].options.headers"],
    );
    check_err("spa: 3\n", &["spa"]);
    // Matchers.
    check_err(
        "rules:\n  - options: {deny: true}\n",
        &["rules[0]:", "exactly one of"],
    );
    check_err(
        "rules:\n  - exact: /a\n    prefix: /b\n",
        &["rules[0]:", "exactly one of"],
    );
    check_err(
        "rules:\n  - file: js\n  - exact: a.html\n",
        &["rules[1].exact", "must start with"],
    );
    check_err("rules:\n  - prefix: docs/\n", &["rules[0].prefix"]);
    check_err(
        "rules:\n  - exact: /a\n    caseSensitive: true\n",
        &["rules[0].caseSensitive"],
    );
    check_err(
        "rules:\n  - file: js\n  - file: js\n  - match: '(unclosed'\n",
        &["rules[2].match", "invalid regex", "unclosed group"],
    );
    check_err(
        "rules:\n  - match: '(?<=a)b'\n",
        &["rules[0].match", "invalid regex"],
    );
    check_err(
        "rules:\n  - file: _pictures\n",
        &["rules[0].file", "unknown group"],
    );
    check_err(
        "rules:\n  - file: 'js, '\n",
        &["rules[0].file", "invalid extension"],
    );
    check_err(
        "rules:\n  - file: tar.gz\n",
        &["rules[0].file", "invalid extension"],
    );
    // Options.
    for (value, shown) in [("5x", "\"5x\""), ("0", "\"0\""), ("'1 h'", "\"1 h\"")] {
        check_err(
            &format!(
                "rules:\n  - file: js\n  - file: css\n  - file: html\n  - file: png\n    options: {{clientCaching: {value}}}\n"
            ),
            &["rules[3].options.clientCaching: invalid duration", shown],
        );
    }
    for name in [
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "Content-Length",
        "Content-Range",
        "Upgrade",
        "TE",
        "Trailer",
        "Proxy-Authenticate",
        "Proxy-Connection",
    ] {
        check_err(
            &format!("rules:\n  - prefix: /\n    options: {{headers: {{{name}: x}}}}\n"),
            &[&format!("rules[0].options.headers.{name}"), "cannot be set"],
        );
    }
    check_err(
        "rules:\n  - prefix: /\n    options: {headers: {'Bad Name': x}}\n",
        &["rules[0].options.headers.Bad Name", "invalid header name"],
    );
    check_err(
        "rules:\n  - prefix: /\n    options: {headers: {X-A: \"a\\nb\"}}\n",
        &["rules[0].options.headers.X-A", "invalid header value"],
    );
    check_err(
        "rules:\n  - prefix: /\n    options: {headers: {X-A: a, X-A: b}}\n",
        &["rules[0].options.headers"],
    );
    // Rewrites.
    check_err(
        "rewrite:\n  '^/a/(.*$': /b\n",
        &["rewrite[\"^/a/(.*$\"]", "invalid regex"],
    );
    check_err(
        "rewrite:\n  '^/a/(.*)$': /b/$2\n",
        &["rewrite[\"^/a/(.*)$\"]", "$2", "1 capture group"],
    );
    check_err(
        "rewrite:\n  '^/a/(.*)$': /b/$uri\n",
        &["rewrite[\"^/a/(.*)$\"]", "only captures"],
    );
    check_err(
        "rewrite:\n  '^/a/(.*)$': /b/${1\n",
        &["rewrite[\"^/a/(.*)$\"]", "unclosed"],
    );
    check_err(
        "rewrite:\n  '^/a$': 'https://example.com/'\n",
        &["rewrite[\"^/a$\"]", "must be a path"],
    );
    check_err("rewrite:\n  '^/a$': ''\n", &["must be a path"]);
    check_err("rewrite: [a]\n", &["rewrite"]);
    // Error pages.
    check_err("page404: /\n", &["page404", "not a file path"]);
    check_err("page404: ../etc/passwd\n", &["page404", "not a file path"]);
    check_err("page403: a//b.html\n", &["page403", "not a file path"]);
    check_err("page403: errors/\n", &["page403", "not a file path"]);
    // Size.
    let big = format!("# {}\n", "x".repeat(MAX_MANIFEST_LEN));
    assert!(matches!(
        Manifest::parse(&big),
        Err(ManifestError::TooLarge { .. })
    ));
}
