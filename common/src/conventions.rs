//! The static-host conventions a generated site expects, on by default, each of which an app
//! can turn off under `conventions:` in its `_statiko.yaml`:
//!
//! - `notFoundPage`: `404.html` at the bundle root answers unknown paths, with status 404;
//! - `prettyUrls`: `/about` serves `about.html`, and `/about.html` redirects (301) to
//!   `/about`, so each page has one URL (a directory's `index.html` keeps its `/dir/` URL);
//! - `immutableHashed`: a file whose name carries a content hash ([`is_content_hashed`]) gets
//!   `Cache-Control: public, max-age=31536000, immutable`;
//! - `htmlNoCache`: HTML gets `Cache-Control: no-cache` (revalidated through its ETag).
//!
//! Two defaults keep bundles made before the conventions as they were: a `_statiko.yaml`
//! without a `conventions` key was written for the original Statiko, whose rules name pages by
//! their `.html` paths, so `prettyUrls` defaults to off there; and `htmlNoCache` defaults to on
//! only in bundles that have content-hashed files, the case it exists for (the page naming
//! immutable assets must be revalidated so that a deploy's new names are picked up), so a
//! bundle without them keeps today's HTML caching. Setting a key explicitly always wins.
//! Headers from `_headers` and `_statiko.yaml` rules win over both caching conventions.

use http::HeaderValue;
use serde::Deserialize;

use crate::manifest::Manifest;

/// The files of a bundle's root the edge reads and never serves.
pub const SITE_FILES: [&str; 3] = [crate::manifest::MANIFEST_FILE, "_redirects", "_headers"];

/// `Cache-Control` of content-hashed files.
pub const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
/// `Cache-Control` of HTML.
pub const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// The `conventions` key of `_statiko.yaml`; an unset key takes its default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename = "conventions", deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    pub not_found_page: Option<bool>,
    pub pretty_urls: Option<bool>,
    pub immutable_hashed: Option<bool>,
    pub html_no_cache: Option<bool>,
}

/// The conventions in force for one bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conventions {
    pub not_found_page: bool,
    pub pretty_urls: bool,
    pub immutable_hashed: bool,
    pub html_no_cache: bool,
}

impl Conventions {
    /// Every convention off: how a bundle was served before they existed.
    pub const OFF: Self = Self {
        not_found_page: false,
        pretty_urls: false,
        immutable_hashed: false,
        html_no_cache: false,
    };

    /// The conventions of a bundle with this manifest (if any), given whether any of its file
    /// names carries a content hash; see the module docs for the defaults.
    pub fn resolve(manifest: Option<&Manifest>, has_hashed_files: bool) -> Self {
        let settings = manifest.and_then(Manifest::conventions);
        let written_for_the_original = manifest.is_some() && settings.is_none();
        let settings = settings.copied().unwrap_or_default();
        let immutable_hashed = settings.immutable_hashed.unwrap_or(true);
        Self {
            not_found_page: settings.not_found_page.unwrap_or(true),
            pretty_urls: settings.pretty_urls.unwrap_or(!written_for_the_original),
            immutable_hashed,
            html_no_cache: settings.html_no_cache.unwrap_or(has_hashed_files),
        }
    }

    /// The `Cache-Control` a file at `path` gets from the conventions, if any: `no-cache` for
    /// HTML, the immutable value for a content-hashed name.
    pub fn cache_control(&self, path: &str, is_html: bool) -> Option<HeaderValue> {
        if is_html {
            return self.html_no_cache.then_some(NO_CACHE);
        }
        (self.immutable_hashed && is_content_hashed(path)).then_some(IMMUTABLE)
    }
}

/// Whether the last segment of `path` carries a content hash, as bundlers write them:
/// `<stem><sep><hash>.<ext>`, `sep` being `.`, `-` or `_`, where the hash is either
///
/// - 8 to 64 lowercase hex digits with at least one digit and one letter (webpack, Create
///   React App, Next.js, Gatsby, Parcel, Docusaurus, Hugo's md5/sha256 fingerprints, Angular
///   before 17; a name that is all hash, like Next's `1b2c3d4e5f6a7b8c.css`, needs 16); or
/// - exactly 8 characters of the base64url alphabet with at least one uppercase letter and
///   one digit, after `-` or `.` (Rollup, Vite, Astro, SvelteKit, esbuild and Angular 17+).
///
/// Requiring letters and digits together keeps words, versions and dates out
/// (`jquery-3.7.1.min.js`, `logo-DarkMode.svg`, `photo-20230115.jpg`); the price is that a
/// hash drawn without a digit (about a quarter of 8-character base64 hashes) is not
/// recognised and its file keeps the default caching, which is safe. A `_headers` block such
/// as `/assets/*` can make a whole folder immutable.
pub fn is_content_hashed(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return false;
    };
    if stem.is_empty() || ext.is_empty() || !ext.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    // `787.a1b2c3d4.chunk.js` (Create React App), `index-BkHx0aQ2.js.map` (a source map).
    let inner = stem
        .rsplit_once('.')
        .filter(|(_, word)| {
            (1..=8).contains(&word.len()) && word.bytes().all(|b| b.is_ascii_alphabetic())
        })
        .map(|(inner, _)| inner);
    hash_ends(stem) || inner.is_some_and(hash_ends)
}

/// Whether `stem` ends with a content hash (see [`is_content_hashed`]).
fn hash_ends(stem: &str) -> bool {
    let bytes = stem.as_bytes();
    let is_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    let hex_len = bytes.iter().rev().take_while(|b| is_hex(b)).count();
    if hex_len >= 8 {
        let token = &bytes[bytes.len() - hex_len..];
        let mixed =
            token.iter().any(u8::is_ascii_digit) && token.iter().any(u8::is_ascii_lowercase);
        let separated = match bytes.len() - hex_len {
            0 => hex_len >= 16,
            at => matches!(bytes[at - 1], b'.' | b'-' | b'_') && hex_len <= 64,
        };
        if mixed && separated && hex_len <= 64 {
            return true;
        }
    }
    if bytes.len() > 8 {
        let token = &bytes[bytes.len() - 8..];
        let separated = matches!(bytes[bytes.len() - 9], b'-' | b'.');
        return separated
            && token
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            && token.iter().any(u8::is_ascii_uppercase)
            && token.iter().any(u8::is_ascii_digit);
    }
    false
}

#[cfg(test)]
mod tests;
