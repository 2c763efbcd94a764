//! The registry: the master's in-memory truth about every worker and task, the one
//! liveness rule ([`Liveness::state`]) that every view, the scheduler and the ticker apply,
//! and task placement and bookkeeping.
//!
//! All state sits behind one `std::sync::Mutex` that is never held across an `.await`:
//! the heartbeat path takes it for a few field writes and does no I/O. Worker liveness
//! reaches SQLite through the ticker ([`Registry::tick`]); task changes are handed to the
//! store thread as they happen, without waiting for the commit.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;
use tracing::{debug, info, warn};

use herd::config::SchedulerKind;
use herd::domain::{MAX_OUTPUT_CHUNK, Resources, TaskSpec, TaskState, WorkerSpec, WorkerState};
use herd::error::Error;
use herd::pb;
use herd::pb::master_message::Body as ToWorker;
use herd::time::now_ms;

use crate::metrics::Metrics;
use crate::scheduler::{self, Candidate, Request, Scheduler};
use crate::store::{Store, Write};
use crate::tasks::{Output, Task};

/// How far the `last_heartbeat` column may lag behind the last heartbeat. Changes of state
/// are written at the next tick; the timestamp alone is informational (liveness after a
/// restart starts afresh), and rewriting every worker's row every second would make
/// SQLite the cost of a large cluster (as with Kubernetes' node leases, heartbeats are
/// cheap in memory and persisted coarsely).
pub const HEARTBEAT_PERSIST_EVERY_MS: i64 = 10_000;

/// What the master pushes down a worker's heartbeat stream.
pub type Outbound = mpsc::Sender<Result<pb::MasterMessage, Status>>;

/// The liveness rule and its two timeouts. This is the only place they live.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Silent this long (or stream closed): Inactive.
    pub heartbeat_timeout: Duration,
    /// Silent this long: Removed.
    pub worker_timeout: Duration,
}

impl Liveness {
    /// The state of a worker at `now`, from the facts the registry keeps.
    pub fn state(&self, presence: &Presence, now: Instant) -> WorkerState {
        let silent = now.saturating_duration_since(presence.last_seen);
        if presence.removed || silent >= self.worker_timeout {
            WorkerState::Removed
        } else if !presence.connected || silent >= self.heartbeat_timeout {
            WorkerState::Inactive
        } else {
            WorkerState::Active
        }
    }
}

/// The facts liveness is decided from.
#[derive(Debug, Clone, Copy)]
pub struct Presence {
    /// Last heartbeat (or registration, or master start for workers loaded from SQLite:
    /// a master that was down is not the workers' fault).
    pub last_seen: Instant,
    /// A heartbeat stream is open.
    pub connected: bool,
    /// The ticker removed this worker (its tasks were re-queued); only re-registering
    /// brings it back.
    pub removed: bool,
}

/// A row for the `workers` table, written at registration.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    pub id: String,
    pub spec: WorkerSpec,
    pub registered_at_ms: i64,
    pub last_heartbeat_ms: i64,
    pub state: WorkerState,
    /// No new tasks go here.
    pub draining: bool,
}

/// The columns the ticker keeps in sync.
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessRow {
    pub id: String,
    pub state: WorkerState,
    pub last_heartbeat_ms: i64,
}

/// Settings of the registry.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub liveness: Liveness,
    /// Told to workers at registration.
    pub heartbeat_interval: Duration,
    /// Placements of one task before a lost worker makes it fail instead of re-queue.
    pub max_attempts: u32,
    pub scheduler: SchedulerKind,
}

/// An open heartbeat stream.
struct Session {
    /// Tells this stream apart from a newer one of the same worker.
    generation: u64,
    /// Pushes messages to the worker.
    outbound: Outbound,
    /// Ends the stream with the given status (removed, replaced, master stopping).
    end: oneshot::Sender<Status>,
    /// Highest heartbeat sequence seen on this stream; older ones are replays.
    last_sequence: u64,
}

struct Entry {
    id: String,
    spec: WorkerSpec,
    registered_at_ms: i64,
    last_heartbeat_ms: i64,
    last_sequence: u64,
    usage: pb::Usage,
    presence: Presence,
    session: Option<Session>,
    /// The state last logged and handed to SQLite; a difference is a transition.
    recorded: WorkerState,
    /// A change of state (or description) SQLite has not seen yet.
    dirty: bool,
    /// The `last_heartbeat` SQLite has.
    persisted_heartbeat_ms: i64,
    /// Held by the tasks placed here.
    allocated: Resources,
    /// Tasks placed here (assigned or running).
    tasks: BTreeSet<String>,
    /// An operator drained it: running tasks finish, no new ones come.
    draining: bool,
}

impl Entry {
    fn new(id: String, spec: WorkerSpec, now: Instant) -> Entry {
        Entry {
            id,
            spec,
            registered_at_ms: now_ms(),
            last_heartbeat_ms: 0,
            last_sequence: 0,
            usage: pb::Usage::default(),
            presence: Presence {
                last_seen: now,
                connected: false,
                removed: false,
            },
            session: None,
            recorded: WorkerState::Inactive,
            dirty: true,
            persisted_heartbeat_ms: 0,
            allocated: Resources::default(),
            tasks: BTreeSet::new(),
            draining: false,
        }
    }

    /// The status word views show: liveness, with Draining over Active.
    fn shown(&self, liveness: &Liveness, now: Instant) -> pb::WorkerState {
        match liveness.state(&self.presence, now) {
            WorkerState::Active if self.draining => pb::WorkerState::Draining,
            state => state.into(),
        }
    }

