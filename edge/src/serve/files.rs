//! Pure request logic, free of I/O and heavily unit-tested: safe path resolution against a
//! staged bundle's file map (the filesystem is never touched with a user path), Range parsing,
//! Accept-Encoding negotiation, entity-tag / date preconditions (RFC 9110), and the
//! single-page-app navigation rule.
//!
//! Directory listing policy: a directory without an index file answers 404, not nginx's 403,
//! so that the response does not reveal which directories exist. A site whose manifest sets
//! `page403` opted into nginx's behaviour and gets 403 with that page (see the handler).

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use statiko_common::conventions::SITE_FILES;

use crate::bundle::{StagedBundle, StaticFile};

/// Why a request path is refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Malformed percent-encoding, invalid UTF-8, NUL, backslash or a `.`/`..` segment.
    BadRequest,
}

/// A decoded, normalised request path: leading `/`, no empty, `.` or `..` segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanPath<'a> {
    /// The lookup key: `/` for the root, otherwise no trailing slash.
    pub key: Cow<'a, str>,
    /// Whether the request path ended with `/`.
    pub trailing_slash: bool,
}

impl CleanPath<'_> {
    /// The path as manifest rules see it, like nginx's `$uri`: the key plus the request's
    /// trailing slash (`/docs/`). Borrowed unless there is a slash to add.
    pub fn with_slash(&self) -> Cow<'_, str> {
        if self.trailing_slash && self.key != "/" {
            let mut path = String::with_capacity(self.key.len() + 1);
            path.push_str(&self.key);
            path.push('/');
            Cow::Owned(path)
        } else {
            Cow::Borrowed(&self.key)
        }
    }
}

/// Percent-decodes `raw` once, then validates and normalises it. Decoded `/` (from `%2f`) is a
/// separator like any other, so `..%2f` is rejected like `../`.
pub fn clean_path(raw: &str) -> Result<CleanPath<'_>, PathError> {
    let decoded: Cow<'_, str> = if raw.contains('%') {
        Cow::Owned(percent_decode(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    normalize(decoded)
}

/// Validates and normalises an already decoded path, such as the result of a manifest
/// rewrite (decoding it again would turn a literal `%` into something else).
pub fn clean_decoded(decoded: &str) -> Result<CleanPath<'_>, PathError> {
    normalize(Cow::Borrowed(decoded))
}

