//! What operators ask of the cluster (through `ops/`): views of workers and tasks, and
//! the changes they make (submit, cancel, drain, forget, the scheduler).

use tonic::Status;
use tracing::info;

use herd::config::SchedulerKind;
use herd::domain::{NewWorker, Resources, TaskSpec, WorkerSpec, WorkerState};
use herd::error::Error;
use herd::pb;

use super::Cluster;
use crate::records::{Summary, Task, TaskFilter, WorkerRecord, task_number};
use crate::tasks::{LogsView, Lookup};
use crate::workers::KnownWorker;

impl Cluster {
    /// Workers as of now, ordered by name, from the first name after `after`: at most
    /// `limit` and at most `max_bytes` encoded (at least one). Removed ones only with
    /// `all`. Also says whether more follow.
    pub fn list(
        &self,
        all: bool,
        after: &str,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<pb::WorkerInfo>, bool) {
        use prost::Message;
        let (inner, now) = self.lock();
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut listed = inner
            .workers
            .ordered_after(after)
            .map(|w| w.info(&inner.liveness, now))
            .filter(|w| all || w.state() != pb::WorkerState::Removed);
        for w in listed.by_ref() {
            bytes += w.encoded_len() + 8;
            if !page.is_empty() && (page.len() >= limit || bytes > max_bytes) {
                return (page, true);
            }
            page.push(w);
        }
        (page, false)
    }

    /// One worker by id or name.
    pub fn get(&self, id_or_name: &str) -> Result<pb::WorkerInfo, Error> {
        let (inner, now) = self.lock();
        let id = inner.workers.resolve(id_or_name)?;
        Ok(inner.workers[id.as_str()].info(&inner.liveness, now))
    }

    /// The name of the worker with this id, if it is known.
    pub fn name_of(&self, id: &str) -> Option<String> {
        self.lock().0.workers.name_of(id).map(str::to_string)
    }

    /// A new task, not yet known to anyone: store it, then [`Cluster::enqueue`] it.
    pub fn new_task(&self, spec: TaskSpec) -> Task {
        self.lock().0.tasks.new_task(spec)
    }

    /// Queues a stored task and places what fits.
    pub fn enqueue(&self, task: Task) -> pb::TaskInfo {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        let id = inner.tasks.enqueue(task);
        inner
            .tasks
            .schedule(&mut inner.workers, &inner.liveness, now);
        match inner.tasks.info(&id, &inner.workers) {
            Ok(Lookup::Here(info)) => info,
            _ => unreachable!("a task just queued is in memory"),
        }
    }

    /// New tasks with consecutive ids, in order (see [`Cluster::new_task`]).
    pub fn new_tasks(&self, specs: Vec<TaskSpec>) -> Vec<Task> {
        let (mut inner, _) = self.lock();
        specs
            .into_iter()
            .map(|spec| inner.tasks.new_task(spec))
            .collect()
    }

    /// Queues stored tasks and places what fits, in one pass; their ids, in order.
    pub fn enqueue_all(&self, tasks: Vec<Task>) -> Vec<String> {
        // Each task's event goes out before it is queued (so before any event of its
        // placement), built without holding the lock that heartbeats wait on.
        let events = self.lock().0.events.clone();
        for task in &tasks {
            events.task(task);
        }
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        let ids = inner.tasks.enqueue_batch(tasks);
        inner
            .tasks
            .schedule(&mut inner.workers, &inner.liveness, now);
        ids
    }

    /// Forgets tasks whose rows could not be stored (their submission failed and was not
    /// acknowledged): they leave the queue and free what they were given.
    pub fn withdraw(&self, ids: &[String]) {
        let (mut guard, _) = self.lock();
        let inner = &mut *guard;
        for id in ids {
            inner.tasks.withdraw(id, &mut inner.workers);
        }
    }

    /// One task as the master has it in memory (`Stored`: ask SQLite).
    pub fn task(&self, id: &str) -> Result<Lookup<pb::TaskInfo>, Error> {
        let (inner, _) = self.lock();
        inner.tasks.info(id, &inner.workers)
    }

