//! Where a task is placed and what becomes of it: the queue, placements (attempts), the
//! fencing of stale attempts, and the bookkeeping of output. [`Tasks`] owns every task the
//! master keeps in memory; the cluster calls it with the workers it owns, so each piece of
//! state has one owner and nothing imports in a circle.
//!
//! Semantics (README, "Work and crashes"): while a worker's host lives a task runs at most
//! once (the worker reattaches to it after a restart and reports the attempts it holds); on
//! host loss (worker Removed) it is queued again, at least once, up to `--max-attempts`;
//! only the current attempt, from the worker that holds it, may report, and any other
//! attempt a worker reports is told to stop.

mod candidates;
mod lifecycle;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use herd::config::SchedulerKind;
use herd::domain::{TaskSpec, TaskState};
use herd::error::Error;
use herd::pb;
use herd::time::now_ms;

use crate::events::Events;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::records::{Task, TaskFilter, task_number};
use crate::scheduler::{self, Request, Scheduler};
use crate::store::{Change, Store};
use crate::workers::Workers;
use candidates::Candidates;

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

/// Tasks by number (the order of submission).
#[derive(Default)]
struct TaskMap(BTreeMap<u64, Task>);

impl TaskMap {
    fn get(&self, id: &str) -> Option<&Task> {
        self.0.get(&task_number(id)?)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Task> {
        self.0.get_mut(&task_number(id)?)
    }

    fn insert(&mut self, task: Task) {
        self.0.insert(task_number(&task.id).unwrap_or(0), task);
    }

    fn values(&self) -> impl Iterator<Item = &Task> {
        self.0.values()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Task> {
        self.0.values_mut()
    }
}

impl std::ops::Index<&str> for TaskMap {
    type Output = Task;

    fn index(&self, id: &str) -> &Task {
        self.get(id).expect("a known task")
    }
}

/// What the master knows of a task id.
pub enum Lookup<T> {
    /// In memory: unfinished, or finished a moment ago.
    Here(T),
    /// Finished and only in SQLite.
    Stored,
}

/// The tasks the master keeps in memory (the unfinished ones, and finished ones until
/// their final row is committed), the queue, and counts of the finished ones.
pub struct Tasks {
    tasks: TaskMap,
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
    /// Every task change goes out as an event too.
    events: Arc<Events>,
    /// Placements that started, and tasks that ended, since the master started (the
    /// dashboard's chart).
    pub started_total: u64,
    pub finished_total: u64,
    /// Finished tasks by state (all of them, in memory or not).
    finished: BTreeMap<&'static str, u64>,
    /// Finished tasks whose final row is committed: the next tick lets go of them.
    retired: Arc<Mutex<Vec<u64>>>,
    /// Assignments whose message could not be sent after their commit (the worker's
    /// stream was full or gone): queued again at the next pass instead of waiting out the
    /// grace period.
    undelivered: Arc<Mutex<Vec<(String, u32)>>>,
    /// Assignments sent after their commit, and when: a worker's grace period to report
    /// an attempt starts when it was sent, not when it was placed (a placement the store
    /// is slow to take is not the worker's fault).
    sent: Arc<Mutex<Vec<(String, u32, Instant)>>>,
    /// The scheduler's view of the workers, kept between passes.
    candidates: Candidates,
}

impl Tasks {
    pub fn new(
        kind: SchedulerKind,
        max_attempts: u32,
        grace: Duration,
        store: Store,
        metrics: Arc<Metrics>,
        events: Arc<Events>,
    ) -> Tasks {
        Tasks {
            tasks: TaskMap::default(),
            queue: VecDeque::new(),
            next_task: 1,
            scheduler: scheduler::new(kind),
            max_attempts,
            grace,
            store,
            metrics,
            events,
            started_total: 0,
            finished_total: 0,
            finished: BTreeMap::new(),
            retired: Arc::default(),
            undelivered: Arc::default(),
            sent: Arc::default(),
            candidates: Candidates::default(),
        }
    }

    /// Takes in what SQLite knows. Placed tasks stay placed on a worker that is not
    /// Removed (it reattaches them when it reports them, or they are re-queued when it is
    /// Removed); the others are queued again.
    pub fn load(
        &mut self,
        workers: &mut Workers,
        mut loaded: Vec<Task>,
        finished: Vec<(TaskState, u64)>,
        last_task: u64,
        now: Instant,
    ) {
        self.next_task = last_task + 1;
        for (state, n) in finished {
            *self.finished.entry(state.as_str()).or_default() += n;
        }
        loaded.sort_by_key(|t| task_number(&t.id).unwrap_or(0));
        for mut task in loaded {
            let id = task.id.clone();
            if task.state.is_placed() {
                let worker = task.worker_id.clone().unwrap_or_default();
                match workers.get_mut(&worker) {
                    Some(entry) if !entry.presence.removed => {
                        entry.hold(&id, task.spec.resources);
                        restore_gpus(&mut task, entry, &self.store, &self.events);
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
                        persist(&self.store, &self.events, &task);
                    }
                }
            }
            let queued = task.state == TaskState::Queued;
            self.tasks.insert(task);
            if queued {
                self.queue_up(&id, false);
            }
        }
    }

    /// Puts a queued task in its place: higher priority first, and within a priority
    /// after (or, with `first`, before) the tasks already there.
    fn queue_up(&mut self, id: &str, first: bool) {
        let priority = self.tasks[id].spec.priority;
        let at = scheduler::queue::position(&self.queue, priority, first, |other| {
            self.tasks[other.as_str()].spec.priority
        });
        self.queue.insert(at, id.to_string());
    }

    /// Whether `id` names a task this master gave out.
    fn known(&self, id: &str) -> bool {
        task_number(id).is_some_and(|n| n > 0 && n < self.next_task)
    }

    /// Looks a task up in memory; `Stored` when it is finished and only in SQLite.
    pub fn find(&self, id: &str) -> Result<Lookup<&Task>, Error> {
        match self.tasks.get(id) {
            Some(task) => Ok(Lookup::Here(task)),
            None if self.known(id) => Ok(Lookup::Stored),
            None => Err(unknown_task(id)),
        }
    }

    /// Forgets a task whose row could not be stored. No worker has heard of it: a
    /// placement is sent only once committed, and that commit fails without the row.
    pub fn withdraw(&mut self, id: &str, workers: &mut Workers) {
        if self.tasks.get(id).is_none() {
            return;
        }
        self.release(id, workers);
        self.queue.retain(|queued| queued != id);
        if let Some(n) = task_number(id) {
            self.tasks.0.remove(&n);
        }
        tracing::warn!(task = %id, "task withdrawn: its row could not be stored");
    }

    /// Lets go of finished tasks whose final row is committed (SQLite answers for them).
    pub fn drop_retired(&mut self) {
        let retired = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|p| p.into_inner()));
        for n in retired {
            if self.tasks.0.get(&n).is_some_and(|t| t.state.is_final()) {
                self.tasks.0.remove(&n);
            }
        }
    }

