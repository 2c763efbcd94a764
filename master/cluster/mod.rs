//! The cluster: the master's in-memory truth about every worker, where a heartbeat is
//! taken in, and the one lock that workers ([`crate::workers`]) and tasks
//! ([`crate::tasks`]) share. Liveness is decided by [`crate::liveness`]; placement and the
//! task lifecycle live in [`crate::tasks`].
//!
//! All state sits behind one `std::sync::Mutex` that is never held across an `.await`:
//! the heartbeat path takes it for a few field writes and does no I/O. Worker liveness
//! reaches SQLite through the ticker ([`Cluster::tick`]); task changes are handed to the
//! store thread as they happen, and what is acknowledged waits for their commit.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, error, warn};

use herd::config::SchedulerKind;
use herd::domain::{TaskState, WorkerState};
use herd::error::Error;
use herd::pb;

use crate::events::Events;
use crate::identity::secret;
use crate::liveness::{Liveness, StallGuard};
use crate::metrics::Metrics;
use crate::records::{LivenessRow, Task, WorkerRecord};
use crate::store::Store;
use crate::tasks::Tasks;
use crate::workers::{KnownWorker, Outbound, Session, Workers, removed_worker, unknown_worker};

mod operator;
mod register;
mod tick;

/// How far the `last_heartbeat` column may lag behind the last heartbeat. Changes of state
/// are written at the next tick; the timestamp alone is informational (liveness after a
/// restart starts afresh), and rewriting every worker's row every second would make
/// SQLite the cost of a large cluster (as with Kubernetes' node leases, heartbeats are
/// cheap in memory and persisted coarsely).
pub const HEARTBEAT_PERSIST_EVERY_MS: i64 = 10_000;

/// Settings of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub liveness: Liveness,
    /// Told to workers at registration.
    pub heartbeat_interval: Duration,
    /// Period of the ticker: a far longer gap between two runs is a stall of the master.
    pub check_interval: Duration,
    /// Placements of one task before a lost worker makes it fail instead of re-queue.
    pub max_attempts: u32,
    pub scheduler: SchedulerKind,
}

/// Everything behind the cluster's one lock: workers, tasks and the liveness rule.
struct ClusterState {
    liveness: Liveness,
    /// Every change of a worker or task, for the HTTP API's event stream.
    events: Arc<Events>,
    workers: Workers,
    tasks: Tasks,
    next_generation: u64,
    stall: StallGuard,
    /// Since when a mass removal is held back.
    hold_since: Option<Instant>,
    /// The master is stopping (or no longer leads): no new heartbeat stream is taken.
    closed: bool,
}

/// The cluster. Cheap to share behind an `Arc`.
pub struct Cluster {
    heartbeat_interval: Duration,
    /// Told to workers at registration (see [`Liveness::fence_after`]).
    fence_after: Duration,
    inner: Mutex<ClusterState>,
}

/// What registering produced.
#[derive(Debug)]
pub struct Registered {
    pub id: String,
    pub reregistered: bool,
    /// The secret issued now (first registration of the name), to hand to the worker.
    pub secret: Option<String>,
    /// To be stored before the id is handed out.
    pub record: WorkerRecord,
}

/// An accepted heartbeat stream.
pub struct Accepted {
    pub generation: u64,
    pub end: oneshot::Receiver<Status>,
    /// Finished tasks of the first heartbeat, to acknowledge once committed.
    pub acked: Vec<String>,
    /// How much output the master has of each attempt the worker holds.
    pub resume: Vec<pb::OutputResume>,
}

/// What one tick of the ticker produced.
#[derive(Debug, Default)]
pub struct TickOutcome {
    /// Rows SQLite has not seen yet.
    pub rows: Vec<LivenessRow>,
    /// Workers that became Removed in this tick.
    pub removed: Vec<String>,
}

