//! Unit tests of the conventions: the content-hash rule against the file names real
//! generators emit and names that must not match, and the defaults and settings.

use super::*;

/// File names as Vite, Rollup, webpack, Create React App, Next.js, Astro, SvelteKit, Hugo,
/// Docusaurus, Gatsby, Parcel and Angular write them.
const HASHED: &[&str] = &[
    // Vite / Rollup (8 base64url characters after "-").
    "/assets/index-BkHx0aQ2.css",
    "/assets/index-C0Hs5KDq.js",
    "/assets/vendor-B_x-1aQ2.js",
    "/assets/logo-a1b2c3d4.svg",
    // webpack / Create React App / Parcel.
    "/app.3f9a1c2b.js",
    "/static/js/main.073c9b0a.js",
    "/static/js/787.a1b2c3d4.chunk.js",
    "/static/css/main.f855e6bc.css",
    "/main.3f9a1c2b4d5e6f708192.js",
    "/index.975ef6c8.css",
    // Next.js.
    "/_next/static/chunks/webpack-59c5c889f52620d6.js",
    "/_next/static/chunks/pages/_app-0a1b2c3d4e5f6a7b.js",
    "/_next/static/chunks/framework-2c79e2a64abdb08b.js",
    "/_next/static/css/1b2c3d4e5f6a7b8c.css",
    // Astro.
    "/_astro/index.BkHx0aQ2.css",
    "/_astro/Layout.astro_astro_type_script_index_0_lang.Dv6qX3kM.js",
    // SvelteKit.
    "/_app/immutable/entry/start.Cd3x5PqR.js",
    "/_app/immutable/chunks/index.a1b2c3d4.js",
    // Hugo fingerprints (md5 and sha256).
    "/css/style.a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6.css",
    "/css/main.min.5f8d6b6c3a6e1e8f4c8a1f2e3d4c5b6a7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b.css",
    // Docusaurus.
    "/assets/js/main.3f9a1c2b.js",
    "/assets/js/runtime~main.1a2b3c4d.js",
    "/assets/js/17896441.a1b2c3d4.js",
    "/assets/css/styles.5e6f7a8b.css",
    "/assets/images/logo-2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d.png",
    // Gatsby.
    "/app-3f9a1c2b4d5e6f708192.js",
    "/component---src-pages-index-js-a1b2c3d4e5f6a7b8c9d0.js",
    // Angular (before and since 17).
    "/main.3f9a1c2b4d5e6f70.js",
    "/main-2UKQ3SFE.js",
    "/styles-5INURTSO.css",
    // A source map of a hashed file.
    "/assets/index-BkHx0aQ2.js.map",
    // Fonts.
    "/files/inter-latin-400-normal.a1b2c3d4.woff2",
];

const NOT_HASHED: &[&str] = &[
    "/jquery-3.7.1.min.js",
    "/favicon.ico",
    "/my-long-page-name.html",
    "/bootstrap.min.css",
    "/app.js",
    "/font-awesome-4.7.0.css",
    "/logo-dark.svg",
    "/logo-DarkMode.svg",
    "/2024-01-15-post.html",
    "/react-dom.production.min.js",
    "/vendor.bundle.js",
    "/chunk-vendors.js",
    "/image-1920x1080.jpg",
    "/photo-20230115.jpg",
    "/deadbeef.js",
    "/abcdefab.css",
    "/12345678.png",
    "/README.md",
    "/robots.txt",
    "/sitemap.xml",
    "/index.html",
    "/assets/a1b2c3d4/logo.png",
    "/noextension-a1b2c3d4",
    "/.a1b2c3d4e5f6a7b8",
];

#[test]
fn hashed_names_from_real_generators() {
    for path in HASHED {
        assert!(is_content_hashed(path), "{path} should count as hashed");
    }
    for path in NOT_HASHED {
        assert!(
            !is_content_hashed(path),
            "{path} should not count as hashed"
        );
    }
}

fn manifest(yaml: &str) -> Manifest {
    Manifest::parse(yaml).unwrap()
}

#[test]
fn defaults_without_a_manifest() {
    let c = Conventions::resolve(None, true);
    assert_eq!(
        c,
        Conventions {
            not_found_page: true,
            pretty_urls: true,
            immutable_hashed: true,
            html_no_cache: true,
        }
    );
    // HTML keeps today's caching in a bundle without content-hashed files.
    assert!(!Conventions::resolve(None, false).html_no_cache);
}

#[test]
fn a_manifest_for_the_original_keeps_html_urls() {
    let legacy = manifest("rules:\n  - file: js\n    options: {clientCaching: 1M}\n");
    let c = Conventions::resolve(Some(&legacy), true);
    assert!(!c.pretty_urls);
    assert!(c.not_found_page && c.immutable_hashed && c.html_no_cache);
    // Any `conventions` key turns the defaults on.
    let c = Conventions::resolve(Some(&manifest("conventions: {}\n")), false);
    assert!(c.pretty_urls && c.not_found_page && c.immutable_hashed && !c.html_no_cache);
}

#[test]
fn each_convention_can_be_set() {
    let off = manifest(
        "conventions:\n  notFoundPage: false\n  prettyUrls: false\n  immutableHashed: false\n  htmlNoCache: false\n",
    );
    assert_eq!(Conventions::resolve(Some(&off), true), Conventions::OFF);
    let on = manifest("conventions: {htmlNoCache: true, prettyUrls: true}\n");
    let c = Conventions::resolve(Some(&on), false);
    assert!(c.html_no_cache && c.pretty_urls);
    let err = Manifest::parse("conventions: {prettyURLs: false}\n").unwrap_err();
    assert!(err.to_string().contains("prettyURLs"), "{err}");
    let err = Manifest::parse("conventions: {htmlNoCache: maybe}\n").unwrap_err();
    assert!(err.to_string().contains("conventions"), "{err}");
}

#[test]
fn cache_control_by_kind() {
    let on = Conventions::resolve(None, true);
    assert_eq!(on.cache_control("/index.html", true), Some(NO_CACHE));
    // HTML wins over a hashed-looking name.
    assert_eq!(
        on.cache_control("/page.a1b2c3d4.html", true),
        Some(NO_CACHE)
    );
    assert_eq!(
        on.cache_control("/assets/index-BkHx0aQ2.js", false),
        Some(IMMUTABLE)
    );
    assert_eq!(on.cache_control("/favicon.ico", false), None);
    assert_eq!(IMMUTABLE, "public, max-age=31536000, immutable");
    let off = Conventions::OFF;
    assert_eq!(off.cache_control("/index.html", true), None);
    assert_eq!(off.cache_control("/assets/index-BkHx0aQ2.js", false), None);
}
