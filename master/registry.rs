//! The worker registry: the master's in-memory truth about every worker, and the one
//! liveness rule ([`Liveness::state`]) that every view, the scheduler and the ticker apply.
//!
//! All state sits behind one `std::sync::Mutex` that is never held across an `.await`:
//! the heartbeat path takes it for a few field writes and does no I/O. What must reach
//! SQLite is marked dirty and collected by the ticker ([`Registry::tick`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::Status;
use tracing::{info, warn};

use herd::domain::{WorkerSpec, WorkerState};
use herd::error::Error;
use herd::pb;
use herd::time::now_ms;

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
}

/// The columns the ticker keeps in sync.
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessRow {
    pub id: String,
    pub state: WorkerState,
    pub last_heartbeat_ms: i64,
}

/// An open heartbeat stream.
struct Session {
    /// Tells this stream apart from a newer one of the same worker.
    generation: u64,
    /// Pushes messages to the worker.
    #[expect(dead_code, reason = "task dispatch pushes assignments here")]
    outbound: Outbound,
    /// Ends the stream with the given status (removed, replaced, master stopping).
    end: oneshot::Sender<Status>,
}

struct Entry {
    id: String,
    spec: WorkerSpec,
    registered_at_ms: i64,
    last_heartbeat_ms: i64,
    last_sequence: u64,
    usage: pb::Usage,
    running: Vec<String>,
    presence: Presence,
    session: Option<Session>,
    /// The state last logged and handed to SQLite; a difference is a transition.
    recorded: WorkerState,
    /// Something SQLite has not seen yet.
    dirty: bool,
}

