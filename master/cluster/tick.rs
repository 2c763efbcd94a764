//! The steps of one tick of the ticker for one worker, in order: cut off a stream the
//! worker stopped reading, apply the liveness rule, end a newly Removed worker's stream,
//! and pick the row SQLite must learn. (After every worker: the Removed ones' tasks are
//! re-queued and what waits is placed, and finished tasks already stored are let go.)

use tokio::time::Instant;
use tonic::Status;

use herd::domain::WorkerState;

use super::HEARTBEAT_PERSIST_EVERY_MS;
use crate::events::Events;
use crate::liveness::Liveness;
use crate::records::LivenessRow;
use crate::workers::{KnownWorker, removed_worker};

/// A worker that has not read its stream for a heartbeat timeout is cut off (it
/// reconnects), rather than kept Active and silently skipped.
pub fn cut_off_if_backed_up(
    entry: &mut KnownWorker,
    liveness: &Liveness,
    now: Instant,
    events: &Events,
) {
    if !entry
        .session
        .as_mut()
        .is_some_and(|s| s.backed_up(now, liveness.heartbeat_timeout))
    {
        return;
    }
    let Some(session) = entry.session.take() else {
        return;
    };
    entry.presence.connected = false;
    let _ = session.end.send(Status::unavailable(format!(
        "this worker did not read its heartbeat stream for {:?} (its queue of messages from \
         the master stayed full); reconnect",
        liveness.heartbeat_timeout
    )));
    entry.observe(
        liveness,
        now,
        "the worker stopped reading its stream; disconnected",
        events,
    );
}

/// A worker in `state` Removed for the first time: its stream ends; true when its tasks
/// must be re-queued. `presence.removed` is the once-guard of Removed's work, whichever
/// path saw the change first (the state may have been recorded Removed already, by a read
/// or a closed stream, before this tick).
pub fn end_if_removed(entry: &mut KnownWorker, state: WorkerState) -> bool {
    if state != WorkerState::Removed || entry.presence.removed {
        return false;
    }
    entry.presence.removed = true;
    entry.presence.connected = false;
    if let Some(session) = entry.session.take() {
        let _ = session.end.send(removed_worker(entry).into());
    }
    true
}

/// How many rows may be written only because their `last_heartbeat` is stale, this tick:
/// a fifth of the workers, so workers that registered together do not all fall due in the
/// same tick (every one, at shutdown).
pub struct StaleBudget {
    left: usize,
    everything: bool,
}

impl StaleBudget {
    pub fn new(everything: bool, workers: usize) -> StaleBudget {
        let left = if everything {
            usize::MAX
        } else {
            workers / 5 + 1
        };
        StaleBudget { left, everything }
    }
}

/// The row SQLite must learn of a worker: every change of state, and `last_heartbeat`
/// once it is [`HEARTBEAT_PERSIST_EVERY_MS`] behind (or at all, at shutdown).
pub fn row_to_write(
    entry: &mut KnownWorker,
    state: WorkerState,
    budget: &mut StaleBudget,
) -> Option<LivenessRow> {
    let behind = entry.last_heartbeat_ms - entry.persisted_heartbeat_ms;
    let stale = budget.left > 0
        && (behind >= HEARTBEAT_PERSIST_EVERY_MS || (budget.everything && behind != 0));
    if stale && !entry.dirty {
        budget.left -= 1;
    }
    if !entry.dirty && !stale {
        return None;
    }
    entry.dirty = false;
    entry.persisted_heartbeat_ms = entry.last_heartbeat_ms;
    Some(LivenessRow {
        id: entry.id.clone(),
        state,
        last_heartbeat_ms: entry.last_heartbeat_ms,
    })
}
