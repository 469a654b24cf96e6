//! The request handler: routes by host, redirects HTTP to HTTPS and aliases to their primary
//! domain, and serves a site's staged files with conditional, range and precompressed
//! responses. The routing table is loaded once per request, so a request sees one whole
//! table (and one whole bundle) even while a deploy swaps it.

//!
//! By file: this one routes (methods, host, rate limits, ACME challenges, HTTP to HTTPS and
//! alias redirects); `handler/rules.rs` serves a bundle's path by its `_redirects`, manifest
//! and conventions; `handler/file.rs` turns one file into a response (conditionals, ranges,
//! precompressed variants); `handler/skew.rs` answers a would-be 404 from a retired deployment
//! (skew protection).

mod file;
mod rules;
mod skew;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use statiko_common::telemetry::ACCESS_LOG_TARGET;

use super::limits::{ClientAddr, ClientLimits};
use super::preview;
use super::response::{self, ResponseBody};
use crate::metrics::{EdgeMetrics, SiteCounters};
use crate::table::{Route, RoutingTable, SharedTable};

const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The listener a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Serves every site in the shared routing table. Cheap to clone (two `Arc`s).
#[derive(Debug, Clone)]
pub struct Handler {
    table: SharedTable,
    https_port: u16,
    /// Redirect plain-HTTP requests to HTTPS (`edge.redirectHttp`); when off, plain HTTP serves
    /// the sites too (a TLS-terminating load balancer or CDN in front).
    redirect_http: bool,
    metrics: Arc<EdgeMetrics>,
    /// One `statiko::access` line per request.
    access_log: bool,
    /// Per-client and per-site request rates (429 over them).
    limits: Option<Arc<ClientLimits>>,
}

/// A response decided without I/O, or one whose body must first be opened from disk.
enum Answer {
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
            redirect_http: true,
            metrics: Arc::default(),
            access_log: false,
            limits: None,
        }
    }

    /// Answers 429 to clients and sites over their request rates (the client is the
    /// [`ClientAddr`] the accept loop put in the request's extensions).
    pub fn with_limits(mut self, limits: Arc<ClientLimits>) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Counts requests into `metrics` (the admin listener's `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<EdgeMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Logs one line per request at info level, target `statiko::access`.
    pub fn with_access_log(mut self, enabled: bool) -> Self {
        self.access_log = enabled;
        self
    }

    /// Whether plain HTTP redirects to HTTPS (the default) or serves the sites as HTTPS does.
    pub fn with_http_redirect(mut self, redirect: bool) -> Self {
        self.redirect_http = redirect;
        self
    }

    /// The port of the HTTPS listener, included in redirects unless it is 443.
    pub fn with_https_port(mut self, port: u16) -> Self {
        self.https_port = port;
        self
    }

    /// Answers one request. The request body is never read.
    pub async fn handle<B>(&self, req: Request<B>, scheme: Scheme) -> Response<ResponseBody> {
        let started = Instant::now();
        let mut site = None;
        let response = self.respond(&req, scheme, &mut site).await;
        let elapsed = started.elapsed();
        let bytes = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| req.method() != Method::HEAD)
            .unwrap_or(0);
        let status = response.status().as_u16();
        let counters = site.unwrap_or_else(|| self.metrics.unknown());
        self.metrics.record(&counters, status, bytes, elapsed);
        if self.access_log {
            let client = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());
            tracing::info!(
                target: ACCESS_LOG_TARGET,
                client = client.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
                method = %req.method(),
                host = request_host(&req).unwrap_or("-"),
                path = req.uri().path(),
                scheme = if scheme == Scheme::Https { "https" } else { "http" },
                status,
                bytes,
                duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                "request"
            );
        }
        response
    }

    async fn respond<B>(
        &self,
        req: &Request<B>,
        scheme: Scheme,
        site: &mut Option<Arc<SiteCounters>>,
    ) -> Response<ResponseBody> {
        if scheme == Scheme::Https || !self.redirect_http {
            self.check_preview_password(req).await;
        }
        match self.answer(req, scheme, site) {
            Answer::Ready(response) => response,
            Answer::Disk {
                response,
                path,
                start,
                len,
            } => match open_file(&path).await {
                Ok(file) => response.map(|_| ResponseBody::file(file, start, len)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "open staged file");
                    response::error_page(StatusCode::INTERNAL_SERVER_ERROR, false)
                }
            },
        }
    }

    /// A password-protected preview's credentials not seen before are checked here, off the
    /// async workers; `answer` then finds the verdict in the preview's cache.
    async fn check_preview_password<B>(&self, req: &Request<B>) {
        let check = {
            let table = self.table.load();
            match request_host(req).and_then(|host| table.route(host)) {
                Some(Route::Preview(p)) => p.password.clone(),
                _ => None,
            }
        };
        if let Some(check) = check
            && let preview::Gate::Check { key, password } = check.gate(req.headers())
        {
            check.check(key, password).await;
        }
    }

    fn answer<B>(
        &self,
        req: &Request<B>,
        scheme: Scheme,
        site: &mut Option<Arc<SiteCounters>>,
    ) -> Answer {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return ready_error(StatusCode::METHOD_NOT_ALLOWED, false),
        };
        let Some(host) = request_host(req) else {
            return ready_error(StatusCode::BAD_REQUEST, head);
        };
        let limits = self.limits.as_deref();
        if let (Some(limits), Some(client)) = (limits, req.extensions().get::<ClientAddr>())
            && !limits.allow_request(client.0.ip())
        {
            return ready_error(StatusCode::TOO_MANY_REQUESTS, head);
        }
        let table = self.table.load();
        let route = table.route(host);
        *site = match route {
            Some(Route::Site(site)) => Some(site.counters.clone()),
            Some(Route::Alias { primary }) => Some(self.metrics.site(primary)),
            Some(Route::Preview(preview)) => Some(preview.counters.clone()),
            None => None,
        };
        if scheme == Scheme::Http && req.uri().path().starts_with(ACME_CHALLENGE_PREFIX) {
            return Answer::Ready(acme_challenge(&table, host, req.uri().path(), head));
        }
        let site_domain = match route {
            Some(Route::Site(site)) => Some(site.domain.as_str()),
            Some(Route::Alias { primary }) => Some(primary.as_str()),
            Some(Route::Preview(preview)) => Some(preview.site.as_str()),
            None => None,
        };
        if let (Some(limits), Some(domain)) = (limits, site_domain)
            && !limits.allow_site(domain)
        {
            return ready_error(StatusCode::TOO_MANY_REQUESTS, head);
        }
        match scheme {
            Scheme::Http if self.redirect_http => match route {
                Some(Route::Site(site)) => self.to_https(&site.domain, req, head),
                Some(Route::Alias { primary }) => self.to_https(primary, req, head),
                Some(Route::Preview(p)) => noindex(self.to_https(&p.host, req, head)),
                None => ready_error(StatusCode::NOT_FOUND, head),
            },
            Scheme::Http | Scheme::Https => match route {
                None => ready_error(StatusCode::NOT_FOUND, head),
                Some(Route::Alias { primary }) => self.to_https(primary, req, head),
                Some(Route::Site(site)) => match &site.bundle {
                    None => Answer::Ready(response::welcome_page(head)),
                    Some(bundle) => match rules::serve_path(bundle, req, head) {
                        // Skew protection looks at would-be 404s only.
                        missing if !site.retired.is_empty() && skew::is_not_found(&missing) => {
                            skew::serve_retired(site, bundle, req, head).unwrap_or(missing)
                        }
                        answer => answer,
                    },
                },
                Some(Route::Preview(p)) => noindex(match preview::admit(p, req.headers()) {
                    Ok(bundle) => rules::serve_path(bundle, req, head),
                    Err(status) => Answer::Ready(preview::refusal(status, head)),
                }),
            },
        }
    }

    /// 301 to `https://<domain>[:port]<path-and-query>`.
    fn to_https<B>(&self, domain: &str, req: &Request<B>, head: bool) -> Answer {
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
            Ok(location) => Answer::Ready(response::redirect(location)),
            Err(_) => ready_error(StatusCode::BAD_REQUEST, head),
        }
    }
}