    /// The tasks in memory numbered below `before` matching `filter`, newest first, with
    /// their numbers; and the number a first page starts below.
    pub fn task_page(
        &self,
        filter: &TaskFilter,
        before: Option<u64>,
        limit: usize,
    ) -> (Vec<(u64, pb::TaskInfo)>, u64) {
        let (inner, _) = self.lock();
        let next = inner.tasks.next_number();
        let page = inner
            .tasks
            .page(filter, before.unwrap_or(next), limit)
            .into_iter()
            .map(|t| {
                let n = task_number(&t.id).unwrap_or(0);
                (n, t.info(|w| inner.workers.name_of(w)))
            })
            .collect();
        (page, next)
    }

    /// Views of tasks read from SQLite (with their workers' names).
    pub fn task_infos(&self, tasks: &[Task]) -> Vec<pb::TaskInfo> {
        let (inner, _) = self.lock();
        tasks
            .iter()
            .map(|t| t.info(|w| inner.workers.name_of(w)))
            .collect()
    }

    /// The id of a worker named by id or name.
    pub fn resolve_worker(&self, id_or_name: &str) -> Result<String, Error> {
        self.lock().0.workers.resolve(id_or_name)
    }

    /// Cancels a task: a queued one at once, a placed one by telling its worker.
    pub fn cancel(&self, id: &str) -> Result<pb::TaskInfo, Error> {
        let (mut guard, _) = self.lock();
        let inner = &mut *guard;
        inner.tasks.cancel(id, &mut inner.workers)?;
        match inner.tasks.info(id, &inner.workers)? {
            Lookup::Here(info) => Ok(info),
            Lookup::Stored => Err(Error::FailedPrecondition(format!("task {id} has ended"))),
        }
    }

    /// Where a task's output stands (`Stored`: it ended and only SQLite knows it).
    pub fn logs(&self, id: &str) -> Result<Lookup<LogsView>, Error> {
        self.lock().0.tasks.logs(id)
    }

    /// Forgets a worker that is not Active: its unfinished tasks are queued again and its
    /// name is free. Returns its last view and the id to delete from SQLite.
    pub fn forget(&self, id_or_name: &str) -> Result<pb::WorkerInfo, Error> {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        let id = inner.workers.resolve(id_or_name)?;
        let entry = &inner.workers[id.as_str()];
        let state = inner.liveness.state(&entry.presence, now);
        if state == WorkerState::Active {
            return Err(Error::FailedPrecondition(format!(
                "worker {} ({id}) is Active; stop it first (only Inactive or Removed workers \
                 can be forgotten)",
                entry.spec.name
            )));
        }
        let info = entry.info(&inner.liveness, now);
        let why = format!("worker {} was forgotten", entry.spec.name);
        inner.tasks.worker_gone(&id, &why, &mut inner.workers);
        let entry = inner.workers.forget(&id);
        if let Some(session) = entry.and_then(|e| e.session.take()) {
            let _ = session.end.send(Status::not_found(
                "this worker was forgotten: register again",
            ));
        }
        info!(worker = %info.description.as_ref().map(|d| d.name.as_str()).unwrap_or(""), %id, "worker forgotten");
        inner.events.forgotten(&info);
        inner
            .tasks
            .schedule(&mut inner.workers, &inner.liveness, now);
        Ok(info)
    }

    /// Pre-registers a worker (`worker add`): Pending, with an id, until a worker of that
    /// name registers and takes it. Returns the record to store.
    /// Gives a worker that is not Active a new secret (by its hash): the process holding
    /// the old one can no longer be it. Returns the record to store.
    pub fn set_secret(
        &self,
        id_or_name: &str,
        hash: crate::records::SecretHash,
    ) -> Result<WorkerRecord, Error> {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        let id = inner.workers.resolve(id_or_name)?;
        let entry = inner.workers.get_mut(&id).expect("resolved");
        if inner.liveness.state(&entry.presence, now) == WorkerState::Active {
            return Err(Error::FailedPrecondition(format!(
                "worker {} ({id}) is Active: a new secret would lock its process out; stop it \
                 first (only workers that are not Active get a new secret)",
                entry.spec.name
            )));
        }
        entry.secret_hash = Some(hash);
        info!(worker = %entry.spec.name, %id, "a new worker secret was issued; the old one no longer works");
        Ok(entry.record())
    }

