//! SQLite persistence (`<data-dir>/herd.db`), on a thread of its own.
//!
//! Callers hand writes to the store thread and await the commit. The thread batches
//! whatever is waiting into one transaction (group commit), so many registrations arriving
//! together cost one commit, and a tick's liveness flush is a commit per 1,000 rows.
//! WAL with `synchronous=NORMAL`: a commit survives kill -9 of the master.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use prometheus_client::metrics::histogram::Histogram;
use rusqlite::Connection;
use tokio::sync::oneshot;
use tracing::{error, warn};

use herd::error::Error;

mod checkpoint;
mod commit;
mod identity;
mod pages;
pub mod pcache;
mod rowids;
mod schema;
mod unsaved;

use self::checkpoint::{Checkpoints, STORE_TRIES, copy_back_the_wal, retry_every_100us};
use self::commit::commit;
use self::rowids::{RowIdChanges, RowIds, load_rowids};
use self::schema::{final_counts, last_task_number, load_tasks, load_workers, migrate, setting};
use self::unsaved::{RETRY_EVERY, Unsaved};
use crate::output::OutputDir;
use crate::records::{AuditRow, LivenessRow, Task, TaskFilter, TokenRow, WorkerRecord};

/// A write the store thread performs.
pub enum Write {
    /// Insert or update a worker's description (registration).
    Worker(Box<WorkerRecord>),
    /// The liveness columns of many workers (one tick).
    Liveness(Vec<LivenessRow>),
    /// Whether a worker is drained.
    Draining { id: String, draining: bool },
    /// Insert a new task (everything but its output).
    Task(Box<Task>),
    /// What changes of a task already stored: its state, placement, result and attempts.
    /// Of several in one commit, only the last of each task is written.
    TaskState(Box<Task>),
    /// Insert a batch of new tasks, all in the same transaction.
    Tasks(Vec<Task>),
    /// Output of a task attempt, appended to its files (before the rows committed with it,
    /// so a committed final update never has less output than the worker sent before it).
    Output {
        task: String,
        attempt: u32,
        offset: u64,
        data: Vec<u8>,
    },
    /// A setting kept across restarts.
    Setting { key: String, value: String },
    /// A worker forgotten by an operator: its rows go (its tasks keep their history).
    ForgetWorker { id: String },
    /// A new named operator token (its hash).
    TokenCreate(TokenRow),
    /// A named token revoked: its row goes.
    TokenRevoke { name: String },
    /// When a named token was last used (written coarsely).
    TokenUsed { name: String, at_ms: i64 },
    /// An entry of the audit log, after everything handed over before it.
    Audit(Box<AuditRow>),
    /// A change and its audit entry, in one transaction: neither is stored without the
    /// other.
    Audited {
        change: Box<Write>,
        audit: Box<AuditRow>,
    },
    /// Nothing: waiting for it waits for everything handed over before it.
    Barrier,
}

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

/// Who hears about a write's commit.
enum Done {
    Nobody,
    /// An awaiting caller.
    Reply(oneshot::Sender<Result<(), Error>>),
    /// Runs right after a successful commit, in commit order (e.g. sends an assignment
    /// that may only leave once it is stored). Must be quick and must not block.
    Then(Box<dyn FnOnce() + Send>),
}

impl Done {
    fn send(self, result: Result<(), Error>) {
        match self {
            Done::Nobody => {}
            Done::Reply(reply) => {
                let _ = reply.send(result);
            }
            Done::Then(then) => {
                if result.is_ok() {
                    then()
                }
            }
        }
    }
}

/// What the store thread is asked to do.
enum Job {
    /// A write and who hears about its commit.
    Write { write: Write, done: Done },
    /// Read a finished task's output.
    ReadOutput {
        id: String,
        done: oneshot::Sender<Result<Vec<u8>, Error>>,
    },
    /// Tests: every write that writes something fails as on a full disk, until undone.
    #[cfg(test)]
    DiskFull(bool),
}

/// Everything the database knows, read at start.
pub struct Loaded {
    pub workers: Vec<WorkerRecord>,
    /// The unfinished tasks (finished ones stay in SQLite, read by index when asked for).
    pub tasks: Vec<Task>,
    /// Finished tasks by state.
    pub finished: Vec<(herd::domain::TaskState, u64)>,
    /// The highest task number given out so far.
    pub last_task: u64,
    /// The scheduler chosen at run time, if one was.
    pub scheduler: Option<String>,
    /// The named operator tokens.
    pub tokens: Vec<TokenRow>,
}