/// HTTP-01 challenge responses, answered on plain HTTP and never redirected: the key
/// authorization the leader stored for `token`, only when the request's host is a domain of the
/// site the challenge is for; anything else is a plain 404.
fn acme_challenge(
    table: &RoutingTable,
    host: &str,
    path: &str,
    head: bool,
) -> Response<ResponseBody> {
    let token = path.strip_prefix(ACME_CHALLENGE_PREFIX).unwrap_or_default();
    let host = crate::table::host_without_port(host);
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let Some(challenge) = table
        .challenges
        .get(token)
        .filter(|c| c.domains.contains(&host))
    else {
        return response::error_page(StatusCode::NOT_FOUND, head);
    };
    let body = challenge.key_authorization.clone().into_bytes();
    let len = body.len();
    let mut response = Response::new(if head {
        ResponseBody::empty()
    } else {
        ResponseBody::full(bytes::Bytes::from(body))
    });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The host a request is for: the URI authority (HTTP/2 `:authority`, HTTP/1 absolute form),
/// else the `Host` header. Port and userinfo are left for the table to strip. More than one
/// `Host` header is no host at all (RFC 9112 section 3.2: answer 400).
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let host = match req.uri().authority() {
        Some(authority) => authority.as_str(),
        None => first?.to_str().ok()?,
    };
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    (!host.is_empty()).then_some(host)
}

/// A built-in error page, ready to send.
/// Adds `X-Robots-Tag: noindex` (every response of a preview host).
fn noindex(mut answer: Answer) -> Answer {
    match &mut answer {
        Answer::Ready(response) | Answer::Disk { response, .. } => {
            preview::noindex(response.headers_mut());
        }
    }
    answer
}

fn ready_error(status: StatusCode, head: bool) -> Answer {
    Answer::Ready(response::error_page(status, head))
}

/// Opens a staged file (one blocking-pool hop).
async fn open_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(path))
        .await
        .map_err(std::io::Error::other)?
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
