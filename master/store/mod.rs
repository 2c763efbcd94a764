//! Where the master's state is written, and read back at start: the one owner of writes.
//!
//! The rest of the master describes changes ([`Change`]) and hands them to the store;
//! the store thread (`thread.rs`) batches whatever is waiting into one transaction of the
//! engine (group commit) and tells whoever waits, in commit order. An engine ([`Engine`],
//! [`Reads`]) turns changes into SQL; SQLite (`sqlite/`) is the one there is. Every
//! change is committed the same way; the calls below differ only in who hears of it:
//!
//! - [`Store::commit`]: the caller awaits the commit (an operator's change, a tick's
//!   flush), and is told if it failed.
//! - [`Store::save`] / [`Store::save_then`]: nobody awaits it (task updates, output);
//!   what is acknowledged because of it waits for [`Store::sync`]. Should the machine
//!   refuse it (a full disk), it is kept and written again, and every `sync` fails until
//!   it is stored, so nothing that depends on it is acknowledged.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;
use tracing::error;

use herd::error::Error;

mod change;
mod done;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod tests;
mod thread;
mod unsaved;

pub use self::change::Change;
use self::done::Done;
pub use self::sqlite::pcache;
pub use self::thread::Instruments;
use self::thread::Job;
use crate::output::OutputDir;
use crate::records::{AuditRow, Task, TaskFilter, TokenRow, WorkerRecord};

/// What a store engine does on the store thread: commit a batch of changes in one
/// transaction (all or none), and read the output a task finished with before output
/// moved to files.
pub trait Engine: Send + 'static {
    fn commit<'a>(
        &mut self,
        changes: impl Iterator<Item = &'a Change> + Clone,
    ) -> Result<(), Error>;
    fn read_output(&mut self, id: &str) -> Result<Vec<u8>, Error>;
}