/// Handle to the store thread. Dropping every handle stops the thread after it has
/// finished what was queued.
#[derive(Clone)]
pub struct Store {
    jobs: std_mpsc::Sender<Job>,
    /// A connection of its own for reads of finished tasks (WAL lets it read while the
    /// store thread writes), used from blocking tasks.
    reader: Arc<Mutex<Connection>>,
}

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 4096;

/// The shortest time between the starts of two commits. A write that finds the store
/// idle is committed at once; under load, what arrives within this time shares one
/// commit (a commit's cost is mostly fixed: at 20,000 writes a second they came 5 to a
/// commit and the commits cost more than the rows).
const GATHER_FOR: std::time::Duration = std::time::Duration::from_millis(1);

impl Store {
    /// Opens (creating if needed) the database, migrates it, and returns the store with
    /// every worker it knows.
    /// `flushes` gets the duration of every commit that carries liveness rows of a tick.
    pub fn open(
        path: &Path,
        output: OutputDir,
        flushes: Histogram,
    ) -> Result<(Store, Loaded), Error> {
        let started = Store::start(path, output, Some(flushes))?;
        Checkpoints::EVERY_SECOND.start(path)?;
        Ok(started)
    }

    /// A store on a private database in `dir` (a test's temporary folder).
    #[cfg(test)]
    pub fn scratch(dir: &Path) -> Store {
        let output = OutputDir::new(dir.join("output"));
        Store::start(&dir.join("herd.db"), output, None).unwrap().0
    }

    fn start(
        path: &Path,
        output: OutputDir,
        flushes: Option<Histogram>,
    ) -> Result<(Store, Loaded), Error> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Keep the whole working set in memory: a tick touches every worker's row.
        conn.pragma_update(None, "cache_size", -64 * 1024)?;
        // Checkpoints run on a thread of their own (see [`Checkpoints`]), not inside
        // a tick's commit; this is only the safety net if that thread falls behind.
        conn.pragma_update(None, "wal_autocheckpoint", 20_000)?;
        conn.busy_handler(Some(retry_every_100us::<STORE_TRIES>))?;
        migrate(&mut conn)?;
        copy_back_the_wal(&conn, path);
        let loaded = Loaded {
            workers: load_workers(&conn)?,
            tasks: load_tasks(&conn, &output)?,
            finished: final_counts(&conn)?,
            last_task: last_task_number(&conn)?,
            scheduler: setting(&conn, "scheduler")?,
            tokens: identity::load_tokens(&conn)?,
        };
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let notify = Notify::new();
        thread::Builder::new()
            .name("herd-store".into())
            .spawn(move || run(conn, output, rx, flushes, notify))
            .map_err(|e| Error::Storage(format!("cannot start the store thread: {e}")))?;
        let store = Store {
            jobs,
            reader: Arc::new(Mutex::new(reader)),
        };
        Ok((store, loaded))
    }

    /// Performs `write` and returns once it is committed.
    pub async fn write(&self, write: Write) -> Result<(), Error> {
        self.begin(write).await
    }

    /// Hands `write` to the store thread now; the future it returns ends once the write
    /// is committed. What is handed over after it (the placements of the tasks it stores,
    /// say) is committed with it or after it, never before.
    pub fn begin(
        &self,
        write: Write,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static + use<> {
        let (done, wait) = oneshot::channel();
        let sent = self.jobs.send(Job::Write {
            write,
            done: Done::Reply(done),
        });
        async move {
            sent.map_err(|_| Error::Unavailable("the store is closed".into()))?;
            wait.await
                .map_err(|_| Error::Unavailable("the store stopped".into()))?
        }
    }

    /// An operator's change and its audit entry, in one transaction: both or neither.
    /// Returns once committed (what the operator is told is durable).
    pub async fn write_audited(&self, change: Write, audit: AuditRow) -> Result<(), Error> {
        self.begin_audited(change, audit).await
    }

    /// Like [`Store::write_audited`], handed over now; the future ends once committed.
    pub fn begin_audited(
        &self,
        change: Write,
        audit: AuditRow,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static + use<> {
        self.begin(Write::Audited {
            change: Box::new(change),
            audit: Box::new(audit),
        })
    }

    /// Returns once everything handed to the store before is committed: what is
    /// acknowledged after this is durable. Fails (UNAVAILABLE) while any change handed in
    /// before could not be written (a full disk): it is tried again until it is, and
    /// nothing is acknowledged meanwhile.
    pub async fn sync(&self) -> Result<(), Error> {
        self.write(Write::Barrier).await
    }

    /// Hands `write` to the store thread without waiting (never blocks, does no I/O).
    /// It is committed in order with every other write, within milliseconds.
    pub fn enqueue(&self, write: Write) {
        self.send(write, Done::Nobody);
    }

    /// Like [`Store::enqueue`], and runs `then` once the write is
    /// committed (never when it failed).
    pub fn enqueue_then(&self, write: Write, then: impl FnOnce() + Send + 'static) {
        self.send(write, Done::Then(Box::new(then)));
    }

    /// Tests: writes fail as on a full disk (`true`) until space is back (`false`).
    #[cfg(test)]
    pub fn disk_full(&self, full: bool) {
        let _ = self.jobs.send(Job::DiskFull(full));
    }

    fn send(&self, write: Write, done: Done) {
        if self.jobs.send(Job::Write { write, done }).is_err() {
            error!("the store is closed; a change was not saved");
        }
    }

    /// Runs `read` on the reader connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            read(&conn)
        })
        .await
        .map_err(|e| Error::Storage(format!("a read failed: {e}")))?
    }

    /// Finished tasks numbered below `before`, newest first, matching `filter`.
    pub async fn finished_page(
        &self,
        filter: TaskFilter,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        self.read(move |conn| pages::finished_page(conn, &filter, before, limit))
            .await
    }

    /// Audit entries numbered below `before`, newest first.
    pub async fn audit_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, Error> {
        self.read(move |conn| identity::audit_page(conn, before, limit))
            .await
    }

    /// One task by id, as SQLite has it.
    pub async fn task(&self, id: &str) -> Result<Option<Task>, Error> {
        let id = id.to_string();
        self.read(move |conn| schema::task_by_id(conn, &id)).await
    }

    /// The output a finished task left (empty when there is none).
    pub async fn read_output(&self, id: &str) -> Result<Vec<u8>, Error> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job::ReadOutput {
                id: id.to_string(),
                done,
            })
            .map_err(|_| Error::Unavailable("the store is closed".into()))?;
        wait.await
            .map_err(|_| Error::Unavailable("the store stopped".into()))?
    }
}

