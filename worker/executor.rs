//! Starts and stops tasks: a supervisor per assignment (never twice for one attempt: the
//! task folder is the proof it was started), cancels relayed to it, old folders cleaned.
//! What the worker holds and owes the master is its [`Ledger`], shared with the
//! followers that report each attempt.

use std::ops::Deref;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use herd::domain::Runtime;
use herd::pb;

use crate::cgroup::Isolation;
use crate::folder::{Exit, Folder, Spec, supervisor_pid};
use crate::follow::{self, Supervisor};
use crate::ledger::{Held, Ledger, Outbox};
use crate::procs;

#[derive(Clone)]
pub struct Executor {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    /// What the worker holds and owes the master.
    ledger: Ledger,
    work_dir: PathBuf,
    runtime: Option<Runtime>,
    isolation: Isolation,
    kill_grace: Duration,
    /// This program, re-executed as `supervise` for every task.
    program: PathBuf,
    /// This worker advertises GPUs: a task given none is hidden from them.
    has_gpus: bool,
}

/// The executor answers for its ledger too (what the agent reports and is acknowledged).
impl Deref for Executor {
    type Target = Ledger;

    fn deref(&self) -> &Ledger {
        &self.shared.ledger
    }
}

impl Executor {
    pub fn new(
        work_dir: PathBuf,
        runtime: Option<Runtime>,
        isolation: Isolation,
        kill_grace: Duration,
        outbox: Outbox,
    ) -> anyhow::Result<Executor> {
        Ok(Executor {
            shared: Arc::new(Shared {
                ledger: Ledger::new(work_dir.clone(), outbox),
                work_dir,
                runtime,
                isolation,
                kill_grace,
                program: std::env::current_exe()?,
                has_gpus: false,
            }),
        })
    }

