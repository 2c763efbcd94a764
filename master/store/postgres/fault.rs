//! How a PostgreSQL failure becomes one of herd's errors, in one place: nothing outside
//! this folder sees a tokio-postgres type.

use herd::error::Error;

/// The SQLSTATE of `herd_fence` (schema version 2): a newer term leads.
pub const DEPOSED: &str = "HE001";

/// A failure inside the PostgreSQL engine, converted into herd's error at its edge.
#[derive(Debug)]
pub struct Fault(pub Error);

pub type Result<T> = std::result::Result<T, Fault>;

impl From<tokio_postgres::Error> for Fault {
    /// A lost connection, a server shutting down, out of resources, or a transaction the
    /// server gave up on is the store's trouble and passes (UNAVAILABLE: the same change is
    /// tried again); anything else is a fault of the change itself.
    fn from(err: tokio_postgres::Error) -> Self {
        let passing = match err.code().map(|code| code.code()) {
            None => true,
            Some(code) if code == DEPOSED => true,
            Some(code) => matches!(&code[..2], "08" | "53" | "57" | "58" | "40"),
        };
        // The server's message, not the client's wrapper ("db error: ...").
        let text = match err.as_db_error() {
            Some(db) => db.message().to_string(),
            None => err.to_string(),
        };
        Fault(match passing {
            true => Error::Unavailable(format!("the PostgreSQL store is unavailable: {text}")),
            false => Error::Storage(text),
        })
    }
}

impl From<Error> for Fault {
    fn from(err: Error) -> Self {
        Fault(err)
    }
}

impl From<Fault> for Error {
    fn from(fault: Fault) -> Self {
        fault.0
    }
}
