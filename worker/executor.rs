//! Runs assigned tasks: plain processes (`sh -c CMD`) in their own folder and process
//! group, or containers through the docker-compatible CLI. Reports start, output and the
//! end through the worker's outbox, and keeps each final result until the master
//! acknowledges it (heartbeats repeat it), so no result is lost to a broken stream.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use herd::domain::Runtime;
use herd::pb;
use herd::pb::worker_message::Body;

/// Where everything the worker tells the master goes (forwarded by the agent).
pub type Outbox = mpsc::Sender<pb::WorkerMessage>;

/// Largest output read sent in one message (room left for a dropped-output note).
const CHUNK: usize = herd::domain::MAX_OUTPUT_CHUNK - 128;
/// How long a cancelled task has to exit after SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

struct Shared {
    work_dir: PathBuf,
    runtime: Option<Runtime>,
    outbox: Outbox,
    book: Mutex<Book>,
}

/// What the worker holds. One lock, so a heartbeat always sees a task either running or
/// finished, never neither.
#[derive(Default)]
struct Book {
    running: HashMap<String, Running>,
    /// Final updates not yet acknowledged by the master.
    finished: HashMap<String, pb::TaskUpdate>,
}

struct Running {
    attempt: u32,
    /// Fires with the reason when the task must stop.
    cancel: Option<oneshot::Sender<String>>,
}

/// How a run ended.
enum End {
    Exited(ExitStatus),
    Cancelled(String, Option<ExitStatus>),
    NotStarted(String),
}

