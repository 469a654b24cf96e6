//! Serving a bundle's path by its rules: `_redirects`, then the app manifest's pipeline
//! (rewrites, rule options, deny, SPA fallback, error pages) with the conventions (pretty URLs,
//! `404.html`) and the `_headers` blocks.

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use statiko_common::manifest::{Manifest, RuleOptions};
use statiko_common::redirects::Outcome;

use super::file::{insert_opt, serve_file};
use super::{Answer, ready_error};
use crate::bundle::{Body, StagedBundle, StaticFile};
use crate::serve::files::{self, CleanPath, Resolved};
use crate::serve::response::{self, NOSNIFF, ResponseBody};
use crate::serve::site::{self, SiteHeaders};

pub(super) const SEC_FETCH_MODE: header::HeaderName =
    header::HeaderName::from_static("sec-fetch-mode");
/// What the single-page-app fallback serves.
const SPA_INDEX: &str = "/index.html";
/// The not-found page of `conventions.notFoundPage`.
const NOT_FOUND_PAGE: &str = "/404.html";
/// The manifest of a bundle without `_statiko.yaml`: no rules, no rewrites, no pages.
pub(super) static NO_MANIFEST: LazyLock<Manifest> = LazyLock::new(Manifest::default);

/// Serving a bundle: `_redirects` first, on the path as requested (a redirect answers at once;
/// a 200 rewrite replaces the path; a 404 or 410 rule serves its target with that status),
/// then the manifest's pipeline (an empty manifest when the bundle has none) on the result.
pub(super) fn serve_path<B>(bundle: &StagedBundle, req: &Request<B>, head: bool) -> Answer {
    let Ok(request) = files::clean_path(req.uri().path()) else {
        return ready_error(StatusCode::BAD_REQUEST, head);
    };
    let manifest = bundle.manifest.as_deref().unwrap_or(&NO_MANIFEST);
    let pretty_urls = bundle.rules.conventions.pretty_urls;
    let found = bundle.rules.redirects.as_ref().and_then(|redirects| {
        redirects.find(&request.key, req.uri().query(), |path| {
            files::clean_decoded(path).is_ok_and(|path| site::exists(bundle, &path, pretty_urls))
        })
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
            Answer::Ready(site::redirect(status, location, head))
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
) -> Answer {
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
                return Answer::Ready(site::moved_to(pretty, req.uri().query(), head));
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
            let mut answer = add_slash(&path, req.uri().query(), head);
            apply_options(&mut answer, options);
            answer
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
pub(super) fn serve_with_options(
    file: &StaticFile,
    file_path: &str,
    options: Option<&RuleOptions>,
    site: &SiteHeaders<'_>,
    headers: &HeaderMap,
    head: bool,
) -> Answer {
    let identity_only =
        options.is_some_and(RuleOptions::sets_content_encoding) || site.sets_content_encoding();
    let mut answer = serve_file(file, headers, head, identity_only);
    match &mut answer {
        Answer::Ready(response) | Answer::Disk { response, .. } => {
            site.apply(response, file, file_path);
        }
    }
    apply_options(&mut answer, options);
    answer
}

/// Adds a rule's caching headers, then its headers (replacing same-name ones), to responses
/// whose status nginx's `add_header` and `expires` touch.
fn apply_options(answer: &mut Answer, options: Option<&RuleOptions>) {
    let Some(options) = options else {
        return;
    };
    let response = match answer {
        Answer::Ready(response) | Answer::Disk { response, .. } => response,
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
) -> Answer {
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
fn page_response(file: &StaticFile, status: StatusCode, head: bool) -> Answer {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, file.content_type.header().clone());
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(file.len));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    out.insert(header::CACHE_CONTROL, response::NO_CACHE);
    if head {
        return Answer::Ready(response);
    }
    match &file.body {
        Body::Memory(bytes) => {
            *response.body_mut() = ResponseBody::full(bytes.clone());
            Answer::Ready(response)
        }
        Body::Disk(path) => Answer::Disk {
            response,
            path: path.clone(),
            start: 0,
            len: file.len,
        },
    }
}

/// 301 from a directory to the same path with a slash. The location is rebuilt from the clean
/// path (never the raw one), so `//evil.example/dir` cannot become a protocol-relative URL.
fn add_slash(path: &CleanPath<'_>, query: Option<&str>, head: bool) -> Answer {
    let mut location = String::with_capacity(path.key.len() + query.map_or(0, str::len) + 8);
    files::encode_path(&path.key, &mut location);
    location.push('/');
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    match HeaderValue::try_from(location) {
        Ok(location) => Answer::Ready(response::redirect(location)),
        Err(_) => ready_error(StatusCode::BAD_REQUEST, head),
    }
}