impl Cluster {
    pub fn new(
        settings: Settings,
        store: Store,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
    ) -> Cluster {
        // An assignment in flight gets two heartbeats and a second to be reported.
        let grace = settings.heartbeat_interval * 2 + Duration::from_secs(1);
        Cluster {
            heartbeat_interval: settings.heartbeat_interval,
            fence_after: settings.liveness.fence_after(settings.heartbeat_interval),
            inner: Mutex::new(ClusterState {
                liveness: settings.liveness,
                events: events.clone(),
                workers: Workers::default(),
                tasks: Tasks::new(
                    settings.scheduler,
                    settings.max_attempts,
                    grace,
                    store,
                    metrics,
                    events,
                ),
                next_generation: 0,
                stall: StallGuard::new(settings.check_interval, Instant::now()),
                hold_since: None,
                closed: false,
            }),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// How long a worker may go without an acknowledgement before it must have stopped
    /// its tasks (fencing).
    pub fn fence_after(&self) -> Duration {
        self.fence_after
    }

    /// Takes the lock and reads the clock (in that order, so times never go backwards
    /// between holders), first giving every worker a fresh timeout if the master itself
    /// has not run for a while.
    fn lock(&self) -> (MutexGuard<'_, ClusterState>, Instant) {
        // A panic while holding the lock leaves plain data behind; keep serving.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(gap) = inner.stall.ran(now) {
            error!(
                stalled = ?gap,
                "the master did not run for {gap:?} (paused, frozen or starved): that time is \
                 not held against any worker; every worker gets a fresh timeout from now"
            );
            for entry in inner.workers.values_mut() {
                if !entry.presence.removed {
                    entry.presence.last_seen = now;
                }
            }
            inner.tasks.after_stall(now);
        }
        (inner, now)
    }

    /// Loads what the store knows at a take-over (a start, or a fail-over to this master).
    /// Workers that were Active stay so for the failover grace unless they reconnect
    /// sooner; the others are Inactive until they heartbeat. Every Removed clock starts
    /// now. Placed tasks stay placed: their worker re-attaches
    /// them when it reports them, or they are re-queued when it is Removed.
    pub fn load(
        &self,
        workers: Vec<WorkerRecord>,
        tasks: Vec<Task>,
        finished: Vec<(TaskState, u64)>,
        last_task: u64,
    ) {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        inner.liveness.taken_over(now);
        for r in workers {
            let removed = r.state == WorkerState::Removed;
            let pending = r.state == WorkerState::Pending;
            // Active ones stay so for the failover grace, unless they reconnect sooner.
            let held = r.state == WorkerState::Active && !inner.liveness.failover_grace.is_zero();
            let recorded = match r.state {
                WorkerState::Removed | WorkerState::Pending => r.state,
                WorkerState::Active if held => r.state,
                _ => WorkerState::Inactive,
            };
            let mut entry = KnownWorker::new(r.id.clone(), r.spec, now);
            entry.registered_at_ms = r.registered_at_ms;
            entry.last_heartbeat_ms = r.last_heartbeat_ms;
            entry.presence.removed = removed;
            entry.presence.pending = pending;
            entry.presence.held = held;
            entry.added_labels = r.added_labels;
            entry.draining = r.draining;
            entry.recorded = recorded;
            // Without a grace, loaded workers that were Active are written back Inactive.
            entry.dirty = r.state != recorded;
            entry.persisted_heartbeat_ms = r.last_heartbeat_ms;
            entry.secret_hash = r.secret_hash;
            inner.workers.insert(entry);
        }
        inner
            .tasks
            .load(&mut inner.workers, tasks, finished, last_task, now);
    }

    /// Opens a heartbeat stream for `first.worker_id`, replacing an older stream of the
    /// same worker. Unknown or Removed ids get NOT_FOUND: the worker must register again.
    /// The first heartbeat must carry the worker's secret (when it has one): a stream
    /// without it is refused before it can replace anything.
    pub fn connect(
        &self,
        first: &pb::Heartbeat,
        outbound: Outbound,
        peer: Option<SocketAddr>,
    ) -> Result<Accepted, Error> {
        herd::domain::check_heartbeat(first)?;
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        if inner.closed {
            return Err(Error::Unavailable(
                "the master is shutting down; reconnect later".into(),
            ));
        }
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let entry = inner
            .workers
            .get_mut(&first.worker_id)
            .ok_or_else(|| unknown_worker(&herd::text::clip(&first.worker_id)))?;
        if let Some(kept) = &entry.secret_hash
            && !secret::matches(kept, &first.worker_secret)
        {
            let connected = entry.session.as_ref().and_then(|s| s.peer);
            warn!(worker = %entry.spec.name, id = %entry.id, attempt_from = %herd::text::Maybe(&peer),
                  connected = %herd::text::Maybe(&connected), secret_given = !first.worker_secret.is_empty(),
                  "refused a heartbeat stream without this worker's secret");
            return Err(Error::PermissionDenied(format!(
                "this heartbeat stream does not carry the secret of worker {} ({}); only \
                 the process it was issued to can open one",
                entry.spec.name, entry.id
            )));
        }
        if inner.liveness.state(&entry.presence, now) == WorkerState::Removed {
            return Err(removed_worker(entry));
        }
        let (end_tx, end_rx) = oneshot::channel();
        entry.last_peer = peer;
        if let Some(old) = entry.session.replace(Session {
            generation,
            outbound,
            end: end_tx,
            last_sequence: first.sequence,
            peer,
            full_since: None,
        }) {
            warn!(worker = %entry.spec.name, id = %entry.id,
                  "a new heartbeat stream replaced an open one (two processes with one name?)");
            let _ = old.end.send(Status::aborted(
                "replaced by a newer heartbeat stream of the same worker",
            ));
        }
        entry.presence.connected = true;
        entry.presence.held = false;
        let resume = inner.tasks.resume(&first.worker_id, first);
        // A result of an attempt whose output resumes now waits for that output: the
        // worker sends the rest, then the result again (the last stream may have broken
        // with output in flight just before the result).
        let waiting = |u: &pb::TaskUpdate| {
            resume
                .iter()
                .any(|r| r.task_id == u.task_id && r.attempt == u.attempt)
        };
        let first_taken;
        let first = if first.finished.iter().any(waiting) {
            let mut taken = first.clone();
            taken.finished.retain(|u| !waiting(u));
            first_taken = taken;
            &first_taken
        } else {
            first
        };
        let acked = inner.heartbeat(&first.worker_id, first, now, "heartbeat stream opened");
        inner
            .tasks
            .schedule(&mut inner.workers, &inner.liveness, now);
        Ok(Accepted {
            generation,
            end: end_rx,
            acked,
            resume,
        })
    }

    /// Records a heartbeat on the stream `generation` of `worker_id`; returns the finished
    /// tasks to acknowledge once committed.
    pub fn heartbeat(
        &self,
        worker_id: &str,
        generation: u64,
        hb: &pb::Heartbeat,
    ) -> Result<Vec<String>, Error> {
        if hb.worker_id != worker_id {
            return Err(Error::PermissionDenied(format!(
                "this stream belongs to worker {worker_id}; it cannot carry heartbeats for {}",
                herd::text::clip(&hb.worker_id)
            )));
        }
        herd::domain::check_heartbeat(hb)?;
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        inner.check_session(worker_id, generation, now)?;
        let liveness = inner.liveness;
        let entry = inner.workers.get_mut(worker_id).expect("checked");
        let session = entry.session.as_mut().expect("checked");
        if hb.sequence <= session.last_sequence {
            // A replayed or reordered heartbeat: it proves the worker is alive, but its
            // view of tasks may be stale, so nothing else is taken from it.
            debug!(worker = %entry.spec.name, sequence = hb.sequence,
                   last = session.last_sequence, "out-of-order heartbeat");
            entry.presence.last_seen = now;
            entry.observe(&liveness, now, "heartbeat received again", &inner.events);
            return Ok(Vec::new());
        }
        session.last_sequence = hb.sequence;
        let was_active = entry.recorded == WorkerState::Active;
        let acked = inner.heartbeat(worker_id, hb, now, "heartbeat received again");
        if !was_active || !acked.is_empty() {
            inner
                .tasks
                .schedule(&mut inner.workers, &inner.liveness, now);
        }
        Ok(acked)
    }

    /// A task update from the worker on stream `generation`.
    pub fn task_update(
        &self,
        worker_id: &str,
        generation: u64,
        update: &pb::TaskUpdate,
    ) -> Result<(), Error> {
        herd::domain::check_task_id("TaskUpdate", &update.task_id)?;
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        inner.check_session(worker_id, generation, now)?;
        inner.tasks.may_speak_for(worker_id, &update.task_id)?;
        if inner.tasks.update(worker_id, update, &mut inner.workers) {
            inner
                .tasks
                .schedule(&mut inner.workers, &inner.liveness, now);
        }
        Ok(())
    }

    /// Output of a task from the worker on stream `generation`.
    pub fn task_output(
        &self,
        worker_id: &str,
        generation: u64,
        output: &pb::TaskOutput,
    ) -> Result<(), Error> {
        herd::domain::check_task_id("TaskOutput", &output.task_id)?;
        let (mut inner, now) = self.lock();
        inner.check_session(worker_id, generation, now)?;
        inner.tasks.output(worker_id, output)
    }

    /// The stream `generation` of `worker_id` ended: Inactive at once (unless a newer
    /// stream already took over).
    pub fn disconnect(&self, worker_id: &str, generation: u64) {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        let liveness = inner.liveness;
        if let Some(entry) = inner.workers.get_mut(worker_id)
            && entry.session.as_ref().map(|s| s.generation) == Some(generation)
        {
            entry.session = None;
            entry.presence.connected = false;
            let state = entry.observe(&liveness, now, "heartbeat stream closed", &inner.events);
            // A stream that closes when its worker is already past the worker timeout
            // (HTTP/2 keepalive gives up on a paused worker about then) is a way into
            // Removed too, and does Removed's work, as a tick would.
            if state == WorkerState::Removed && !entry.presence.removed {
                entry.presence.removed = true;
                inner.requeue_removed(&[worker_id.to_string()], now);
            }
        }
    }

    /// Applies the rule to every worker: logs transitions, ends the streams of newly
    /// Removed workers and re-queues their tasks, places what waits, and hands back what
    /// SQLite must learn about workers: every change of state, and `last_heartbeat` once it
    /// is [`HEARTBEAT_PERSIST_EVERY_MS`] behind (or always, with `everything`, at shutdown).
    /// A tick that would remove more than half of the workers at once holds the removals
    /// back for [`Liveness::removal_hold`] first (the master is the likelier failure).
    pub fn tick(&self, everything: bool) -> TickOutcome {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        inner.hold_mass_removal(now);
        let mut out = TickOutcome::default();
        let mut budget = tick::StaleBudget::new(everything, inner.workers.slab.len());
        let (liveness, events) = (inner.liveness, &inner.events);
        for entry in inner.workers.values_mut() {
            tick::cut_off_if_backed_up(entry, &liveness, now, events);
            let state = entry.observe(&liveness, now, "no heartbeat within the timeout", events);
            if tick::end_if_removed(entry, state) {
                out.removed.push(entry.id.clone());
            }
            if let Some(row) = tick::row_to_write(entry, state, &mut budget) {
                out.rows.push(row);
            }
        }
        inner.requeue_removed(&out.removed, now);
        inner.tasks.drop_retired();
        out
    }

    /// Marks rows dirty again after a failed flush, so the next tick retries them.
    pub fn mark_dirty(&self, ids: impl IntoIterator<Item = String>) {
        let (mut inner, _) = self.lock();
        for id in ids {
            if let Some(entry) = inner.workers.get_mut(&id) {
                entry.dirty = true;
            }
        }
    }

    /// Ends every open stream (the master is stopping).
    pub fn close_all(&self) {
        let (mut inner, _) = self.lock();
        inner.closed = true;
        for entry in inner.workers.values_mut() {
            if let Some(session) = entry.session.take() {
                let _ = session.end.send(Status::unavailable(
                    "the master is shutting down; reconnect later",
                ));
            }
        }
    }
}

impl ClusterState {
    /// Removed's work, done once per removal by whichever path saw it first: the
    /// unfinished tasks of `removed` are queued again, and what waits is placed.
    fn requeue_removed(&mut self, removed: &[String], now: Instant) {
        for id in removed {
            let why = format!(
                "worker {} was removed after a long silence",
                self.workers[id.as_str()].spec.name
            );
            self.tasks.worker_gone(id, &why, &mut self.workers);
        }
        self.tasks.schedule(&mut self.workers, &self.liveness, now);
    }

