//! One error type for herd's domain, and its one mapping to a gRPC status.

use tonic::{Code, Status};

/// A failure a caller can act on. Every variant maps to exactly one gRPC code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; retrying it unchanged will fail again.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named worker or task does not exist (or is no longer known).
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the cluster is not in a state to honour it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// What was to be created exists already (a worker name, ...).
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may not speak for this worker or task.
    #[error("{0}")]
    PermissionDenied(String),
    /// The master is shutting down or a dependency is briefly away; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed; what was asked was not stored.
    #[error("storage error: {0}")]
    Storage(String),
    /// This machine's own setup is wrong or missing (a token file, a secret, a
    /// certificate, a URL given to a program): the message names it and what to do.
    #[error("{0}")]
    Setup(String),
}

impl Error {
    /// A setup error (see [`Error::Setup`]).
    pub fn setup(msg: impl Into<String>) -> Self {
        Error::Setup(msg.into())
    }
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Storage(_) => Code::Internal,
            Error::Setup(_) => Code::FailedPrecondition,
        };
        Status::new(code, err.to_string())
    }
}
