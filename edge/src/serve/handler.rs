//! The request handler: routes by host, redirects HTTP to HTTPS and aliases to their primary
//! domain, and serves a site's staged files with conditional, range and precompressed
//! responses. The routing table is loaded once per request, so a request sees one whole
//! table (and one whole bundle) even while a deploy swaps it.

use std::io::SeekFrom;
use std::path::PathBuf;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::files::{self, CleanPath, Coding, Precondition, Preconditions, RangeRequest, Resolved};
use super::response::{self, NOSNIFF, ResponseBody};
use crate::bundle::{Body, StagedBundle, StaticFile};
use crate::table::{Route, RoutingTable, SharedTable};

const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
const BYTES: HeaderValue = HeaderValue::from_static("bytes");
const VARY_ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("Accept-Encoding");
const GZIP: HeaderValue = HeaderValue::from_static("gzip");
const BROTLI: HeaderValue = HeaderValue::from_static("br");

/// The listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Serves every site in the shared routing table. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct Handler {
    table: SharedTable,
    https_port: u16,
}

/// A response decided without I/O, or one whose body must first be opened from disk.
enum Prepared {
    Ready(Response<ResponseBody>),
    Disk {
        response: Response<ResponseBody>,
        path: PathBuf,
        start: u64,
        len: u64,
    },
}

impl Handler {
    /// A handler whose redirects point at HTTPS on port 443.
    pub fn new(table: SharedTable) -> Self {
        Self {
            table,
            https_port: 443,
        }
    }

    /// The port of the HTTPS listener, included in redirects unless it is 443.
    pub fn with_https_port(mut self, port: u16) -> Self {
        self.https_port = port;
        self
    }

    /// Answers one request. The request body is never read.
    pub async fn handle<B>(&self, req: Request<B>, scheme: Scheme) -> Response<ResponseBody> {
        match self.prepare(&req, scheme) {
            Prepared::Ready(response) => response,
            Prepared::Disk {
                response,
                path,
                start,
                len,
            } => match open_range(&path, start, len).await {
                Ok(file) => response.map(|_| ResponseBody::file(file, len)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "open staged file");
                    response::error_page(StatusCode::INTERNAL_SERVER_ERROR, false)
                }
            },
        }
    }

    fn prepare<B>(&self, req: &Request<B>, scheme: Scheme) -> Prepared {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return ready_error(StatusCode::METHOD_NOT_ALLOWED, false),
        };
        let Some(host) = request_host(req) else {
            return ready_error(StatusCode::BAD_REQUEST, head);
        };
        let table = self.table.load();
        let route = table.route(host);
        match scheme {
            Scheme::Http => {
                if req.uri().path().starts_with(ACME_CHALLENGE_PREFIX) {
                    return Prepared::Ready(acme_challenge(&table, host, req.uri().path(), head));
                }
                match route {
                    Some(Route::Site(site)) => self.to_https(&site.domain, req, head),
                    Some(Route::Alias { primary }) => self.to_https(primary, req, head),
                    None => ready_error(StatusCode::NOT_FOUND, head),
                }
            }
            Scheme::Https => match route {
                None => ready_error(StatusCode::NOT_FOUND, head),
                Some(Route::Alias { primary }) => self.to_https(primary, req, head),
                Some(Route::Site(site)) => match &site.bundle {
                    None => Prepared::Ready(response::welcome_page(head)),
                    Some(bundle) => serve_path(bundle, req, head),
                },
            },
        }
    }

    /// 301 to `https://<domain>[:port]<path-and-query>`.
    fn to_https<B>(&self, domain: &str, req: &Request<B>, head: bool) -> Prepared {
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut location = String::with_capacity(domain.len() + path_and_query.len() + 16);
        location.push_str("https://");
        location.push_str(domain);
        if self.https_port != 443 {
            location.push(':');
            location.push_str(itoa_u16(self.https_port, &mut [0; 5]));
        }
        location.push_str(path_and_query);
        match HeaderValue::try_from(location) {
            Ok(location) => Prepared::Ready(response::redirect(location)),
            Err(_) => ready_error(StatusCode::BAD_REQUEST, head),
        }
    }
}

/// HTTP-01 challenge responses. They are answered on plain HTTP, never redirected. Until the
/// ACME work stores challenge tokens in the routing table, there is nothing to answer with,
/// so every challenge path is a plain 404.
fn acme_challenge(
    _table: &RoutingTable,
    _host: &str,
    _path: &str,
    head: bool,
) -> Response<ResponseBody> {
    response::error_page(StatusCode::NOT_FOUND, head)
}

