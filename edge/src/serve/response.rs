//! Response bodies (one concrete type for in-memory bytes, streamed files and nothing) and the
//! built-in pages: neutral error pages that name no product, version or path, and the welcome
//! page of a site with nothing deployed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::fs::File;
use tokio::io::Take;
use tokio_util::io::ReaderStream;

/// Read size for files streamed from disk.
pub const DISK_CHUNK: usize = 64 * 1024;

/// The body of every response the edge sends.
#[derive(Debug)]
pub struct ResponseBody(Inner);

#[derive(Debug)]
enum Inner {
    Empty,
    Full(Option<Bytes>),
    File {
        stream: ReaderStream<Take<File>>,
        remaining: u64,
    },
}

impl ResponseBody {
    pub fn empty() -> Self {
        Self(Inner::Empty)
    }

    /// In-memory bytes; cloning `Bytes` shares them, nothing is copied.
    pub fn full(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            return Self::empty();
        }
        Self(Inner::Full(Some(bytes)))
    }

    /// `len` bytes of `file` from its current position, read in [`DISK_CHUNK`] pieces.
    pub fn file(file: Take<File>, len: u64) -> Self {
        if len == 0 {
            return Self::empty();
        }
        Self(Inner::File {
            stream: ReaderStream::with_capacity(file, DISK_CHUNK),
            remaining: len,
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::File { stream, remaining } => {
                match Pin::new(stream).poll_next(cx) {
                    Poll::Ready(Some(Ok(chunk))) => {
                        *remaining = remaining.saturating_sub(chunk.len() as u64);
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                    Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
                    Poll::Ready(None) if *remaining > 0 => {
                        // The file shrank under us: fail the response rather than send a body
                        // shorter than its Content-Length.
                        Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file ended before its length",
                        ))))
                    }
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Empty => true,
            Inner::Full(bytes) => bytes.is_none(),
            Inner::File { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::File { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

pub(crate) const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
pub(crate) const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
pub(crate) const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
pub(crate) const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD");

macro_rules! page {
    ($title:expr, $text:expr) => {
        concat!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<title>",
            $title,
            "</title><style>body{font-family:system-ui,sans-serif;margin:4rem auto;",
            "max-width:36rem;padding:0 1rem;color:#222}h1{font-weight:600}</style></head>",
            "<body><h1>",
            $title,
            "</h1><p>",
            $text,
            "</p></body></html>\n"
        )
    };
}

const BAD_REQUEST: &str = page!("400 Bad Request", "The request could not be understood.");
const FORBIDDEN: &str = page!("403 Forbidden", "Access to this resource is not allowed.");
const NOT_FOUND: &str = page!("404 Not Found", "The requested page was not found.");
const METHOD_NOT_ALLOWED: &str = page!(
    "405 Method Not Allowed",
    "Only GET and HEAD requests are supported."
);
const PRECONDITION_FAILED: &str = page!(
    "412 Precondition Failed",
    "The resource does not match the request's conditions."
);
const RANGE_NOT_SATISFIABLE: &str = page!(
    "416 Range Not Satisfiable",
    "The requested range is not available."
);
const INTERNAL: &str = page!(
    "500 Internal Server Error",
    "The server could not complete the request."
);
const WELCOME: &str = page!(
    "Welcome",
    "Statiko is running. No app has been deployed to this site yet."
);

/// A built-in error page; `head` leaves the body out but keeps its length.
pub fn error_page(status: StatusCode, head: bool) -> Response<ResponseBody> {
    let html = match status {
        StatusCode::BAD_REQUEST => BAD_REQUEST,
        StatusCode::FORBIDDEN => FORBIDDEN,
        StatusCode::NOT_FOUND => NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED => METHOD_NOT_ALLOWED,
        StatusCode::PRECONDITION_FAILED => PRECONDITION_FAILED,
        StatusCode::RANGE_NOT_SATISFIABLE => RANGE_NOT_SATISFIABLE,
        _ => INTERNAL,
    };
    let mut response = html_response(html, head);
    *response.status_mut() = status;
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(header::ALLOW, ALLOW);
    }
    response
}

/// The page of a site that has no app deployed yet (200).
pub fn welcome_page(head: bool) -> Response<ResponseBody> {
    html_response(WELCOME, head)
}

fn html_response(html: &'static str, head: bool) -> Response<ResponseBody> {
    let body = if head {
        ResponseBody::empty()
    } else {
        ResponseBody::full(Bytes::from_static(html.as_bytes()))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HTML);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(html.len()));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    headers.insert(header::CACHE_CONTROL, NO_CACHE);
    response
}

/// A `301 Moved Permanently` to `location` (already a valid header value).
pub fn redirect(location: HeaderValue) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn bodies() {
        let body = ResponseBody::full(Bytes::from_static(b"hello"));
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(ResponseBody::empty().is_end_stream());
    }

    #[test]
    fn pages_are_neutral() {
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::METHOD_NOT_ALLOWED,
            StatusCode::RANGE_NOT_SATISFIABLE,
        ] {
            let response = error_page(status, false);
            assert_eq!(response.status(), status);
            let len = response.headers()[header::CONTENT_LENGTH].clone();
            let head = error_page(status, true);
            assert_eq!(head.headers()[header::CONTENT_LENGTH], len);
            assert!(head.body().is_end_stream());
        }
        assert!(!NOT_FOUND.to_ascii_lowercase().contains("statiko"));
        assert!(WELCOME.contains("Statiko is running"));
    }
}