    fn info(&self, liveness: &Liveness, now: Instant) -> pb::WorkerInfo {
        pb::WorkerInfo {
            id: self.id.clone(),
            description: Some((&self.spec).into()),
            state: self.shown(liveness, now) as i32,
            last_heartbeat_ms: self.last_heartbeat_ms,
            registered_at_ms: self.registered_at_ms,
            usage: Some(self.usage),
            allocated: Some(self.allocated.into()),
            running_task_ids: self.tasks.iter().cloned().collect(),
            connected: self.session.is_some(),
            last_sequence: self.last_sequence,
            as_of_ms: now_ms(),
        }
    }

    /// Applies the rule; logs and marks dirty when the state changed.
    fn observe(&mut self, liveness: &Liveness, now: Instant, why: &str) -> WorkerState {
        let state = liveness.state(&self.presence, now);
        if state != self.recorded {
            let from = self.recorded;
            self.recorded = state;
            self.dirty = true;
            match state {
                WorkerState::Active => {
                    info!(worker = %self.spec.name, id = %self.id, %from, to = %state, "{why}")
                }
                _ => {
                    warn!(worker = %self.spec.name, id = %self.id, %from, to = %state, "{why}")
                }
            }
        }
        state
    }

    /// Pushes a message to the worker; false when there is no stream or it is full.
    fn push(&self, body: ToWorker) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.outbound
                .try_send(Ok(pb::MasterMessage { body: Some(body) }))
                .is_ok()
        })
    }

    fn cancel(&self, task_id: &str, attempt: u32, reason: &str) {
        self.push(ToWorker::Cancel(pb::TaskCancel {
            task_id: task_id.to_string(),
            attempt,
            reason: reason.to_string(),
        }));
    }
}

/// Workers in a slab (never removed: Removed workers stay known), found by id. A
/// scheduling pass walks the slab without hashing a single id.
#[derive(Default)]
struct Workers {
    slab: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl Workers {
    fn get(&self, id: &str) -> Option<&Entry> {
        self.index.get(id).map(|&slot| &self.slab[slot])
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.index.get(id).map(|&slot| &mut self.slab[slot])
    }

    fn contains_key(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Adds a worker; returns its slot.
    fn insert(&mut self, entry: Entry) -> usize {
        let slot = self.slab.len();
        self.index.insert(entry.id.clone(), slot);
        self.slab.push(entry);
        slot
    }

    fn values(&self) -> std::slice::Iter<'_, Entry> {
        self.slab.iter()
    }

    fn values_mut(&mut self) -> std::slice::IterMut<'_, Entry> {
        self.slab.iter_mut()
    }
}

impl std::ops::Index<&str> for Workers {
    type Output = Entry;

    fn index(&self, id: &str) -> &Entry {
        self.get(id).expect("a known worker id")
    }
}

impl std::ops::Index<&String> for Workers {
    type Output = Entry;

    fn index(&self, id: &String) -> &Entry {
        &self[id.as_str()]
    }
}

struct Inner {
    settings: Settings,
    store: Store,
    workers: Workers,
    by_name: HashMap<String, String>,
    /// Worker slots ordered by name: the scheduler's stable order.
    order: Vec<usize>,
    next_generation: u64,
    tasks: HashMap<String, Task>,
    /// Queued task ids, oldest first.
    queue: VecDeque<String>,
    next_task: u64,
    scheduler: Box<dyn Scheduler>,
    metrics: Arc<Metrics>,
}

/// The registry. Cheap to share behind an `Arc`.
pub struct Registry {
    heartbeat_interval: Duration,
    inner: Mutex<Inner>,
}

/// What registering produced.
#[derive(Debug)]
pub struct Registered {
    pub id: String,
    pub reregistered: bool,
    /// To be stored before the id is handed out.
    pub record: WorkerRecord,
}

/// An accepted heartbeat stream.
pub struct Accepted {
    pub generation: u64,
    pub end: oneshot::Receiver<Status>,
    /// Finished tasks of the first heartbeat that the master has taken in.
    pub acked: Vec<String>,
}

/// What one tick of the ticker produced.
#[derive(Debug, Default)]
pub struct TickOutcome {
    /// Rows SQLite has not seen yet.
    pub rows: Vec<LivenessRow>,
    /// Workers that became Removed in this tick.
    pub removed: Vec<String>,
}

