//! Bearer-token authentication and role checks, as a tower layer in front of every gRPC service.
//!
//! Health checks and server reflection answer without a token. Every other call needs
//! `authorization: Bearer <token>` matching one of `auth.tokens` (compared in constant time);
//! `readonly` tokens may only call `Get*`, `List*` and `Watch*` methods.

use std::sync::Arc;
use std::task::{Context, Poll};

use aws_lc_rs::digest::{SHA256, digest};
use futures::future::{BoxFuture, Either, Ready, ready};
use statiko_common::config::{Role, TokenConfig};
use statiko_common::model::TokenRole;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

use crate::state::StateStore;

// Tokens stored under `tokens/` are checked after the config ones (`tokens`: a watched cache);
// `policy` decides what each role (`deployer` too) may call and, for deployers, which sites
// (`scope`).
mod error;
mod policy;
mod scope;
mod tokens;

pub(crate) use self::error::AuthError;
pub(crate) use self::policy::site_visible;
pub(crate) use self::scope::Scope;
pub(crate) use self::tokens::{StoredTokens, digest_of, generate_secret};

/// The identity a request was authenticated as; added to the request extensions.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) role: TokenRole,
    /// Deployer tokens only.
    pub(crate) scope: Scope,
}

#[derive(Debug)]
struct Token {
    digest: [u8; 32],
    caller: Caller,
}

/// Layer that authenticates every request.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    tokens: Arc<Vec<Token>>,
    stored: StoredTokens,
    /// Resolves the site a deployer's request names (no scoped calls without it).
    state: Option<StateStore>,
}

impl AuthLayer {
    /// Config tokens only.
    pub fn new(tokens: &[TokenConfig]) -> Self {
        Self::with_stored(tokens, StoredTokens::disabled(), None)
    }

    /// Config tokens, then the stored ones; `state` resolves the sites deployers name.
    pub(crate) fn with_stored(
        tokens: &[TokenConfig],
        stored: StoredTokens,
        state: Option<StateStore>,
    ) -> Self {
        let tokens = tokens
            .iter()
            .map(|t| Token {
                digest: sha256(t.token.as_bytes()),
                caller: Caller {
                    name: t.name.clone(),
                    role: match t.role {
                        Role::Admin => TokenRole::Admin,
                        Role::Readonly => TokenRole::Readonly,
                    },
                    scope: Scope::default(),
                },
            })
            .collect();
        Self {
            tokens: Arc::new(tokens),
            stored,
            state,
        }
    }

    /// Whether a config token has this name (a stored token may not take it).
    pub(crate) fn config_token_named(&self, name: &str) -> bool {
        self.tokens.iter().any(|t| t.caller.name == name)
    }