    /// Says the worker advertises GPUs (before any task is assigned), so that tasks given
    /// none of them cannot pick one up by accident.
    pub fn with_gpus(mut self, has_gpus: bool) -> Executor {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.has_gpus = has_gpus;
        }
        self
    }

    /// The master says how much output of each held attempt it has (first ack of a
    /// stream): running attempts continue from there, and ended ones whose result is not
    /// acknowledged send the rest of their output and then their result again.
    pub fn resume(&self, entries: &[pb::OutputResume]) {
        for (task_id, attempt, folder, offset) in self.shared.ledger.resume(entries) {
            let ledger = self.shared.ledger.clone();
            tokio::spawn(follow::resend(ledger, task_id, attempt, folder, offset));
        }
    }

    /// Starts an assigned task under a supervisor of its own. A repeated assignment of a
    /// held task, or of an attempt that already has a folder, is not started again.
    pub fn assign(&self, task: pb::TaskAssignment) {
        if !is_plain_name(&task.task_id) {
            // It names a folder: nothing that could point outside the work dir.
            warn!(task = %task.task_id.escape_debug(), "refusing an assignment with an unusable task id");
            return;
        }
        let folder = Folder::new(&self.shared.work_dir, &task.task_id, task.attempt);
        {
            let book = self.holdings();
            // An older attempt that has ended but whose report is still on its way (the
            // master settled it already: a retry comes only after) does not stand in the
            // way of the next one.
            if let Some(held) = book.held.get(&task.task_id)
                && (held.attempt >= task.attempt || held.folder.read_exit().is_none())
            {
                return;
            }
        }
        if folder.root.exists() {
            warn!(task = %task.task_id, attempt = task.attempt, "this attempt was started here before; not starting it again");
            return;
        }
        let resources = task.resources.unwrap_or_default();
        let spec = Spec {
            timeout_ms: task.timeout_ms,
            env: task.env.into_iter().collect(),
            workdir: task.workdir,
            container_name: Spec::container_name_for(
                &self.shared.work_dir,
                &task.task_id,
                task.attempt,
            ),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            image: task.image,
            command: task.command,
            cpu: resources.cpu,
            memory_gb: resources.memory_gb,
            runtime: self.shared.runtime.map(|r| r.as_str().to_string()),
            isolation: self.shared.isolation.label().into(),
            kill_grace_ms: self.shared.kill_grace.as_millis() as u64,
            hide_gpus: self.shared.has_gpus && task.gpu_ids.is_empty(),
            gpu_ids: task.gpu_ids,
            keep_on_disconnect: task.keep_on_disconnect,
        };
        let started = self.start_supervisor(&folder, &spec);
        let mut book = self.holdings();
        // The master assigns a new attempt only once it has settled the older ones.
        if let Some(old) = book.finished.remove(&task.task_id)
            && let Err(err) =
                Folder::new(&self.shared.work_dir, &old.task_id, old.attempt).mark_reported()
        {
            warn!(task = %task.task_id, %err, "cannot mark the task folder reported");
        }
        let supervisor = match started {
            Ok(child) => {
                let pid = child.id().map(|p| p as i32);
                book.held.insert(
                    task.task_id.clone(),
                    Held {
                        attempt: task.attempt,
                        folder: folder.clone(),
                        child_pid: pid,
                        resume: None,
                    },
                );
                Supervisor::Child(Box::new(child))
            }
            Err(err) => {
                let exit = Exit::failed(format!("cannot start the task's supervisor: {err:#}"));
                if folder.write_exit(&exit).is_err() {
                    warn!(task = %task.task_id, "cannot write the exit file either");
                }
                book.held.insert(
                    task.task_id.clone(),
                    Held {
                        attempt: task.attempt,
                        folder: folder.clone(),
                        child_pid: None,
                        resume: None,
                    },
                );
                Supervisor::NeverStarted(exit)
            }
        };
        drop(book);
        tokio::spawn(follow::watch(
            self.shared.ledger.clone(),
            task.task_id,
            task.attempt,
            folder,
            supervisor,
        ));
    }

    fn start_supervisor(
        &self,
        folder: &Folder,
        spec: &Spec,
    ) -> anyhow::Result<tokio::process::Child> {
        std::fs::create_dir_all(&folder.root)?;
        folder.write_spec(spec)?;
        let log = std::fs::File::create(folder.path("supervisor.log"))?;
        let mut command = tokio::process::Command::new(&self.shared.program);
        command
            .arg("supervise")
            .arg(&folder.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            // The supervisor outlives us on purpose.
            .kill_on_drop(false);
        // SAFETY: setsid and the signal mask calls are async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                // Its own session: no terminal key or signal to our group reaches it.
                libc::setsid();
                crate::supervisor::block_sigterm_from_pre_exec();
                Ok(())
            });
        }
        let child = command.spawn()?;
        info!(task = %spec.task_id, attempt = spec.attempt, supervisor = ?child.id(), "supervisor started");
        Ok(child)
    }

    /// Stops a task (attempt 0 means whichever attempt is held): the reason goes into the
    /// task folder and the supervisor, told by SIGTERM, does the killing, so the cancel
    /// completes even if this agent dies meanwhile.
    pub fn cancel(&self, order: &pb::TaskCancel) {
        let (folder, child_pid) = {
            let book = self.holdings();
            match book.held.get(&order.task_id) {
                Some(held) if order.attempt == 0 || order.attempt == held.attempt => {
                    (held.folder.clone(), held.child_pid)
                }
                _ => return,
            }
        };
        if folder.read_exit().is_some() {
            return; // Ended already; its result says how.
        }
        if folder.cancel_reason().is_some() {
            // Told already (the master repeats its order). Say it again: the agent that
            // wrote the reason may have died before its signal.
            if let Some(pid) = supervisor_pid(&folder, child_pid) {
                procs::signal(pid, libc::SIGTERM);
            }
            return;
        }
        info!(task = %order.task_id, reason = %order.reason, "cancelling task");
        if let Err(err) = folder.write_cancel(&order.reason) {
            warn!(task = %order.task_id, %err, "cannot write the cancel reason");
        }
        match supervisor_pid(&folder, child_pid) {
            Some(pid) => procs::signal(pid, libc::SIGTERM),
            None => warn!(task = %order.task_id, "no live supervisor to cancel"),
        }
    }

    /// Removes reported task folders older than `retention`.
    pub fn clean(&self, retention: Duration) {
        let Ok(entries) = std::fs::read_dir(&self.shared.work_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let folder = Folder { root: entry.path() };
            let old = std::fs::metadata(folder.path("reported"))
                .and_then(|m| m.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > retention));
            if old {
                match std::fs::remove_dir_all(&folder.root) {
                    Ok(()) => info!(folder = %folder.root.display(), "removed an old task folder"),
                    Err(err) => {
                        warn!(folder = %folder.root.display(), %err, "cannot remove an old task folder")
                    }
                }
            }
        }
    }
}

/// Letters, digits, `-`, `_` and `.`, not starting with a dot: safe as a file name.
fn is_plain_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