    /// A new task, not yet known to anyone: store it, then [`Tasks::enqueue`] it.
    pub fn new_task(&mut self, spec: TaskSpec) -> Task {
        let id = format!("t-{}", self.next_task);
        self.next_task += 1;
        Task {
            id,
            spec: std::sync::Arc::new(spec),
            state: TaskState::Queued,
            worker_id: None,
            attempts: 0,
            exit_code: None,
            reason: "waiting for a placement".into(),
            submitted_ms: now_ms(),
            started_ms: 0,
            finished_ms: 0,
            history: Vec::new(),
            submitted_by: String::new(),
            assigned_at: None,
            cancel_requested: false,
            output_len: 0,
        }
    }

    /// Queues a stored task.
    pub fn enqueue(&mut self, task: Task) -> String {
        info!(task = %task.id, name = %herd::text::or_dash(&task.spec.name), "task submitted");
        self.events.task(&task);
        self.put(task)
    }

    /// Queues a stored batch, in order, logged once; the caller has sent each task's event
    /// already (outside the lock: 10,000 of them cost more than the placement pass).
    pub fn enqueue_batch(&mut self, tasks: Vec<Task>) -> Vec<String> {
        let ids: Vec<String> = tasks.into_iter().map(|t| self.put(t)).collect();
        if let (Some(first), Some(last)) = (ids.first(), ids.last()) {
            info!(tasks = ids.len(), %first, %last, "batch of tasks submitted");
        }
        ids
    }

