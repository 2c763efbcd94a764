//! How a task's state changes: placement (an attempt, dispatched only once it is
//! committed), what workers report (started, finished, output, the attempts they hold),
//! fencing of stale attempts, cancel, and re-queueing when a worker is gone.

use std::collections::HashSet;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use herd::domain::{MAX_OUTPUT_CHUNK, TaskState};
use herd::error::Error;
use herd::pb;
use herd::pb::master_message::Body as ToWorker;
use herd::time::now_ms;

use super::{Tasks, persist, unknown_task};
use crate::records::{Attempt, Outcome};
use crate::store::Change;
use crate::workers::Workers;

impl Tasks {
    /// Places task `id` on `worker_id` as its next attempt. The assignment reaches the
    /// worker only after the placement is committed: a master killed at any moment never
    /// has a worker run an attempt that SQLite does not know.
    pub(super) fn assign(
        &mut self,
        id: &str,
        worker_id: &str,
        gpu_ids: Vec<u32>,
        workers: &mut Workers,
    ) {
        let task = self.tasks.get_mut(id).expect("known task");
        let entry = workers.get_mut(worker_id).expect("known worker");
        let attempt = task.attempts + 1;
        task.attempts = attempt;
        task.state = TaskState::Assigned;
        task.worker_id = Some(worker_id.to_string());
        // Not sent yet: the worker's grace starts when it is (`take_sent`).
        task.assigned_at = None;
        task.reason.clear();
        task.output_len = 0;
        task.history.push(Attempt {
            attempt,
            worker_id: worker_id.to_string(),
            outcome: Outcome::Assigned,
            exit_code: None,
            reason: String::new(),
            assigned_ms: now_ms(),
            finished_ms: 0,
            gpu_ids: gpu_ids.clone(),
        });
        entry.hold(id, task.spec.resources);
        info!(task = %id, worker = %entry.spec.name, attempt, ?gpu_ids, "task assigned");
        let message = pb::MasterMessage {
            body: Some(ToWorker::Assign(pb::TaskAssignment {
                task_id: id.to_string(),
                attempt,
                name: task.spec.name.clone(),
                image: task.spec.image.clone().unwrap_or_default(),
                command: task.spec.command.clone().unwrap_or_default(),
                resources: Some(task.spec.resources.into()),
                gpu_ids,
                timeout_ms: task.spec.run.timeout.map_or(0, |d| d.as_millis() as u64),
                env: task.spec.run.env.clone().into_iter().collect(),
                workdir: task.spec.run.workdir.clone().unwrap_or_default(),
                keep_on_disconnect: task.spec.run.on_disconnect.keeps(),
            })),
        };
        let outbound = entry.session.as_ref().map(|s| s.outbound.clone());
        let (task_id, worker) = (id.to_string(), entry.spec.name.clone());
        self.events.task(task);
        let (undelivered, sent) = (self.undelivered.clone(), self.sent.clone());
        self.store
            .save_then(Change::TaskState(Box::new(task.clone())), move || {
                // A full or closed stream: the worker never hears of it, so the task goes
                // back to the queue at the next pass.
                if outbound.is_none_or(|o| o.try_send(Ok(Box::new(message))).is_err()) {
                    warn!(task = %task_id, %worker, "the assignment could not be sent; re-queuing it");
                    undelivered
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((task_id, attempt));
                } else {
                    let at = Instant::now();
                    let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                    sent.push((task_id, attempt, at));
                }
            });
    }

    /// Starts the grace period of every assignment sent since the last look, from when it
    /// was sent.
    pub(super) fn take_sent(&mut self) {
        let sent = std::mem::take(&mut *self.sent.lock().unwrap_or_else(|p| p.into_inner()));
        for (id, attempt, at) in sent {
            if let Some(task) = self.tasks.get_mut(&id)
                && task.state.is_placed()
                && task.attempts == attempt
                && task.assigned_at.is_none()
            {
                task.assigned_at = Some(at);
            }
        }
    }

