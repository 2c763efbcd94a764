//! The store thread: it takes every change waiting, commits them in one transaction of
//! the engine (group commit), keeps what the machine could not write (a full disk) and
//! tells whoever waits, in commit order. Nothing here knows SQL.

use std::sync::mpsc as std_mpsc;
use std::thread;

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;
use tracing::{error, warn};

use herd::error::Error;

use super::Engine;
use super::change::Change;
use super::done::Done;
use super::unsaved::{RETRY_EVERY, Unsaved};

/// Who hears about commits. Inside an async runtime, a task of the runtime: the store
/// thread wakes it once per commit, and it answers every caller and runs every `Then`
/// from inside the runtime. (Woken from this thread one by one, each would wait in the
/// runtime's queue for tasks woken from outside, which a busy runtime polls once in
/// dozens of tasks: at 10,000 placements a second, the assignments of a batch reached
/// their streams 23 ms after their commit.) Outside a runtime (unit tests), this thread.
///
/// The channel to that task is unbounded on purpose: it holds one list per commit already
/// made, of waiters that exist anyway (each stands for a write handed over before), so it
/// grows no further than the writes queued to the store; a bound would make the store
/// thread wait for the runtime, or lose replies.
enum Notify {
    Runtime(tokio::sync::mpsc::UnboundedSender<Finished>),
    Here,
}

/// The waiters of a commit, each with its result.
type Finished = Vec<(Done, Result<(), Error>)>;

impl Notify {
    fn new() -> Notify {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Notify::Here;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        runtime.spawn(async move {
            while let Some(finished) = rx.recv().await {
                tell(finished);
            }
        });
        Notify::Runtime(tx)
    }

    /// Tells everyone in `finished`, in order (after everyone of earlier commits).
    fn deliver(&self, finished: Finished) {
        if finished.is_empty() {
            return;
        }
        match self {
            Notify::Runtime(tx) => {
                // The runtime is gone (the master is stopping): tell them here.
                if let Err(tokio::sync::mpsc::error::SendError(finished)) = tx.send(finished) {
                    tell(finished);
                }
            }
            Notify::Here => tell(finished),
        }
    }
}

fn tell(finished: Finished) {
    for (done, result) in finished {
        done.send(result);
    }
}

/// What the store thread is asked to do.
pub(super) enum Job {
    /// A write and who hears about its commit.
    Change { write: Change, done: Done },
    /// Read a finished task's output.
    ReadOutput {
        id: String,
        done: oneshot::Sender<Result<Vec<u8>, Error>>,
    },
    /// Tests: every write that writes something fails as on a full disk, until undone.
    #[cfg(test)]
    DiskFull(bool),
    /// Tests: take no job until this channel closes.
    #[cfg(test)]
    Stall(std_mpsc::Receiver<()>),
}

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 4096;

/// The shortest time between the starts of two commits. A write that finds the store
/// idle is committed at once; under load, what arrives within this time shares one
/// commit (a commit's cost is mostly fixed: at 20,000 writes a second they came 5 to a
/// commit and the commits cost more than the rows).
const GATHER_FOR: std::time::Duration = std::time::Duration::from_millis(1);

/// What the store thread measures, for /metrics.
#[derive(Clone)]
pub struct Instruments {
    /// The duration of every commit that carries liveness rows of a tick.
    pub liveness_commits: Histogram,
    /// The duration of every commit.
    pub commits: Histogram,
    /// Commits that failed.
    pub failed_commits: Counter<u64, AtomicU64>,
}

impl From<Histogram> for Instruments {
    /// Liveness commits measured, failures counted where nobody reads them (tests).
    fn from(liveness_commits: Histogram) -> Instruments {
        Instruments {
            liveness_commits,
            commits: Histogram::new(std::iter::empty()),
            failed_commits: Counter::default(),
        }
    }
}

/// Starts the store thread over `engine`; returns where to send it jobs.
pub(super) fn start<E: Engine>(
    engine: E,
    flushes: Option<Instruments>,
) -> Result<std_mpsc::Sender<Job>, Error> {
    let (jobs, rx) = std_mpsc::channel::<Job>();
    let notify = Notify::new();
    thread::Builder::new()
        .name("herd-store".into())
        .spawn(move || run(engine, rx, flushes, notify))
        .map_err(|e| Error::Storage(format!("cannot start the store thread: {e}")))?;
    Ok(jobs)
}

