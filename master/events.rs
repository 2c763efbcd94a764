//! The stream of changes the HTTP API serves at `/api/v1/events`: every change of a
//! worker's state and of a task's state, each with an increasing id, kept in a bounded
//! buffer so a client that reconnects with `Last-Event-ID` misses nothing still in it.
//! Emitting never blocks and does no I/O (it runs under the cluster's lock).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use herd::pb;
use herd::views as json;

use crate::records::Task;

/// Events kept for clients that reconnect.
pub const KEPT: usize = 10_000;

/// Where a stream starts, what it missed, and what comes next.
pub type Subscription = (u64, Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// One change.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    /// `worker`, `task` or `sample`.
    pub kind: &'static str,
    payload: Payload,
    /// The payload as JSON, made when first sent: emitting (under the cluster's lock, for
    /// every change of every task) costs a copy of the view, not its JSON.
    json: OnceLock<String>,
}

/// Worker names by id, learnt from worker events: task views carry them too.
type Names = Arc<Mutex<HashMap<String, String>>>;

#[derive(Debug)]
enum Payload {
    Worker(Box<pb::WorkerInfo>),
    /// A snapshot of the task (its spec is shared, not copied); its view is made when the
    /// event is first sent, with the names of its workers.
    Task(Box<Task>, Names),
    Json(serde_json::Value),
}

impl Event {
    /// The worker or task as JSON (the field names of `herdctl --json`).
    pub fn data(&self) -> &str {
        self.json.get_or_init(|| match &self.payload {
            Payload::Worker(info) => json::worker(info).to_string(),
            Payload::Task(task, names) => {
                let names = names.lock().unwrap_or_else(|p| p.into_inner());
                json::task(&task.info(|id| names.get(id).map(String::as_str))).to_string()
            }
            Payload::Json(value) => value.to_string(),
        })
    }
}

/// How long events are kept after the last sign of a client (a stream open, a list read
/// for its event id): long enough for any reconnect. After it, with no stream open, events
/// are numbered but not made, and a client that comes back is told to list again.
pub const KEEP_FOR_ABSENT: Duration = Duration::from_secs(60);

struct Ring {
    next: u64,
    kept: VecDeque<Arc<Event>>,
    /// The newest id that was not kept (pushed out, or made while nobody listened): a
    /// client whose last event is older missed something. 0: none.
    lost_through: u64,
    /// The last sign of a client.
    heard_at: Instant,
}

impl Ring {
    /// The kept events after `last`, or `None` if one after it was dropped already, or
    /// `last` is from before this master (see [`Events::new`]).
    fn after(&self, last: u64) -> Option<Vec<Arc<Event>>> {
        if last < self.lost_through {
            return None;
        }
        Some(self.kept.iter().filter(|e| e.id > last).cloned().collect())
    }
}

/// The hub. Cheap to share behind an `Arc`.
pub struct Events {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
    names: Names,
}

