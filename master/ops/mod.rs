//! The operations operators call, one home each, one file per resource: `workers`,
//! `tasks`, `identity` (tokens, worker secrets, audit) and `logs`. Every edge (the gRPC
//! Admin service, the master's REPL through it, the HTTP API) calls these and nothing
//! else; each starts by checking the caller's role against the one table
//! ([`crate::identity::authz`]), and each change is answered only once it is stored with
//! its audit entry. They are methods of the one app handle, [`crate::app::App`].

mod identity;
mod logs;
mod tasks;
mod workers;

use clap::ValueEnum;
use herd::config::SchedulerKind;
use herd::error::Error;

pub use logs::Chunks;

/// Items in a page when the caller does not say.
pub const DEFAULT_PAGE: usize = 100;
/// Most items in a page.
pub const MAX_PAGE: usize = 1000;
/// Most bytes of items in a page, far below the 1 MiB message limit whatever the items
/// hold (a task may carry a 64 KiB command).
pub const MAX_PAGE_BYTES: usize = 512 * 1024;

pub(crate) fn page_size(asked: u32) -> usize {
    match asked as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// The answer to a page token this master never gave out.
/// The page token of a list numbered newest first (tasks, audit): empty for the first
/// page, else the number the page ends before (up to 19 digits, as
/// `NUMBERED_PAGE_TOKEN_PATTERN` says).
pub(crate) fn numbered_page_token(token: &str) -> Result<Option<u64>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() > 19 || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_page_token(token));
    }
    token.parse().map(Some).map_err(|_| bad_page_token(token))
}

fn bad_page_token(token: &str) -> Error {
    Error::invalid(format!(
        "page_token '{}' is not one this master gave out",
        herd::text::clip(token)
    ))
}

pub fn scheduler_name(kind: SchedulerKind) -> String {
    kind.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}