/// The host a request is for: the URI authority (HTTP/2 `:authority`, HTTP/1 absolute form),
/// else the `Host` header. Port and userinfo are left for the table to strip.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let host = match req.uri().authority() {
        Some(authority) => authority.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    (!host.is_empty()).then_some(host)
}

fn ready_error(status: StatusCode, head: bool) -> Prepared {
    Prepared::Ready(response::error_page(status, head))
}

fn serve_path<B>(bundle: &StagedBundle, req: &Request<B>, head: bool) -> Prepared {
    let Ok(path) = files::clean_path(req.uri().path()) else {
        return ready_error(StatusCode::BAD_REQUEST, head);
    };
    match files::resolve(bundle, &path) {
        Resolved::File(file) => serve_file(file, req.headers(), head),
        Resolved::NotFound => ready_error(StatusCode::NOT_FOUND, head),
        Resolved::AddSlash => add_slash(&path, req.uri().query(), head),
    }
}

/// 301 from a directory to the same path with a slash. The location is rebuilt from the clean
/// path (never the raw one), so `//evil.example/dir` cannot become a protocol-relative URL.
fn add_slash(path: &CleanPath<'_>, query: Option<&str>, head: bool) -> Prepared {
    let mut location = String::with_capacity(path.key.len() + query.map_or(0, str::len) + 8);
    files::encode_path(&path.key, &mut location);
    location.push('/');
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    match HeaderValue::try_from(location) {
        Ok(location) => Prepared::Ready(response::redirect(location)),
        Err(_) => ready_error(StatusCode::BAD_REQUEST, head),
    }
}

/// The representation chosen for a response.
struct Selected<'a> {
    len: u64,
    body: &'a Body,
    etag: &'a str,
    encoding: Option<HeaderValue>,
}

fn serve_file(file: &StaticFile, headers: &HeaderMap, head: bool) -> Prepared {
    let has_variants = file.gzip.is_some() || file.brotli.is_some();
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
            file.gzip.is_some(),
            file.brotli.is_some(),
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

    let etag = HeaderValue::from_str(selected.etag).ok();
    let last_modified = HeaderValue::try_from(httpdate::fmt_http_date(file.last_modified)).ok();
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
    match files::evaluate(&preconditions, selected.etag, file.last_modified) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            let mut response = Response::new(ResponseBody::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            let out = response.headers_mut();
            insert_opt(out, header::ETAG, etag);
            insert_opt(out, header::LAST_MODIFIED, last_modified);
            if has_variants {
                out.insert(header::VARY, VARY_ACCEPT_ENCODING);
            }
            return Prepared::Ready(response);
        }
        Precondition::Failed => {
            let mut response = response::error_page(StatusCode::PRECONDITION_FAILED, head);
            if has_variants {
                response
                    .headers_mut()
                    .insert(header::VARY, VARY_ACCEPT_ENCODING);
            }
            return Prepared::Ready(response);
        }
    }

    let range = match range {
        Some(value)
            if headers.get(header::IF_RANGE).is_none_or(|v| {
                files::if_range_matches(v.as_bytes(), &file.etag, file.last_modified)
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
            return Prepared::Ready(response);
        }
    };

    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    let out = response.headers_mut();
    insert_opt(
        out,
        header::CONTENT_TYPE,
        HeaderValue::from_str(&file.content_type).ok(),
    );
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    insert_opt(out, header::ETAG, etag);
    insert_opt(out, header::LAST_MODIFIED, last_modified);
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
        return Prepared::Ready(response);
    }
    match selected.body {
        Body::Memory(bytes) => {
            *response.body_mut() = ResponseBody::full(slice(bytes, start, len));
            Prepared::Ready(response)
        }
        Body::Disk(path) => Prepared::Disk {
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

async fn open_range(
    path: &std::path::Path,
    start: u64,
    len: u64,
) -> std::io::Result<tokio::io::Take<tokio::fs::File>> {
    let mut file = tokio::fs::File::open(path).await?;
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await?;
    }
    Ok(file.take(len))
}

fn insert_opt(headers: &mut HeaderMap, name: header::HeaderName, value: Option<HeaderValue>) {
    if let Some(value) = value {
        headers.insert(name, value);
    }
}

/// Formats a port without allocating.
fn itoa_u16(mut n: u16, buf: &mut [u8; 5]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("443")
}

#[cfg(test)]
mod tests;
