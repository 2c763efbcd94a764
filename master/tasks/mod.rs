//! Where a task is placed and what becomes of it: the queue, placements (attempts), the
//! fencing of stale attempts, and the bookkeeping of output. [`Tasks`] owns every task the
//! master keeps in memory; the registry calls it with the workers it owns, so each piece of
//! state has one owner and nothing imports in a circle.
//!
//! Semantics (README, "Work and crashes"): while a worker's host lives a task runs at most
//! once (the worker reattaches to it after a restart and reports the attempts it holds); on
//! host loss (worker Removed) it is queued again, at least once, up to `--max-attempts`;
//! only the current attempt, from the worker that holds it, may report, and any other
//! attempt a worker reports is told to stop.

mod lifecycle;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use herd::config::SchedulerKind;
use herd::domain::{TaskSpec, TaskState, WorkerState};
use herd::error::Error;
use herd::pb;
use herd::time::now_ms;

use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::records::Task;
use crate::scheduler::{self, Candidate, Request, Scheduler};
use crate::store::{Store, Write};
use crate::workers::Workers;

/// Where a task's output stands, for `task logs`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogsView {
    /// The attempt whose output is shown (the latest); 0 when it never ran.
    pub attempt: u32,
    /// Bytes of that attempt's output the master has.
    pub len: u64,
    /// The task has ended: no more output will come.
    pub done: bool,
}

