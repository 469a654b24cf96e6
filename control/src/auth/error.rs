//! `AuthError`: why the auth layer refused a request, and its one mapping to a gRPC status
//! (`impl From<AuthError> for Status`). The messages are what clients see.

use statiko_common::ids::InvalidName;
use tonic::{Code, Status};

use crate::error::ControlError;

/// Why a request was refused before its handler ran.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("malformed authorization header")]
    MalformedHeader,
    #[error("authorization header must be \"Bearer <token>\"")]
    NotBearer,
    /// No config or stored token has this secret.
    #[error("invalid bearer token")]
    UnknownToken,
    /// A stored token past its expiry.
    #[error("token {0:?} has expired")]
    Expired(String),
    /// The stored tokens' cache is not trusted while its watch is broken.
    #[error("stored tokens cannot be checked: the state store is not reachable")]
    StoredTokensUnavailable,
    /// A read-only token calling token management (`caller` as [`super::policy::describe`]).
    #[error("{caller} may not call {method}: token management is for admin tokens only")]
    AdminOnly { caller: String, method: String },
    /// A read-only token calling a method that changes something.
    #[error("token {name:?} is read-only and cannot call {path}")]
    ReadOnly { name: String, path: String },
    /// A deployer token calling a method outside the deployer table.
    #[error(
        "{caller} may not call {method}: deployer tokens may only upload apps and deploy to or read the sites in their scope"
    )]
    NotForDeployers { caller: String, method: String },
    /// A deployer naming a domain outside its scope.
    #[error("{caller} may not {verb} {domain}")]
    OutOfScope {
        caller: String,
        verb: &'static str,
        domain: String,
    },
    /// A deployer naming an in-scope domain of a site that also answers for an out-of-scope one.
    #[error(
        "{caller} may not {verb} {domain}: its site {site} also answers for {outside}, which is outside the scope"
    )]
    SiteOutOfScope {
        caller: String,
        verb: &'static str,
        domain: String,
        site: String,
        outside: String,
    },
    /// The body of a scope-checked request could not be read (or was too large).
    #[error("cannot read the request: {0}")]
    UnreadableRequest(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The domain a scope-checked request names is not a valid domain.
    #[error(transparent)]
    Domain(#[from] InvalidName),
    #[error("malformed request message")]
    MalformedMessage,
    #[error("compressed requests are not accepted")]
    Compressed,
    /// Looking up the site a scope-checked request names failed.
    #[error(transparent)]
    Lookup(#[from] ControlError),
}

impl AuthError {
    /// The gRPC code the caller gets.
    pub(crate) fn code(&self) -> Code {
        match self {
            Self::MissingToken
            | Self::MalformedHeader
            | Self::NotBearer
            | Self::UnknownToken
            | Self::Expired(_) => Code::Unauthenticated,
            Self::StoredTokensUnavailable => Code::Unavailable,
            Self::AdminOnly { .. }
            | Self::ReadOnly { .. }
            | Self::NotForDeployers { .. }
            | Self::OutOfScope { .. }
            | Self::SiteOutOfScope { .. } => Code::PermissionDenied,
            Self::UnreadableRequest(_) | Self::Domain(_) | Self::MalformedMessage => {
                Code::InvalidArgument
            }
            Self::Compressed => Code::Unimplemented,
            Self::Lookup(err) => err.code(),
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Lookup(err) => err.into(),
            other => Status::new(other.code(), other.to_string()),
        }
    }
}
