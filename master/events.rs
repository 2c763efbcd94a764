//! The stream of changes the HTTP API serves at `/api/v1/events`: every change of a
//! worker's state and of a task's state, each with an increasing id, kept in a bounded
//! buffer so a client that reconnects with `Last-Event-ID` misses nothing still in it.
//! Emitting never blocks and does no I/O (it runs under the registry's lock).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use herd::pb;
use herd::render::json;

/// Events kept for clients that reconnect.
pub const KEPT: usize = 10_000;

/// One change.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    /// `worker` or `task`.
    pub kind: &'static str,
    /// The worker or task as JSON (the field names of `herdctl --json`).
    pub data: String,
}

#[derive(Default)]
struct Ring {
    next: u64,
    kept: VecDeque<Arc<Event>>,
}

/// The hub. Cheap to share behind an `Arc`.
pub struct Events {
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
}

impl Events {
    pub fn new() -> Arc<Events> {
        Arc::new(Events {
            ring: Mutex::new(Ring {
                next: 1,
                kept: VecDeque::new(),
            }),
            live: broadcast::channel(1024).0,
        })
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, kind: &'static str, data: serde_json::Value) {
        let mut ring = self.ring();
        let event = Arc::new(Event {
            id: ring.next,
            kind,
            data: data.to_string(),
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
    pub fn worker(&self, info: &pb::WorkerInfo) {
        self.emit("worker", json::worker(info));
    }

    /// A worker was forgotten: its last view, with status `Forgotten`.
    pub fn forgotten(&self, info: &pb::WorkerInfo) {
        let mut data = json::worker(info);
        data["status"] = "Forgotten".into();
        self.emit("worker", data);
    }

    /// A task changed.
    pub fn task(&self, info: &pb::TaskInfo) {
        self.emit("task", json::task(info));
    }

    /// The events after `last` still kept, and a receiver of everything after them
    /// (taken together, so nothing falls between).
    pub fn subscribe(&self, last: u64) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let ring = self.ring();
        let missed = ring.kept.iter().filter(|e| e.id > last).cloned().collect();
        (missed, self.live.subscribe())
    }

    /// The events after `last` still kept (for a subscriber that fell behind).
    pub fn since(&self, last: u64) -> Vec<Arc<Event>> {
        self.ring()
            .kept
            .iter()
            .filter(|e| e.id > last)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_a_reconnect_gets_what_it_missed_from_the_ring() {
        let events = Events::new();
        for i in 0..5 {
            events.emit("task", serde_json::json!({ "n": i }));
        }
        let (missed, mut live) = events.subscribe(3);
        assert_eq!(missed.iter().map(|e| e.id).collect::<Vec<_>>(), [4, 5]);
        events.emit("worker", serde_json::json!({}));
        assert_eq!(live.try_recv().unwrap().id, 6);
        for _ in 0..KEPT {
            events.emit("task", serde_json::json!({}));
        }
        let kept = events.since(0);
        assert_eq!(kept.len(), KEPT, "bounded");
        assert_eq!(kept[0].id, 7);
    }
}