impl Events {
    pub fn new() -> Arc<Events> {
        // Ids go on increasing across restarts and fail-overs (they start at the time this
        // master started leading, in microseconds). An id from before is from another
        // master (this one before a restart, or the leader before a fail-over), which may
        // have sent changes after it that are not here: such a client is told to list
        // again (`resync`), from the store, rather than resumed with a silent gap.
        let start = (herd::time::now_ms().max(0) as u64) * 1000;
        Arc::new(Events {
            ring: Mutex::new(Ring {
                next: start + 1,
                kept: VecDeque::new(),
                lost_through: start,
                heard_at: Instant::now(),
            }),
            live: broadcast::channel(1024).0,
            names: Names::default(),
        })
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the next event and, unless nobody has listened for [`KEEP_FOR_ABSENT`],
    /// makes it (`payload`), keeps it and sends it.
    fn emit(&self, kind: &'static str, payload: impl FnOnce() -> Payload) {
        let mut ring = self.ring();
        let id = ring.next;
        ring.next += 1;
        let now = Instant::now();
        if self.live.receiver_count() > 0 {
            ring.heard_at = now;
        } else if now.duration_since(ring.heard_at) > KEEP_FOR_ABSENT {
            ring.lost_through = id;
            ring.kept.clear();
            return;
        }
        let event = Arc::new(Event {
            id,
            kind,
            payload: payload(),
            json: OnceLock::new(),
        });
        if ring.kept.len() == KEPT
            && let Some(dropped) = ring.kept.pop_front()
        {
            ring.lost_through = dropped.id;
        }
        ring.kept.push_back(event.clone());
        // No subscriber is fine; a lagging one catches up from the ring.
        let _ = self.live.send(event);
    }

    /// A worker changed (state, drain, registration).
    pub fn worker(&self, info: pb::WorkerInfo) {
        if let Some(d) = &info.description {
            let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            names.insert(info.id.clone(), d.name.clone());
        }
        self.emit("worker", || Payload::Worker(Box::new(info)));
    }

    /// The id of the newest event (0 before any): a list read after it, and a stream
    /// opened with it as `Last-Event-ID`, miss nothing between them.
    pub fn last_id(&self) -> u64 {
        let mut ring = self.ring();
        ring.heard_at = Instant::now();
        ring.next - 1
    }

    /// A worker was forgotten: its last view, with status `Forgotten`.
    pub fn forgotten(&self, info: &pb::WorkerInfo) {
        let mut data = json::worker(info);
        data["status"] = "Forgotten".into();
        self.emit("worker", || Payload::Json(data));
    }

    /// One sample of the cluster's history (every 10 s), so a chart stays live.
    pub fn sample(&self, data: serde_json::Value) {
        self.emit("sample", || Payload::Json(data));
    }

    /// A task changed (worker names filled in from what worker events said). Costs a
    /// copy of what changes in a task, not its view: this runs under the cluster's lock
    /// for every change of every task.
    pub fn task(&self, task: &Task) {
        self.emit("task", || {
            Payload::Task(Box::new(task.clone()), self.names.clone())
        });
    }

    /// The events after `last` (none without `last`: from now on), and a receiver of
    /// everything after them (taken together, so nothing falls between). `None` when
    /// some of them are no longer kept: the client must read its lists again.
    pub fn subscribe(&self, last: Option<u64>) -> Option<Subscription> {
        let mut ring = self.ring();
        ring.heard_at = Instant::now();
        let last = last.unwrap_or(ring.next - 1);
        let missed = ring.after(last)?;
        Some((last, missed, self.live.subscribe()))
    }

    /// The events after `last` (for a subscriber that fell behind); `None` when some of
    /// them are no longer kept.
    pub fn since(&self, last: u64) -> Option<Vec<Arc<Event>>> {
        self.ring().after(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_a_reconnect_gets_what_it_missed_from_the_ring() {
        let events = Events::new();
        for i in 0..5 {
            events.emit("task", || Payload::Json(serde_json::json!({ "n": i })));
        }
        let first = events.last_id() - 4;
        let (_, missed, mut live) = events.subscribe(Some(first + 2)).unwrap();
        let ids: Vec<u64> = missed.iter().map(|e| e.id - first).collect();
        assert_eq!(ids, [3, 4]);
        events.emit("worker", || Payload::Json(serde_json::json!({})));
        assert_eq!(live.try_recv().unwrap().id - first, 5);
        let (from, none, _) = events.subscribe(None).unwrap();
        assert!(none.is_empty(), "without Last-Event-ID: from now on");
        assert_eq!(from, events.last_id());
        for _ in 0..KEPT {
            events.emit("task", || Payload::Json(serde_json::json!({})));
        }
        let kept = events.since(first + 5).unwrap();
        assert_eq!(kept.len(), KEPT, "bounded");
        assert_eq!(kept[0].id - first, 6);
        assert_eq!(kept[0].data(), "{}");
        // Fallen behind what is kept: not a silent gap, the client must list again.
        assert!(events.since(first + 4).is_none());
        assert!(events.subscribe(Some(first)).is_none());
        // An id from an earlier master (lower) is told to list again too.
        assert!(events.since(first - 100).is_none());
    }

    /// An id from an earlier master (before a restart, or the leader before a fail-over)
    /// may have been followed there by changes this master never sent: the client lists
    /// again. A list read here before any event gives an id that resumes.
    #[test]
    fn an_id_from_an_earlier_master_is_told_to_list_again() {
        let events = Events::new();
        let listed = events.last_id();
        let before = listed - 100;
        for _ in 0..3 {
            events.emit("task", || Payload::Json(serde_json::json!({})));
        }
        assert!(events.since(before).is_none());
        assert!(events.subscribe(Some(before)).is_none());
        assert_eq!(events.since(listed).unwrap().len(), 3);
    }

    /// Nobody listening for longer than KEEP_FOR_ABSENT: events are numbered, not made,
    /// and a client back with an older id is told to list again; once a client is heard
    /// of, events are kept again.
    #[test]
    fn events_nobody_listens_to_are_not_made_and_a_late_client_lists_again() {
        let events = Events::new();
        events.emit("task", || Payload::Json(serde_json::json!({})));
        let seen = events.last_id();
        events.ring().heard_at -= KEEP_FOR_ABSENT + Duration::from_secs(1);
        let mut made = false;
        events.emit("task", || {
            made = true;
            Payload::Json(serde_json::json!({}))
        });
        assert!(!made, "made for nobody");
        assert_eq!(events.last_id(), seen + 1, "still numbered");
        assert!(events.subscribe(Some(seen)).is_none(), "a gap, not silence");
        // Heard of (the list read above, the refused subscribe): kept again.
        events.emit("task", || Payload::Json(serde_json::json!({ "n": 1 })));
        let (_, missed, _) = events.subscribe(Some(seen + 1)).unwrap();
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].data(), r#"{"n":1}"#);
    }
}