    fn put(&mut self, task: Task) -> String {
        let id = task.id.clone();
        self.tasks.insert(task);
        self.queue_up(&id, false);
        id
    }

    pub fn info(&self, id: &str, workers: &Workers) -> Result<Lookup<pb::TaskInfo>, Error> {
        Ok(match self.find(id)? {
            Lookup::Here(task) => Lookup::Here(task.info(|w| workers.name_of(w))),
            Lookup::Stored => Lookup::Stored,
        })
    }

    /// The tasks in memory numbered below `before` that match `filter`, newest first, at
    /// most `limit`.
    pub fn page(&self, filter: &TaskFilter, before: u64, limit: usize) -> Vec<&Task> {
        self.tasks
            .0
            .range(..before)
            .rev()
            .map(|(_, t)| t)
            .filter(|t| filter.matches(t))
            .take(limit)
            .collect()
    }

    /// The next task number (pages start below it).
    pub fn next_number(&self) -> u64 {
        self.next_task
    }

    /// Where the output of task `id` stands.
    pub fn logs(&self, id: &str) -> Result<Lookup<LogsView>, Error> {
        Ok(match self.find(id)? {
            Lookup::Here(task) => Lookup::Here(LogsView {
                attempt: task.attempts,
                len: task.output_len,
                done: task.state.is_final(),
            }),
            Lookup::Stored => Lookup::Stored,
        })
    }

