//! The workers the master knows, as the cluster keeps them in memory: identity, the open
//! heartbeat stream (to push to the worker), liveness facts, what is allocated there. The
//! cluster decides what happens to them; the task lifecycle reads and books allocations.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;
use tracing::{info, warn};

use herd::domain::{Resources, WorkerSpec, WorkerState};
use herd::error::Error;
use herd::pb;
use herd::pb::master_message::Body as ToWorker;
use herd::time::now_ms;

use crate::events::Events;
use crate::liveness::{Liveness, Presence};
use crate::records::{SecretHash, WorkerRecord};
use crate::scheduler::gpus::GpuPool;

/// What the master pushes down a worker's heartbeat stream. Messages are boxed in the
/// queue: tokio allocates a stream's queue 32 slots at a time, and at 248 bytes a message
/// that was 8 KiB for every open stream (boxed: 512 bytes).
pub type Outbound = mpsc::Sender<Result<Box<pb::MasterMessage>, Status>>;

/// An open heartbeat stream.
pub struct Session {
    /// Tells this stream apart from a newer one of the same worker.
    pub generation: u64,
    /// Pushes messages to the worker.
    pub outbound: Outbound,
    /// Ends the stream with the given status (removed, replaced, master stopping).
    pub end: oneshot::Sender<Status>,
    /// Highest heartbeat sequence seen on this stream; older ones are replays.
    pub last_sequence: u64,
    /// Where the stream comes from.
    pub peer: Option<std::net::SocketAddr>,
    /// Since when the queue towards the worker has been full (it does not read), as a
    /// tick found it or an assignment that could not be sent; cleared by a tick that finds
    /// room. While set, no task is placed here.
    pub full_since: Option<Instant>,
}

impl Session {
    /// Whether the worker has not read its stream for `limit`: its queue has been full all
    /// that time (checked by the ticker, so the moment it filled is known to a tick).
    pub fn backed_up(&mut self, now: Instant, limit: std::time::Duration) -> bool {
        if self.outbound.capacity() > 0 {
            self.full_since = None;
            return false;
        }
        let since = *self.full_since.get_or_insert(now);
        now.saturating_duration_since(since) >= limit
    }
}

/// What the master knows of one worker: who it is, its liveness, its stream, what it
/// holds, and what SQLite has not learned yet.
pub struct KnownWorker {
    pub id: String,
    pub spec: WorkerSpec,
    pub registered_at_ms: i64,
    pub last_heartbeat_ms: i64,
    pub last_sequence: u64,
    pub usage: pb::Usage,
    pub presence: Presence,
    pub session: Option<Session>,
    /// The state last logged and handed to SQLite; a difference is a transition.
    pub recorded: WorkerState,
    /// A change of state (or description) SQLite has not seen yet.
    pub dirty: bool,
    /// The `last_heartbeat` SQLite has.
    pub persisted_heartbeat_ms: i64,
    /// Held by the tasks placed here.
    pub allocated: Resources,
    /// Tasks placed here (assigned or running).
    pub tasks: BTreeSet<String>,
    /// Which task holds which GPU index.
    pub gpus: GpuPool,
    /// An operator drained it: running tasks finish, no new ones come.
    pub draining: bool,
    /// Forgotten: no longer listed or found; its slot stays so others keep theirs.
    pub forgotten: bool,
    /// Hash of the secret this worker proves its identity with (`None`: a worker known
    /// from before secrets, issued one at its next registration).
    pub secret_hash: Option<SecretHash>,
    /// Where its last registration or stream came from.
    pub last_peer: Option<std::net::SocketAddr>,
    /// Labels an operator gave at `worker add`: merged over the reported ones (these win)
    /// at every registration.
    pub added_labels: BTreeMap<String, String>,
}