/// What a store engine reads off the store thread, from blocking tasks.
pub trait Reads: Send + Sync + 'static {
    /// Finished tasks numbered below `before`, newest first, matching `filter`.
    fn finished_page(
        &self,
        filter: &TaskFilter,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Task>, Error>;
    /// Audit entries numbered below `before`, newest first.
    fn audit_page(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>, Error>;
    /// One task by id, as the store has it.
    fn task(&self, id: &str) -> Result<Option<Task>, Error>;
    /// Up to `max` bytes from offset `from` of an attempt's output, as `(start, bytes)`:
    /// `start` is later than `from` when the bytes there are no longer kept.
    fn output(
        &self,
        task: &str,
        attempt: u32,
        from: u64,
        max: usize,
    ) -> Result<(u64, Vec<u8>), Error>;
    /// How many bytes of an attempt's output there were (its whole length).
    fn output_len(&self, task: &str, attempt: u32) -> Result<u64, Error>;
    /// Whether any output of the task is kept.
    fn has_output(&self, task: &str) -> Result<bool, Error>;
    /// The masters that share this store, as each last recorded itself (none on SQLite).
    fn masters(&self) -> Result<Vec<herd::pb::MasterInfo>, Error>;
}

/// The setting that names the cluster's bootstrap tokens (written by
/// [`crate::identity::cluster`]).
pub const CLUSTER_TOKENS: &str = "cluster_tokens";

/// Everything the store knows, read at start.
pub struct Loaded {
    pub workers: Vec<WorkerRecord>,
    /// The unfinished tasks (finished ones stay in the store, read by index when asked for).
    pub tasks: Vec<Task>,
    /// Finished tasks by state.
    pub finished: Vec<(herd::domain::TaskState, u64)>,
    /// The highest task number given out so far.
    pub last_task: u64,
    /// The scheduler chosen at run time, if one was.
    pub scheduler: Option<String>,
    /// The cluster's bootstrap tokens, as [`crate::identity::cluster`] stored them.
    pub cluster_tokens: Option<String>,
    /// The named operator tokens.
    pub tokens: Vec<TokenRow>,
}

/// Handle to the store thread. Dropping every handle stops the thread after it has
/// finished what was queued.
#[derive(Clone)]
pub struct Store {
    jobs: std_mpsc::Sender<Job>,
    reads: Arc<dyn Reads>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, migrates it, and returns
    /// the store with everything it knows, measured by `instruments`.
    pub fn open(
        path: &Path,
        output: OutputDir,
        instruments: impl Into<Instruments>,
    ) -> Result<(Store, Loaded), Error> {
        let (engine, reader, loaded) = sqlite::open(path, output, true)?;
        Ok((
            Store::start(engine, reader, Some(instruments.into()))?,
            loaded,
        ))
    }

    /// Opens the PostgreSQL store at `url` to write as the leader of `fence.term`, and
    /// returns it with everything it knows.
    pub async fn open_postgres(
        url: &str,
        fence: postgres::Fence,
        instruments: impl Into<Instruments>,
    ) -> Result<(Store, Loaded), Error> {
        let (engine, reader, loaded) = postgres::open(url, fence).await?;
        Ok((
            Store::start(engine, reader, Some(instruments.into()))?,
            loaded,
        ))
    }

    /// A store on a private database in `dir` (a test's temporary folder).
    #[cfg(test)]
    pub fn scratch(dir: &Path) -> Store {
        Store::scratch_loaded(dir).0
    }

    /// Like [`Store::scratch`], with what the database held.
    #[cfg(test)]
    pub fn scratch_loaded(dir: &Path) -> (Store, Loaded) {
        let output = OutputDir::new(dir.join("output"));
        let (engine, reader, loaded) = sqlite::open(&dir.join("herd.db"), output, false).unwrap();
        (Store::start(engine, reader, None).unwrap(), loaded)
    }

    fn start(
        engine: impl Engine,
        reads: impl Reads,
        flushes: Option<Instruments>,
    ) -> Result<Store, Error> {
        Ok(Store {
            jobs: thread::start(engine, flushes)?,
            reads: Arc::new(reads),
        })
    }

    /// Hands `change` to the store thread now; the future it returns ends once the change
    /// is committed, or failed. What is handed over after it (the placements of the tasks
    /// it stores, say) is committed with it or after it, never before.
    pub fn commit(
        &self,
        change: Change,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static + use<> {
        let (done, wait) = oneshot::channel();
        let sent = self.jobs.send(Job::Change {
            write: change,
            done: Done::Reply(done),
        });
        async move {
            sent.map_err(|_| Error::Unavailable("the store is closed".into()))?;
            wait.await
                .map_err(|_| Error::Unavailable("the store stopped".into()))?
        }
    }

    /// Returns once everything handed to the store before is committed: what is
    /// acknowledged after this is durable. Fails (UNAVAILABLE) while any change handed in
    /// before could not be written (a full disk): it is tried again until it is, and
    /// nothing is acknowledged meanwhile.
    pub async fn sync(&self) -> Result<(), Error> {
        self.commit(Change::Barrier).await
    }

    /// Hands `change` to the store thread without waiting (never blocks, does no I/O).
    /// It is committed in order with every other change, within milliseconds.
    pub fn save(&self, change: Change) {
        self.send(change, Done::Nobody);
    }

    /// Like [`Store::save`], and runs `then` once the change is committed (never when it
    /// failed). `then` must be quick and must not block.
    pub fn save_then(&self, change: Change, then: impl FnOnce() + Send + 'static) {
        self.send(change, Done::Then(Box::new(then)));
    }

    /// Tests: changes fail as on a full disk (`true`) until space is back (`false`).
    #[cfg(test)]
    pub fn disk_full(&self, full: bool) {
        let _ = self.jobs.send(Job::DiskFull(full));
    }

    /// Tests: the store thread takes no job (commits nothing, answers nothing) until the
    /// returned sender is dropped, as on a disk or a server that stopped answering.
    #[cfg(test)]
    pub fn stall(&self) -> std::sync::mpsc::Sender<()> {
        let (release, stalled) = std::sync::mpsc::channel();
        let _ = self.jobs.send(Job::Stall(stalled));
        release
    }

    fn send(&self, change: Change, done: Done) {
        if self
            .jobs
            .send(Job::Change {
                write: change,
                done,
            })
            .is_err()
        {
            error!("the store is closed; a change was not saved");
        }
    }

    /// Runs `read` on the engine's reader, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Reads) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let reads = self.reads.clone();
        tokio::task::spawn_blocking(move || read(reads.as_ref()))
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
        self.read(move |r| r.finished_page(&filter, before, limit))
            .await
    }

    /// Audit entries numbered below `before`, newest first.
    pub async fn audit_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditRow>, Error> {
        self.read(move |r| r.audit_page(before, limit)).await
    }

    /// One task by id, as the store has it.
    pub async fn task(&self, id: &str) -> Result<Option<Task>, Error> {
        let id = id.to_string();
        self.read(move |r| r.task(&id)).await
    }

    /// Up to `max` bytes from offset `from` of an attempt's output, as `(start, bytes)`.
    pub async fn output(
        &self,
        task: &str,
        attempt: u32,
        from: u64,
        max: usize,
    ) -> Result<(u64, Vec<u8>), Error> {
        let task = task.to_string();
        self.read(move |r| r.output(&task, attempt, from, max))
            .await
    }

    /// How many bytes of an attempt's output there were.
    pub async fn output_len(&self, task: &str, attempt: u32) -> Result<u64, Error> {
        let task = task.to_string();
        self.read(move |r| r.output_len(&task, attempt)).await
    }

    /// The masters that share this store (the leader and its standbys).
    pub async fn masters(&self) -> Result<Vec<herd::pb::MasterInfo>, Error> {
        self.read(|r| r.masters()).await
    }

    /// Whether any output of the task is kept.
    pub async fn has_output(&self, task: &str) -> Result<bool, Error> {
        let task = task.to_string();
        self.read(move |r| r.has_output(&task)).await
    }

    /// The output a finished task left in the SQLite column of old (empty when there is none).
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
