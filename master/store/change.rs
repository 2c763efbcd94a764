//! The changes the store is asked to make.

use crate::records::{AuditRow, LivenessRow, Task, TokenRow, WorkerRecord};

/// A change of the state the master keeps, as the store is asked to make it. The engine
/// alone turns it into SQL.
pub enum Change {
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
        change: Box<Change>,
        audit: Box<AuditRow>,
    },
    /// Task output last written before this time (unix ms) goes (`--task-retention`).
    /// SQLite's output files are swept off the store thread instead (`output::Sweep`);
    /// this is for engines that keep output in the database.
    DropOutput { written_before_ms: i64 },
    /// Nothing: waiting for it waits for everything handed over before it.
    Barrier,
}

impl Change {
    /// This change with its audit entry: committed together, or neither.
    pub fn audited(self, audit: AuditRow) -> Change {
        Change::Audited {
            change: Box::new(self),
            audit: Box::new(audit),
        }
    }
}