impl KnownWorker {
    pub fn new(id: String, spec: WorkerSpec, now: Instant) -> KnownWorker {
        let gpus = GpuPool::new(spec.gpu_indices());
        KnownWorker {
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
                pending: false,
                held: false,
            },
            session: None,
            recorded: WorkerState::Inactive,
            dirty: true,
            persisted_heartbeat_ms: 0,
            allocated: Resources::default(),
            tasks: BTreeSet::new(),
            gpus,
            draining: false,
            forgotten: false,
            secret_hash: None,
            last_peer: None,
            added_labels: BTreeMap::new(),
        }
    }

    /// Takes a registration's description, with the operator's labels over its own.
    pub fn describe(&mut self, spec: WorkerSpec) {
        // Maybe other devices now: tasks keep the GPU indices that are still there.
        let dropped = self.gpus.reindex(spec.gpu_indices());
        if !dropped.is_empty() {
            warn!(worker = %spec.name, tasks = ?dropped, "GPUs held by these tasks are no longer reported");
        }
        self.spec = spec;
        self.spec.labels.extend(self.added_labels.clone());
    }

    /// The status word views show: liveness, with Draining over Active.
    pub fn shown(&self, liveness: &Liveness, now: Instant) -> pb::WorkerState {
        match liveness.state(&self.presence, now) {
            WorkerState::Active if self.draining => pb::WorkerState::Draining,
            state => state.into(),
        }
    }

    pub fn info(&self, liveness: &Liveness, now: Instant) -> pb::WorkerInfo {
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
            gpu_holders: self
                .gpus
                .slots()
                .filter_map(|(index, holder)| {
                    holder.map(|task| pb::GpuHolder {
                        index,
                        task_id: task.to_string(),
                    })
                })
                .collect(),
        }
    }

    /// Applies the rule; logs, marks dirty and emits an event when the state changed.
    pub fn observe(
        &mut self,
        liveness: &Liveness,
        now: Instant,
        why: &str,
        events: &Events,
    ) -> WorkerState {
        let state = liveness.state(&self.presence, now);
        if state != self.recorded {
            let from = self.recorded;
            self.recorded = state;
            self.dirty = true;
            events.worker(self.info(liveness, now));
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
    pub fn push(&self, body: ToWorker) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.outbound
                .try_send(Ok(Box::new(pb::MasterMessage { body: Some(body) })))
                .is_ok()
        })
    }

    /// Tells the worker to stop `attempt` of a task (0: whichever it holds).
    pub fn cancel(&self, task_id: &str, attempt: u32, reason: &str) {
        self.push(ToWorker::Cancel(pb::TaskCancel {
            task_id: task_id.to_string(),
            attempt,
            reason: reason.to_string(),
        }));
    }

    pub fn record(&self) -> WorkerRecord {
        WorkerRecord {
            id: self.id.clone(),
            spec: self.spec.clone(),
            registered_at_ms: self.registered_at_ms,
            last_heartbeat_ms: self.last_heartbeat_ms,
            state: self.recorded,
            draining: self.draining,
            secret_hash: self.secret_hash,
            added_labels: self.added_labels.clone(),
        }
    }

    /// Books task `id` here: its resources (its GPU indices are taken from
    /// [`KnownWorker::gpus`] by the caller).
    pub fn hold(&mut self, id: &str, r: Resources) {
        let a = &mut self.allocated;
        a.cpu += r.cpu;
        a.memory_gb += r.memory_gb;
        a.gpu += r.gpu;
        a.disk_gb += r.disk_gb;
        self.tasks.insert(id.to_string());
    }

    /// Frees what task `id` held here (resources and GPU indices); false when it held
    /// nothing.
    pub fn release(&mut self, id: &str, r: Resources) -> bool {
        if !self.tasks.remove(id) {
            return false;
        }
        self.gpus.release(id);
        let a = &mut self.allocated;
        a.cpu = (a.cpu - r.cpu).max(0.0);
        a.memory_gb = (a.memory_gb - r.memory_gb).max(0.0);
        a.gpu = a.gpu.saturating_sub(r.gpu);
        a.disk_gb = (a.disk_gb - r.disk_gb).max(0.0);
        true
    }
}

/// Workers in a slab (never removed: Removed workers stay known), found by id or name. A
/// scheduling pass walks the slab in name order without hashing a single id.
#[derive(Default)]
pub struct Workers {
    pub slab: Vec<KnownWorker>,
    index: HashMap<String, usize>,
    by_name: HashMap<String, String>,
    /// Slots ordered by name: the scheduler's stable order.
    pub order: Vec<usize>,
    /// Where each slot stands in `order` (`usize::MAX`: forgotten).
    position: Vec<usize>,
    /// What changed since the scheduler last asked ([`Workers::take_changes`]).
    changes: Changes,
    /// The number in the next new id ([`Workers::new_id`]); drawn at random at first use.
    next_id: Option<u32>,
}

/// Which workers may have changed since the scheduler last looked: every mutable access
/// counts, so nothing can change unseen.
#[derive(Default)]
struct Changes {
    /// Everything (the name order changed, or every worker was touched).
    all: bool,
    /// The name order changed: positions must be found again.
    reordered: bool,
    slots: Vec<usize>,
    marked: Vec<bool>,
}

/// What [`Workers::take_changes`] reports.
pub enum Changed {
    /// Every position may have changed (or the order did).
    All,
    /// These positions in the name order.
    Positions(Vec<usize>),
}

impl Workers {
    pub fn get(&self, id: &str) -> Option<&KnownWorker> {
        self.index.get(id).map(|&slot| &self.slab[slot])
    }