/// The store thread: waits for a job, takes everything else already queued, and commits
/// all the writes in one transaction.
fn run(
    mut conn: Connection,
    output: OutputDir,
    jobs: std_mpsc::Receiver<Job>,
    flushes: Option<Histogram>,
    notify: Notify,
) {
    let mut rowids = load_rowids(&conn).unwrap_or_else(|err| {
        warn!(%err, "cannot read worker rowids; ticks will update by id");
        RowIds::new()
    });
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
                Job::Write { write, done } => batch.push((write, done)),
                Job::ReadOutput { id, done } => {
                    let _ = done.send(read_output(&conn, &id));
                }
                #[cfg(test)]
                Job::DiskFull(full) => disk_full = full,
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
        let committed = commit_unless_full(
            &mut conn,
            &output,
            &rowids,
            batch.iter().map(|(w, _)| w),
            disk_full,
        );
        let rows: usize = batch
            .iter()
            .map(|(w, _)| match w {
                Write::Liveness(rows) => rows.len(),
                _ => 0,
            })
            .sum();
        if rows > 0 {
            let took = started.elapsed();
            tracing::debug!(rows, writes = batch.len(), ?took, "liveness flushed");
            if let Some(flushes) = &flushes {
                flushes.observe(took.as_secs_f64());
            }
        }
        let results: Vec<(Write, Done, Result<(), Error>)> = match committed {
            Ok(changes) => {
                changes.apply(&mut rowids);
                batch.into_iter().map(|(w, d)| (w, d, Ok(()))).collect()
            }
            Err(err) if batch.len() > 1 => {
                // One bad write must not sink the others: each alone.
                warn!(%err, jobs = batch.len(), "batched commit failed; retrying one by one");
                let mut results = Vec::with_capacity(batch.len());
                for (write, done) in batch {
                    let res = commit_unless_full(
                        &mut conn,
                        &output,
                        &rowids,
                        std::iter::once(&write),
                        disk_full,
                    )
                    .map(|changes| changes.apply(&mut rowids));
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
fn commit_unless_full<'a>(
    conn: &mut Connection,
    output: &OutputDir,
    rowids: &RowIds,
    writes: impl Iterator<Item = &'a Write> + Clone,
    disk_full: bool,
) -> Result<RowIdChanges, Error> {
    if disk_full && writes.clone().any(|w| !matches!(w, Write::Barrier)) {
        return Err(Error::Unavailable(
            "the store cannot write now: database or disk is full (injected)".into(),
        ));
    }
    commit(conn, output, rowids, writes)
}

fn read_output(conn: &Connection, id: &str) -> Result<Vec<u8>, Error> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row("SELECT output FROM tasks WHERE id = ?1", [id], |r| {
            r.get::<_, Option<Vec<u8>>>(0)
        })
        .optional()?
        .flatten()
        .unwrap_or_default())
}

#[cfg(test)]
mod tests;