    /// The stream must be the worker's current one, and the worker not Removed.
    fn check_session(&self, worker_id: &str, generation: u64, now: Instant) -> Result<(), Error> {
        let entry = self
            .workers
            .get(worker_id)
            .ok_or_else(|| unknown_worker(worker_id))?;
        if self.liveness.state(&entry.presence, now) == WorkerState::Removed {
            return Err(removed_worker(entry));
        }
        if entry.session.as_ref().map(|s| s.generation) != Some(generation) {
            return Err(Error::FailedPrecondition(
                "this heartbeat stream was replaced by a newer one".into(),
            ));
        }
        Ok(())
    }

    /// Takes in a heartbeat: liveness, usage, and what it says about tasks. A worker that
    /// says it is stopping is Inactive at once (its tasks keep running).
    fn heartbeat(
        &mut self,
        worker_id: &str,
        hb: &pb::Heartbeat,
        now: Instant,
        why: &str,
    ) -> Vec<String> {
        let liveness = self.liveness;
        let entry = self
            .workers
            .get_mut(worker_id)
            .expect("checked by the caller");
        entry.presence.last_seen = now;
        entry.last_heartbeat_ms = herd::time::now_ms();
        entry.last_sequence = hb.sequence;
        entry.usage = hb.usage.unwrap_or_default();
        if hb.activity() == pb::WorkerActivity::Stopping {
            entry.presence.connected = false;
            entry.observe(&liveness, now, "worker shut down", &self.events);
        } else {
            entry.observe(&liveness, now, why, &self.events);
        }
        self.tasks
            .on_heartbeat(worker_id, hb, &mut self.workers, now)
    }

    /// Sets [`Liveness::hold_removals`] for this tick: held while a mass removal is in its
    /// grace period, lifted once it has passed (or when the removal is no longer a mass).
    fn hold_mass_removal(&mut self, now: Instant) {
        let mut open = self.liveness;
        open.hold_removals = false;
        let known = self
            .workers
            .values()
            .filter(|w| !w.presence.removed)
            .count();
        let due = self
            .workers
            .values()
            .filter(|w| !w.presence.removed && open.state(&w.presence, now) == WorkerState::Removed)
            .count();
        if !Liveness::is_mass_removal(due, known) {
            self.hold_since = None;
            self.liveness.hold_removals = false;
            return;
        }
        let since = *self.hold_since.get_or_insert_with(|| {
            error!(
                due, known, hold = ?open.removal_hold(),
                "more than half of the workers would be removed at once: holding the removals \
                 back (a failure of the master or its network is likelier than of them all)"
            );
            now
        });
        let held = now.saturating_duration_since(since) < open.removal_hold();
        if !held && self.liveness.hold_removals {
            warn!(
                due,
                "the hold on removals has passed; removing the silent workers"
            );
        }
        self.liveness.hold_removals = held;
    }
}
#[cfg(test)]
pub(crate) mod tests;
