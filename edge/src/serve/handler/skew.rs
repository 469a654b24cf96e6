//! Skew protection: a browser still running the HTML of the deployment that was live before a
//! cutover asks for that deployment's hashed assets, which the live one no longer has. For the
//! site's window after the cutover (`SiteRecord::skew_protection_ms`, default 24 h), such a
//! request is served from the retained bundle of an older deployment (newest first) that has
//! the file, with a `Statiko-Deployment` header naming it.
//!
//! Only what would otherwise be the live version's plain 404 is looked at, so the live
//! version's hits cost nothing: not a path the live version routes (a `_redirects` rule, a
//! `deny` rule), never a navigation, and never an HTML file (a page always comes from the live
//! version). The old file is served as its own bundle would serve it (its conventions,
//! `_headers` blocks and rule options); a path its own manifest denies is not served.

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use statiko_common::model::now_ms;

use super::Answer;
use super::rules::{NO_MANIFEST, SEC_FETCH_MODE, serve_with_options};
use crate::bundle::StagedBundle;
use crate::serve::files::{self, CleanPath, Resolved};
use crate::serve::site::{self, SiteHeaders};
use crate::table::SiteRoute;

/// Names the deployment that served an answer, when it is not the live one.
const DEPLOYMENT_HEADER: HeaderName = HeaderName::from_static("statiko-deployment");

/// Whether `answer` is a 404 that skew protection may replace (checked first, so a hit
/// costs one comparison).
pub(super) fn is_not_found(answer: &Answer) -> bool {
    let response = match answer {
        Answer::Ready(response) | Answer::Disk { response, .. } => response,
    };
    response.status() == StatusCode::NOT_FOUND
}

/// The answer of a retired deployment of `route` for a request the live bundle `live` answered
/// with 404, if one within its window has the file.
pub(super) fn serve_retired<B>(
    route: &SiteRoute,
    live: &StagedBundle,
    req: &Request<B>,
    head: bool,
) -> Option<Answer> {
    let path = files::clean_path(req.uri().path()).ok()?;
    let rule_path = path.with_slash();
    let headers = req.headers();
    if files::is_navigation(
        &rule_path,
        headers.get(header::ACCEPT).map(HeaderValue::as_bytes),
        headers.get(SEC_FETCH_MODE).map(HeaderValue::as_bytes),
    ) || routed_by_live(live, &path, req.uri().query())
    {
        return None;
    }
    let now = now_ms();
    route
        .retired
        .iter()
        .filter(|retired| now < retired.until_ms)
        .find_map(|retired| {
            let bundle = &*retired.bundle;
            let Resolved::File(file) = files::resolve(bundle, &path) else {
                return None;
            };
            if site::is_html(file) {
                return None;
            }
            let manifest = bundle.manifest.as_deref().unwrap_or(&NO_MANIFEST);
            let options = manifest.options_for(&rule_path);
            if options.is_some_and(|o| o.deny) {
                return None;
            }
            let site_headers = SiteHeaders::new(&bundle.rules, &rule_path);
            let mut answer =
                serve_with_options(file, &path.key, options, &site_headers, headers, head);
            match &mut answer {
                Answer::Ready(response) | Answer::Disk { response, .. } => {
                    response
                        .headers_mut()
                        .insert(DEPLOYMENT_HEADER, retired.deployment.clone());
                }
            }
            Some(answer)
        })
}

/// Whether the live bundle's own rules decided the 404 (a `deny` rule or a `_redirects` rule
/// for the path), rather than the file simply not being there.
fn routed_by_live(live: &StagedBundle, path: &CleanPath<'_>, query: Option<&str>) -> bool {
    let manifest = live.manifest.as_deref().unwrap_or(&NO_MANIFEST);
    if manifest
        .options_for(&path.with_slash())
        .is_some_and(|o| o.deny)
        || manifest.rewrite(&path.with_slash()).is_some()
    {
        return true;
    }
    let Some(redirects) = &live.rules.redirects else {
        return false;
    };
    let pretty_urls = live.rules.conventions.pretty_urls;
    redirects
        .find(&path.key, query, |p| {
            files::clean_decoded(p).is_ok_and(|p| site::exists(live, &p, pretty_urls))
        })
        .is_some()
}

#[cfg(test)]
mod tests;
