//! `ControlError` and its one mapping to gRPC status codes.

use statiko_common::ids::InvalidName;
use statiko_common::store::StoreError;
use tonic::Status;

/// What went wrong while serving a management call, named for the caller.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the current state refuses it (e.g. deleting an app in use).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A compare-and-swap lost against a concurrent change.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The store (etcd) or the bundle repository cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; logged in full, reported generically.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Shorthand for handler results.
pub(crate) type Result<T, E = ControlError> = std::result::Result<T, E>;

impl From<StoreError> for ControlError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(msg) => {
                Self::Unavailable(format!("state store unavailable: {msg}"))
            }
            StoreError::Rejected(msg) => {
                Self::FailedPrecondition(format!("state store refused the write: {msg}"))
            }
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<InvalidName> for ControlError {
    fn from(err: InvalidName) -> Self {
        Self::InvalidArgument(err.to_string())
    }
}

impl From<ControlError> for Status {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::InvalidArgument(msg) => Status::invalid_argument(msg),
            ControlError::NotFound(msg) => Status::not_found(msg),
            ControlError::AlreadyExists(msg) => Status::already_exists(msg),
            ControlError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            ControlError::Aborted(msg) => Status::aborted(msg),
            ControlError::DeadlineExceeded(msg) => Status::deadline_exceeded(msg),
            ControlError::Unavailable(msg) => Status::unavailable(msg),
            ControlError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                Status::internal("internal error; see the control plane's log")
            }
        }
    }
}

/// Builds an `InvalidArgument` error from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::ControlError::InvalidArgument(format!($($arg)*)) };
}
pub(crate) use invalid;
