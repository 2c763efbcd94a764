//! The shapes the cluster, the task lifecycle and the store share: what a worker and a
//! task look like in SQLite. Plain data, no behaviour beyond conversions, so the store
//! depends on nothing that depends on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use herd::config::SchedulerKind;
use herd::domain::{Role, TaskSpec, TaskState, WorkerSpec, WorkerState};
use herd::pb;

/// The SHA-256 hash of a secret (a worker's secret, an operator token).
pub type SecretHash = [u8; 32];

/// A row for the `workers` table, written at registration.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    pub id: String,
    pub spec: WorkerSpec,
    pub registered_at_ms: i64,
    pub last_heartbeat_ms: i64,
    pub state: WorkerState,
    /// No new tasks go here.
    pub draining: bool,
    /// Labels given at `worker add`, merged over the reported ones.
    pub added_labels: BTreeMap<String, String>,
    /// Hash of the secret issued at its first registration; `None` for a worker known
    /// from before secrets existed (it is issued one when it next registers).
    pub secret_hash: Option<SecretHash>,
}

/// A named operator token, as SQLite keeps it (`tokens`): never the token itself.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    pub name: String,
    pub role: Role,
    pub hash: SecretHash,
    pub created_ms: i64,
    pub last_used_ms: i64,
}

impl TokenRow {
    pub fn info(&self) -> pb::TokenInfo {
        pb::TokenInfo {
            name: self.name.clone(),
            role: self.role.as_str().into(),
            created_ms: self.created_ms,
            last_used_ms: self.last_used_ms,
        }
    }
}

/// One Admin change in the `audit` table.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    /// Its place in the log (0 before it is stored).
    pub seq: u64,
    pub at_ms: i64,
    pub who: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub peer: String,
}

impl AuditRow {
    pub fn entry(&self) -> pb::AuditEntry {
        pb::AuditEntry {
            seq: self.seq,
            at_ms: self.at_ms,
            who: self.who.clone(),
            role: self.role.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            detail: self.detail.clone(),
            peer: self.peer.clone(),
        }
    }
}

/// The columns the ticker keeps in sync.
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessRow {
    pub id: String,
    pub state: WorkerState,
    pub last_heartbeat_ms: i64,
}

/// Counts of workers and tasks by state (the `status` view and the metrics).
#[derive(Debug, Default)]
pub struct Summary {
    pub workers: Vec<(&'static str, usize)>,
    pub tasks: Vec<(&'static str, usize)>,
    pub queued: usize,
    pub scheduler: SchedulerKind,
}

/// Which tasks a list asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    /// Placed (now or last) on this worker.
    pub worker_id: Option<String>,
    /// Submitted at or after (unix ms).
    pub since_ms: i64,
}

impl TaskFilter {
    pub fn matches(&self, task: &Task) -> bool {
        self.state.is_none_or(|s| task.state == s)
            && self
                .worker_id
                .as_ref()
                .is_none_or(|w| task.worker_id.as_ref() == Some(w))
            && task.submitted_ms >= self.since_ms
    }
}

/// The number in a task id (`t-42` → 42): its order of submission.
pub fn task_number(id: &str) -> Option<u64> {
    id.strip_prefix("t-")?.parse().ok()
}

/// How one placement of a task went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Its worker was Removed, or no longer had it: the task was queued again.
    Lost,
    /// A stale copy the master told its worker to stop.
    Fenced,
    /// The assignment never reached the worker (its stream was full or gone): queued
    /// again without counting against `--max-attempts`.
    Undelivered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Assigned => "assigned",
            Outcome::Running => "running",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Lost => "lost",
            Outcome::Fenced => "fenced",
            Outcome::Undelivered => "undelivered",
        }
    }

    pub fn is_open(self) -> bool {
        matches!(self, Outcome::Assigned | Outcome::Running)
    }
}

impl From<TaskState> for Outcome {
    fn from(state: TaskState) -> Outcome {
        match state {
            TaskState::Queued | TaskState::Assigned => Outcome::Assigned,
            TaskState::Running => Outcome::Running,
            TaskState::Succeeded => Outcome::Succeeded,
            TaskState::Failed => Outcome::Failed,
            TaskState::Cancelled => Outcome::Cancelled,
        }
    }
}

/// One placement of a task: attempt `attempt` on worker `worker_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub worker_id: String,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub assigned_ms: i64,
    #[serde(default)]
    pub finished_ms: i64,
    /// The GPU indices this attempt held on its worker (kept with the attempt, so a
    /// restarted master gives them to no one else while it runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_ids: Vec<u32>,
}

