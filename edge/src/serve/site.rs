//! The parts of serving that come from a bundle's `_redirects`, `_headers` and conventions
//! (see `statiko_common::conventions`); the handler's pipeline calls them in the order the
//! README's "How `_statiko.yaml`, `_redirects` and `_headers` fit together" describes.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use statiko_common::headers_file::{Block, HeaderOp};

use super::files::{self, CleanPath, Resolved};
use super::response::{self, ResponseBody};
use crate::bundle::{SiteRules, StagedBundle, StaticFile};

/// What the site rules add to the response of a served file: the request path `_headers`
/// blocks match, and the blocks that match it.
pub(super) struct SiteHeaders<'a> {
    rules: &'a SiteRules,
    blocks: Vec<&'a Block>,
}

impl<'a> SiteHeaders<'a> {
    /// The `_headers` blocks for the request path `request` (as it came, with its slash).
    pub(super) fn new(rules: &'a SiteRules, request: &str) -> Self {
        let blocks = match &rules.headers {
            Some(headers) => headers.matching(request).collect(),
            None => Vec::new(),
        };
        Self { rules, blocks }
    }

    /// Whether a matching block sets `Content-Encoding` (the file is stored encoded).
    pub(super) fn sets_content_encoding(&self) -> bool {
        self.blocks.iter().any(|block| {
            block
                .ops
                .iter()
                .any(|op| matches!(op, HeaderOp::Set(name, _) if name == header::CONTENT_ENCODING))
        })
    }

    /// The conventions' `Cache-Control` for `file` (at `file_path`), then every matching
    /// `_headers` block in order, on a response that serves the file (200, 206 or 304).
    pub(super) fn apply(
        &self,
        response: &mut Response<ResponseBody>,
        file: &StaticFile,
        file_path: &str,
    ) {
        if !matches!(response.status().as_u16(), 200 | 206 | 304) {
            return;
        }
        let out = response.headers_mut();
        if let Some(value) = self
            .rules
            .conventions
            .cache_control(file_path, is_html(file))
        {
            out.insert(header::CACHE_CONTROL, value);
        }
        apply_blocks(&self.blocks, out);
    }
}

fn apply_blocks(blocks: &[&Block], out: &mut HeaderMap) {
    for block in blocks {
        for op in &block.ops {
            match op {
                HeaderOp::Set(name, value) => {
                    out.insert(name.clone(), value.clone());
                }
                HeaderOp::Remove(name) => {
                    out.remove(name);
                }
            }
        }
    }
}

pub(super) fn is_html(file: &StaticFile) -> bool {
    let content_type = file.content_type.as_bytes();
    content_type.starts_with(b"text/html") || content_type.starts_with(b"application/xhtml+xml")
}

/// Whether a request path resolves to content of the bundle, which shadows the `_redirects`
/// rules that are not forced: a file, a directory with an index, or (pretty URLs) a page.
pub(super) fn exists(bundle: &StagedBundle, path: &CleanPath<'_>, pretty_urls: bool) -> bool {
    match files::resolve(bundle, path) {
        Resolved::File(_) | Resolved::Index { .. } => true,
        Resolved::AddSlash => {
            let slashed = CleanPath {
                key: Cow::Borrowed(&*path.key),
                trailing_slash: true,
            };
            matches!(files::resolve(bundle, &slashed), Resolved::Index { .. })
                || (pretty_urls && pretty_page(bundle, path).is_some())
        }
        Resolved::NoIndex | Resolved::NotFound => {
            pretty_urls && pretty_page(bundle, path).is_some()
        }
    }
}

/// Pretty URLs: the page `/about` stands for, `about.html`, with its key.
pub(super) fn pretty_page<'a>(
    bundle: &'a StagedBundle,
    path: &CleanPath<'_>,
) -> Option<(&'a str, &'a StaticFile)> {
    if path.trailing_slash || path.key.ends_with(".html") {
        return None;
    }
    let mut key = String::with_capacity(path.key.len() + 5);
    key.push_str(&path.key);
    key.push_str(".html");
    bundle
        .files
        .get_key_value(&key)
        .map(|(key, file)| (key.as_str(), &**file))
}

/// Pretty URLs: the URL `/about.html` moves to, `/about`, unless `/about` is a file of its
/// own or the page is a directory's index (whose URL is the directory's).
pub(super) fn pretty_url<'p>(bundle: &StagedBundle, path: &'p CleanPath<'_>) -> Option<&'p str> {
    if path.trailing_slash {
        return None;
    }
    let stem = path.key.strip_suffix(".html")?;
    let name = stem.rsplit('/').next().unwrap_or(stem);
    if name.is_empty() || name == "index" || bundle.files.contains_key(stem) {
        return None;
    }
    Some(stem)
}

/// A redirect with `status` to `location` (already a valid URL: the `_redirects` compiler
/// encodes what it substitutes).
pub(super) fn redirect(status: u16, location: String, head: bool) -> Response<ResponseBody> {
    match (
        HeaderValue::try_from(location),
        StatusCode::from_u16(status),
    ) {
        (Ok(location), Ok(status)) => {
            let mut response = response::redirect(location);
            *response.status_mut() = status;
            response
        }
        _ => response::error_page(StatusCode::BAD_REQUEST, head),
    }
}

/// 301 from `/about.html` to `/about`, keeping the query.
pub(super) fn moved_to(path: &str, query: Option<&str>, head: bool) -> Response<ResponseBody> {
    let mut location = String::with_capacity(path.len() + query.map_or(0, str::len) + 8);
    files::encode_path(path, &mut location);
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    redirect(301, location, head)
}
