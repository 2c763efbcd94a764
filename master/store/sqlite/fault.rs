//! How a SQLite failure becomes one of herd's errors, in one place: nothing outside this
//! folder sees a rusqlite type.

use herd::error::Error;

/// A failure inside the SQLite engine: converted from rusqlite's errors (and from
/// herd's own, for the checks made here), and into herd's error at the engine's edge.
#[derive(Debug)]
pub struct Fault(pub Error);

pub type Result<T> = std::result::Result<T, Fault>;

impl From<rusqlite::Error> for Fault {
    /// A full disk, an I/O error or a lock held too long is the machine's trouble and
    /// passes (UNAVAILABLE: the same change may succeed later); anything else is a fault
    /// of the change itself.
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{
            CannotOpen, DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure,
        };
        Fault(match err.sqlite_error_code() {
            Some(DiskFull | SystemIoFailure | DatabaseBusy | DatabaseLocked | CannotOpen) => {
                Error::Unavailable(format!("the store cannot write now: {err}"))
            }
            _ => Error::Storage(err.to_string()),
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
