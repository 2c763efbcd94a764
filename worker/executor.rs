//! What the agent holds: the task attempts running under their supervisors and the final
//! results the master has not acknowledged yet. It starts a supervisor per assignment
//! (never twice for one attempt: the task folder is the proof it was started), relays
//! cancels to it, answers what heartbeats report, and keeps results until acknowledged,
//! in memory for the heartbeats and in the task folder for the next agent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use herd::domain::Runtime;
use herd::pb;
use herd::pb::worker_message::Body;

use crate::cgroup::Isolation;
use crate::folder::{Exit, Folder, Spec};
use crate::follow::{self, Supervisor};
use crate::procs;

/// A message for the master, and who wants to know once it is in the stream.
pub struct Outgoing {
    pub msg: pb::WorkerMessage,
    /// Fires when the message went into a heartbeat stream (dropped if the stream broke).
    pub delivered: Option<oneshot::Sender<()>>,
}

/// Where everything the worker tells the master goes (forwarded by the agent).
pub type Outbox = mpsc::Sender<Outgoing>;

#[derive(Clone)]
pub struct Executor {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub work_dir: PathBuf,
    runtime: Option<Runtime>,
    isolation: Isolation,
    kill_grace: Duration,
    /// This program, re-executed as `supervise` for every task.
    program: PathBuf,
    pub outbox: Outbox,
    /// This worker advertises GPUs: a task given none is hidden from them.
    has_gpus: bool,
    book: Mutex<Book>,
    /// Set once the first heartbeat was acknowledged (with its resume offsets applied).
    pub first_ack: watch::Sender<bool>,
}

/// What the worker holds. One lock, so a heartbeat always sees a task either held or
/// finished, never neither.
#[derive(Default)]
pub(crate) struct Book {
    pub held: HashMap<String, Held>,
    /// Final updates not yet acknowledged by the master, by task id.
    pub finished: HashMap<String, pb::TaskUpdate>,
}

pub(crate) struct Held {
    pub attempt: u32,
    pub folder: Folder,
    /// The supervisor's pid while it is our child (before it wrote its state file).
    pub child_pid: Option<i32>,
    /// Where the master asked the output to continue from (taken by the watcher).
    pub resume: Option<u64>,
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
                work_dir,
                runtime,
                isolation,
                kill_grace,
                program: std::env::current_exe()?,
                outbox,
                has_gpus: false,
                book: Mutex::new(Book::default()),
                first_ack: watch::Sender::new(false),
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

    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.shared.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a heartbeat reports: held task ids, held attempts, unacknowledged results.
    pub fn report(&self) -> (Vec<String>, Vec<pb::TaskAttempt>, Vec<pb::TaskUpdate>) {
        let book = self.book();
        let held = book
            .held
            .iter()
            .map(|(id, h)| pb::TaskAttempt {
                task_id: id.clone(),
                attempt: h.attempt,
            })
            .collect();
        (
            book.held.keys().cloned().collect(),
            held,
            book.finished.values().cloned().collect(),
        )
    }

    /// Nothing held and nothing left to acknowledge (what --drain-on-exit waits for).
    pub fn is_idle(&self) -> bool {
        let book = self.book();
        book.held.is_empty() && book.finished.is_empty()
    }

    /// The master stored these results: forget them, and mark their folders reported so
    /// the next agent does not send them again and retention may remove them.
    pub fn acknowledged(&self, ids: &[String]) {
        let mut book = self.book();
        for id in ids {
            if let Some(update) = book.finished.remove(id) {
                let folder = Folder::new(&self.shared.work_dir, id, update.attempt);
                if let Err(err) = folder.mark_reported() {
                    warn!(task = %id, %err, "cannot mark the task folder reported");
                }
            }
        }
    }

    /// The master says how much output of each held attempt it has (first ack of a stream).
    pub fn resume(&self, entries: &[pb::OutputResume]) {
        let mut book = self.book();
        for entry in entries {
            if let Some(held) = book.held.get_mut(&entry.task_id)
                && held.attempt == entry.attempt
            {
                held.resume = Some(entry.offset);
            }
        }
        drop(book);
        self.shared.first_ack.send_replace(true);
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
            let book = self.book();
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
        };
        let started = self.start_supervisor(&folder, &spec);
        let mut book = self.book();
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
        let this = self.clone();
        tokio::spawn(follow::watch(
            this,
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
            let book = self.book();
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

    pub(crate) async fn send(&self, body: Body, delivered: Option<oneshot::Sender<()>>) {
        let _ = self
            .shared
            .outbox
            .send(Outgoing {
                msg: pb::WorkerMessage { body: Some(body) },
                delivered,
            })
            .await;
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

/// The live supervisor of a task folder: from its state file (checked against pid reuse by
/// its start time), or our own child that has not written it yet.
pub(crate) fn supervisor_pid(folder: &Folder, child_pid: Option<i32>) -> Option<i32> {
    match folder.read_state() {
        Some(state) => procs::is_same_live(state.pid, state.start_time).then_some(state.pid),
        None => child_pid,
    }
}