    /// Finds the caller for a presented token. Every configured token is compared, in constant
    /// time over fixed-size digests, so timing reveals neither which token matched nor how much.
    fn authenticate(&self, presented: &str) -> Result<Option<Caller>, AuthError> {
        let presented = sha256(presented.as_bytes());
        let mut found = None;
        for token in self.tokens.iter() {
            let diff = token
                .digest
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(token.caller.clone());
            }
        }
        match found {
            Some(caller) => Ok(Some(caller)),
            None => self.stored.authenticate(&presented),
        }
    }

    /// Decides on a request path (`/package.Service/Method`) and its authorization header.
    pub(crate) fn check(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Caller>, AuthError> {
        if is_public(path) {
            return Ok(None);
        }
        let header = authorization.ok_or(AuthError::MissingToken)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::MalformedHeader)?;
        // The scheme is case-insensitive (RFC 9110 section 11.1): `Bearer`, `bearer`, `BEARER`.
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or(AuthError::NotBearer)?
            .trim();
        let caller = self.authenticate(token)?.ok_or(AuthError::UnknownToken)?;
        policy::check_method(&caller, path)?;
        Ok(Some(caller))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

fn is_public(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

fn is_read_only(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    method.starts_with("Get") || method.starts_with("List") || method.starts_with("Watch")
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    layer: AuthLayer,
    inner: S,
}

impl<S, RB> Service<http::Request<Body>> for Auth<S>
where
    S: Service<http::Request<Body>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    /// Refused at once, passed straight on, or passed on after a scope check (boxed: only
    /// deployers' site-scoped calls take that path).
    type Future = Either<
        Ready<Result<S::Response, S::Error>>,
        Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let verdict = self.layer.check(
            request.uri().path(),
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        match verdict {
            Ok(caller) => {
                let scoped = caller
                    .as_ref()
                    .and_then(|c| policy::site_scoped(c, request.uri().path()));
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                match (scoped, self.layer.state.clone()) {
                    (Some(check), Some(state)) => {
                        // The scope check reads the request's message first (see `policy`).
                        let clone = self.inner.clone();
                        let mut inner = std::mem::replace(&mut self.inner, clone);
                        Either::Right(Either::Right(Box::pin(async move {
                            match check.run(request, &state).await {
                                Ok(request) => inner.call(request).await,
                                Err(err) => Ok(Status::from(err).into_http()),
                            }
                        })))
                    }
                    _ => Either::Right(Either::Left(self.inner.call(request))),
                }
            }
            Err(err) => {
                let status = Status::from(err);
                tracing::info!(path = request.uri().path(), code = ?status.code(), "request refused");
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn layer() -> AuthLayer {
        AuthLayer::new(&[
            TokenConfig {
                name: "ops".into(),
                token: "admin-token-0123456789".into(),
                token_file: None,
                role: Role::Admin,
            },
            TokenConfig {
                name: "ci".into(),
                token: "reader-token-0123456789".into(),
                token_file: None,
                role: Role::Readonly,
            },
        ])
    }

    #[track_caller]
    fn check(path: &str, header: Option<&str>, expected: Result<Option<&str>, Code>) {
        let got = layer()
            .check(path, header.map(str::as_bytes))
            .map(|c| c.map(|c| c.name))
            .map_err(|e| e.code());
        assert_eq!(
            got,
            expected.map(|c| c.map(str::to_owned)),
            "{path} {header:?}"
        );
    }

    #[test]
    fn decisions() {
        let site_create = "/statiko.v1.SiteService/CreateSite";
        let site_list = "/statiko.v1.SiteService/ListSites";
        check("/grpc.health.v1.Health/Check", None, Ok(None));
        check(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            None,
            Ok(None),
        );
        check(site_list, None, Err(Code::Unauthenticated));
        check(site_list, Some("Bearer nope"), Err(Code::Unauthenticated));
        check(site_list, Some("Basic abc"), Err(Code::Unauthenticated));
        check(
            site_list,
            Some("Bearer admin-token-012345678"),
            Err(Code::Unauthenticated),
        );
        check(
            site_list,
            Some("Bearer reader-token-0123456789"),
            Ok(Some("ci")),
        );
        check(
            site_create,
            Some("Bearer reader-token-0123456789"),
            Err(Code::PermissionDenied),
        );
        check(
            site_create,
            Some("Bearer admin-token-0123456789"),
            Ok(Some("ops")),
        );
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            check(
                site_create,
                Some(&format!("{scheme} admin-token-0123456789")),
                Ok(Some("ops")),
            );
        }
        check(
            site_create,
            Some("Bearer-admin-token-0123456789"),
            Err(Code::Unauthenticated),
        );
        check(
            "/statiko.v1.AppService/UploadApp",
            Some("Bearer reader-token-0123456789"),
            Err(Code::PermissionDenied),
        );
        check(
            "/statiko.v1.StateService/ExportState",
            Some("Bearer reader-token-0123456789"),
            Err(Code::PermissionDenied),
        );
        check(
            "/statiko.v1.ClusterService/ListNodes",
            Some("Bearer reader-token-0123456789"),
            Ok(Some("ci")),
        );
    }
}