/// One task: its row in `tasks`, plus what only a running master needs.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    /// Fixed at submission and shared by every snapshot of the task (the store's writes,
    /// the event stream), so a snapshot copies only what changes.
    pub spec: Arc<TaskSpec>,
    pub state: TaskState,
    /// Where it is placed (or last ran).
    pub worker_id: Option<String>,
    /// Placements so far; the current attempt's number.
    pub attempts: u32,
    pub exit_code: Option<i32>,
    /// Queue reason, or why it failed or was cancelled.
    pub reason: String,
    pub submitted_ms: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// Every placement, oldest first (`history` in SQLite, as JSON).
    pub history: Vec<Attempt>,
    /// The name of the token that submitted it.
    pub submitted_by: String,
    /// Not stored: when the current attempt was sent (a worker gets a grace period to
    /// report it); `None` while its placement waits for the store, and when not placed.
    pub assigned_at: Option<Instant>,
    /// Not stored: a cancel was sent to the worker; the task ends as Cancelled.
    pub cancel_requested: bool,
    /// Not stored: bytes of the current attempt's output the master has (on disk).
    pub output_len: u64,
}

impl Task {
    /// Workers that held an attempt of this task: they may report on it.
    pub fn held_by(&self, worker_id: &str) -> bool {
        self.history.iter().any(|a| a.worker_id == worker_id)
    }

    /// Runs of this task that failed and were retried (every attempt that ended
    /// `failed` before the current one).
    /// The placements `--max-attempts` bounds: those lost with their worker, not runs
    /// that failed and were retried, nor assignments that never reached the worker.
    pub fn counted_attempts(&self) -> u32 {
        let undelivered = self
            .history
            .iter()
            .filter(|a| a.outcome == Outcome::Undelivered)
            .count() as u32;
        self.attempts
            .saturating_sub(self.retries_used())
            .saturating_sub(undelivered)
    }

    pub fn retries_used(&self) -> u32 {
        self.history
            .iter()
            .filter(|a| a.outcome == Outcome::Failed && a.attempt < self.attempts)
            .count() as u32
    }

    /// The current attempt's entry, if the task was ever placed.
    pub fn current(&mut self) -> Option<&mut Attempt> {
        let n = self.attempts;
        self.history.iter_mut().rev().find(|a| a.attempt == n)
    }

    /// The GPU indices the current attempt holds (none unless placed).
    pub fn gpu_ids(&self) -> &[u32] {
        if !self.state.is_placed() {
            return &[];
        }
        self.history
            .iter()
            .rev()
            .find(|a| a.attempt == self.attempts)
            .map(|a| a.gpu_ids.as_slice())
            .unwrap_or_default()
    }

    /// The view clients get; `name_of` finds a worker's name by id.
    pub fn info<'a>(&self, name_of: impl Fn(&str) -> Option<&'a str>) -> pb::TaskInfo {
        let name = |id: &str| name_of(id).unwrap_or_default().to_string();
        pb::TaskInfo {
            id: self.id.clone(),
            spec: Some(self.spec.as_ref().into()),
            state: pb::TaskState::from(self.state) as i32,
            worker_id: self.worker_id.clone().unwrap_or_default(),
            worker_name: self.worker_id.as_deref().map(name).unwrap_or_default(),
            attempts: self.attempts,
            exit_code: self.exit_code,
            reason: self.reason.clone(),
            submitted_ms: self.submitted_ms,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            history: self
                .history
                .iter()
                .map(|a| pb::AttemptInfo {
                    attempt: a.attempt,
                    worker_id: a.worker_id.clone(),
                    worker_name: name(&a.worker_id),
                    outcome: a.outcome.as_str().to_string(),
                    exit_code: a.exit_code,
                    reason: a.reason.clone(),
                    assigned_ms: a.assigned_ms,
                    finished_ms: a.finished_ms,
                    gpu_ids: a.gpu_ids.clone(),
                })
                .collect(),
            gpu_ids: self.gpu_ids().to_vec(),
            submitted_by: self.submitted_by.clone(),
        }
    }
}

/// The cluster's totals at one moment (counters of tasks run since the master started).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub cpu_total: f64,
    pub cpu_allocated: f64,
    pub cpu_used: f64,
    pub memory_total_gb: f64,
    pub memory_allocated_gb: f64,
    pub memory_used_gb: f64,
    pub tasks_started: u64,
    pub tasks_finished: u64,
}