fn normalize(decoded: Cow<'_, str>) -> Result<CleanPath<'_>, PathError> {
    if decoded.bytes().any(|b| b == 0 || b == b'\\') {
        return Err(PathError::BadRequest);
    }
    let trailing_slash = decoded.ends_with('/');
    let mut needs_rebuild = !decoded.starts_with('/');
    let mut segments = 0usize;
    for segment in decoded.split('/') {
        match segment {
            "" => {}
            "." | ".." => return Err(PathError::BadRequest),
            _ => segments += 1,
        }
    }
    if segments == 0 {
        return Ok(CleanPath {
            key: Cow::Borrowed("/"),
            trailing_slash: true,
        });
    }
    // Empty segments other than the leading one and one trailing one mean `//` somewhere.
    let body_len = {
        let body = decoded.strip_prefix('/').unwrap_or(&decoded);
        let body = body.strip_suffix('/').unwrap_or(body);
        needs_rebuild |= body.contains("//") || body.starts_with('/') || body.ends_with('/');
        body.len()
    };
    let key = if needs_rebuild {
        let mut out = String::with_capacity(decoded.len());
        for segment in decoded.split('/').filter(|s| !s.is_empty()) {
            out.push('/');
            out.push_str(segment);
        }
        Cow::Owned(out)
    } else {
        match decoded {
            Cow::Borrowed(s) => Cow::Borrowed(&s[..body_len + 1]),
            Cow::Owned(mut s) => {
                s.truncate(body_len + 1);
                Cow::Owned(s)
            }
        }
    };
    Ok(CleanPath {
        key,
        trailing_slash,
    })
}

/// Percent-decodes a path into UTF-8. A `%` not followed by two hex digits is refused (the
/// crate would pass it through as it is).
fn percent_decode(input: &str) -> Result<String, PathError> {
    let well_formed = input.split('%').skip(1).all(|escape| {
        escape
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(PathError::BadRequest);
    }
    percent_encoding::percent_decode_str(input)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| PathError::BadRequest)
}

/// The outcome of looking a clean path up in a bundle.
#[derive(Debug, Clone)]
pub enum Resolved<'a> {
    /// The file at the requested path.
    File(&'a StaticFile),
    /// A directory's index file; `path` is the index's own key (`/docs/index.html`), which
    /// manifest rules see, as nginx's `index` is an internal redirect.
    Index {
        path: &'a str,
        file: &'a StaticFile,
    },
    /// A directory requested without its trailing slash: redirect to `key + "/"`.
    AddSlash,
    /// A directory (with its slash) that has no index file.
    NoIndex,
    NotFound,
}

/// Looks `path` up in the bundle's file and directory maps only.
pub fn resolve<'a>(bundle: &'a StagedBundle, path: &CleanPath<'_>) -> Resolved<'a> {
    let key: &str = &path.key;
    // `_statiko.yaml`, `_redirects` and `_headers` are read by the edge and never served (a
    // bundle staged before the edge read the last two may still list them).
    if key
        .strip_prefix('/')
        .is_some_and(|name| SITE_FILES.contains(&name))
    {
        return Resolved::NotFound;
    }
    if !path.trailing_slash {
        if let Some(file) = bundle.files.get(key) {
            return Resolved::File(file);
        }
        if bundle.dirs.contains(key) {
            return Resolved::AddSlash;
        }
        return Resolved::NotFound;
    }
    if !bundle.dirs.contains(key) {
        return Resolved::NotFound;
    }
    let base = if key == "/" { "" } else { key };
    let mut index = String::with_capacity(base.len() + 11);
    for name in ["/index.html", "/index.htm"] {
        index.clear();
        index.push_str(base);
        index.push_str(name);
        if let Some((path, file)) = bundle.files.get_key_value(&index) {
            return Resolved::Index { path, file };
        }
    }
    Resolved::NoIndex
}

/// The single-page-app rule: whether a request for a missing path is a browser navigation that
/// gets `/index.html`, rather than a missing asset that gets 404. It is one when the last path
/// segment has no extension (`/users/42`, not `/app.js` or `/logo.png`) and the client asks
/// for HTML: `Accept` names `text/html` or `application/xhtml+xml` (every browser navigation
/// does), or `Sec-Fetch-Mode` is `navigate`. `Accept: */*` alone (fetch, XHR, curl) and a
/// missing `Accept` do not ask for HTML, so a mistyped API or asset URL still gets 404.
pub fn is_navigation(path: &str, accept: Option<&[u8]>, sec_fetch_mode: Option<&[u8]>) -> bool {
    if statiko_common::manifest::extension(path).is_some() {
        return false;
    }
    if sec_fetch_mode.is_some_and(|mode| trim(mode).eq_ignore_ascii_case(b"navigate")) {
        return true;
    }
    accept.is_some_and(|accept| {
        contains_ignore_case(accept, b"text/html")
            || contains_ignore_case(accept, b"application/xhtml+xml")
    })
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// Percent-encodes a clean path for a `Location` header (always starts with a single `/`).
pub fn encode_path(path: &str, out: &mut String) {
    statiko_common::redirects::percent_encode(path, out);
}

/// A parsed `Range` header, for a representation of a known length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole representation with 200 (no, invalid, multiple or ignored ranges).
    Full,
    /// Serve bytes `start..=end` with 206.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Parses a single-range `bytes=` request. Syntax errors and other units are ignored (full
/// response), as RFC 9110 allows; so are multiple ranges.
pub fn parse_range(header: &[u8], len: u64) -> RangeRequest {
    let Ok(header) = std::str::from_utf8(header) else {
        return RangeRequest::Full;
    };
    let header = header.trim();
    let Some((unit, set)) = header.split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') || len == 0 {
        return RangeRequest::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Some(suffix) = parse_u64(last) else {
            return RangeRequest::Full;
        };
        if suffix == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial {
            start: len.saturating_sub(suffix),
            end: len - 1,
        };
    }
    let Some(start) = parse_u64(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        len - 1
    } else {
        let Some(end) = parse_u64(last) else {
            return RangeRequest::Full;
        };
        if end < start {
            return RangeRequest::Full;
        }
        end.min(len - 1)
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial { start, end }
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A content coding the edge has precomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Brotli,
}

/// Picks a representation from `Accept-Encoding`: the acceptable (q > 0) precomputed variant
/// with the highest q, brotli winning ties, else identity. Identity is also the answer when
/// the client refuses it (`identity;q=0`, `*;q=0`) but accepts nothing we have: sending the
/// file beats a 406 for static content, and it is what nginx does.
pub fn negotiate(accept_encoding: Option<&[u8]>, has_gzip: bool, has_brotli: bool) -> Coding {
    let Some(header) = accept_encoding else {
        return Coding::Identity;
    };
    if !has_gzip && !has_brotli {
        return Coding::Identity;
    }
    let (mut br, mut gzip, mut star) = (None, None, None);
    for item in header.split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';');
        let coding = trim(parts.next().unwrap_or_default());
        let mut q = 1000u16;
        for param in parts {
            let param = trim(param);
            if param.len() >= 2 && param[0].eq_ignore_ascii_case(&b'q') && param[1] == b'=' {
                q = parse_qvalue(trim(&param[2..])).unwrap_or(0);
            }
        }
        if coding.eq_ignore_ascii_case(b"br") {
            br = Some(q);
        } else if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
            gzip = Some(q);
        } else if coding == b"*" {
            star = Some(q);
        }
    }
    let br = if has_brotli {
        br.or(star).unwrap_or(0)
    } else {
        0
    };
    let gzip = if has_gzip {
        gzip.or(star).unwrap_or(0)
    } else {
        0
    };
    if br > 0 && br >= gzip {
        Coding::Brotli
    } else if gzip > 0 {
        Coding::Gzip
    } else {
        Coding::Identity
    }
}