    /// Takes in what a heartbeat says about tasks: final results (returned: the ids to
    /// acknowledge once committed), the attempts the worker holds (stale ones are told to
    /// stop), and placements the worker no longer has (queued again).
    pub fn on_heartbeat(
        &mut self,
        worker_id: &str,
        hb: &pb::Heartbeat,
        workers: &mut Workers,
        now: Instant,
    ) -> Vec<String> {
        let mut acked = Vec::with_capacity(hb.finished.len());
        for update in &hb.finished {
            // Results of tasks this worker never held are acknowledged and ignored, so a
            // worker cannot be stuck repeating them (e.g. after the master lost state).
            if self.may_speak_for(worker_id, &update.task_id).is_ok() {
                self.update(worker_id, update, workers);
            }
            acked.push(update.task_id.clone());
        }
        let held = held_attempts(hb);
        if held.is_empty() && workers[worker_id].tasks.is_empty() {
            return acked;
        }
        for &(id, attempt) in &held {
            // An ended attempt is held until its result is acknowledged: the result
            // (taken above) speaks for it.
            let ended = hb
                .finished
                .iter()
                .any(|u| u.task_id == id && u.attempt == attempt);
            if !ended {
                self.check_held(worker_id, id, attempt, workers);
            }
        }
        // Tasks placed here that the worker no longer holds (past the grace period of an
        // assignment in flight, counted from when it was sent; one not sent yet, its
        // placement not stored yet, is not judged): lost. Sends are looked up only when a
        // task here has none yet.
        if workers[worker_id]
            .tasks
            .iter()
            .any(|id| self.tasks[id.as_str()].assigned_at.is_none())
        {
            self.take_sent();
        }
        let holding: HashSet<&str> = held
            .iter()
            .map(|(id, _)| *id)
            .chain(hb.finished.iter().map(|u| u.task_id.as_str()))
            .collect();
        let lost: Vec<String> = workers[worker_id]
            .tasks
            .iter()
            .filter(|id| !holding.contains(id.as_str()))
            .filter(|id| {
                self.tasks[id.as_str()]
                    .assigned_at
                    .is_some_and(|at| now.saturating_duration_since(at) > self.grace)
            })
            .cloned()
            .collect();
        for id in lost {
            let why = format!(
                "worker {} no longer has the task",
                workers[worker_id].spec.name
            );
            self.requeue_or_fail(&id, &why, workers);
        }
        acked
    }

    /// A worker says it holds `attempt` of task `id` (0: an old worker that does not say
    /// which): the current one is confirmed running; anything else is told to stop.
    fn check_held(&mut self, worker_id: &str, id: &str, attempt: u32, workers: &mut Workers) {
        let entry = &workers[worker_id];
        match self.tasks.get_mut(id) {
            Some(task)
                if task.state.is_placed()
                    && task.worker_id.as_deref() == Some(worker_id)
                    && (attempt == 0 || attempt == task.attempts) =>
            {
                if task.state == TaskState::Assigned {
                    mark_running(task);
                    self.started_total += 1;
                    persist(&self.store, &self.events, task);
                }
                if task.cancel_requested {
                    entry.cancel(id, task.attempts, "cancelled by an operator");
                }
            }
            Some(task) => {
                let why = if task.state.is_final() {
                    format!("the task is already {}", task.state)
                } else {
                    "a newer attempt of the task replaced this one".to_string()
                };
                info!(task = %id, attempt, worker = %entry.spec.name, %why, "stopping a stale attempt");
                entry.cancel(id, attempt, &why);
                if fence(task, worker_id, attempt, &why) {
                    persist(&self.store, &self.events, task);
                }
            }
            None => entry.cancel(id, attempt, "the master does not know this task"),
        }
    }

