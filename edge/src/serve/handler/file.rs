//! One static file as a response: conditional requests, ranges and the precompressed variant
//! (gzip or brotli) chosen by `Accept-Encoding`.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::Answer;
use crate::bundle::{Body, HeaderText, StaticFile};
use crate::serve::files::{self, Coding, Precondition, Preconditions, RangeRequest};
use crate::serve::response::{self, NOSNIFF, ResponseBody};

const BYTES: HeaderValue = HeaderValue::from_static("bytes");
const VARY_ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("Accept-Encoding");
const GZIP: HeaderValue = HeaderValue::from_static("gzip");
const BROTLI: HeaderValue = HeaderValue::from_static("br");

/// The representation chosen for a response.
struct Selected<'a> {
    len: u64,
    body: &'a Body,
    etag: &'a HeaderText,
    encoding: Option<HeaderValue>,
}

/// A file with conditionals, ranges and a precompressed variant; `identity_only` leaves the
/// variants out.
pub(super) fn serve_file(
    file: &StaticFile,
    headers: &HeaderMap,
    head: bool,
    identity_only: bool,
) -> Answer {
    let has_variants = !identity_only && (file.gzip.is_some() || file.brotli.is_some());
    // Ranges apply to GET only and always to the identity representation.
    let range = if head {
        None
    } else {
        headers.get(header::RANGE)
    };
    let coding = if range.is_some() {
        Coding::Identity
    } else {
        files::negotiate(
            headers
                .get(header::ACCEPT_ENCODING)
                .map(HeaderValue::as_bytes),
            has_variants && file.gzip.is_some(),
            has_variants && file.brotli.is_some(),
        )
    };
    let selected = match (coding, &file.brotli, &file.gzip) {
        (Coding::Brotli, Some(v), _) | (Coding::Gzip, _, Some(v)) => Selected {
            len: v.len,
            body: &v.body,
            etag: &v.etag,
            encoding: Some(if coding == Coding::Brotli {
                BROTLI
            } else {
                GZIP
            }),
        },
        _ => Selected {
            len: file.len,
            body: &file.body,
            etag: &file.etag,
            encoding: None,
        },
    };

    // Built at staging: a clone shares the bytes.
    let etag = selected.etag.header();
    let last_modified = file.last_modified.header();
    let preconditions = Preconditions {
        if_match: headers.get(header::IF_MATCH).map(HeaderValue::as_bytes),
        if_none_match: headers
            .get(header::IF_NONE_MATCH)
            .map(HeaderValue::as_bytes),
        if_modified_since: headers
            .get(header::IF_MODIFIED_SINCE)
            .map(HeaderValue::as_bytes),
        if_unmodified_since: headers
            .get(header::IF_UNMODIFIED_SINCE)
            .map(HeaderValue::as_bytes),
    };
    match files::evaluate(
        &preconditions,
        selected.etag.as_bytes(),
        file.last_modified.secs(),
    ) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            let out = response.headers_mut();
            out.insert(header::ETAG, etag.clone());
            out.insert(header::LAST_MODIFIED, last_modified.clone());
            if has_variants {
                out.insert(header::VARY, VARY_ACCEPT_ENCODING);
            }
            return Answer::Ready(response);
        }
        Precondition::Failed => {
            let mut response = response::error_page(StatusCode::PRECONDITION_FAILED, head);
            if has_variants {
                response
                    .headers_mut()
                    .insert(header::VARY, VARY_ACCEPT_ENCODING);
            }
            return Answer::Ready(response);
        }
    }

    let range = match range {
        Some(value)
            if headers.get(header::IF_RANGE).is_none_or(|v| {
                files::if_range_matches(
                    v.as_bytes(),
                    file.etag.as_bytes(),
                    file.last_modified.secs(),
                )
            }) =>
        {
            files::parse_range(value.as_bytes(), selected.len)
        }
        _ => RangeRequest::Full,
    };

    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, selected.len),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut response = response::error_page(StatusCode::RANGE_NOT_SATISFIABLE, head);
            let out = response.headers_mut();
            insert_opt(
                out,
                header::CONTENT_RANGE,
                HeaderValue::try_from(format!("bytes */{}", selected.len)).ok(),
            );
            out.insert(header::ACCEPT_RANGES, BYTES);
            if has_variants {
                out.insert(header::VARY, VARY_ACCEPT_ENCODING);
            }
            return Answer::Ready(response);
        }
    };

    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, file.content_type.header().clone());
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    out.insert(header::ETAG, etag.clone());
    out.insert(header::LAST_MODIFIED, last_modified.clone());
    out.insert(header::ACCEPT_RANGES, BYTES);
    out.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    if has_variants {
        out.insert(header::VARY, VARY_ACCEPT_ENCODING);
    }
    if let Some(encoding) = selected.encoding {
        out.insert(header::CONTENT_ENCODING, encoding);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let end = start + len - 1;
        insert_opt(
            out,
            header::CONTENT_RANGE,
            HeaderValue::try_from(format!("bytes {start}-{end}/{}", selected.len)).ok(),
        );
    }
    if head {
        return Answer::Ready(response);
    }
    match selected.body {
        Body::Memory(bytes) => {
            *response.body_mut() = ResponseBody::full(slice(bytes, start, len));
            Answer::Ready(response)
        }
        Body::Disk(path) => Answer::Disk {
            response,
            path: path.clone(),
            start,
            len,
        },
    }
}

/// `len` bytes of `bytes` from `start`, sharing the buffer; clamped to what is there.
fn slice(bytes: &Bytes, start: u64, len: u64) -> Bytes {
    let start = usize::try_from(start)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let end = start
        .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
        .min(bytes.len());
    bytes.slice(start..end)
}

pub(super) fn insert_opt(
    headers: &mut HeaderMap,
    name: header::HeaderName,
    value: Option<HeaderValue>,
) {
    if let Some(value) = value {
        headers.insert(name, value);
    }
}