/// A qvalue in thousandths; `None` when malformed.
fn parse_qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &[][..]),
    };
    if int.len() != 1 || frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut q = match int[0] {
        b'0' => 0u16,
        b'1' => 1000,
        _ => return None,
    };
    let mut scale = 100;
    for &d in frac {
        q += u16::from(d - b'0') * scale;
        scale /= 10;
    }
    (q <= 1000).then_some(q)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// One entity tag from a header list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    /// The opaque tag including its quotes.
    opaque: &'a [u8],
}

/// Splits an `If-None-Match` / `If-Match` list; `None` when malformed.
fn entity_tags(header: &[u8]) -> Option<Vec<EntityTag<'_>>> {
    let mut tags = Vec::new();
    let mut rest = header;
    loop {
        while let [b' ' | b'\t' | b',', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return Some(tags);
        }
        let weak = rest.starts_with(b"W/");
        if weak {
            rest = &rest[2..];
        }
        if rest.first() != Some(&b'"') {
            return None;
        }
        let close = rest[1..].iter().position(|&b| b == b'"')? + 2;
        tags.push(EntityTag {
            weak,
            opaque: &rest[..close],
        });
        rest = &rest[close..];
    }
}

fn split_etag(etag: &[u8]) -> (bool, &[u8]) {
    match etag.strip_prefix(b"W/") {
        Some(opaque) => (true, opaque),
        None => (false, etag),
    }
}

/// Weak comparison (If-None-Match): `*` or any tag with the same opaque value.
pub fn none_match(header: &[u8], etag: &[u8]) -> bool {
    if trim(header) == b"*" {
        return true;
    }
    let (_, current) = split_etag(etag);
    entity_tags(header).is_some_and(|tags| tags.iter().any(|t| t.opaque == current))
}

/// Strong comparison (If-Match): `*` or a strong tag equal to a strong current tag.
pub fn any_match(header: &[u8], etag: &[u8]) -> bool {
    if trim(header) == b"*" {
        return true;
    }
    let (weak, current) = split_etag(etag);
    !weak
        && entity_tags(header)
            .is_some_and(|tags| tags.iter().any(|t| !t.weak && t.opaque == current))
}

/// Whole seconds since the epoch, as HTTP dates carry them.
pub fn http_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn parse_date(header: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(header).ok()?;
    httpdate::parse_http_date(s.trim()).ok().map(http_seconds)
}

/// The request's validators, as raw header values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Preconditions<'a> {
    pub if_match: Option<&'a [u8]>,
    pub if_none_match: Option<&'a [u8]>,
    pub if_modified_since: Option<&'a [u8]>,
    pub if_unmodified_since: Option<&'a [u8]>,
}

/// What the preconditions decide for a GET or HEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// RFC 9110 §13.2.2 order: If-Match, else If-Unmodified-Since; then If-None-Match, else
/// If-Modified-Since. `etag` is the current entity tag as sent (quoted, maybe `W/`);
/// `modified` the modification time in whole seconds since the epoch ([`http_seconds`]).
pub fn evaluate(pre: &Preconditions<'_>, etag: &[u8], modified: u64) -> Precondition {
    if let Some(h) = pre.if_match {
        if !any_match(h, etag) {
            return Precondition::Failed;
        }
    } else if let Some(date) = pre.if_unmodified_since.and_then(parse_date)
        && modified > date
    {
        return Precondition::Failed;
    }
    if let Some(h) = pre.if_none_match {
        if none_match(h, etag) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = pre.if_modified_since.and_then(parse_date)
        && modified <= date
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// `If-Range`: an entity tag must match strongly, a date must equal Last-Modified (`modified`,
/// whole seconds since the epoch).
pub fn if_range_matches(header: &[u8], etag: &[u8], modified: u64) -> bool {
    let value = trim(header);
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        let (weak, current) = split_etag(etag);
        return !weak && !value.starts_with(b"W/") && value == current;
    }
    parse_date(value).is_some_and(|date| date == modified)
}

#[cfg(test)]
mod tests;
