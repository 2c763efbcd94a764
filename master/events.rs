//! The stream of changes the HTTP API serves at `/api/v1/events`: every change of a
//! worker's state and of a task's state, each with an increasing id, kept in a bounded
//! buffer so a client that reconnects with `Last-Event-ID` misses nothing still in it.
//! Emitting never blocks and does no I/O (it runs under the registry's lock).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::broadcast;

use herd::pb;
use herd::render::json;

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
    /// The payload as JSON, made when first sent: emitting (under the registry's lock, for
    /// every change of every task) costs a copy of the view, not its JSON.
    json: OnceLock<String>,
}

#[derive(Debug)]
enum Payload {
    Worker(Box<pb::WorkerInfo>),
    Task(Box<pb::TaskInfo>),
    Json(serde_json::Value),
}

impl Event {
    /// The worker or task as JSON (the field names of `herdctl --json`).
    pub fn data(&self) -> &str {
        self.json.get_or_init(|| match &self.payload {
            Payload::Worker(info) => json::worker(info).to_string(),
            Payload::Task(info) => json::task(info).to_string(),
            Payload::Json(value) => value.to_string(),
        })
    }
}

#[derive(Default)]
struct Ring {
    next: u64,
    kept: VecDeque<Arc<Event>>,
    /// The first id ever given out (events before it belong to an earlier master).
    first: u64,
}

impl Ring {
    /// The kept events after `last`, or `None` if one after it was dropped already. An id
    /// from before this master (or from the future) is not a gap: ids restart higher.
    fn after(&self, last: u64) -> Option<Vec<Arc<Event>>> {
        let oldest = self.kept.front().map_or(self.next, |e| e.id);
        if last >= self.first && last + 1 < oldest {
            return None;
        }
        Some(self.kept.iter().filter(|e| e.id > last).cloned().collect())
    }
}

/// The hub. Cheap to share behind an `Arc`.
pub struct Events {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
    /// Worker names by id, learnt from worker events: task events carry them too.
    names: Mutex<HashMap<String, String>>,
}

impl Events {
    pub fn new() -> Arc<Events> {
        // Ids go on increasing across restarts (they start at the master's start time in
        // microseconds), so a client that reconnects with an id from before a restart gets
        // everything since, not silence.
        let start = (herd::time::now_ms().max(0) as u64) * 1000;
        Arc::new(Events {
            ring: Mutex::new(Ring {
                next: start + 1,
                kept: VecDeque::new(),
                first: start + 1,
            }),
            live: broadcast::channel(1024).0,
            names: Mutex::default(),
        })
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, kind: &'static str, payload: Payload) {
        let mut ring = self.ring();
        let event = Arc::new(Event {
            id: ring.next,
            kind,
            payload,
            json: OnceLock::new(),
        });
        ring.next += 1;
        if ring.kept.len() == KEPT {
            ring.kept.pop_front();
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
        self.emit("worker", Payload::Worker(Box::new(info)));
    }

    /// The id of the newest event (0 before any): a list read after it, and a stream
    /// opened with it as `Last-Event-ID`, miss nothing between them.
    pub fn last_id(&self) -> u64 {
        self.ring().next - 1
    }

    /// A worker was forgotten: its last view, with status `Forgotten`.
    pub fn forgotten(&self, info: &pb::WorkerInfo) {
        let mut data = json::worker(info);
        data["status"] = "Forgotten".into();
        self.emit("worker", Payload::Json(data));
    }

    /// One sample of the cluster's history (every 10 s), so a chart stays live.
    pub fn sample(&self, data: serde_json::Value) {
        self.emit("sample", Payload::Json(data));
    }

    /// A task changed (worker names filled in from what worker events said).
    pub fn task(&self, mut info: pb::TaskInfo) {
        {
            let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            let name = |id: &str| names.get(id).cloned().unwrap_or_default();
            if info.worker_name.is_empty() {
                info.worker_name = name(&info.worker_id);
            }
            for a in info.history.iter_mut().filter(|a| a.worker_name.is_empty()) {
                a.worker_name = name(&a.worker_id);
            }
        }
        self.emit("task", Payload::Task(Box::new(info)));
    }

    /// The events after `last` (none without `last`: from now on), and a receiver of
    /// everything after them (taken together, so nothing falls between). `None` when
    /// some of them are no longer kept: the client must read its lists again.
    pub fn subscribe(&self, last: Option<u64>) -> Option<Subscription> {
        let ring = self.ring();
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
            events.emit("task", Payload::Json(serde_json::json!({ "n": i })));
        }
        let first = events.last_id() - 4;
        let (_, missed, mut live) = events.subscribe(Some(first + 2)).unwrap();
        let ids: Vec<u64> = missed.iter().map(|e| e.id - first).collect();
        assert_eq!(ids, [3, 4]);
        events.emit("worker", Payload::Json(serde_json::json!({})));
        assert_eq!(live.try_recv().unwrap().id - first, 5);
        let (from, none, _) = events.subscribe(None).unwrap();
        assert!(none.is_empty(), "without Last-Event-ID: from now on");
        assert_eq!(from, events.last_id());
        for _ in 0..KEPT {
            events.emit("task", Payload::Json(serde_json::json!({})));
        }
        let kept = events.since(first + 5).unwrap();
        assert_eq!(kept.len(), KEPT, "bounded");
        assert_eq!(kept[0].id - first, 6);
        assert_eq!(kept[0].data(), "{}");
        // Fallen behind what is kept: not a silent gap, the client must list again.
        assert!(events.since(first + 4).is_none());
        assert!(events.subscribe(Some(first)).is_none());
        // An id from an earlier master (lower) is no gap: everything kept comes.
        assert_eq!(events.since(first - 100).unwrap().len(), KEPT);
    }
}