/// The store thread: waits for a job, takes everything else already queued, and commits
/// all the writes in one transaction.
fn run<E: Engine>(
    mut engine: E,
    jobs: std_mpsc::Receiver<Job>,
    flushes: Option<Instruments>,
    notify: Notify,
) {
    let mut rate = (std::time::Instant::now(), 0u64, 0u64);
    let mut last_commit = std::time::Instant::now() - GATHER_FOR;
    let mut unsaved = Unsaved::default();
    // Only tests fill the disk on purpose (`Job::DiskFull`).
    #[cfg_attr(not(test), allow(unused_mut))]
    let mut disk_full = false;
    loop {
        // With changes not stored yet (a full disk), they are tried again at least every
        // RETRY_EVERY, even when nothing new comes.
        let first = match unsaved.is_empty() {
            true => match jobs.recv() {
                Ok(job) => Some(job),
                Err(_) => break,
            },
            false => match jobs.recv_timeout(RETRY_EVERY) {
                Ok(job) => Some(job),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        // Busy (the last commit began less than GATHER_FOR ago): let the writes of that
        // long gather, so they share one commit instead of a commit each.
        let since = last_commit.elapsed();
        if since < GATHER_FOR {
            thread::sleep(GATHER_FOR - since);
        }
        last_commit = std::time::Instant::now();
        // What is not stored yet goes first, in the order it was handed in.
        let mut batch = unsaved.take();
        let mut next = first;
        while let Some(job) = next.take() {
            match job {
                Job::Change { write, done } => batch.push((write, done)),
                Job::ReadOutput { id, done } => {
                    let _ = done.send(engine.read_output(&id));
                }
                #[cfg(test)]
                Job::DiskFull(full) => disk_full = full,
                #[cfg(test)]
                Job::Stall(stalled) => while stalled.recv().is_ok() {},
            }
            if batch.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        rate.1 += 1;
        rate.2 += batch.len() as u64;
        if started.duration_since(rate.0) >= std::time::Duration::from_secs(1) {
            tracing::debug!(commits = rate.1, writes = rate.2, "store: the last second");
            rate = (started, 0, 0);
        }
        let committed = commit_unless_full(&mut engine, batch.iter().map(|(w, _)| w), disk_full);
        let rows: usize = batch
            .iter()
            .map(|(w, _)| match w {
                Change::Liveness(rows) => rows.len(),
                _ => 0,
            })
            .sum();
        let took = started.elapsed();
        if let Some(flushes) = &flushes {
            flushes.commits.observe(took.as_secs_f64());
        }
        if rows > 0 {
            tracing::debug!(rows, writes = batch.len(), ?took, "liveness flushed");
            if let Some(flushes) = &flushes {
                flushes.liveness_commits.observe(took.as_secs_f64());
            }
        }
        if let (Err(_), Some(flushes)) = (&committed, &flushes) {
            flushes.failed_commits.inc();
        }
        let results: Vec<(Change, Done, Result<(), Error>)> = match committed {
            Ok(()) => batch.into_iter().map(|(w, d)| (w, d, Ok(()))).collect(),
            Err(err) if batch.len() > 1 => {
                // One bad write must not sink the others: each alone.
                warn!(%err, jobs = batch.len(), "batched commit failed; retrying one by one");
                let mut results = Vec::with_capacity(batch.len());
                for (write, done) in batch {
                    let res = commit_unless_full(&mut engine, std::iter::once(&write), disk_full);
                    results.push((write, done, res));
                }
                results
            }
            Err(err) => batch
                .into_iter()
                .map(|(w, d)| (w, d, Err(err.clone())))
                .collect(),
        };
        notify.deliver(unsaved.settle(results));
    }
    if !unsaved.is_empty() {
        error!(
            changes = unsaved.len(),
            "the store stops with changes it could not write; nothing that depends on them \
             was acknowledged"
        );
    }
}

/// Commits `writes`, or fails as on a full disk when a test says the disk is full (a
/// barrier writes nothing, so it passes even then).
fn commit_unless_full<'a, E: Engine>(
    engine: &mut E,
    writes: impl Iterator<Item = &'a Change> + Clone,
    disk_full: bool,
) -> Result<(), Error> {
    if disk_full && writes.clone().any(|w| !matches!(w, Change::Barrier)) {
        return Err(Error::Unavailable(
            "the store cannot write now: database or disk is full (injected)".into(),
        ));
    }
    engine.commit(writes)
}
