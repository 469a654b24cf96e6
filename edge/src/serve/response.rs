//! Response bodies (one concrete type for in-memory bytes, streamed files and nothing) and the
//! built-in pages: neutral error pages that name no product, version or path, and the welcome
//! page of a site with nothing deployed.

use std::fs::File;
use std::future::Future as _;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

/// Read size for files streamed from disk.
pub const DISK_CHUNK: usize = 64 * 1024;

/// One chunk read on the blocking pool.
type ChunkRead = JoinHandle<io::Result<Vec<u8>>>;

/// The body of every response the edge sends.
#[derive(Debug)]
pub struct ResponseBody(Inner);

#[derive(Debug)]
enum Inner {
    Empty,
    Full(Option<Bytes>),
    /// A file streamed in [`DISK_CHUNK`] positional reads straight into the buffers handed to
    /// hyper. A chunk in the page cache (the usual case for a staged bundle) is read on the
    /// worker with `preadv2(RWF_NOWAIT)`, which never blocks; only a chunk that must come from
    /// the disk takes a blocking-pool hop. (Before: `tokio::fs::File`, one hop per chunk and a
    /// copy through its buffer; a 10 MB response cost ~6-7 ms of CPU, mostly thread switches;
    /// now ~3.5-4 ms, the two copies in the kernel.)
    File {
        file: Arc<File>,
        offset: u64,
        /// Bytes not yet returned.
        remaining: u64,
        /// A read from the disk in flight.
        read: Option<ChunkRead>,
        /// Chunks read from the page cache since this body last yielded.
        streak: u32,
    },
}

/// Page-cache chunks one body returns before it yields to the other connections on its worker
/// (256 KiB), so a large file read without waiting cannot starve them.
const STREAK_MAX: u32 = 4;

/// The next chunk if it is in the page cache; `None` when it is not (or the kernel cannot
/// tell), so the caller reads it on the blocking pool.
#[cfg(target_os = "linux")]
fn read_cached(file: &File, offset: u64, len: usize) -> Option<io::Result<Vec<u8>>> {
    let mut buf = vec![0; len];
    let read = rustix::io::preadv2(
        file,
        &mut [io::IoSliceMut::new(&mut buf)],
        offset,
        rustix::io::ReadWriteFlags::NOWAIT,
    );
    match read {
        Ok(0) => None, // end of file, or nothing cached: the blocking read tells which
        Ok(n) => {
            buf.truncate(n);
            Some(Ok(buf))
        }
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
            None
        }
        Err(err) => Some(Err(err.into())),
    }
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_: &File, _: u64, _: usize) -> Option<io::Result<Vec<u8>>> {
    None
}

/// Reads a chunk on the blocking pool (it may wait for the disk).
fn read_blocking(file: Arc<File>, offset: u64, len: usize) -> ChunkRead {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; len];
        let n = file.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    })
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

    /// `len` bytes of `file` from `offset`, read in [`DISK_CHUNK`] pieces as hyper asks for
    /// them. Polled within a Tokio runtime.
    pub fn file(file: File, offset: u64, len: u64) -> Self {
        if len == 0 {
            return Self::empty();
        }
        Self(Inner::File {
            file: Arc::new(file),
            offset,
            remaining: len,
            read: None,
            streak: 0,
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
            Inner::File {
                file,
                offset,
                remaining,
                read,
                streak,
            } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                if *streak >= STREAK_MAX && read.is_none() {
                    *streak = 0;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let want =
                    usize::try_from((*remaining).min(DISK_CHUNK as u64)).unwrap_or(DISK_CHUNK);
                let result = match read {
                    Some(handle) => match Pin::new(handle).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(done) => {
                            *read = None;
                            done.unwrap_or_else(|join| Err(io::Error::other(join)))
                        }
                    },
                    None => match read_cached(file, *offset, want) {
                        Some(result) => {
                            *streak += 1;
                            result
                        }
                        None => {
                            let mut handle = read_blocking(file.clone(), *offset, want);
                            let polled = Pin::new(&mut handle).poll(cx);
                            match polled {
                                Poll::Pending => {
                                    *read = Some(handle);
                                    return Poll::Pending;
                                }
                                Poll::Ready(done) => {
                                    done.unwrap_or_else(|join| Err(io::Error::other(join)))
                                }
                            }
                        }
                    },
                };
                let chunk = match result {
                    Ok(chunk) if chunk.is_empty() => {
                        // The file shrank under us: fail the response rather than send a body
                        // shorter than its Content-Length.
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file ended before its length",
                        ))));
                    }
                    Ok(chunk) => chunk,
                    Err(err) => return Poll::Ready(Some(Err(err))),
                };
                let len = (chunk.len() as u64).min(*remaining);
                *remaining -= len;
                *offset += len;
                let mut chunk = Bytes::from(chunk);
                chunk.truncate(usize::try_from(len).unwrap_or(usize::MAX));
                Poll::Ready(Some(Ok(Frame::data(chunk))))
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
const GONE: &str = page!("410 Gone", "The requested page is no longer available.");
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
const TOO_MANY_REQUESTS: &str = page!(
    "429 Too Many Requests",
    "Too many requests. Please try again later."
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
        StatusCode::GONE => GONE,
        StatusCode::METHOD_NOT_ALLOWED => METHOD_NOT_ALLOWED,
        StatusCode::PRECONDITION_FAILED => PRECONDITION_FAILED,
        StatusCode::RANGE_NOT_SATISFIABLE => RANGE_NOT_SATISFIABLE,
        StatusCode::TOO_MANY_REQUESTS => TOO_MANY_REQUESTS,
        _ => INTERNAL,
    };
    let mut response = html_response(html, head);
    *response.status_mut() = status;
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(header::ALLOW, ALLOW);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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

    #[tokio::test]
    async fn files_stream_in_chunks_and_a_short_file_fails_the_body() {
        use std::io::Write as _;
        let data: Vec<u8> = (0..DISK_CHUNK * 2 + 10).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();

        let body = ResponseBody::file(file.try_clone().unwrap(), 5, data.len() as u64 - 5);
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64 - 5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], &data[5..]);

        // Asked for more than the file holds (it shrank): an error, never a short body.
        let body = ResponseBody::file(file, 0, data.len() as u64 + 1);
        let err = body.collect().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
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