/// Counts of workers and tasks by state.
#[derive(Debug, Default)]
pub struct Summary {
    pub workers: Vec<(&'static str, usize)>,
    pub tasks: Vec<(&'static str, usize)>,
    pub queued: usize,
    pub scheduler: SchedulerKind,
}

/// A piece of a task's output.
pub enum Logs {
    /// Output after the asked offset, the next offset, and whether the task has ended.
    Memory {
        data: Vec<u8>,
        next: u64,
        done: bool,
    },
    /// The output is only in SQLite (the task ended before the master restarted).
    Stored,
}

impl Registry {
    pub fn new(settings: Settings, store: Store, metrics: Arc<Metrics>) -> Registry {
        Registry {
            heartbeat_interval: settings.heartbeat_interval,
            inner: Mutex::new(Inner {
                settings,
                store,
                workers: Workers::default(),
                by_name: HashMap::new(),
                order: Vec::new(),
                next_generation: 0,
                tasks: HashMap::new(),
                queue: VecDeque::new(),
                next_task: 1,
                scheduler: scheduler::new(settings.scheduler),
                metrics,
            }),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads what SQLite knows at start. Workers are Inactive until they heartbeat, and
    /// their Removed clock starts now. Placed tasks stay placed: their worker re-attaches
    /// them when it reports them, or they are re-queued when it is Removed.
    pub fn load(&self, workers: Vec<WorkerRecord>, tasks: Vec<Task>) {
        let now = Instant::now();
        let mut inner = self.lock();
        for r in workers {
            let removed = r.state == WorkerState::Removed;
            let recorded = if removed {
                WorkerState::Removed
            } else {
                WorkerState::Inactive
            };
            let mut entry = Entry::new(r.id.clone(), r.spec, now);
            entry.registered_at_ms = r.registered_at_ms;
            entry.last_heartbeat_ms = r.last_heartbeat_ms;
            entry.presence.removed = removed;
            entry.draining = r.draining;
            entry.recorded = recorded;
            // Loaded workers were possibly Active in SQLite: write Inactive back.
            entry.dirty = r.state != recorded;
            entry.persisted_heartbeat_ms = r.last_heartbeat_ms;
            inner.add_worker(entry);
        }
        let mut tasks = tasks;
        tasks.sort_by_key(|t| task_number(&t.id));
        for mut task in tasks {
            inner.next_task = inner.next_task.max(task_number(&task.id) + 1);
            let id = task.id.clone();
            if task.state.is_placed() {
                let worker = task.worker_id.clone().unwrap_or_default();
                match inner.workers.get_mut(&worker) {
                    Some(entry) if !entry.presence.removed => {
                        add(&mut entry.allocated, task.spec.resources);
                        entry.tasks.insert(id.clone());
                        task.assigned_at = Some(now);
                        task.holders.push(worker.clone());
                    }
                    _ => {
                        task.state = TaskState::Queued;
                        task.worker_id = None;
                        task.reason = "its worker is gone; re-queued".into();
                    }
                }
            }
            if task.state == TaskState::Queued {
                inner.queue.push_back(id.clone());
            }
            inner.tasks.insert(id, task);
        }
    }

    /// Registers a worker, or re-registers it by name keeping its id.
    pub fn register(&self, spec: WorkerSpec) -> Registered {
        let now = Instant::now();
        let mut inner = self.lock();
        let liveness = inner.settings.liveness;
        if let Some(id) = inner.by_name.get(&spec.name).cloned() {
            let entry = inner
                .workers
                .get_mut(&id)
                .expect("by_name points at a worker");
            entry.spec = spec;
            entry.presence.removed = false;
            entry.presence.last_seen = now;
            entry.observe(&liveness, now, "re-registered");
            info!(worker = %entry.spec.name, %id, "worker re-registered, keeping its id");
            return Registered {
                reregistered: true,
                record: record_of(entry),
                id,
            };
        }
        let id = loop {
            let candidate = format!("w-{:08x}", fastrand::u32(..));
            if !inner.workers.contains_key(&candidate) {
                break candidate;
            }
        };
        let entry = Entry::new(id.clone(), spec, now);
        info!(worker = %entry.spec.name, %id, cpu = entry.spec.capacity.cpu,
              memory_gb = entry.spec.capacity.memory_gb, gpu = entry.spec.capacity.gpu,
              runtime = entry.spec.runtime.map(|r| r.as_str()).unwrap_or("none"),
              "worker registered");
        let record = record_of(&entry);
        inner.add_worker(entry);
        Registered {
            id,
            reregistered: false,
            record,
        }
    }

    /// Opens a heartbeat stream for `first.worker_id`, replacing an older stream of the
    /// same worker. Unknown or Removed ids get NOT_FOUND: the worker must register again.
    pub fn connect(&self, first: &pb::Heartbeat, outbound: Outbound) -> Result<Accepted, Error> {
        let now = Instant::now();
        let mut inner = self.lock();
        let liveness = inner.settings.liveness;
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let entry = inner
            .workers
            .get_mut(&first.worker_id)
            .ok_or_else(|| unknown_worker(&first.worker_id))?;
        if liveness.state(&entry.presence, now) == WorkerState::Removed {
            return Err(removed_worker(entry));
        }
        let (end_tx, end_rx) = oneshot::channel();
        if let Some(old) = entry.session.replace(Session {
            generation,
            outbound,
            end: end_tx,
            last_sequence: first.sequence,
        }) {
            warn!(worker = %entry.spec.name, id = %entry.id,
                  "a new heartbeat stream replaced an open one (two processes with one name?)");
            let _ = old.end.send(Status::aborted(
                "replaced by a newer heartbeat stream of the same worker",
            ));
        }
        entry.presence.connected = true;
        let acked = inner.heartbeat(&first.worker_id, first, now, "heartbeat stream opened");
        inner.schedule(now);
        Ok(Accepted {
            generation,
            end: end_rx,
            acked,
        })
    }

    /// Records a heartbeat on the stream `generation` of `worker_id`; returns the finished
    /// tasks to acknowledge.
    pub fn heartbeat(
        &self,
        worker_id: &str,
        generation: u64,
        hb: &pb::Heartbeat,
    ) -> Result<Vec<String>, Error> {
        if hb.worker_id != worker_id {
            return Err(Error::PermissionDenied(format!(
                "this stream belongs to worker {worker_id}; it cannot carry heartbeats for {}",
                hb.worker_id
            )));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        inner.check_session(worker_id, generation, now)?;
        let liveness = inner.settings.liveness;
        let entry = inner.workers.get_mut(worker_id).expect("checked");
        let session = entry.session.as_mut().expect("checked");
        if hb.sequence <= session.last_sequence {
            // A replayed or reordered heartbeat: it proves the worker is alive, but its
            // view of tasks may be stale, so nothing else is taken from it.
            debug!(worker = %entry.spec.name, sequence = hb.sequence,
                   last = session.last_sequence, "out-of-order heartbeat");
            entry.presence.last_seen = now;
            entry.observe(&liveness, now, "heartbeat received again");
            return Ok(Vec::new());
        }
        session.last_sequence = hb.sequence;
        let was_active = inner.workers[worker_id].recorded == WorkerState::Active;
        let acked = inner.heartbeat(worker_id, hb, now, "heartbeat received again");
        if !was_active || !acked.is_empty() {
            inner.schedule(now);
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
        let now = Instant::now();
        let mut inner = self.lock();
        inner.check_session(worker_id, generation, now)?;
        inner.may_speak_for(worker_id, &update.task_id)?;
        if inner.task_update(worker_id, update) {
            inner.schedule(now);
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
        let now = Instant::now();
        let mut inner = self.lock();
        inner.check_session(worker_id, generation, now)?;
        inner.may_speak_for(worker_id, &output.task_id)?;
        if output.data.len() > MAX_OUTPUT_CHUNK {
            return Err(Error::invalid(format!(
                "an output chunk of {} bytes; at most {MAX_OUTPUT_CHUNK} are allowed",
                output.data.len()
            )));
        }
        if let Some(task) = inner.tasks.get_mut(&output.task_id)
            && task.worker_id.as_deref() == Some(worker_id)
            && task.attempts == output.attempt
        {
            task.output
                .get_or_insert_with(Output::default)
                .append(&output.data);
        }
        Ok(())
    }

    /// The stream `generation` of `worker_id` ended: Inactive at once (unless a newer
    /// stream already took over).
    pub fn disconnect(&self, worker_id: &str, generation: u64) {
        let now = Instant::now();
        let mut inner = self.lock();
        let liveness = inner.settings.liveness;
        if let Some(entry) = inner.workers.get_mut(worker_id)
            && entry.session.as_ref().map(|s| s.generation) == Some(generation)
        {
            entry.session = None;
            entry.presence.connected = false;
            entry.observe(&liveness, now, "heartbeat stream closed");
        }
    }

    /// Applies the rule to every worker: logs transitions, ends the streams of newly
    /// Removed workers and re-queues their tasks, places what waits, and hands back what
    /// SQLite must learn about workers: every change of state, and `last_heartbeat` once it
    /// is [`HEARTBEAT_PERSIST_EVERY_MS`] behind (or always, with `everything`, at shutdown).
    pub fn tick(&self, now: Instant, everything: bool) -> TickOutcome {
        let mut out = TickOutcome::default();
        let mut inner = self.lock();
        let liveness = inner.settings.liveness;
        // Stale timestamps are written a fifth of the workers at a time, so workers that
        // registered together do not all fall due in the same tick.
        let mut stale_budget = if everything {
            usize::MAX
        } else {
            inner.workers.slab.len() / 5 + 1
        };
        for entry in inner.workers.values_mut() {
            let before = entry.recorded;
            let state = entry.observe(&liveness, now, "no heartbeat within the timeout");
            if state == WorkerState::Removed && !entry.presence.removed {
                entry.presence.removed = true;
                entry.presence.connected = false;
                if let Some(session) = entry.session.take() {
                    let _ = session.end.send(removed_worker(entry).into());
                }
                if before != WorkerState::Removed {
                    out.removed.push(entry.id.clone());
                }
            }
            let behind = entry.last_heartbeat_ms - entry.persisted_heartbeat_ms;
            let stale = stale_budget > 0
                && (behind >= HEARTBEAT_PERSIST_EVERY_MS || (everything && behind != 0));
            if stale && !entry.dirty {
                stale_budget -= 1;
            }
            if entry.dirty || stale {
                entry.dirty = false;
                entry.persisted_heartbeat_ms = entry.last_heartbeat_ms;
                out.rows.push(LivenessRow {
                    id: entry.id.clone(),
                    state,
                    last_heartbeat_ms: entry.last_heartbeat_ms,
                });
            }
        }
        for id in &out.removed {
            let entry = &inner.workers[id];
            let why = format!(
                "worker {} was removed after a long silence",
                entry.spec.name
            );
            let tasks: Vec<String> = entry.tasks.iter().cloned().collect();
            for task in tasks {
                inner.requeue_or_fail(&task, &why);
            }
        }
        inner.schedule(now);
        out
    }

    /// Marks rows dirty again after a failed flush, so the next tick retries them.
    pub fn mark_dirty(&self, ids: impl IntoIterator<Item = String>) {
        let mut inner = self.lock();
        for id in ids {
            if let Some(entry) = inner.workers.get_mut(&id) {
                entry.dirty = true;
            }
        }
    }

    /// Every worker as of now, ordered by name; Removed ones only with `all`.
    pub fn list(&self, all: bool) -> Vec<pb::WorkerInfo> {
        let now = Instant::now();
        let inner = self.lock();
        let liveness = inner.settings.liveness;
        inner
            .order
            .iter()
            .map(|&slot| inner.workers.slab[slot].info(&liveness, now))
            .filter(|w| all || w.state() != pb::WorkerState::Removed)
            .collect()
    }

    /// One worker by id or name.
    pub fn get(&self, id_or_name: &str) -> Result<pb::WorkerInfo, Error> {
        let now = Instant::now();
        let inner = self.lock();
        let id = inner.resolve(id_or_name)?;
        Ok(inner.workers[&id].info(&inner.settings.liveness, now))
    }

    /// Ends every open stream (the master is stopping).
    pub fn close_all(&self) {
        let mut inner = self.lock();
        for entry in inner.workers.values_mut() {
            if let Some(session) = entry.session.take() {
                let _ = session.end.send(Status::unavailable(
                    "the master is shutting down; reconnect later",
                ));
            }
        }
    }

    /// A new task, not yet known to anyone: store it, then [`Registry::enqueue`] it.
    pub fn new_task(&self, spec: TaskSpec) -> Task {
        let mut inner = self.lock();
        let id = format!("t-{}", inner.next_task);
        inner.next_task += 1;
        Task {
            id,
            spec,
            state: TaskState::Queued,
            worker_id: None,
            attempts: 0,
            exit_code: None,
            reason: "waiting for a placement".into(),
            submitted_ms: now_ms(),
            started_ms: 0,
            finished_ms: 0,
            assigned_at: None,
            cancel_requested: false,
            output: Some(Output::default()),
            holders: Vec::new(),
        }
    }

    /// Queues a stored task and places what fits.
    pub fn enqueue(&self, task: Task) -> pb::TaskInfo {
        let now = Instant::now();
        let mut inner = self.lock();
        let id = task.id.clone();
        info!(task = %id, name = %task.spec.name, "task submitted");
        inner.tasks.insert(id.clone(), task);
        inner.queue.push_back(id.clone());
        inner.schedule(now);
        inner.task_info(&id).expect("just inserted")
    }

    pub fn task(&self, id: &str) -> Result<pb::TaskInfo, Error> {
        self.lock().task_info(id)
    }

    /// Tasks in submission order, optionally only those in `state`.
    pub fn tasks(&self, state: Option<TaskState>) -> Vec<pb::TaskInfo> {
        let inner = self.lock();
        let mut ids: Vec<&String> = inner
            .tasks
            .values()
            .filter(|t| state.is_none_or(|s| t.state == s))
            .map(|t| &t.id)
            .collect();
        ids.sort_by_key(|id| task_number(id));
        ids.into_iter()
            .filter_map(|id| inner.task_info(id).ok())
            .collect()
    }

    /// Cancels a task: a queued one at once, a placed one by telling its worker.
    pub fn cancel(&self, id: &str) -> Result<pb::TaskInfo, Error> {
        let mut inner = self.lock();
        let task = inner.tasks.get_mut(id).ok_or_else(|| unknown_task(id))?;
        match task.state {
            s if s.is_final() => {
                return Err(Error::FailedPrecondition(format!(
                    "task {id} already {s}; nothing to cancel"
                )));
            }
            TaskState::Queued => {
                inner.queue.retain(|q| q != id);
                inner.finish(id, TaskState::Cancelled, None, "cancelled while queued");
            }
            _ => {
                task.cancel_requested = true;
                task.reason = "cancel requested".into();
                let attempt = task.attempts;
                let worker = task.worker_id.clone().unwrap_or_default();
                let connected = inner
                    .workers
                    .get(&worker)
                    .is_some_and(|w| w.session.is_some());
                if connected {
                    inner.workers[&worker].cancel(id, attempt, "cancelled by an operator");
                } else {
                    // The worker is away: cancel now; if it comes back with the task, it
                    // is told to stop it.
                    inner.finish(id, TaskState::Cancelled, None, "cancelled; worker away");
                }
            }
        }
        inner.task_info(id)
    }

    /// Output of a task after the whole-output offset `from`.
    pub fn logs(&self, id: &str, from: u64) -> Result<Logs, Error> {
        let inner = self.lock();
        let task = inner.tasks.get(id).ok_or_else(|| unknown_task(id))?;
        Ok(match &task.output {
            Some(output) => {
                let (data, next) = output.since(from);
                Logs::Memory {
                    data,
                    next,
                    done: task.state.is_final(),
                }
            }
            None => Logs::Stored,
        })
    }

    /// Drains (or undrains) a worker by id or name; returns the record to store.
    pub fn drain(&self, id_or_name: &str, drain: bool) -> Result<WorkerRecord, Error> {
        let now = Instant::now();
        let mut inner = self.lock();
        let id = inner.resolve(id_or_name)?;
        let entry = inner.workers.get_mut(&id).expect("resolved");
        if entry.draining != drain {
            entry.draining = drain;
            info!(worker = %entry.spec.name, %id, draining = drain,
                  "{}", if drain { "worker draining" } else { "worker undrained" });
        }
        let record = record_of(entry);
        if !drain {
            inner.schedule(now);
        }
        Ok(record)
    }

    /// Counts for `status` and metrics.
    pub fn summary(&self) -> Summary {
        let now = Instant::now();
        let inner = self.lock();
        let liveness = inner.settings.liveness;
        let mut summary = Summary {
            scheduler: inner.scheduler.kind(),
            queued: inner.queue.len(),
            ..Default::default()
        };
        for state in [
            pb::WorkerState::Active,
            pb::WorkerState::Draining,
            pb::WorkerState::Inactive,
            pb::WorkerState::Removed,
        ] {
            let n = inner
                .workers
                .values()
                .filter(|w| w.shown(&liveness, now) == state)
                .count();
            summary.workers.push((herd::render::state_word(state), n));
        }
        for state in TaskState::ALL {
            let n = inner.tasks.values().filter(|t| t.state == state).count();
            summary.tasks.push((state.as_str(), n));
        }
        summary
    }

    /// The current policy, after switching to `to` when given.
    pub fn scheduler(&self, to: Option<SchedulerKind>) -> SchedulerKind {
        let mut inner = self.lock();
        if let Some(kind) = to
            && kind != inner.scheduler.kind()
        {
            info!(scheduler = ?kind, "scheduler switched");
            inner.scheduler = scheduler::new(kind);
            inner.schedule(Instant::now());
        }
        inner.scheduler.kind()
    }
}

impl Inner {
    fn resolve(&self, id_or_name: &str) -> Result<String, Error> {
        let id = self
            .by_name
            .get(id_or_name)
            .map(String::as_str)
            .unwrap_or(id_or_name);
        if self.workers.contains_key(id) {
            Ok(id.to_string())
        } else {
            Err(Error::not_found(format!(
                "no worker with id or name '{id_or_name}': 'workers --all' lists them"
            )))
        }
    }

    fn add_worker(&mut self, entry: Entry) {
        let name = entry.spec.name.clone();
        let at = self
            .order
            .partition_point(|&other| self.workers.slab[other].spec.name < name);
        self.by_name.insert(name, entry.id.clone());
        let slot = self.workers.insert(entry);
        self.order.insert(at, slot);
    }

    /// A worker may report only on tasks it holds or held.
    fn may_speak_for(&self, worker_id: &str, task_id: &str) -> Result<(), Error> {
        match self.tasks.get(task_id) {
            Some(task) if task.holders.iter().any(|h| h == worker_id) => Ok(()),
            _ => Err(Error::PermissionDenied(format!(
                "task '{task_id}' was never assigned to worker {worker_id}"
            ))),
        }
    }

    /// The stream must be the worker's current one, and the worker not Removed.
    fn check_session(&self, worker_id: &str, generation: u64, now: Instant) -> Result<(), Error> {
        let entry = self
            .workers
            .get(worker_id)
            .ok_or_else(|| unknown_worker(worker_id))?;
        if self.settings.liveness.state(&entry.presence, now) == WorkerState::Removed {
            return Err(removed_worker(entry));
        }
        if entry.session.as_ref().map(|s| s.generation) != Some(generation) {
            return Err(Error::FailedPrecondition(
                "this heartbeat stream was replaced by a newer one".into(),
            ));
        }
        Ok(())
    }

    /// Takes in a heartbeat: liveness, usage, finished tasks, and what the worker holds.
    fn heartbeat(
        &mut self,
        worker_id: &str,
        hb: &pb::Heartbeat,
        now: Instant,
        why: &str,
    ) -> Vec<String> {
        let liveness = self.settings.liveness;
        let grace = self.settings.heartbeat_interval * 2 + Duration::from_secs(1);
        let entry = self
            .workers
            .get_mut(worker_id)
            .expect("checked by the caller");
        entry.presence.last_seen = now;
        entry.last_heartbeat_ms = now_ms();
        entry.last_sequence = hb.sequence;
        entry.usage = hb.usage.unwrap_or_default();
        entry.observe(&liveness, now, why);

        let mut acked = Vec::with_capacity(hb.finished.len());
        for update in &hb.finished {
            // Results of tasks this worker never held are acknowledged and ignored, so a
            // worker cannot be stuck repeating them (e.g. after the master lost state).
            if self.may_speak_for(worker_id, &update.task_id).is_ok() {
                self.task_update(worker_id, update);
            }
            acked.push(update.task_id.clone());
        }
        if hb.running_task_ids.is_empty() && self.workers[worker_id].tasks.is_empty() {
            return acked;
        }
        // Tasks the worker holds that are no longer its own: tell it to stop them.
        for id in &hb.running_task_ids {
            match self.tasks.get_mut(id) {
                Some(task)
                    if task.state.is_placed() && task.worker_id.as_deref() == Some(worker_id) =>
                {
                    if task.state == TaskState::Assigned {
                        task.state = TaskState::Running;
                        task.started_ms = now_ms();
                        persist(&self.store, task);
                    }
                    if task.cancel_requested {
                        let attempt = task.attempts;
                        self.workers[worker_id].cancel(id, attempt, "cancelled by an operator");
                    }
                }
                other => {
                    let why = match other {
                        Some(t) if t.state.is_final() => format!("the task is already {}", t.state),
                        Some(_) => "the task was re-queued elsewhere".to_string(),
                        None => "the master does not know this task".to_string(),
                    };
                    self.workers[worker_id].cancel(id, 0, &why);
                }
            }
        }
        // Tasks placed here that the worker no longer holds (past a grace period for
        // assignments still in flight): lost.
        let holding: HashSet<&str> = hb
            .running_task_ids
            .iter()
            .chain(hb.finished.iter().map(|u| &u.task_id))
            .map(String::as_str)
            .collect();
        let lost: Vec<String> = self.workers[worker_id]
            .tasks
            .iter()
            .filter(|id| !holding.contains(id.as_str()))
            .filter(|id| {
                self.tasks[*id]
                    .assigned_at
                    .is_none_or(|at| now.saturating_duration_since(at) > grace)
            })
            .cloned()
            .collect();
        for id in lost {
            let why = format!(
                "worker {} no longer has the task",
                self.workers[worker_id].spec.name
            );
            self.requeue_or_fail(&id, &why);
        }
        acked
    }

    /// Applies a task update; true when resources were freed.
    fn task_update(&mut self, worker_id: &str, update: &pb::TaskUpdate) -> bool {
        let Some(task) = self.tasks.get_mut(&update.task_id) else {
            return false;
        };
        let ours = task.worker_id.as_deref() == Some(worker_id)
            && task.attempts == update.attempt
            && task.state.is_placed();
        if !ours {
            // A stale attempt or a copy that was re-queued elsewhere: if it still runs,
            // stop it.
            if update.event() == pb::TaskEvent::Started
                && let Some(entry) = self.workers.get(worker_id)
            {
                entry.cancel(&update.task_id, update.attempt, "no longer assigned to you");
            }
            return false;
        }
        let (state, default_reason) = match update.event() {
            pb::TaskEvent::Started => {
                if task.state == TaskState::Assigned {
                    task.state = TaskState::Running;
                    task.started_ms = now_ms();
                    task.reason.clear();
                    persist(&self.store, task);
                    info!(task = %task.id, worker = %self.workers[worker_id].spec.name, "task started");
                }
                return false;
            }
            pb::TaskEvent::Succeeded => (TaskState::Succeeded, ""),
            pb::TaskEvent::Failed => (TaskState::Failed, "failed"),
            pb::TaskEvent::Cancelled => (TaskState::Cancelled, "cancelled"),
            pb::TaskEvent::Unspecified => return false,
        };
        let state = if task.cancel_requested && state != TaskState::Succeeded {
            TaskState::Cancelled
        } else {
            state
        };
        let reason = if update.message.is_empty() {
            default_reason.to_string()
        } else {
            update.message.clone()
        };
        let id = update.task_id.clone();
        self.finish(&id, state, update.exit_code, &reason);
        true
    }

    /// Ends a task for good, freeing what it held.
    fn finish(&mut self, id: &str, state: TaskState, exit_code: Option<i32>, reason: &str) {
        self.release(id);
        let task = self.tasks.get_mut(id).expect("finish of a known task");
        task.state = state;
        task.exit_code = exit_code;
        task.reason = reason.to_string();
        task.finished_ms = now_ms();
        task.assigned_at = None;
        info!(task = %id, state = %state, exit_code = ?exit_code, reason, "task ended");
        persist(&self.store, task);
        if let Some(output) = &task.output {
            self.store.enqueue(Write::TaskOutput {
                id: id.to_string(),
                output: output.to_vec(),
                total: output.total(),
            });
        }
    }

    /// Frees what a placed task held on its worker.
    fn release(&mut self, id: &str) {
        let task = &self.tasks[id];
        if !task.state.is_placed() {
            return;
        }
        let resources = task.spec.resources;
        if let Some(entry) = task
            .worker_id
            .as_ref()
            .and_then(|w| self.workers.get_mut(w))
            && entry.tasks.remove(id)
        {
            sub(&mut entry.allocated, resources);
        }
    }

    /// The task's worker is gone: queue it again, or fail it after too many attempts.
    fn requeue_or_fail(&mut self, id: &str, why: &str) {
        let task = &self.tasks[id];
        if task.cancel_requested {
            self.finish(id, TaskState::Cancelled, None, why);
            return;
        }
        if task.attempts >= self.settings.max_attempts {
            let reason = format!("{why}; gave up after {} attempts", task.attempts);
            self.finish(id, TaskState::Failed, None, &reason);
            return;
        }
        self.release(id);
        let task = self.tasks.get_mut(id).expect("known task");
        warn!(task = %id, attempts = task.attempts, why, "task re-queued");
        task.state = TaskState::Queued;
        task.worker_id = None;
        task.assigned_at = None;
        task.reason = format!("{why}; re-queued");
        persist(&self.store, task);
        // It was submitted before anything queued now: it goes first.
        self.queue.push_front(id.to_string());
    }

    /// Places queued tasks, oldest first, letting smaller later ones through (backfill).
    fn schedule(&mut self, now: Instant) {
        if self.queue.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        self.schedule_queue(now);
        Metrics::observe(&self.metrics.scheduling, started.elapsed());
    }

    fn schedule_queue(&mut self, now: Instant) {
        let liveness = self.settings.liveness;
        let mut candidates: Vec<Candidate> = self
            .order
            .iter()
            .map(|&slot| {
                let w = &self.workers.slab[slot];
                Candidate {
                    capacity: w.spec.capacity,
                    allocated: w.allocated,
                    cpu_percent: w.usage.cpu_percent,
                    schedulable: !w.draining
                        && liveness.state(&w.presence, now) == WorkerState::Active,
                    has_runtime: w.spec.runtime.is_some(),
                }
            })
            .collect();
        let any_live = candidates.iter().any(|c| c.schedulable);
        let queue = std::mem::take(&mut self.queue);
        for id in queue {
            let task = &self.tasks[&id];
            let request = Request {
                resources: task.spec.resources,
                needs_runtime: task.spec.image.is_some(),
            };
            let placed = any_live
                && match self.scheduler.place(&candidates, &request) {
                    Some(i) => {
                        let worker = self.workers.slab[self.order[i]].id.clone();
                        let ok = self.assign(&id, &worker, now);
                        if ok {
                            add(&mut candidates[i].allocated, request.resources);
                        } else {
                            // Its stream is full or gone: leave it out of this pass.
                            candidates[i].schedulable = false;
                        }
                        ok
                    }
                    None => false,
                };
            if !placed {
                let reason = scheduler::why_not(&candidates, &request);
                let task = self.tasks.get_mut(&id).expect("queued task");
                task.reason = reason;
                self.queue.push_back(id);
            }
        }
    }

    /// Sends a task to a worker; false (and nothing changed) when that is not possible.
    fn assign(&mut self, id: &str, worker_id: &str, now: Instant) -> bool {
        let task = self.tasks.get_mut(id).expect("known task");
        let entry = self.workers.get_mut(worker_id).expect("known worker");
        let attempt = task.attempts + 1;
        let sent = entry.push(ToWorker::Assign(pb::TaskAssignment {
            task_id: id.to_string(),
            attempt,
            name: task.spec.name.clone(),
            image: task.spec.image.clone().unwrap_or_default(),
            command: task.spec.command.clone().unwrap_or_default(),
            resources: Some(task.spec.resources.into()),
        }));
        if !sent {
            return false;
        }
        task.attempts = attempt;
        if !task.holders.iter().any(|h| h == worker_id) {
            task.holders.push(worker_id.to_string());
        }
        task.state = TaskState::Assigned;
        task.worker_id = Some(worker_id.to_string());
        task.assigned_at = Some(now);
        task.reason.clear();
        add(&mut entry.allocated, task.spec.resources);
        entry.tasks.insert(id.to_string());
        info!(task = %id, worker = %entry.spec.name, attempt, "task assigned");
        persist(&self.store, task);
        true
    }

    fn task_info(&self, id: &str) -> Result<pb::TaskInfo, Error> {
        let task = self.tasks.get(id).ok_or_else(|| unknown_task(id))?;
        let worker_name = task
            .worker_id
            .as_ref()
            .and_then(|w| self.workers.get(w))
            .map(|w| w.spec.name.as_str());
        Ok(task.info(worker_name))
    }
}

/// Hands a task's row to the store thread without waiting for the commit.
fn persist(store: &Store, task: &Task) {
    store.enqueue(Write::Task(Box::new(Task {
        output: None,
        ..task.clone()
    })));
}

fn add(total: &mut Resources, r: Resources) {
    total.cpu += r.cpu;
    total.memory_gb += r.memory_gb;
    total.gpu += r.gpu;
}

fn sub(total: &mut Resources, r: Resources) {
    total.cpu = (total.cpu - r.cpu).max(0.0);
    total.memory_gb = (total.memory_gb - r.memory_gb).max(0.0);
    total.gpu = total.gpu.saturating_sub(r.gpu);
}

/// The number in a task id (`t-42` → 42), for ordering.
fn task_number(id: &str) -> u64 {
    id.strip_prefix("t-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn record_of(entry: &Entry) -> WorkerRecord {
    WorkerRecord {
        id: entry.id.clone(),
        spec: entry.spec.clone(),
        registered_at_ms: entry.registered_at_ms,
        last_heartbeat_ms: entry.last_heartbeat_ms,
        state: entry.recorded,
        draining: entry.draining,
    }
}

fn unknown_worker(id: &str) -> Error {
    Error::not_found(format!(
        "unknown worker id '{id}': register again to get an id from this master"
    ))
}

fn removed_worker(entry: &Entry) -> Error {
    Error::not_found(format!(
        "worker {} ({}) was removed after a long silence: register again",
        entry.spec.name, entry.id
    ))
}

fn unknown_task(id: &str) -> Error {
    Error::not_found(format!("no task '{id}': 'tasks' lists them"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd::domain::Resources;

    fn spec(name: &str) -> WorkerSpec {
        WorkerSpec {
            name: name.into(),
            host: "h".into(),
            address: "127.0.0.1".into(),
            version: "t".into(),
            capacity: Resources {
                cpu: 2.0,
                memory_gb: 4.0,
                gpu: 0,
            },
            labels: Default::default(),
            runtime: None,
            isolation: String::new(),
        }
    }

    fn registry() -> Registry {
        Registry::new(
            Settings {
                liveness: Liveness {
                    heartbeat_timeout: Duration::from_secs(30),
                    worker_timeout: Duration::from_secs(600),
                },
                heartbeat_interval: Duration::from_secs(5),
                max_attempts: 3,
                scheduler: SchedulerKind::ResourceAware,
            },
            Store::memory(),
            Metrics::new(),
        )
    }

    fn hb(id: &str, sequence: u64) -> pb::Heartbeat {
        pb::Heartbeat {
            worker_id: id.into(),
            sequence,
            ..Default::default()
        }
    }

    fn state(r: &Registry, id: &str) -> pb::WorkerState {
        r.get(id).unwrap().state()
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_follows_the_timeouts_exactly() {
        let r = registry();
        let id = r.register(spec("a")).id;
        assert_eq!(state(&r, &id), pb::WorkerState::Inactive, "no stream yet");
        let (tx, _rx) = mpsc::channel(4);
        let acc = r.connect(&hb(&id, 1), tx).unwrap();
        assert_eq!(state(&r, &id), pb::WorkerState::Active);

        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert_eq!(
            state(&r, &id),
            pb::WorkerState::Active,
            "before the timeout"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            state(&r, &id),
            pb::WorkerState::Inactive,
            "read time, no tick"
        );

        r.heartbeat(&id, acc.generation, &hb(&id, 2)).unwrap();
        assert_eq!(
            state(&r, &id),
            pb::WorkerState::Active,
            "a heartbeat revives it"
        );

        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(state(&r, &id), pb::WorkerState::Removed);
        let out = r.tick(Instant::now(), false);
        assert_eq!(out.removed, vec![id.clone()]);
        assert_eq!(out.rows.last().unwrap().state, WorkerState::Removed);
        let err = r.heartbeat(&id, acc.generation, &hb(&id, 3)).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        assert!(r.list(false).is_empty(), "Removed is hidden without --all");
        assert_eq!(r.list(true).len(), 1);

        let again = r.register(spec("a"));
        assert_eq!(again.id, id, "coming back by name keeps the id");
        assert!(again.reregistered);
        let (tx, _rx) = mpsc::channel(4);
        r.connect(&hb(&id, 1), tx).unwrap();
        assert_eq!(state(&r, &id), pb::WorkerState::Active);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_stream_is_inactive_at_once() {
        let r = registry();
        let id = r.register(spec("a")).id;
        let (tx, _rx) = mpsc::channel(4);
        let acc = r.connect(&hb(&id, 1), tx).unwrap();
        r.disconnect(&id, acc.generation);
        assert_eq!(state(&r, &id), pb::WorkerState::Inactive);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_stream_wins_and_the_old_one_is_ended() {
        let r = registry();
        let id = r.register(spec("a")).id;
        let (tx1, _rx1) = mpsc::channel(4);
        let old = r.connect(&hb(&id, 1), tx1).unwrap();
        let (tx2, _rx2) = mpsc::channel(4);
        let new = r.connect(&hb(&id, 1), tx2).unwrap();
        assert_eq!(old.end.await.unwrap().code(), tonic::Code::Aborted);
        assert!(r.heartbeat(&id, old.generation, &hb(&id, 2)).is_err());
        r.disconnect(&id, old.generation);
        assert_eq!(
            state(&r, &id),
            pb::WorkerState::Active,
            "old close is ignored"
        );
        r.heartbeat(&id, new.generation, &hb(&id, 2)).unwrap();
    }

    #[test]
    fn names_map_to_one_id_and_strangers_are_refused() {
        let r = registry();
        let a = r.register(spec("a")).id;
        let b = r.register(spec("b")).id;
        assert_ne!(a, b);
        assert_eq!(r.register(spec("a")).id, a);
        assert_eq!(r.list(true).len(), 2);
        assert_eq!(r.get("b").unwrap().id, b);
        let (tx, _rx) = mpsc::channel(4);
        assert!(matches!(
            r.connect(&hb("w-nope", 1), tx),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            r.heartbeat(&a, 1, &hb(&b, 1)),
            Err(Error::PermissionDenied(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn loaded_workers_are_inactive_and_not_removed_for_the_masters_downtime() {
        let r = registry();
        r.load(
            vec![WorkerRecord {
                id: "w-1".into(),
                spec: spec("a"),
                registered_at_ms: 1,
                last_heartbeat_ms: 1, // long, long ago
                state: WorkerState::Active,
                draining: false,
            }],
            Vec::new(),
        );
        assert_eq!(state(&r, "w-1"), pb::WorkerState::Inactive);
        let out = r.tick(Instant::now(), false);
        assert_eq!(out.rows[0].state, WorkerState::Inactive, "written back");
        assert!(out.removed.is_empty());
        assert_eq!(r.register(spec("a")).id, "w-1");
    }
}