impl Entry {
    fn info(&self, liveness: &Liveness, now: Instant) -> pb::WorkerInfo {
        pb::WorkerInfo {
            id: self.id.clone(),
            description: Some((&self.spec).into()),
            state: pb::WorkerState::from(liveness.state(&self.presence, now)) as i32,
            last_heartbeat_ms: self.last_heartbeat_ms,
            registered_at_ms: self.registered_at_ms,
            usage: Some(self.usage),
            allocated: Some(pb::Resources::default()),
            running_task_ids: self.running.clone(),
            connected: self.session.is_some(),
            last_sequence: self.last_sequence,
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
}

#[derive(Default)]
struct Inner {
    workers: HashMap<String, Entry>,
    by_name: HashMap<String, String>,
    next_generation: u64,
}

/// The registry. Cheap to share behind an `Arc`.
pub struct Registry {
    liveness: Liveness,
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
}

/// What one tick of the ticker produced.
#[derive(Debug, Default)]
pub struct TickOutcome {
    /// Rows SQLite has not seen yet.
    pub rows: Vec<LivenessRow>,
    /// Workers that became Removed in this tick.
    pub removed: Vec<String>,
}

impl Registry {
    pub fn new(liveness: Liveness, heartbeat_interval: Duration) -> Registry {
        Registry {
            liveness,
            heartbeat_interval,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads workers known from SQLite at start. They are Inactive until they heartbeat,
    /// and their Removed clock starts now.
    pub fn load(&self, records: Vec<WorkerRecord>) {
        let now = Instant::now();
        let mut inner = self.lock();
        for r in records {
            let removed = r.state == WorkerState::Removed;
            let recorded = if removed {
                WorkerState::Removed
            } else {
                WorkerState::Inactive
            };
            inner.by_name.insert(r.spec.name.clone(), r.id.clone());
            inner.workers.insert(
                r.id.clone(),
                Entry {
                    id: r.id,
                    spec: r.spec,
                    registered_at_ms: r.registered_at_ms,
                    last_heartbeat_ms: r.last_heartbeat_ms,
                    last_sequence: 0,
                    usage: pb::Usage::default(),
                    running: Vec::new(),
                    presence: Presence {
                        last_seen: now,
                        connected: false,
                        removed,
                    },
                    session: None,
                    // Loaded workers were possibly Active in SQLite: write Inactive back.
                    dirty: r.state != recorded,
                    recorded,
                },
            );
        }
    }

    /// Registers a worker, or re-registers it by name keeping its id.
    pub fn register(&self, spec: WorkerSpec) -> Registered {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(id) = inner.by_name.get(&spec.name).cloned() {
            let entry = inner
                .workers
                .get_mut(&id)
                .expect("by_name points at a worker");
            entry.spec = spec;
            entry.presence.removed = false;
            entry.presence.last_seen = now;
            entry.observe(&self.liveness, now, "re-registered");
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
        let entry = Entry {
            id: id.clone(),
            spec,
            registered_at_ms: now_ms(),
            last_heartbeat_ms: 0,
            last_sequence: 0,
            usage: pb::Usage::default(),
            running: Vec::new(),
            presence: Presence {
                last_seen: now,
                connected: false,
                removed: false,
            },
            session: None,
            recorded: WorkerState::Inactive,
            dirty: true,
        };
        info!(worker = %entry.spec.name, %id, cpu = entry.spec.capacity.cpu,
              memory_gb = entry.spec.capacity.memory_gb, gpu = entry.spec.capacity.gpu,
              "worker registered");
        let record = record_of(&entry);
        inner.by_name.insert(entry.spec.name.clone(), id.clone());
        inner.workers.insert(id.clone(), entry);
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
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let entry = inner
            .workers
            .get_mut(&first.worker_id)
            .ok_or_else(|| unknown_worker(&first.worker_id))?;
        if self.liveness.state(&entry.presence, now) == WorkerState::Removed {
            return Err(removed_worker(entry));
        }
        let (end_tx, end_rx) = oneshot::channel();
        if let Some(old) = entry.session.replace(Session {
            generation,
            outbound,
            end: end_tx,
        }) {
            warn!(worker = %entry.spec.name, id = %entry.id,
                  "a new heartbeat stream replaced an open one (two processes with one name?)");
            let _ = old.end.send(Status::aborted(
                "replaced by a newer heartbeat stream of the same worker",
            ));
        }
        entry.presence.connected = true;
        apply_heartbeat(entry, first, now);
        entry.observe(&self.liveness, now, "heartbeat stream opened");
        Ok(Accepted {
            generation,
            end: end_rx,
        })
    }

    /// Records a heartbeat on the stream `generation` of `worker_id`.
    pub fn heartbeat(
        &self,
        worker_id: &str,
        generation: u64,
        hb: &pb::Heartbeat,
    ) -> Result<(), Error> {
        if hb.worker_id != worker_id {
            return Err(Error::PermissionDenied(format!(
                "this stream belongs to worker {worker_id}; it cannot carry heartbeats for {}",
                hb.worker_id
            )));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let entry = inner
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| unknown_worker(worker_id))?;
        if self.liveness.state(&entry.presence, now) == WorkerState::Removed {
            return Err(removed_worker(entry));
        }
        if entry.session.as_ref().map(|s| s.generation) != Some(generation) {
            return Err(Error::FailedPrecondition(
                "this heartbeat stream was replaced by a newer one".into(),
            ));
        }
        apply_heartbeat(entry, hb, now);
        entry.observe(&self.liveness, now, "heartbeat received again");
        Ok(())
    }

    /// The stream `generation` of `worker_id` ended: Inactive at once (unless a newer
    /// stream already took over).
    pub fn disconnect(&self, worker_id: &str, generation: u64) {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some(entry) = inner.workers.get_mut(worker_id)
            && entry.session.as_ref().map(|s| s.generation) == Some(generation)
        {
            entry.session = None;
            entry.presence.connected = false;
            entry.observe(&self.liveness, now, "heartbeat stream closed");
        }
    }

    /// Applies the rule to every worker: logs transitions, ends the streams of newly
    /// Removed workers, and hands back what SQLite must learn.
    pub fn tick(&self, now: Instant) -> TickOutcome {
        let mut out = TickOutcome::default();
        let mut inner = self.lock();
        for entry in inner.workers.values_mut() {
            let before = entry.recorded;
            let state = entry.observe(&self.liveness, now, "no heartbeat within the timeout");
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
            if entry.dirty {
                entry.dirty = false;
                out.rows.push(LivenessRow {
                    id: entry.id.clone(),
                    state,
                    last_heartbeat_ms: entry.last_heartbeat_ms,
                });
            }
        }
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
        let mut list: Vec<pb::WorkerInfo> = inner
            .workers
            .values()
            .map(|e| e.info(&self.liveness, now))
            .filter(|w| all || w.state() != pb::WorkerState::Removed)
            .collect();
        list.sort_by(|a, b| {
            let name = |w: &pb::WorkerInfo| w.description.as_ref().map(|d| d.name.clone());
            name(a).cmp(&name(b))
        });
        list
    }

    /// One worker by id or name.
    pub fn get(&self, id_or_name: &str) -> Result<pb::WorkerInfo, Error> {
        let now = Instant::now();
        let inner = self.lock();
        let id = inner
            .by_name
            .get(id_or_name)
            .map(String::as_str)
            .unwrap_or(id_or_name);
        inner
            .workers
            .get(id)
            .map(|e| e.info(&self.liveness, now))
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no worker with id or name '{id_or_name}': 'workers --all' lists them"
                ))
            })
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
}

fn apply_heartbeat(entry: &mut Entry, hb: &pb::Heartbeat, now: Instant) {
    entry.presence.last_seen = now;
    entry.last_heartbeat_ms = now_ms();
    entry.last_sequence = hb.sequence;
    entry.usage = hb.usage.unwrap_or_default();
    entry.running.clone_from(&hb.running_task_ids);
    entry.dirty = true;
}

fn record_of(entry: &Entry) -> WorkerRecord {
    WorkerRecord {
        id: entry.id.clone(),
        spec: entry.spec.clone(),
        registered_at_ms: entry.registered_at_ms,
        last_heartbeat_ms: entry.last_heartbeat_ms,
        state: entry.recorded,
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
        }
    }

    fn registry() -> Registry {
        Registry::new(
            Liveness {
                heartbeat_timeout: Duration::from_secs(30),
                worker_timeout: Duration::from_secs(600),
            },
            Duration::from_secs(5),
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
        let out = r.tick(Instant::now());
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
        r.load(vec![WorkerRecord {
            id: "w-1".into(),
            spec: spec("a"),
            registered_at_ms: 1,
            last_heartbeat_ms: 1, // long, long ago
            state: WorkerState::Active,
        }]);
        assert_eq!(state(&r, "w-1"), pb::WorkerState::Inactive);
        let out = r.tick(Instant::now());
        assert_eq!(out.rows[0].state, WorkerState::Inactive, "written back");
        assert!(out.removed.is_empty());
        assert_eq!(r.register(spec("a")).id, "w-1");
    }
}
