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

/// Longest status message sent, in bytes. gRPC carries it in the `grpc-message` header
/// (percent-encoded, up to three times longer), which clients cap at 16 KiB or less: a message
/// quoting a huge input would turn into a framing error instead of its status.
const MAX_MESSAGE_LEN: usize = 2048;

/// `msg` cut to [`MAX_MESSAGE_LEN`] bytes (at a character boundary) with `…`.
fn bounded(mut msg: String) -> String {
    if msg.len() > MAX_MESSAGE_LEN {
        let mut cut = MAX_MESSAGE_LEN;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push('…');
    }
    msg
}

impl From<ControlError> for Status {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::InvalidArgument(msg) => Status::invalid_argument(bounded(msg)),
            ControlError::NotFound(msg) => Status::not_found(bounded(msg)),
            ControlError::AlreadyExists(msg) => Status::already_exists(bounded(msg)),
            ControlError::FailedPrecondition(msg) => Status::failed_precondition(bounded(msg)),
            ControlError::Aborted(msg) => Status::aborted(bounded(msg)),
            ControlError::DeadlineExceeded(msg) => Status::deadline_exceeded(bounded(msg)),
            ControlError::Unavailable(msg) => Status::unavailable(bounded(msg)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_bounded() {
        let status = Status::from(ControlError::InvalidArgument(format!(
            "name: {}",
            "é".repeat(100_000)
        )));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().len() <= MAX_MESSAGE_LEN + '…'.len_utf8());
        assert!(status.message().starts_with("name: é"));
        assert!(status.message().ends_with('…'));
        let short = Status::from(ControlError::NotFound("site \"a\" not found".into()));
        assert_eq!(short.message(), "site \"a\" not found");
    }
}
