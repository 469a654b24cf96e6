//! Bearer-token authentication and role checks, as a tower layer in front of every gRPC service.
//!
//! Health checks and server reflection answer without a token. Every other call needs
//! `authorization: Bearer <token>` matching one of `auth.tokens` (compared in constant time);
//! `readonly` tokens may only call `Get*`, `List*` and `Watch*` methods.

use std::sync::Arc;
use std::task::{Context, Poll};

use aws_lc_rs::digest::{SHA256, digest};
use futures::future::{Either, Ready, ready};
use statiko_common::config::{Role, TokenConfig};
use tonic::Status;
use tower::{Layer, Service};

/// The identity a request was authenticated as; added to the request extensions.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) role: Role,
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
}

impl AuthLayer {
    pub fn new(tokens: &[TokenConfig]) -> Self {
        let tokens = tokens
            .iter()
            .map(|t| Token {
                digest: sha256(t.token.as_bytes()),
                caller: Caller {
                    name: t.name.clone(),
                    role: t.role,
                },
            })
            .collect();
        Self {
            tokens: Arc::new(tokens),
        }
    }

    /// Finds the caller for a presented token. Every configured token is compared, in constant
    /// time over fixed-size digests, so timing reveals neither which token matched nor how much.
    fn authenticate(&self, presented: &str) -> Option<Caller> {
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
        found
    }

    /// Decides on a request path (`/package.Service/Method`) and its authorization header.
    pub(crate) fn check(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Caller>, Status> {
        if is_public(path) {
            return Ok(None);
        }
        let header =
            authorization.ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let header = std::str::from_utf8(header)
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        // The scheme is case-insensitive (RFC 9110 section 11.1): `Bearer`, `bearer`, `BEARER`.
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| {
                Status::unauthenticated("authorization header must be \"Bearer <token>\"")
            })?
            .trim();
        let caller = self
            .authenticate(token)
            .ok_or_else(|| Status::unauthenticated("invalid bearer token"))?;
        if caller.role == Role::Readonly && !is_read_only(path) {
            return Err(Status::permission_denied(format!(
                "token {:?} is read-only and cannot call {path}",
                caller.name
            )));
        }
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

impl<S, B, RB> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    RB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let verdict = self.layer.check(
            request.uri().path(),
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        match verdict {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Either::Right(self.inner.call(request))
            }
            Err(status) => {
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
            .map_err(|s| s.code());
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