    /// A worker to change: it is marked as changed for the scheduler.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut KnownWorker> {
        let slot = *self.index.get(id)?;
        let changes = &mut self.changes;
        if !changes.all && !changes.marked[slot] {
            changes.marked[slot] = true;
            changes.slots.push(slot);
        }
        Some(&mut self.slab[slot])
    }

    /// What changed since the last call, as positions in the name order.
    pub fn take_changes(&mut self) -> Changed {
        if std::mem::take(&mut self.changes.reordered) {
            self.position = vec![usize::MAX; self.slab.len()];
            for (at, &slot) in self.order.iter().enumerate() {
                self.position[slot] = at;
            }
            self.changes.all = true;
        }
        let changes = &mut self.changes;
        for &slot in &changes.slots {
            changes.marked[slot] = false;
        }
        let slots = std::mem::take(&mut changes.slots);
        if std::mem::take(&mut changes.all) {
            return Changed::All;
        }
        Changed::Positions(
            slots
                .into_iter()
                .map(|slot| self.position[slot])
                .filter(|&p| p != usize::MAX)
                .collect(),
        )
    }

    /// The name order changed: positions are found anew when the scheduler next asks (a
    /// burst of registrations costs one rebuild, not one each), and it looks at everything.
    fn reordered(&mut self) {
        self.changes.reordered = true;
        self.changes.marked.resize(self.slab.len(), false);
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// The id registered under `name`.
    pub fn id_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(String::as_str)
    }

    /// A worker's name by id (for views).
    pub fn name_of(&self, id: &str) -> Option<&str> {
        self.get(id).map(|w| w.spec.name.as_str())
    }

    /// An id no worker has. The ids one master gives out follow each other from a random
    /// start (after a restart, from another), so a burst of registrations adds rows next
    /// to each other in SQLite's id indexes instead of dirtying a random page each.
    pub fn new_id(&mut self) -> String {
        let mut n = *self.next_id.get_or_insert_with(|| fastrand::u32(..));
        loop {
            let candidate = format!("w-{n:08x}");
            n = n.wrapping_add(1);
            if !self.contains_key(&candidate) {
                self.next_id = Some(n);
                return candidate;
            }
        }
    }

    /// Adds a worker, keeping the name order.
    pub fn insert(&mut self, entry: KnownWorker) {
        let name = entry.spec.name.clone();
        let at = self.place_in_order(&name);
        self.by_name.insert(name, entry.id.clone());
        let slot = self.slab.len();
        self.index.insert(entry.id.clone(), slot);
        self.slab.push(entry);
        self.order.insert(at, slot);
        self.reordered();
    }

    /// Where `name` goes in the name order. Names mostly come in order (host01, host02,
    /// ...) or nearly (many registrations in flight at once), so the search gallops back
    /// from the end: one compare for the next name in order, a few for one a little out
    /// of it, and the entries it reads are the newest, still in the cache.
    fn place_in_order(&self, name: &str) -> usize {
        let before = |slot: &usize| self.slab[*slot].spec.name.as_str() < name;
        // Every position from `end` on holds a name at or after `name`.
        let (mut end, mut step) = (self.order.len(), 1);
        while step <= end {
            let probe = end - step;
            if before(&self.order[probe]) {
                return probe + 1 + self.order[probe + 1..end].partition_point(before);
            }
            end = probe;
            step *= 2;
        }
        self.order[..end].partition_point(before)
    }

    /// The id of a worker named by id or by name.
    pub fn resolve(&self, id_or_name: &str) -> Result<String, Error> {
        let id = self.id_of(id_or_name).unwrap_or(id_or_name);
        if self.contains_key(id) {
            Ok(id.to_string())
        } else {
            Err(Error::not_found(format!(
                "no worker with id or name '{}': 'workers --all' lists them",
                herd::text::clip(id_or_name)
            )))
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &KnownWorker> {
        self.slab.iter().filter(|e| !e.forgotten)
    }

    /// Every worker, to change: all are marked as changed for the scheduler.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut KnownWorker> {
        self.changes.all = true;
        self.slab.iter_mut().filter(|e| !e.forgotten)
    }

    /// In name order.
    pub fn ordered(&self) -> impl Iterator<Item = &KnownWorker> {
        self.order.iter().map(|&slot| &self.slab[slot])
    }

    /// In name order, from the first name after `after` ("" for all).
    pub fn ordered_after(&self, after: &str) -> impl Iterator<Item = &KnownWorker> {
        let from = self
            .order
            .partition_point(|&slot| self.slab[slot].spec.name.as_str() <= after);
        self.order[from..].iter().map(|&slot| &self.slab[slot])
    }

    /// Forgets a worker: it is found and listed no more and its name is free. Returns it.
    pub fn forget(&mut self, id: &str) -> Option<&mut KnownWorker> {
        let slot = self.index.remove(id)?;
        self.by_name.remove(&self.slab[slot].spec.name);
        self.order.retain(|&s| s != slot);
        self.reordered();
        let entry = &mut self.slab[slot];
        entry.forgotten = true;
        entry.tasks.clear();
        Some(entry)
    }
}

impl std::ops::Index<&str> for Workers {
    type Output = KnownWorker;

    fn index(&self, id: &str) -> &KnownWorker {
        self.get(id).expect("a known worker id")
    }
}

pub fn unknown_worker(id: &str) -> Error {
    Error::not_found(format!(
        "unknown worker id '{id}': register again to get an id from this master"
    ))
}

pub fn removed_worker(entry: &KnownWorker) -> Error {
    Error::not_found(format!(
        "worker {} ({}) was removed after a long silence: register again",
        entry.spec.name, entry.id
    ))
}
