//! The request handler: routes by host, redirects HTTP to HTTPS and aliases to their primary
//! domain, and serves a site's staged files with conditional, range and precompressed
//! responses. The routing table is loaded once per request, so a request sees one whole
//! table (and one whole bundle) even while a deploy swaps it.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use statiko_common::manifest::{Manifest, RuleOptions};
use statiko_common::redirects::Outcome;
use statiko_common::telemetry::ACCESS_LOG_TARGET;

use super::files::{self, CleanPath, Coding, Precondition, Preconditions, RangeRequest, Resolved};
use super::limits::{ClientAddr, ClientLimits};
use super::preview;
use super::response::{self, NOSNIFF, ResponseBody};
use super::site::{self, SiteHeaders};
use crate::bundle::{Body, HeaderText, StagedBundle, StaticFile};
use crate::metrics::{EdgeMetrics, SiteCounters};
use crate::table::{Route, RoutingTable, SharedTable};

const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
const BYTES: HeaderValue = HeaderValue::from_static("bytes");
const VARY_ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("Accept-Encoding");
const GZIP: HeaderValue = HeaderValue::from_static("gzip");
const BROTLI: HeaderValue = HeaderValue::from_static("br");
const SEC_FETCH_MODE: header::HeaderName = header::HeaderName::from_static("sec-fetch-mode");
/// What the single-page-app fallback serves.
const SPA_INDEX: &str = "/index.html";
/// The not-found page of `conventions.notFoundPage`.
const NOT_FOUND_PAGE: &str = "/404.html";
/// The manifest of a bundle without `_statiko.yaml`: no rules, no rewrites, no pages.
static NO_MANIFEST: LazyLock<Manifest> = LazyLock::new(Manifest::default);

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

/// A response decided without I/O, or one whose body must first be opened from disk, or
/// credentials to check before a preview answers.
pub(super) enum Prepared {
    Ready(Response<ResponseBody>),
    Disk {
        response: Response<ResponseBody>,
        path: PathBuf,
        start: u64,
        len: u64,
    },
    CheckPassword {
        check: Arc<preview::PasswordCheck>,
        key: [u8; 32],
        password: Vec<u8>,
    },
}

