//! Changes the store could not write yet. A change that failed because of the machine (a
//! full disk, an I/O error: `Error::Unavailable`) and that nobody awaits is kept and
//! written again, first and in order, until it is stored; meanwhile every `sync` fails, so
//! nothing that depends on it is acknowledged (a worker keeps a result until its ack, and
//! sends it again). A change that failed for a fault of its own is dropped, logged.

use std::time::Duration;

use tracing::{error, info, warn};

use herd::error::Error;

use super::Change;
use super::done::Done;

/// How often changes not stored yet are tried again when nothing else comes.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Unsaved {
    writes: Vec<(Change, Done)>,
    /// Why the last of them failed.
    why: Option<Error>,
}

impl Unsaved {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// The changes to try again, oldest first.
    pub fn take(&mut self) -> Vec<(Change, Done)> {
        std::mem::take(&mut self.writes)
    }

    /// Sorts out a batch after its commit: what failed for the machine's sake and is
    /// awaited by nobody is kept; the rest is told how it went. A barrier (`sync`) in a
    /// batch that leaves anything unsaved fails, naming why.
    pub fn settle(
        &mut self,
        results: Vec<(Change, Done, Result<(), Error>)>,
    ) -> Vec<(Done, Result<(), Error>)> {
        let before = self.writes.len();
        let mut told = Vec::with_capacity(results.len());
        let mut barriers = Vec::new();
        for (write, done, result) in results {
            match result {
                Ok(()) if matches!(write, Change::Barrier) => barriers.push(done),
                Ok(()) => told.push((done, Ok(()))),
                Err(err @ Error::Unavailable(_)) if !matches!(done, Done::Reply(_)) => {
                    self.why = Some(err);
                    self.writes.push((write, done));
                }
                Err(err) => {
                    error!(%err, "a write to the store failed");
                    told.push((done, Err(err)));
                }
            }
        }
        let unsaved = self.writes.len();
        // Said when more changes wait, not at every sync refused meanwhile (on a full disk
        // every heartbeat with a result asks for one).
        if unsaved > before {
            warn!(unsaved, why = %self.why.as_ref().map(ToString::to_string).unwrap_or_default(),
                  "changes not stored yet; trying again, and acknowledging nothing meanwhile");
        } else if unsaved == 0 && self.why.take().is_some() {
            info!("every change is stored again");
        }
        for done in barriers {
            let result = match &self.why {
                Some(why) if unsaved > 0 => Err(Error::Unavailable(format!(
                    "{unsaved} change(s) could not be stored yet ({why}); they are tried again"
                ))),
                _ => Ok(()),
            };
            told.push((done, result));
        }
        told
    }
}