/// Every task the master keeps in memory, and the queue.
pub struct Tasks {
    tasks: HashMap<String, Task>,
    /// Queued task ids, oldest first.
    queue: VecDeque<String>,
    next_task: u64,
    scheduler: Box<dyn Scheduler>,
    max_attempts: u32,
    /// How long an assignment may be in flight before a worker that does not report it
    /// is taken to have lost it.
    grace: Duration,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Tasks {
    pub fn new(
        kind: SchedulerKind,
        max_attempts: u32,
        grace: Duration,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Tasks {
        Tasks {
            tasks: HashMap::new(),
            queue: VecDeque::new(),
            next_task: 1,
            scheduler: scheduler::new(kind),
            max_attempts,
            grace,
            store,
            metrics,
        }
    }

    /// Takes in what SQLite knows. Placed tasks stay placed on a worker that is not
    /// Removed (it reattaches them when it reports them, or they are re-queued when it is
    /// Removed); the others are queued again.
    pub fn load(&mut self, workers: &mut Workers, mut loaded: Vec<Task>, now: Instant) {
        loaded.sort_by_key(|t| task_number(&t.id));
        for mut task in loaded {
            self.next_task = self.next_task.max(task_number(&task.id) + 1);
            let id = task.id.clone();
            if task.state.is_placed() {
                let worker = task.worker_id.clone().unwrap_or_default();
                match workers.get_mut(&worker) {
                    Some(entry) if !entry.presence.removed => {
                        entry.add(task.spec.resources);
                        entry.tasks.insert(id.clone());
                        task.assigned_at = Some(now);
                    }
                    _ => {
                        let why = "its worker is gone";
                        if let Some(a) = task.current().filter(|a| a.outcome.is_open()) {
                            a.outcome = crate::records::Outcome::Lost;
                            a.reason = why.into();
                            a.finished_ms = now_ms();
                        }
                        task.state = TaskState::Queued;
                        task.worker_id = None;
                        task.reason = format!("{why}; re-queued");
                        persist(&self.store, &task);
                    }
                }
            }
            if task.state == TaskState::Queued {
                self.queue.push_back(id.clone());
            }
            self.tasks.insert(id, task);
        }
    }

    /// A new task, not yet known to anyone: store it, then [`Tasks::enqueue`] it.
    pub fn new_task(&mut self, spec: TaskSpec) -> Task {
        let id = format!("t-{}", self.next_task);
        self.next_task += 1;
        Task {
            id,
            spec,
            state: TaskState::Queued,
            worker_id: None,
            attempts: 0,
            exit_code: None,
            reason: "waiting for a placement".into(),
            submitted_ms: now_ms(),
            started_ms: 0,
            finished_ms: 0,
            history: Vec::new(),
            assigned_at: None,
            cancel_requested: false,
            output_len: 0,
        }
    }

    /// Queues a stored task.
    pub fn enqueue(&mut self, task: Task) -> String {
        let id = task.id.clone();
        info!(task = %id, name = %task.spec.name, "task submitted");
        self.tasks.insert(id.clone(), task);
        self.queue.push_back(id.clone());
        id
    }

    pub fn info(&self, id: &str, workers: &Workers) -> Result<pb::TaskInfo, Error> {
        let task = self.tasks.get(id).ok_or_else(|| unknown_task(id))?;
        Ok(task.info(|w| workers.name_of(w)))
    }

    /// Tasks in submission order, optionally only those in `state`.
    pub fn list(&self, state: Option<TaskState>, workers: &Workers) -> Vec<pb::TaskInfo> {
        let mut found: Vec<&Task> = self
            .tasks
            .values()
            .filter(|t| state.is_none_or(|s| t.state == s))
            .collect();
        found.sort_by_key(|t| task_number(&t.id));
        found
            .into_iter()
            .map(|t| t.info(|w| workers.name_of(w)))
            .collect()
    }

    /// Where the output of task `id` stands.
    pub fn logs(&self, id: &str) -> Result<LogsView, Error> {
        let task = self.tasks.get(id).ok_or_else(|| unknown_task(id))?;
        Ok(LogsView {
            attempt: task.attempts,
            len: task.output_len,
            done: task.state.is_final(),
        })
    }

    /// Tasks by state word, and the queue length.
    pub fn counts(&self) -> (Vec<(&'static str, usize)>, usize) {
        let by_state = TaskState::ALL
            .iter()
            .map(|&s| {
                let n = self.tasks.values().filter(|t| t.state == s).count();
                (s.as_str(), n)
            })
            .collect();
        (by_state, self.queue.len())
    }

    pub fn scheduler_kind(&self) -> SchedulerKind {
        self.scheduler.kind()
    }

    /// Switches the policy; true when it changed.
    pub fn switch_scheduler(&mut self, kind: SchedulerKind) -> bool {
        if kind == self.scheduler.kind() {
            return false;
        }
        info!(scheduler = ?kind, "scheduler switched");
        self.scheduler = scheduler::new(kind);
        true
    }

    /// The master did not run for a while: assignments in flight get their grace afresh.
    pub fn after_stall(&mut self, now: Instant) {
        for task in self.tasks.values_mut() {
            if task.assigned_at.is_some() {
                task.assigned_at = Some(now);
            }
        }
    }

    /// Places queued tasks, oldest first, letting smaller later ones through (backfill).
    pub fn schedule(&mut self, workers: &mut Workers, liveness: &Liveness, now: Instant) {
        if self.queue.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        self.schedule_queue(workers, liveness, now);
        Metrics::observe(&self.metrics.scheduling, started.elapsed());
    }

    fn schedule_queue(&mut self, workers: &mut Workers, liveness: &Liveness, now: Instant) {
        let mut candidates: Vec<Candidate> = workers
            .ordered()
            .map(|w| Candidate {
                capacity: w.spec.capacity,
                allocated: w.allocated,
                cpu_percent: w.usage.cpu_percent,
                schedulable: !w.draining
                    && liveness.state(&w.presence, now) == WorkerState::Active
                    && w.session
                        .as_ref()
                        .is_some_and(|s| s.outbound.capacity() > 0),
                has_runtime: w.spec.runtime.is_some(),
            })
            .collect();
        let any_live = candidates.iter().any(|c| c.schedulable);
        let queue = std::mem::take(&mut self.queue);
        for id in queue {
            let task = &self.tasks[&id];
            let request = Request {
                resources: task.spec.resources,
                needs_runtime: task.spec.image.is_some(),
            };
            let placed = any_live
                && match self.scheduler.place(&candidates, &request) {
                    Some(i) => {
                        let worker = workers.slab[workers.order[i]].id.clone();
                        self.assign(&id, &worker, workers, now);
                        let c = &mut candidates[i];
                        c.allocated.cpu += request.resources.cpu;
                        c.allocated.memory_gb += request.resources.memory_gb;
                        c.allocated.gpu += request.resources.gpu;
                        true
                    }
                    None => false,
                };
            if !placed {
                let reason = scheduler::why_not(&candidates, &request);
                let task = self.tasks.get_mut(&id).expect("queued task");
                task.reason = reason;
                self.queue.push_back(id);
            }
        }
    }
}

/// Hands a task's row to the store thread without waiting for the commit.
fn persist(store: &Store, task: &Task) {
    store.enqueue(Write::Task(Box::new(task.clone())));
}

/// The number in a task id (`t-42` → 42), for ordering.
fn task_number(id: &str) -> u64 {
    id.strip_prefix("t-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn unknown_task(id: &str) -> Error {
    Error::not_found(format!("no task '{id}': 'tasks' lists them"))
}
