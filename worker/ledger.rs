//! What the worker holds and what it owes the master: the attempts it runs, the results
//! not yet acknowledged, and the outbox of messages for the master. The executor (which
//! starts and stops supervisors) and the followers (which read task folders and report)
//! share it; neither needs the other.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use herd::pb;
use herd::pb::worker_message::Body;

use crate::folder::Folder;

/// A message for the master, and who wants to know once it is in the stream.
pub struct Outgoing {
    pub msg: pb::WorkerMessage,
    /// Fires when the message went into a heartbeat stream (dropped if the stream broke).
    pub delivered: Option<oneshot::Sender<()>>,
}

/// Where everything the worker tells the master goes (forwarded by the agent).
pub type Outbox = mpsc::Sender<Outgoing>;

/// What the worker holds. One lock, so a heartbeat always sees a task either held or
/// finished, never neither.
#[derive(Default)]
pub(crate) struct Holdings {
    /// The attempts held: running, or ended with a result not yet acknowledged (held until
    /// it is, so that a new stream resumes their output too).
    pub held: HashMap<String, Held>,
    /// Final updates not yet acknowledged by the master, by task id.
    pub finished: HashMap<String, pb::TaskUpdate>,
    /// Ended attempts whose output is being sent again after a reconnect: their results
    /// stay out of heartbeats until they follow that output into the stream.
    pub resending: HashSet<String>,
}

pub(crate) struct Held {
    pub attempt: u32,
    pub folder: Folder,
    /// The supervisor's pid while it is our child (before it wrote its state file).
    pub child_pid: Option<i32>,
    /// Where the master asked the output to continue from (taken by the watcher).
    pub resume: Option<u64>,
}

/// The shared ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger(Arc<Shared>);

struct Shared {
    work_dir: PathBuf,
    book: Mutex<Holdings>,
    outbox: Outbox,
    /// Set once the first heartbeat was acknowledged (with its resume offsets applied).
    first_ack: watch::Sender<bool>,
}

impl Ledger {
    pub fn new(work_dir: PathBuf, outbox: Outbox) -> Ledger {
        Ledger(Arc::new(Shared {
            work_dir,
            book: Mutex::new(Holdings::default()),
            outbox,
            first_ack: watch::Sender::new(false),
        }))
    }

    /// Where the task folders are.
    pub fn work_dir(&self) -> &Path {
        &self.0.work_dir
    }

    /// Room left in the outbox (output waits while it is nearly full, so task updates
    /// always find room).
    pub fn outbox_room(&self) -> usize {
        self.0.outbox.capacity()
    }

    /// Waits until the first heartbeat of a stream was acknowledged.
    pub async fn first_acknowledged(&self) {
        let mut first_ack = self.0.first_ack.subscribe();
        let _ = first_ack.wait_for(|acked| *acked).await;
    }

    pub(crate) fn holdings(&self) -> MutexGuard<'_, Holdings> {
        self.0.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a heartbeat reports: held task ids, held attempts, unacknowledged results.
    pub fn report(&self) -> (Vec<String>, Vec<pb::TaskAttempt>, Vec<pb::TaskUpdate>) {
        let book = self.holdings();
        let held = book
            .held
            .iter()
            .map(|(id, h)| pb::TaskAttempt {
                task_id: id.clone(),
                attempt: h.attempt,
            })
            .collect();
        (
            book.held.keys().cloned().collect(),
            held,
            book.finished
                .values()
                .filter(|u| !book.resending.contains(&u.task_id))
                .cloned()
                .collect(),
        )
    }

    /// Nothing held and nothing left to acknowledge (what --drain-on-exit waits for).
    pub fn is_idle(&self) -> bool {
        let book = self.holdings();
        book.held.is_empty() && book.finished.is_empty()
    }

    /// The master stored these results: forget them (and their attempts), and mark their
    /// folders reported so the next agent does not send them again and retention may
    /// remove them.
    pub fn acknowledged(&self, ids: &[String]) {
        let mut book = self.holdings();
        for id in ids {
            if let Some(update) = book.finished.remove(id) {
                if book
                    .held
                    .get(id)
                    .is_some_and(|h| h.attempt == update.attempt)
                {
                    book.held.remove(id);
                }
                let folder = Folder::new(&self.0.work_dir, id, update.attempt);
                if let Err(err) = folder.mark_reported() {
                    warn!(task = %id, %err, "cannot mark the task folder reported");
                }
            }
        }
    }

    /// The master says how much output of each held attempt it has (first ack of a
    /// stream). Running attempts continue from there; the ended ones whose result is not
    /// acknowledged are returned, to send the rest of their output and then their result
    /// again (what was in flight when the last stream broke).
    pub fn resume(&self, entries: &[pb::OutputResume]) -> Vec<(String, u32, Folder, u64)> {
        let mut book = self.holdings();
        let mut ended = Vec::new();
        for entry in entries {
            let finished = book
                .finished
                .get(&entry.task_id)
                .is_some_and(|u| u.attempt == entry.attempt);
            let Some(held) = book.held.get_mut(&entry.task_id) else {
                continue;
            };
            if held.attempt != entry.attempt {
                continue;
            }
            if finished {
                ended.push((
                    entry.task_id.clone(),
                    entry.attempt,
                    held.folder.clone(),
                    entry.offset,
                ));
            } else {
                held.resume = Some(entry.offset);
            }
        }
        for (id, ..) in &ended {
            book.resending.insert(id.clone());
        }
        drop(book);
        self.0.first_ack.send_replace(true);
        ended
    }

    /// Hands a message for the master to the agent; `delivered` fires once it is in a
    /// heartbeat stream.
    pub(crate) async fn send(&self, body: Body, delivered: Option<oneshot::Sender<()>>) {
        let _ = self
            .0
            .outbox
            .send(Outgoing {
                msg: pb::WorkerMessage { body: Some(body) },
                delivered,
            })
            .await;
    }
}