    pub fn add_worker(&self, new: NewWorker) -> Result<WorkerRecord, Error> {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        if let Some(id) = inner.workers.id_of(&new.name) {
            let entry = &inner.workers[id];
            return Err(Error::AlreadyExists(format!(
                "a worker named {} is already known ({id}, {}); 'worker forget {}' frees the \
                 name",
                new.name,
                entry.shown(&inner.liveness, now).as_str_name(),
                new.name
            )));
        }
        let id = inner.workers.new_id();
        let spec = WorkerSpec {
            name: new.name,
            host: String::new(),
            address: String::new(),
            version: String::new(),
            capacity: Resources::default(),
            labels: new.labels.clone(),
            runtime: None,
            isolation: String::new(),
            gpus: Vec::new(),
        };
        let mut entry = KnownWorker::new(id.clone(), spec, now);
        entry.presence.pending = true;
        entry.recorded = WorkerState::Pending;
        entry.added_labels = new.labels;
        info!(worker = %entry.spec.name, %id, labels = entry.added_labels.len(),
              "worker pre-registered (Pending until it connects)");
        inner.events.worker(entry.info(&inner.liveness, now));
        let record = entry.record();
        inner.workers.insert(entry);
        Ok(record)
    }

    /// Drains (or undrains) a worker by id or name; returns the record to store.
    pub fn drain(&self, id_or_name: &str, drain: bool) -> Result<WorkerRecord, Error> {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        let id = inner.workers.resolve(id_or_name)?;
        let entry = inner.workers.get_mut(&id).expect("resolved");
        if entry.draining != drain {
            entry.draining = drain;
            info!(worker = %entry.spec.name, %id, draining = drain,
                  "{}", if drain { "worker draining" } else { "worker undrained" });
            inner.events.worker(entry.info(&inner.liveness, now));
        }
        let record = entry.record();
        if !drain {
            inner
                .tasks
                .schedule(&mut inner.workers, &inner.liveness, now);
        }
        Ok(record)
    }

    /// The cluster's totals now, for the dashboard's chart: capacity, allocation and use
    /// of the Active workers, and the running counts of tasks started and finished.
    pub fn totals(&self) -> crate::records::Totals {
        let (inner, now) = self.lock();
        let mut t = crate::records::Totals {
            tasks_started: inner.tasks.started_total,
            tasks_finished: inner.tasks.finished_total,
            ..Default::default()
        };
        for w in inner.workers.values() {
            if inner.liveness.state(&w.presence, now) != WorkerState::Active {
                continue;
            }
            let cap = w.spec.capacity;
            t.cpu_total += cap.cpu;
            t.cpu_allocated += w.allocated.cpu;
            t.cpu_used += cap.cpu * w.usage.cpu_percent / 100.0;
            t.memory_total_gb += cap.memory_gb;
            t.memory_allocated_gb += w.allocated.memory_gb;
            t.memory_used_gb += w.usage.memory_used_gb;
        }
        t
    }

    /// Counts for `status` and metrics.
    pub fn summary(&self) -> Summary {
        let (inner, now) = self.lock();
        let (tasks, queued) = inner.tasks.counts();
        let workers = [
            pb::WorkerState::Pending,
            pb::WorkerState::Active,
            pb::WorkerState::Draining,
            pb::WorkerState::Inactive,
            pb::WorkerState::Removed,
        ]
        .into_iter()
        .map(|state| {
            let n = inner
                .workers
                .values()
                .filter(|w| w.shown(&inner.liveness, now) == state)
                .count();
            (herd::views::state_word(state), n)
        })
        .collect();
        Summary {
            workers,
            tasks,
            queued,
            scheduler: inner.tasks.scheduler_kind(),
        }
    }

    /// The current policy, after switching to `to` when given.
    pub fn scheduler(&self, to: Option<SchedulerKind>) -> SchedulerKind {
        let (mut guard, now) = self.lock();
        let inner = &mut *guard;
        if let Some(kind) = to
            && inner.tasks.switch_scheduler(kind)
        {
            inner
                .tasks
                .schedule(&mut inner.workers, &inner.liveness, now);
        }
        inner.tasks.scheduler_kind()
    }
}