impl Executor {
    pub fn new(work_dir: PathBuf, runtime: Option<Runtime>, outbox: Outbox) -> Executor {
        Executor {
            shared: Arc::new(Shared {
                work_dir,
                runtime,
                outbox,
                book: Mutex::new(Book::default()),
            }),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        self.shared.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids of the tasks held now, and the final updates the master has not acknowledged.
    pub fn report(&self) -> (Vec<String>, Vec<pb::TaskUpdate>) {
        let book = self.book();
        (
            book.running.keys().cloned().collect(),
            book.finished.values().cloned().collect(),
        )
    }

    /// The master stored these results: forget them.
    pub fn acknowledged(&self, ids: &[String]) {
        let mut book = self.book();
        for id in ids {
            book.finished.remove(id);
        }
    }

    /// Starts an assigned task (a repeated assignment of a held task is ignored).
    pub fn assign(&self, task: pb::TaskAssignment) {
        let (cancel, cancelled) = oneshot::channel();
        {
            let mut book = self.book();
            if book.running.contains_key(&task.task_id) {
                return;
            }
            book.finished.remove(&task.task_id);
            book.running.insert(
                task.task_id.clone(),
                Running {
                    attempt: task.attempt,
                    cancel: Some(cancel),
                },
            );
        }
        let this = self.clone();
        tokio::spawn(async move { this.run(task, cancelled).await });
    }

    /// Stops a task (attempt 0 means whichever attempt is held).
    pub fn cancel(&self, order: &pb::TaskCancel) {
        let mut book = self.book();
        if let Some(running) = book.running.get_mut(&order.task_id)
            && (order.attempt == 0 || order.attempt == running.attempt)
            && let Some(cancel) = running.cancel.take()
        {
            info!(task = %order.task_id, reason = %order.reason, "cancelling task");
            let _ = cancel.send(order.reason.clone());
        }
    }

    /// Cancels every task and waits (up to `patience`) until all have ended.
    pub async fn stop_all(&self, reason: &str, patience: Duration) {
        let orders: Vec<pb::TaskCancel> = self
            .book()
            .running
            .iter()
            .map(|(id, r)| pb::TaskCancel {
                task_id: id.clone(),
                attempt: r.attempt,
                reason: reason.to_string(),
            })
            .collect();
        for order in &orders {
            self.cancel(order);
        }
        let deadline = tokio::time::Instant::now() + patience;
        while !self.book().running.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn run(self, task: pb::TaskAssignment, cancelled: oneshot::Receiver<String>) {
        let id = task.task_id.clone();
        let attempt = task.attempt;
        let dir = self.shared.work_dir.join(format!("{id}-{attempt}"));
        let container = format!("herd-{id}-{attempt}");
        let end = match self.command(&task, &dir, &container) {
            Err(why) => End::NotStarted(why),
            Ok(mut command) => match command.spawn() {
                Err(err) => End::NotStarted(format!("cannot start the task: {err}")),
                Ok(child) => {
                    info!(task = %id, attempt, pid = child.id(), "task started");
                    self.send(Body::TaskUpdate(pb::TaskUpdate {
                        task_id: id.clone(),
                        attempt,
                        event: pb::TaskEvent::Started as i32,
                        exit_code: None,
                        message: String::new(),
                    }))
                    .await;
                    self.supervise(child, &task, &container, cancelled).await
                }
            },
        };
        let (event, exit_code, message) = match end {
            End::Exited(status) if status.success() => {
                (pb::TaskEvent::Succeeded, Some(0), String::new())
            }
            End::Exited(status) => match status.code() {
                Some(code) => (
                    pb::TaskEvent::Failed,
                    Some(code),
                    format!("exited with code {code}"),
                ),
                None => (pb::TaskEvent::Failed, None, describe_signal(status)),
            },
            End::Cancelled(reason, status) => (
                pb::TaskEvent::Cancelled,
                status.and_then(|s| s.code()),
                reason,
            ),
            End::NotStarted(why) => (pb::TaskEvent::Failed, None, why),
        };
        info!(task = %id, attempt, ?event, ?exit_code, %message, "task ended");
        let update = pb::TaskUpdate {
            task_id: id.clone(),
            attempt,
            event: event as i32,
            exit_code,
            message,
        };
        {
            let mut book = self.book();
            book.running.remove(&id);
            book.finished.insert(id.clone(), update.clone());
        }
        self.send(Body::TaskUpdate(update)).await;
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            warn!(task = %id, %err, dir = %dir.display(), "cannot remove the task folder");
        }
    }

    /// The command line of a task.
    fn command(
        &self,
        task: &pb::TaskAssignment,
        dir: &Path,
        container: &str,
    ) -> Result<Command, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the task folder {}: {e}", dir.display()))?;
        let mut command = if task.image.is_empty() {
            let mut c = Command::new("sh");
            c.arg("-c").arg(&task.command);
            c
        } else {
            let runtime = self
                .shared
                .runtime
                .ok_or("this worker has no container runtime for image tasks")?;
            let resources = task.resources.unwrap_or_default();
            let mut c = Command::new(runtime.as_str());
            c.args(["run", "--rm", "--name", container]);
            c.arg("--cpus").arg(format!("{}", resources.cpu));
            if resources.memory_gb > 0.0 {
                let mib = (resources.memory_gb * 1e9 / 1048576.0).ceil().max(6.0) as u64;
                c.arg("--memory").arg(format!("{mib}m"));
            }
            c.arg(&task.image);
            if !task.command.is_empty() {
                c.arg("sh").arg("-c").arg(&task.command);
            }
            c
        };
        command
            .current_dir(dir)
            .env("HERD_TASK_ID", &task.task_id)
            .env("HERD_TASK_ATTEMPT", task.attempt.to_string())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // A task must not outlive a worker that died without stopping it: nobody would
        // know about it any more. (Tokio spawns from its long-lived worker threads, so the
        // parent-death signal fires only when the worker process dies.)
        // SAFETY: prctl is async-signal-safe and only affects the child.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Waits for the task to exit or to be cancelled, streaming its output meanwhile.
    async fn supervise(
        &self,
        mut child: Child,
        task: &pb::TaskAssignment,
        container: &str,
        cancelled: oneshot::Receiver<String>,
    ) -> End {
        let pgid = child.id().map(|pid| pid as i32);
        let pumps = [
            child.stdout.take().map(|s| self.pump(s, task)),
            child.stderr.take().map(|s| self.pump(s, task)),
        ];
        let end = tokio::select! {
            status = child.wait() => match status {
                Ok(status) => End::Exited(status),
                Err(err) => End::NotStarted(format!("lost the task process: {err}")),
            },
            reason = cancelled => {
                let reason = reason.unwrap_or_else(|_| "cancelled".into());
                let status = self.kill(&mut child, pgid, task, container).await;
                End::Cancelled(reason, status)
            }
        };
        // What is left in the pipes; a background grandchild holding them open must not
        // keep the task from ending.
        for pump in pumps.into_iter().flatten() {
            if tokio::time::timeout(Duration::from_secs(2), pump)
                .await
                .is_err()
            {
                warn!(task = %task.task_id, "output still open after the task ended; leaving it");
            }
        }
        end
    }

    /// Stops a task: its container (if any), then its whole process group.
    async fn kill(
        &self,
        child: &mut Child,
        pgid: Option<i32>,
        task: &pb::TaskAssignment,
        container: &str,
    ) -> Option<ExitStatus> {
        if !task.image.is_empty()
            && let Some(runtime) = self.shared.runtime
        {
            let removed = Command::new(runtime.as_str())
                .args(["rm", "-f", container])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = tokio::time::timeout(Duration::from_secs(20), removed).await;
        }
        if let Some(pgid) = pgid {
            // SAFETY: signalling the task's own process group.
            unsafe { libc::killpg(pgid, libc::SIGTERM) };
        }
        match tokio::time::timeout(KILL_GRACE, child.wait()).await {
            Ok(status) => {
                if let Some(pgid) = pgid {
                    // Stragglers of the group that ignored SIGTERM.
                    // SAFETY: as above.
                    unsafe { libc::killpg(pgid, libc::SIGKILL) };
                }
                status.ok()
            }
            Err(_) => {
                if let Some(pgid) = pgid {
                    // SAFETY: as above.
                    unsafe { libc::killpg(pgid, libc::SIGKILL) };
                }
                child.wait().await.ok()
            }
        }
    }

    /// Forwards one output pipe as TaskOutput chunks. Output never blocks heartbeats: when
    /// the outbox is full the chunk is dropped and a note says how much was lost.
    fn pump(
        &self,
        mut pipe: impl AsyncRead + Unpin + Send + 'static,
        task: &pb::TaskAssignment,
    ) -> tokio::task::JoinHandle<()> {
        let outbox = self.shared.outbox.clone();
        let task_id = task.task_id.clone();
        let attempt = task.attempt;
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            let mut dropped = 0usize;
            loop {
                let n = match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut data = Vec::with_capacity(n + 64);
                if dropped > 0 {
                    data.extend(format!("\n[herd: {dropped} bytes of output dropped]\n").bytes());
                }
                data.extend_from_slice(&buf[..n]);
                let msg = pb::WorkerMessage {
                    body: Some(Body::Output(pb::TaskOutput {
                        task_id: task_id.clone(),
                        attempt,
                        data,
                        ..Default::default()
                    })),
                };
                match outbox.try_send(msg) {
                    Ok(()) => dropped = 0,
                    Err(mpsc::error::TrySendError::Full(_)) => dropped += n,
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        })
    }

    async fn send(&self, body: Body) {
        let _ = self
            .shared
            .outbox
            .send(pb::WorkerMessage { body: Some(body) })
            .await;
    }
}

fn describe_signal(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(signal) => format!("killed by signal {signal}"),
        None => format!("ended with {status}"),
    }
}