    /// Tasks by state word, and the queue length.
    pub fn counts(&self) -> (Vec<(&'static str, usize)>, usize) {
        let by_state = TaskState::ALL
            .iter()
            .map(|&s| {
                let n = if s.is_final() {
                    self.finished.get(s.as_str()).copied().unwrap_or(0) as usize
                } else {
                    self.tasks.values().filter(|t| t.state == s).count()
                };
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
        self.take_sent();
        self.requeue_undelivered(workers, now);
        if self.queue.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        self.schedule_queue(workers, liveness, now);
        Metrics::observe(&self.metrics.scheduling, started.elapsed());
    }

    fn schedule_queue(&mut self, workers: &mut Workers, liveness: &Liveness, now: Instant) {
        self.candidates.refresh(workers, liveness, now);
        let mut view = std::mem::take(&mut self.candidates);
        let queue = std::mem::take(&mut self.queue);
        // Workers held for tasks that waited too long (left out for the rest of the pass).
        let mut held: Vec<usize> = Vec::new();
        let wall = now_ms();
        for id in queue {
            let candidates = &mut view.list;
            let task = &self.tasks[&id];
            let request = Request {
                resources: task.spec.resources,
                needs_runtime: task.spec.image.is_some(),
            };
            // Workers whose labels do not meet the task's constraints are out for it.
            let constraints = task.spec.constraints.clone();
            let unmet: Vec<usize> = if constraints.is_empty() {
                Vec::new()
            } else {
                (0..candidates.len())
                    .filter(|&i| {
                        let labels = &workers.slab[workers.order[i]].spec.labels;
                        candidates[i].schedulable && !constraints.iter().all(|c| c.holds(labels))
                    })
                    .collect()
            };
            for &i in &unmet {
                candidates[i].schedulable = false;
            }
            let placed = loop {
                let Some(i) = self.scheduler.place(&view.list, &request) else {
                    break false;
                };
                // The view may be older than the liveness rule at this moment, or the
                // stream full: such a worker is left out until it changes.
                if !view.still_fits(i, workers, liveness, now) {
                    continue;
                }
                // The policy counted GPUs; the pool picks which (lowest free first).
                let entry = &mut workers.slab[workers.order[i]];
                let Some(gpu_ids) = entry.gpus.take(request.resources.gpu, &id) else {
                    view.list[i].schedulable = false;
                    continue;
                };
                let worker = entry.id.clone();
                self.assign(&id, &worker, gpu_ids, workers);
                view.list[i].book(&request.resources);
                break true;
            };
            let candidates = &mut view.list;
            let waited = u64::try_from(wall - self.tasks[&id].submitted_ms).unwrap_or(0);
            let mut holding = None;
            if !placed && waited >= scheduler::RESERVE_AFTER_MS && held.len() < scheduler::MAX_HELD
            {
                // Long enough behind smaller tasks: hold the worker closest to room for it.
                if let Some(i) = scheduler::reservation(candidates, &request) {
                    candidates[i].schedulable = false;
                    held.push(i);
                    holding = Some(i);
                }
            }
            if !placed {
                let meets = candidates.iter().any(|c| c.schedulable);
                let reason = if !constraints.is_empty() && !meets && !unmet.is_empty() {
                    unmet_reason(&constraints, &unmet, workers)
                } else {
                    scheduler::why_not(candidates, &request)
                };
                let reason = match holding {
                    Some(i) => format!(
                        "{reason}; worker {} is held for it (no new task goes there until it \
                         fits: it waited over {} min)",
                        workers.slab[workers.order[i]].spec.name,
                        scheduler::RESERVE_AFTER_MS / 60_000
                    ),
                    None => reason,
                };
                let task = self.tasks.get_mut(&id).expect("queued task");
                task.reason = reason;
                self.queue.push_back(id);
            }
            for &i in &unmet {
                candidates[i].schedulable = true;
            }
        }
        for i in held {
            view.list[i].schedulable = true;
        }
        self.candidates = view;
    }
}

/// Why no live worker meets `constraints` (`unmet`: the live ones that do not): the first
/// constraint none of them meets, or that they hold only apart.
fn unmet_reason(
    constraints: &[herd::constraint::Constraint],
    unmet: &[usize],
    workers: &Workers,
) -> String {
    let labels = |i: usize| &workers.slab[workers.order[i]].spec.labels;
    match constraints
        .iter()
        .find(|c| !unmet.iter().any(|&i| c.holds(labels(i))))
    {
        Some(c) => format!("no Active worker meets the constraint {c}"),
        None => {
            let all: Vec<String> = constraints.iter().map(|c| c.to_string()).collect();
            format!(
                "no Active worker meets the constraints {} together",
                all.join(", ")
            )
        }
    }
}

/// A placed task read back at start takes its GPU indices on its worker again: those its
/// attempt recorded, or (recorded by a master that did not keep them, or no longer free)
/// the lowest free ones, recorded now.
fn restore_gpus(
    task: &mut Task,
    entry: &mut crate::workers::KnownWorker,
    store: &Store,
    events: &Events,
) {
    let want = task.spec.resources.gpu;
    if want == 0 {
        return;
    }
    let kept = task.gpu_ids().to_vec();
    if kept.len() == want as usize && entry.gpus.hold(&kept, &task.id) {
        return;
    }
    let ids = entry.gpus.take(want, &task.id).unwrap_or_default();
    tracing::warn!(task = %task.id, worker = %entry.spec.name, ?kept, now = ?ids,
        "the GPUs recorded for the task could not be restored; it holds others now");
    if let Some(a) = task.current() {
        a.gpu_ids = ids;
    }
    persist(store, events, task);
}

/// Hands a task's row to the store thread without waiting for the commit, and tells the
/// event stream.
fn persist(store: &Store, events: &Events, task: &Task) {
    events.task(task);
    store.save(Change::TaskState(Box::new(task.clone())));
}

fn unknown_task(id: &str) -> Error {
    Error::not_found(format!(
        "no task '{}': 'tasks' lists them",
        herd::text::clip(id)
    ))
}
