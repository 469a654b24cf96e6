//! Serving a preview at its own host: the same bundle rules as a site (manifest, `_redirects`,
//! `_headers`, conventions), `X-Robots-Tag: noindex` on every response, nothing once it has
//! expired (404, even before the leader deletes it), and HTTP basic auth when it has a password.
//!
//! The password is checked against its argon2id hash on the blocking pool, and each verdict is
//! cached per preview by the SHA-256 of the `Authorization` value, so a browser sending the same
//! credentials on every request costs one argon2 check in all, not one per request. The cache
//! is bounded ([`MAX_VERDICTS`], then cleared) and at most [`MAX_CONCURRENT_CHECKS`] checks run
//! at once per edge, so wrong guesses cannot take every core.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use statiko_common::crypto::sha256;
use tokio::sync::Semaphore;

use super::response::{self, ResponseBody};
use crate::bundle::StagedBundle;
use crate::table::PreviewRoute;

/// `X-Robots-Tag: noindex` on every response of a preview host.
pub const NOINDEX: HeaderValue = HeaderValue::from_static("noindex");
const X_ROBOTS_TAG: header::HeaderName = header::HeaderName::from_static("x-robots-tag");
const CHALLENGE: HeaderValue =
    HeaderValue::from_static("Basic realm=\"preview\", charset=\"UTF-8\"");
/// Verdicts kept per preview before the cache is cleared.
const MAX_VERDICTS: usize = 1024;
/// argon2 checks running at once on this edge.
const MAX_CONCURRENT_CHECKS: usize = 2;

static CHECKS: Semaphore = Semaphore::const_new(MAX_CONCURRENT_CHECKS);

/// A preview's password: its argon2id hash and the verdicts already reached.
#[derive(Debug)]
pub struct PasswordCheck {
    hash: String,
    verdicts: Mutex<HashMap<[u8; 32], bool>>,
}

/// What the credentials of a request get.
#[derive(Debug)]
pub(super) enum Gate {
    /// No password, or credentials already found right.
    Open,
    /// Missing, malformed or already found wrong.
    Denied,
    /// Not seen yet: check `password` and remember the verdict under `key`.
    Check { key: [u8; 32], password: Vec<u8> },
}

impl PasswordCheck {
    pub fn new(hash: String) -> Self {
        Self {
            hash,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// The gate for a request's headers, from the cache alone.
    pub(super) fn gate(&self, headers: &HeaderMap) -> Gate {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Gate::Denied;
        };
        let key = sha256(value.as_bytes());
        if let Some(&ok) = self.lock().get(&key) {
            return if ok { Gate::Open } else { Gate::Denied };
        }
        match basic_password(value) {
            Some(password) => Gate::Check { key, password },
            None => Gate::Denied,
        }
    }

    /// Checks `password` against the hash off the async workers and caches the verdict.
    pub(super) async fn check(self: &Arc<Self>, key: [u8; 32], password: Vec<u8>) -> bool {
        let permit = CHECKS.acquire().await;
        let this = self.clone();
        let ok = tokio::task::spawn_blocking(move || {
            statiko_common::preview::verify_password(&this.hash, &password)
        })
        .await
        .unwrap_or(false);
        drop(permit);
        let mut verdicts = self.lock();
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.clear();
        }
        verdicts.insert(key, ok);
        ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], bool>> {
        self.verdicts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The password of `Authorization: Basic base64(user:password)` (any user name).
fn basic_password(value: &HeaderValue) -> Option<Vec<u8>> {
    let value = value.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// Whether a preview answers: 404 once expired, 401 without the right password (the verdict
/// is in the cache: the handler checked new credentials before), 503 when it did not stage on
/// this edge; else its bundle, served like a site's.
pub(super) fn admit<'a>(
    p: &'a PreviewRoute,
    headers: &HeaderMap,
) -> Result<&'a StagedBundle, StatusCode> {
    if statiko_common::model::now_ms() >= p.expires_at {
        return Err(StatusCode::NOT_FOUND);
    }
    if let Some(check) = &p.password
        && !matches!(check.gate(headers), Gate::Open)
    {
        return Err(StatusCode::UNAUTHORIZED);
    }
    p.bundle.as_deref().ok_or(StatusCode::SERVICE_UNAVAILABLE)
}

/// The response for a refusal of [`admit`] (a 401 asks for the password).
pub(super) fn refusal(status: StatusCode, head: bool) -> Response<ResponseBody> {
    match status {
        StatusCode::UNAUTHORIZED => unauthorized(head),
        status => response::error_page(status, head),
    }
}

/// 401 asking for the preview's password.
pub(super) fn unauthorized(head: bool) -> Response<ResponseBody> {
    let mut response = response::error_page(StatusCode::UNAUTHORIZED, head);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, CHALLENGE);
    response
}

/// Marks a preview host's response: never indexed.
pub(super) fn noindex(headers: &mut HeaderMap) {
    headers.insert(X_ROBOTS_TAG, NOINDEX);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    fn basic(user_password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    }

    #[tokio::test]
    async fn verdicts_are_cached_per_credentials() {
        let hash = statiko_common::preview::hash_password("s3cret").unwrap();
        let check = Arc::new(PasswordCheck::new(hash));
        assert!(matches!(check.gate(&HeaderMap::new()), Gate::Denied));
        assert!(matches!(check.gate(&headers("Bearer x")), Gate::Denied));
        assert!(matches!(check.gate(&headers("Basic !!!")), Gate::Denied));
        // Any user name; the password may hold colons.
        let right = headers(&basic("anyone:s3cret"));
        let Gate::Check { key, password } = check.gate(&right) else {
            panic!("first sight is checked");
        };
        assert!(check.check(key, password).await);
        assert!(matches!(check.gate(&right), Gate::Open));
        let wrong = headers(&basic("anyone:s3cret:no"));
        let Gate::Check { key, password } = check.gate(&wrong) else {
            panic!("first sight is checked");
        };
        assert!(!check.check(key, password).await);
        assert!(matches!(check.gate(&wrong), Gate::Denied));
        let response = unauthorized(false);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
    }
}
