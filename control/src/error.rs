//! `ControlError`, typed by where the failure comes from (the request, the desired state, the
//! store, the bundle repository), and its one mapping to gRPC status codes
//! (`impl From<ControlError> for Status`): handlers say what went wrong, never which code.

use statiko_common::ids::InvalidName;
use statiko_common::repo::RepoError;
use statiko_common::store::StoreError;
use tonic::Status;

/// What went wrong while serving a management call, named for the caller.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A name or id in the request failed `statiko_common::ids` validation.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// What the request would create exists already.
    #[error("{0}")]
    Exists(String),
    /// The request is valid but the current state refuses it (e.g. deleting an app in use).
    #[error("{0}")]
    Refused(String),
    /// A compare-and-swap lost against a concurrent change.
    #[error("{0}")]
    Conflict(String),
    /// What the call waits for did not happen in time.
    #[error("{0}")]
    TimedOut(String),
    /// A state import holds the desired state; `retry` says what to do.
    #[error("a state import is being written; {retry}")]
    ImportInProgress { retry: &'static str },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bundle repository cannot be reached or refused the request.
    #[error("bundle repository: {0}")]
    Repo(#[source] RepoError),
    /// `source` happened in a larger step: the message becomes
    /// `{before}: {source}{after}`, the code stays the source's.
    #[error("{before}: {source}{after}")]
    During {
        before: String,
        after: &'static str,
        #[source]
        source: Box<ControlError>,
    },
    /// A bug or an unexpected failure; logged in full, reported generically.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Shorthand for handler results.
pub(crate) type Result<T, E = ControlError> = std::result::Result<T, E>;

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

impl ControlError {
    /// The gRPC code the caller gets.
    pub(crate) fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::Invalid(_) | Self::Name(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Exists(_) => Code::AlreadyExists,
            Self::Refused(_) => Code::FailedPrecondition,
            Self::Conflict(_) => Code::Aborted,
            Self::TimedOut(_) => Code::DeadlineExceeded,
            Self::ImportInProgress { .. } | Self::Repo(_) => Code::Unavailable,
            Self::Store(StoreError::Unavailable { .. }) => Code::Unavailable,
            Self::Store(StoreError::Rejected(_)) => Code::FailedPrecondition,
            Self::Store(_) | Self::Internal(_) => Code::Internal,
            Self::During { source, .. } => source.code(),
        }
    }

    /// The message the caller gets (not for `INTERNAL`, whose details stay in the log).
    fn message(&self) -> String {
        match self {
            Self::Store(StoreError::Rejected(msg)) => {
                format!("state store refused the write: {msg}")
            }
            Self::During {
                before,
                after,
                source,
            } => format!("{before}: {}{after}", source.message()),
            other => other.to_string(),
        }
    }
}

impl From<ControlError> for Status {
    fn from(err: ControlError) -> Self {
        let code = err.code();
        if code == tonic::Code::Internal {
            tracing::error!(
                error = format!("{:#}", anyhow::Error::new(err)),
                "internal error"
            );
            return Status::internal("internal error; see the control plane's log");
        }
        Status::new(code, bounded(err.message()))
    }
}

/// Builds a [`ControlError::Invalid`] from a format string.
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::ControlError::Invalid(format!($($arg)*)) };
}
pub(crate) use invalid;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_bounded() {
        let status = Status::from(ControlError::Invalid(format!(
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