    /// A task update from a worker (already known to speak for the task); true when
    /// resources were freed.
    pub fn update(
        &mut self,
        worker_id: &str,
        update: &pb::TaskUpdate,
        workers: &mut Workers,
    ) -> bool {
        let Some(task) = self.tasks.get_mut(&update.task_id) else {
            return false;
        };
        let ours = task.worker_id.as_deref() == Some(worker_id)
            && task.attempts == update.attempt
            && task.state.is_placed();
        if !ours {
            // A stale attempt, a copy re-queued elsewhere, or an update applied already.
            debug!(task = %update.task_id, attempt = update.attempt, "update of a stale attempt ignored");
            if update.event() == pb::TaskEvent::Started
                && let Some(entry) = workers.get(worker_id)
            {
                let why = "a newer attempt of the task replaced this one";
                entry.cancel(&update.task_id, update.attempt, why);
                if fence(task, worker_id, update.attempt, why) {
                    persist(&self.store, &self.events, task);
                }
            }
            return false;
        }
        let (state, default_reason) = match update.event() {
            pb::TaskEvent::Started => {
                if task.state == TaskState::Assigned {
                    mark_running(task);
                    self.started_total += 1;
                    persist(&self.store, &self.events, task);
                    info!(task = %task.id, worker = %workers[worker_id].spec.name, "task started");
                }
                return false;
            }
            pb::TaskEvent::Succeeded => (TaskState::Succeeded, ""),
            pb::TaskEvent::Failed => (TaskState::Failed, "failed"),
            pb::TaskEvent::Cancelled => (TaskState::Cancelled, "cancelled"),
            pb::TaskEvent::Lost => {
                // The worker stopped it, cut off past its fencing deadline: as if its
                // worker were lost, so it runs again (within --max-attempts).
                let why = if update.message.is_empty() {
                    "stopped by its worker, cut off from the master".to_string()
                } else {
                    herd::domain::bounded_reason(&update.message)
                };
                let id = update.task_id.clone();
                self.requeue_or_fail(&id, &why, workers);
                return true;
            }
            pb::TaskEvent::Unspecified => return false,
        };
        let state = if task.cancel_requested && state != TaskState::Succeeded {
            TaskState::Cancelled
        } else {
            state
        };
        let reason = if update.message.is_empty() {
            default_reason.to_string()
        } else {
            herd::domain::bounded_reason(&update.message)
        };
        let id = update.task_id.clone();
        if state == TaskState::Failed && self.retry(&id, update.exit_code, &reason, workers) {
            return true;
        }
        self.finish(&id, state, update.exit_code, &reason, workers);
        true
    }

    /// A run that exited by itself with a non-zero code, with retries left: the attempt
    /// ends `failed` and the task is queued again for a new one (first within its
    /// priority). Not for a task killed (timeout, cancel, out of memory: no exit code),
    /// one that could not start, or a container that never ran (the runtime's 125-127:
    /// its image, command or workdir would fail again); true when it was queued again.
    fn retry(
        &mut self,
        id: &str,
        exit_code: Option<i32>,
        reason: &str,
        workers: &mut Workers,
    ) -> bool {
        let task = &self.tasks[id];
        let used = task.retries_used();
        let never_ran = task.spec.image.is_some() && matches!(exit_code, Some(125..=127));
        if exit_code.is_none_or(|c| c == 0) || never_ran || used >= task.spec.run.retries {
            return false;
        }
        self.release(id, workers);
        let task = self.tasks.get_mut(id).expect("known task");
        if let Some(a) = task.current().filter(|a| a.outcome.is_open()) {
            a.outcome = Outcome::Failed;
            a.exit_code = exit_code;
            a.reason = reason.to_string();
            a.finished_ms = now_ms();
        }
        let (used, of) = (used + 1, task.spec.run.retries);
        info!(task = %id, attempt = task.attempts, retry = used, of, reason, "task failed; retrying");
        task.state = TaskState::Queued;
        task.worker_id = None;
        task.assigned_at = None;
        task.exit_code = exit_code;
        task.reason = format!("{reason}; retry {used} of {of}");
        persist(&self.store, &self.events, task);
        self.queue_up(id, true);
        true
    }

    /// Output of the current attempt from the worker that holds it: the bytes past what
    /// the master has are appended (on disk, by the store thread, in order with the task's
    /// final update). Output of other attempts, duplicates and gaps are ignored.
    pub fn output(&mut self, worker_id: &str, output: &pb::TaskOutput) -> Result<(), Error> {
        self.may_speak_for(worker_id, &output.task_id)?;
        if output.data.len() > MAX_OUTPUT_CHUNK {
            return Err(Error::invalid(format!(
                "TaskOutput.data is {} bytes; at most {MAX_OUTPUT_CHUNK} are allowed",
                output.data.len()
            )));
        }
        let Some(task) = self.tasks.get_mut(&output.task_id) else {
            return Ok(());
        };
        if task.worker_id.as_deref() != Some(worker_id)
            || task.attempts != output.attempt
            || task.state.is_final()
        {
            return Ok(());
        }
        let end = output.offset + output.data.len() as u64;
        if output.offset > task.output_len || end <= task.output_len {
            return Ok(());
        }
        let skip = (task.output_len - output.offset) as usize;
        self.store.save(Change::Output {
            task: task.id.clone(),
            attempt: task.attempts,
            offset: task.output_len,
            data: output.data[skip..].to_vec(),
        });
        task.output_len = end;
        Ok(())
    }