impl Prepared {
    pub(super) fn headers_mut(&mut self) -> Option<&mut HeaderMap> {
        match self {
            Self::Ready(response) | Self::Disk { response, .. } => Some(response.headers_mut()),
            Self::CheckPassword { .. } => None,
        }
    }
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
        let mut prepared = self.prepare(req, scheme, site);
        if let Prepared::CheckPassword {
            check,
            key,
            password,
        } = prepared
        {
            // The verdict is cached now: the second look finds it.
            check.check(key, password).await;
            prepared = self.prepare(req, scheme, site);
        }
        match prepared {
            Prepared::CheckPassword { .. } => preview::unauthorized(false),
            Prepared::Ready(response) => response,
            Prepared::Disk {
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

    fn prepare<B>(
        &self,
        req: &Request<B>,
        scheme: Scheme,
        site: &mut Option<Arc<SiteCounters>>,
    ) -> Prepared {
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
            return Prepared::Ready(acme_challenge(&table, host, req.uri().path(), head));
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
                Some(Route::Preview(p)) => preview::marked(self.to_https(&p.host, req, head)),
                None => ready_error(StatusCode::NOT_FOUND, head),
            },
            Scheme::Http | Scheme::Https => match route {
                None => ready_error(StatusCode::NOT_FOUND, head),
                Some(Route::Alias { primary }) => self.to_https(primary, req, head),
                Some(Route::Site(site)) => match &site.bundle {
                    None => Prepared::Ready(response::welcome_page(head)),
                    Some(bundle) => serve_path(bundle, req, head),
                },
                Some(Route::Preview(p)) => preview::marked(preview::serve(p, req, head)),
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
        ResponseBody::full(Bytes::from(body))
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

pub(super) fn ready_error(status: StatusCode, head: bool) -> Prepared {
    Prepared::Ready(response::error_page(status, head))
}

/// Serving a bundle: `_redirects` first, on the path as requested (a redirect answers at once;
/// a 200 rewrite replaces the path; a 404 or 410 rule serves its target with that status),
/// then the manifest's pipeline (an empty manifest when the bundle has none) on the result.
pub(super) fn serve_path<B>(bundle: &StagedBundle, req: &Request<B>, head: bool) -> Prepared {
    let Ok(request) = files::clean_path(req.uri().path()) else {
        return ready_error(StatusCode::BAD_REQUEST, head);
    };
    let manifest = bundle.manifest.as_deref().unwrap_or(&NO_MANIFEST);
    let Some(redirects) = &bundle.rules.redirects else {
        return serve_with_manifest(
            bundle,
            manifest,
            &request,
            request.clone(),
            false,
            req,
            head,
        );
    };
    let pretty_urls = bundle.rules.conventions.pretty_urls;
    let found = redirects.find(&request.key, req.uri().query(), |path| {
        files::clean_decoded(path).is_ok_and(|path| site::exists(bundle, &path, pretty_urls))
    });
    match found.map(|(_, outcome)| outcome) {
        None => serve_with_manifest(
            bundle,
            manifest,
            &request,
            request.clone(),
            false,
            req,
            head,
        ),
        Some(Outcome::Redirect { status, location }) => {
            Prepared::Ready(site::redirect(status, location, head))
        }
        Some(Outcome::Loop) => manifest_error(bundle, manifest, StatusCode::NOT_FOUND, head),
        Some(Outcome::Rewrite { path }) => match files::clean_decoded(&path) {
            Ok(target) => serve_with_manifest(bundle, manifest, &request, target, true, req, head),
            Err(_) => manifest_error(bundle, manifest, StatusCode::NOT_FOUND, head),
        },
        Some(Outcome::Serve { status, path }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
            let file = files::clean_decoded(&path).ok().and_then(|target| {
                match files::resolve(bundle, &target) {
                    Resolved::File(file) | Resolved::Index { file, .. } => Some(file),
                    _ => None,
                }
            });
            match file {
                Some(file) => page_response(file, status, head),
                None => ready_error(status, head),
            }
        }
    }
}

/// Serving under an app manifest, in nginx's order, with the conventions:
///
/// 0. `request` is the path as requested (what `_headers` blocks match); `path` is the one
///    to serve, after a `_redirects` rewrite when `internal`;
/// 1. the first matching `rewrite` replaces the path, once (nginx's server-level
///    `rewrite ... last`: the new path is matched against the rules, never rewritten again);
/// 2. the rule for the path (see `statiko_common::manifest` for the precedence); `deny`
///    answers 404;
/// 3. resolution; a directory's index file is an internal redirect, so the index's own rule
///    applies (and may deny it); a directory asked for without its slash is not redirected
///    when the slash form is denied, so a denied directory's existence is not revealed;
/// 4. the rule's headers and client caching on the response (only on 2xx and 3xx, as nginx's
///    `add_header` and `expires` without `always`);
/// 5. for a missing path: the SPA fallback to `/index.html` for navigations
///    (`files::is_navigation`), else 404 with `page404` when set; a directory without an index
///    answers 403 with `page403` when that is set (nginx's behaviour), else like a missing path.
///
/// Error pages are looked up directly in the bundle's file map with no rule matching, so they
/// cannot loop.
///
/// Pretty URLs (`conventions.prettyUrls`): a path that is no file serves `<path>.html`, whose
/// own rule applies (like an index); a path naming an `.html` page directly, not reached by a
/// rewrite, answers 301 to its pretty form. A served file gets the conventions'
/// `Cache-Control`, then the `_headers` blocks of `request`, then its rule's options, each
/// replacing the previous one's headers of the same name.
fn serve_with_manifest<B>(
    bundle: &StagedBundle,
    manifest: &Manifest,
    request: &CleanPath<'_>,
    path: CleanPath<'_>,
    internal: bool,
    req: &Request<B>,
    head: bool,
) -> Prepared {
    let rewritten = manifest.rewrite(&path.with_slash());
    let internal = internal || rewritten.is_some();
    let pretty_urls = bundle.rules.conventions.pretty_urls;
    let site = SiteHeaders::new(&bundle.rules, &request.with_slash());
    let path = match &rewritten {
        Some(target) => match files::clean_decoded(target) {
            Ok(path) => path,
            Err(_) => return manifest_error(bundle, manifest, StatusCode::NOT_FOUND, head),
        },
        None => path,
    };
    // Borrowed unless the request ends with a slash: no allocation in the common case.
    let rule_path = path.with_slash();
    let options = manifest.options_for(&rule_path);
    if options.is_some_and(|o| o.deny) {
        return manifest_error(bundle, manifest, StatusCode::NOT_FOUND, head);
    }
    let resolved = files::resolve(bundle, &path);
    if pretty_urls
        && matches!(
            resolved,
            Resolved::AddSlash | Resolved::NoIndex | Resolved::NotFound
        )
        && let Some((page, file)) = site::pretty_page(bundle, &path)
    {
        let options = manifest.options_for(page);
        if options.is_some_and(|o| o.deny) {
            return manifest_error(bundle, manifest, StatusCode::NOT_FOUND, head);
        }
        return serve_with_options(file, page, options, &site, req.headers(), head);
    }
    match resolved {
        Resolved::File(file) => {
            if pretty_urls
                && !internal
                && let Some(pretty) = site::pretty_url(bundle, &path)
            {
                return Prepared::Ready(site::moved_to(pretty, req.uri().query(), head));
            }
            serve_with_options(file, &path.key, options, &site, req.headers(), head)
        }
        Resolved::Index { path, file } => {
            let options = manifest.options_for(path);
            if options.is_some_and(|o| o.deny) {
                return manifest_error(bundle, manifest, StatusCode::NOT_FOUND, head);
            }
            serve_with_options(file, path, options, &site, req.headers(), head)
        }
        Resolved::AddSlash => {
            // Redirecting to a denied directory would reveal that it exists.
            let slashed = CleanPath {
                key: Cow::Borrowed(&*path.key),
                trailing_slash: true,
            };
            if manifest
                .options_for(&slashed.with_slash())
                .is_some_and(|o| o.deny)
            {
                return manifest_error(bundle, manifest, StatusCode::NOT_FOUND, head);
            }
            let mut prepared = add_slash(&path, req.uri().query(), head);
            apply_options(&mut prepared, options);
            prepared
        }
        resolved @ (Resolved::NoIndex | Resolved::NotFound) => {
            if manifest.spa() {
                let headers = req.headers();
                let navigation = files::is_navigation(
                    &rule_path,
                    headers.get(header::ACCEPT).map(HeaderValue::as_bytes),
                    headers.get(SEC_FETCH_MODE).map(HeaderValue::as_bytes),
                );
                if navigation && let Some((index, file)) = bundle.files.get_key_value(SPA_INDEX) {
                    let options = manifest.options_for(index);
                    if !options.is_some_and(|o| o.deny) {
                        return serve_with_options(file, index, options, &site, headers, head);
                    }
                }
            }
            let status = if matches!(resolved, Resolved::NoIndex) && manifest.page403().is_some() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::NOT_FOUND
            };
            manifest_error(bundle, manifest, status, head)
        }
    }
}

/// A file (at `file_path`) with the site's headers and its rule's options. A rule or a
/// `_headers` block that sets `Content-Encoding` says the file is stored encoded, so no
/// compressed variant of ours is picked.
fn serve_with_options(
    file: &StaticFile,
    file_path: &str,
    options: Option<&RuleOptions>,
    site: &SiteHeaders<'_>,
    headers: &HeaderMap,
    head: bool,
) -> Prepared {
    let identity_only =
        options.is_some_and(RuleOptions::sets_content_encoding) || site.sets_content_encoding();
    let mut prepared = serve_file(file, headers, head, identity_only);
    match &mut prepared {
        Prepared::Ready(response) | Prepared::Disk { response, .. } => {
            site.apply(response, file, file_path);
        }
        Prepared::CheckPassword { .. } => {}
    }
    apply_options(&mut prepared, options);
    prepared
}

/// Adds a rule's caching headers, then its headers (replacing same-name ones), to responses
/// whose status nginx's `add_header` and `expires` touch.
fn apply_options(prepared: &mut Prepared, options: Option<&RuleOptions>) {
    let Some(options) = options else {
        return;
    };
    let response = match prepared {
        Prepared::Ready(response) | Prepared::Disk { response, .. } => response,
        Prepared::CheckPassword { .. } => return,
    };
    if !matches!(
        response.status().as_u16(),
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    ) {
        return;
    }
    let out = response.headers_mut();
    if let Some(caching) = &options.client_caching {
        // `Expires` moves with the clock, so it is the one value formatted per response (one
        // short string); `Cache-Control` was built at staging.
        out.insert(header::CACHE_CONTROL, caching.cache_control.clone());
        out.insert(header::PRAGMA, options.pragma());
        let expires = SystemTime::now()
            .checked_add(Duration::from_secs(caching.max_age))
            .and_then(|at| HeaderValue::try_from(httpdate::fmt_http_date(at)).ok());
        insert_opt(out, header::EXPIRES, expires);
    }
    for (name, value) in &options.headers {
        out.insert(name.clone(), value.clone());
    }
}

/// A 404 or 403 answered with the manifest's page for it when the bundle has that file (with
/// the error status, no conditionals or ranges), else, for a 404, the bundle's `/404.html`
/// (`conventions.notFoundPage`), else the built-in page.
fn manifest_error(
    bundle: &StagedBundle,
    manifest: &Manifest,
    status: StatusCode,
    head: bool,
) -> Prepared {
    let page = match status {
        StatusCode::NOT_FOUND => manifest.page404().or(bundle
            .rules
            .conventions
            .not_found_page
            .then_some(NOT_FOUND_PAGE)),
        StatusCode::FORBIDDEN => manifest.page403(),
        _ => None,
    };
    match page.and_then(|page| bundle.files.get(page)) {
        Some(file) => page_response(file, status, head),
        None => ready_error(status, head),
    }
}

/// `file` as the body of an error answer: `status`, no conditionals or ranges, not cached.
fn page_response(file: &StaticFile, status: StatusCode, head: bool) -> Prepared {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, file.content_type.header().clone());
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(file.len));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    out.insert(header::CACHE_CONTROL, response::NO_CACHE);
    if head {
        return Prepared::Ready(response);
    }
    match &file.body {
        Body::Memory(bytes) => {
            *response.body_mut() = ResponseBody::full(bytes.clone());
            Prepared::Ready(response)
        }
        Body::Disk(path) => Prepared::Disk {
            response,
            path: path.clone(),
            start: 0,
            len: file.len,
        },
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
    etag: &'a HeaderText,
    encoding: Option<HeaderValue>,
}

/// A file with conditionals, ranges and a precompressed variant; `identity_only` leaves the
/// variants out.
fn serve_file(file: &StaticFile, headers: &HeaderMap, head: bool, identity_only: bool) -> Prepared {
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
            return Prepared::Ready(response);
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

/// Opens a staged file (one blocking-pool hop).
async fn open_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(path))
        .await
        .map_err(std::io::Error::other)?
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
