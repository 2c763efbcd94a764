//! The scheduler's view of the workers, kept between passes: one [`Candidate`] per worker
//! in name order, refreshed only where a worker changed ([`Workers::take_changes`]), so a
//! pass costs what changed and what it places, not a copy of every worker.
//!
//! A candidate says what the worker looked like when it last changed. Time alone can make
//! an Active worker Inactive (no heartbeat within the timeout) without touching it, so
//! every placement checks the chosen worker against the liveness rule at that moment
//! ([`Candidates::still_fits`]); one that fails is left out until it changes again.

use tokio::time::Instant;

use herd::domain::WorkerState;

use crate::liveness::Liveness;
use crate::scheduler::Candidate;
use crate::workers::{Changed, KnownWorker, Workers};

/// Free places an assignment needs on a worker's stream: with fewer, acknowledgements
/// could fill them before the assignment is committed and sent.
const HEADROOM: usize = 8;

/// One candidate per worker, in the workers' name order.
#[derive(Default)]
pub struct Candidates {
    pub list: Vec<Candidate>,
}

impl Candidates {
    /// Brings the changed workers up to date.
    pub fn refresh(&mut self, workers: &mut Workers, liveness: &Liveness, now: Instant) {
        let changed = workers.take_changes();
        if self.list.len() != workers.order.len() {
            self.list.clear();
        }
        match changed {
            Changed::Positions(positions) if !self.list.is_empty() => {
                for at in positions {
                    let entry = &workers.slab[workers.order[at]];
                    self.list[at] = candidate(entry, liveness, now);
                }
            }
            _ => {
                self.list.clear();
                self.list.extend(
                    workers
                        .ordered()
                        .map(|entry| candidate(entry, liveness, now)),
                );
            }
        }
    }

    /// Whether the worker at `at` can take an assignment right now: Active by the rule at
    /// this moment, and room on its stream. If not, it is left out until it changes.
    pub fn still_fits(
        &mut self,
        at: usize,
        workers: &Workers,
        liveness: &Liveness,
        now: Instant,
    ) -> bool {
        let entry = &workers.slab[workers.order[at]];
        let ok = liveness.state(&entry.presence, now) == WorkerState::Active
            && entry
                .session
                .as_ref()
                .is_some_and(|s| s.full_since.is_none() && s.outbound.capacity() >= HEADROOM);
        if !ok {
            self.list[at].schedulable = false;
        }
        ok
    }
}

/// What the scheduler needs of a worker.
fn candidate(w: &KnownWorker, liveness: &Liveness, now: Instant) -> Candidate {
    let active = liveness.state(&w.presence, now) == WorkerState::Active;
    Candidate {
        capacity: w.spec.capacity,
        allocated: w.allocated,
        cpu_percent: w.usage.cpu_percent,
        // A stream found full (by a tick, or by an assignment that could not be sent)
        // takes nothing until a tick finds room on it again.
        schedulable: active
            && !w.draining
            && w.session.as_ref().is_some_and(|s| s.full_since.is_none()),
        has_runtime: w.spec.runtime.is_some(),
        draining: active && w.draining,
    }
}