    /// For each attempt a worker holds that is still wanted: how much output the master
    /// has, so the worker sends the rest.
    pub fn resume(&self, worker_id: &str, hb: &pb::Heartbeat) -> Vec<pb::OutputResume> {
        held_attempts(hb)
            .into_iter()
            .filter_map(|(id, attempt)| {
                let task = self.tasks.get(id)?;
                (task.worker_id.as_deref() == Some(worker_id)
                    && task.state.is_placed()
                    && (attempt == 0 || attempt == task.attempts))
                    .then(|| pb::OutputResume {
                        task_id: id.to_string(),
                        attempt: task.attempts,
                        offset: task.output_len,
                    })
            })
            .collect()
    }

    /// Cancels a task: a queued one at once, a placed one by telling its worker.
    pub fn cancel(&mut self, id: &str, workers: &mut Workers) -> Result<(), Error> {
        if let super::Lookup::Stored = self.find(id)? {
            return Err(Error::FailedPrecondition(format!(
                "task {id} has already ended; nothing to cancel"
            )));
        }
        let task = self.tasks.get_mut(id).ok_or_else(|| unknown_task(id))?;
        match task.state {
            s if s.is_final() => Err(Error::FailedPrecondition(format!(
                "task {id} already {s}; nothing to cancel"
            ))),
            TaskState::Queued => {
                self.queue.retain(|q| q != id);
                self.finish(
                    id,
                    TaskState::Cancelled,
                    None,
                    "cancelled while queued",
                    workers,
                );
                Ok(())
            }
            _ => {
                let worker = task.worker_id.clone().unwrap_or_default();
                match workers.get(&worker).filter(|w| w.session.is_some()) {
                    Some(entry) => {
                        task.cancel_requested = true;
                        task.reason = "cancel requested".into();
                        entry.cancel(id, task.attempts, "cancelled by an operator");
                        persist(&self.store, &self.events, task);
                    }
                    None => {
                        // The worker is away: cancel now; if it comes back with the task,
                        // it is told to stop it.
                        self.finish(
                            id,
                            TaskState::Cancelled,
                            None,
                            "cancelled; worker away",
                            workers,
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// Queues again the attempts whose assignment could not be sent (still current).
    /// Their worker takes no new task until a tick finds room on its stream again (and is
    /// cut off if none comes for a heartbeat timeout): at most one undelivered attempt per
    /// tick, however fast its queue refills.
    pub(super) fn requeue_undelivered(&mut self, workers: &mut Workers, now: Instant) {
        let undelivered =
            std::mem::take(&mut *self.undelivered.lock().unwrap_or_else(|p| p.into_inner()));
        for (id, attempt) in undelivered {
            let current = self
                .tasks
                .get(&id)
                .is_some_and(|t| t.state == TaskState::Assigned && t.attempts == attempt);
            if current {
                let why = "its assignment could not be sent to the worker";
                let task = self.tasks.get_mut(&id).expect("current");
                if let Some(session) = task
                    .worker_id
                    .as_deref()
                    .and_then(|w| workers.get_mut(w))
                    .and_then(|w| w.session.as_mut())
                {
                    session.full_since.get_or_insert(now);
                }
                if let Some(a) = task.current() {
                    a.outcome = Outcome::Undelivered;
                    a.reason = why.to_string();
                    a.finished_ms = now_ms();
                }
                self.requeue_or_fail(&id, why, workers);
            }
        }
    }

    /// Worker `worker_id` is gone (Removed, or forgotten): its unfinished tasks are queued
    /// again.
    pub fn worker_gone(&mut self, worker_id: &str, why: &str, workers: &mut Workers) {
        let placed: Vec<String> = workers[worker_id].tasks.iter().cloned().collect();
        for id in placed {
            self.requeue_or_fail(&id, why, workers);
        }
    }

    /// A worker may report only on tasks it holds or held. A finished task the master
    /// no longer keeps in memory passes (whatever is said of it is ignored: it is done).
    pub fn may_speak_for(&self, worker_id: &str, task_id: &str) -> Result<(), Error> {
        match self.find(task_id) {
            Ok(super::Lookup::Here(task)) if task.held_by(worker_id) => Ok(()),
            Ok(super::Lookup::Stored) => Ok(()),
            _ => Err(Error::PermissionDenied(format!(
                "task '{}' was never assigned to worker {worker_id}",
                herd::text::clip(task_id)
            ))),
        }
    }

    /// Ends a task for good, freeing what it held.
    fn finish(
        &mut self,
        id: &str,
        state: TaskState,
        exit_code: Option<i32>,
        reason: &str,
        workers: &mut Workers,
    ) {
        self.release(id, workers);
        let task = self.tasks.get_mut(id).expect("finish of a known task");
        task.state = state;
        task.exit_code = exit_code;
        task.reason = reason.to_string();
        task.finished_ms = now_ms();
        task.assigned_at = None;
        if let Some(a) = task.current().filter(|a| a.outcome.is_open()) {
            a.outcome = state.into();
            a.exit_code = exit_code;
            a.reason = reason.to_string();
            a.finished_ms = now_ms();
        }
        info!(task = %id, state = %state, exit_code = %herd::text::Maybe(&exit_code), reason, "task ended");
        *self.finished.entry(state.as_str()).or_default() += 1;
        self.finished_total += 1;
        self.events.task(task);
        // Once the final row is committed, SQLite answers for the task.
        let (retired, n) = (self.retired.clone(), crate::records::task_number(id));
        self.store
            .save_then(Change::TaskState(Box::new(task.clone())), move || {
                if let Some(n) = n {
                    retired.lock().unwrap_or_else(|p| p.into_inner()).push(n);
                }
            });
    }

    /// Frees what a placed task held on its worker.
    pub(super) fn release(&mut self, id: &str, workers: &mut Workers) {
        let task = &self.tasks[id];
        if !task.state.is_placed() {
            return;
        }
        let resources = task.spec.resources;
        if let Some(entry) = task.worker_id.as_ref().and_then(|w| workers.get_mut(w)) {
            entry.release(id, resources);
        }
    }

    /// The task's worker is gone: queue it again, or fail it after too many attempts.
    fn requeue_or_fail(&mut self, id: &str, why: &str, workers: &mut Workers) {
        let task = self.tasks.get_mut(id).expect("known task");
        if let Some(a) = task.current().filter(|a| a.outcome.is_open()) {
            a.outcome = Outcome::Lost;
            a.reason = why.to_string();
            a.finished_ms = now_ms();
        }
        if task.cancel_requested {
            self.finish(id, TaskState::Cancelled, None, why, workers);
            return;
        }
        // Runs that failed and were retried do not count, nor assignments that never
        // reached the worker: --max-attempts bounds the placements lost with their worker,
        // --retries the runs that failed.
        if task.counted_attempts() >= self.max_attempts {
            let reason = format!("{why}; gave up after {} attempts", task.attempts);
            self.finish(id, TaskState::Failed, None, &reason, workers);
            return;
        }
        self.release(id, workers);
        let task = self.tasks.get_mut(id).expect("known task");
        warn!(task = %id, attempts = task.attempts, why, "task re-queued");
        task.state = TaskState::Queued;
        task.worker_id = None;
        task.assigned_at = None;
        task.reason = format!("{why}; re-queued");
        persist(&self.store, &self.events, task);
        // It was submitted before anything queued now: first within its priority.
        self.queue_up(id, true);
    }
}

/// The attempts a heartbeat says the worker holds; workers that do not fill `held` list
/// task ids only (attempt 0: whichever).
fn held_attempts(hb: &pb::Heartbeat) -> Vec<(&str, u32)> {
    if hb.held.is_empty() {
        hb.running_task_ids
            .iter()
            .map(|id| (id.as_str(), 0))
            .collect()
    } else {
        hb.held
            .iter()
            .map(|a| (a.task_id.as_str(), a.attempt))
            .collect()
    }
}

fn mark_running(task: &mut crate::records::Task) {
    task.state = TaskState::Running;
    task.started_ms = now_ms();
    task.reason.clear();
    if let Some(a) = task.current().filter(|a| a.outcome == Outcome::Assigned) {
        a.outcome = Outcome::Running;
    }
}

/// Marks `attempt` of a task on `worker_id` as fenced, if it was still open; true when the
/// history changed.
fn fence(task: &mut crate::records::Task, worker_id: &str, attempt: u32, why: &str) -> bool {
    let Some(a) = task
        .history
        .iter_mut()
        .find(|a| a.worker_id == worker_id && (attempt == 0 || a.attempt == attempt))
        .filter(|a| a.outcome.is_open() || a.outcome == Outcome::Lost)
    else {
        return false;
    };
    if a.outcome == Outcome::Fenced {
        return false;
    }
    a.outcome = Outcome::Fenced;
    a.reason = why.to_string();
    a.finished_ms = now_ms();
    true
}
