//! Following a task attempt from the agent's side: tail its output from the task folder
//! into the outbox (the file is the buffer: a full outbox means waiting, never dropping),
//! report Started as soon as the supervisor says so, and report the end once the exit file
//! is there, after all the output. Also the start-up scan that reattaches to the tasks a
//! previous agent left running, picks up results it never got acknowledged, and settles
//! the tasks whose supervisor died.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::sync::oneshot;
use tracing::{info, warn};

use herd::domain::MAX_OUTPUT_CHUNK;
use herd::pb;
use herd::pb::worker_message::Body;

use crate::cgroup::{self, Isolation};
use crate::folder::{Exit, Folder, State, Tail, supervisor_pid};
use crate::ledger::{Held, Ledger};
use crate::procs;

/// How often a folder is looked at for new output and the exit file.
const POLL: Duration = Duration::from_millis(50);
/// Outbox slots output leaves free for task updates.
const OUTBOX_RESERVE: usize = 32;
/// A supervisor just started may not have written its state file yet.
const STATE_PATIENCE: Duration = Duration::from_secs(3);

/// How the agent knows whether the supervisor lives.
pub enum Supervisor {
    /// Started by this agent: its status, and its "started"/"ended" lines.
    Child(Box<Child>),
    /// Left by an earlier agent: alive while its pid has its recorded start time.
    Adopted(State),
    /// There is none: it died, or it ended while no agent watched (the exit file says).
    Gone,
    /// It could not be started, for this reason (which may not be on disk either).
    NeverStarted(Exit),
}

impl Supervisor {
    fn is_alive(&mut self) -> bool {
        match self {
            Supervisor::Child(child) => matches!(child.try_wait(), Ok(None)),
            Supervisor::Adopted(state) => procs::is_same_live(state.pid, state.start_time),
            Supervisor::Gone | Supervisor::NeverStarted(_) => false,
        }
    }
}

/// Follows one attempt until its result is handed to the outbox.
pub async fn watch(
    ledger: Ledger,
    task_id: String,
    attempt: u32,
    folder: Folder,
    mut supervisor: Supervisor,
) {
    let mut lines: Option<Lines<BufReader<ChildStdout>>> = match &mut supervisor {
        Supervisor::Child(child) => child.stdout.take().map(|s| BufReader::new(s).lines()),
        _ => None,
    };
    let mut tail = Tail::new(folder.clone());
    if !matches!(supervisor, Supervisor::Child(_)) {
        // Reattached: the first ack says how much output the master has; sending it all
        // before would only be sent again.
        ledger.first_acknowledged().await;
    }
    let exit = loop {
        if let Supervisor::NeverStarted(exit) = &supervisor {
            break exit.clone();
        }
        let resume = ledger
            .holdings()
            .held
            .get_mut(&task_id)
            .and_then(|h| h.resume.take());
        if let Some(offset) = resume {
            tail.seek(offset);
        }
        send_output(&ledger, &task_id, attempt, &mut tail).await;
        // The supervisor writes the exit file after the last output, so reading the
        // output once more after seeing it gets all of it.
        if let Some(exit) = folder.read_exit() {
            // A quick task may end before its "started" line was read: report it first.
            if let Some(mut lines) = lines.take() {
                let rest = async {
                    while let Ok(Some(line)) = lines.next_line().await {
                        if line == "started" {
                            report_started(&ledger, &task_id, attempt).await;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), rest).await;
            }
            send_output(&ledger, &task_id, attempt, &mut tail).await;
            break exit;
        }
        if !supervisor.is_alive() && folder.read_exit().is_none() {
            let dead = folder.clone();
            let exit = tokio::task::spawn_blocking(move || settle_dead(&dead))
                .await
                .unwrap_or_else(|_| {
                    Exit::failed("the task's supervisor died before the task ended")
                });
            send_output(&ledger, &task_id, attempt, &mut tail).await;
            break exit;
        }
        let line = async {
            match lines.as_mut() {
                Some(l) => l.next_line().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = line => match line {
                Ok(Some(line)) if line == "started" => {
                    report_started(&ledger, &task_id, attempt).await;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => lines = None,
            },
            _ = tokio::time::sleep(POLL) => {}
        }
    };
    if let Supervisor::Child(child) = &mut supervisor {
        // Reap it; it has written its exit file, so it is about to leave.
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    finish(&ledger, &task_id, attempt, exit).await;
}

async fn report_started(ledger: &Ledger, task_id: &str, attempt: u32) {
    info!(task = %task_id, attempt, "task started");
    let started = pb::TaskUpdate {
        task_id: task_id.to_string(),
        attempt,
        event: pb::TaskEvent::Started as i32,
        exit_code: None,
        message: String::new(),
    };
    ledger.send(Body::TaskUpdate(started), None).await;
}

/// Sends what the task wrote since `tail`'s position.
async fn send_output(ledger: &Ledger, task_id: &str, attempt: u32, tail: &mut Tail) {
    loop {
        // Output fills the outbox only so far: task updates (Started, results) always
        // find room, rather than queueing behind megabytes of someone's output.
        while ledger.outbox_room() <= OUTBOX_RESERVE {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let chunk = match tail.next(MAX_OUTPUT_CHUNK) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return,
            Err(err) => {
                warn!(task = %task_id, %err, "cannot read the task's output");
                return;
            }
        };
        let output = pb::TaskOutput {
            task_id: task_id.to_string(),
            attempt,
            data: chunk.data,
            offset: chunk.offset,
            stream: chunk.stream as i32,
        };
        ledger.send(Body::Output(output), None).await;
    }
}

/// Reports the end. The result joins the heartbeats' `finished` only once the update (and
/// so all output before it) is in the stream: a heartbeat must not overtake the output.
async fn finish(ledger: &Ledger, task_id: &str, attempt: u32, exit: Exit) {
    let update = exit.update(task_id, attempt);
    info!(task = %task_id, attempt, outcome = %exit.outcome, reason = %exit.reason, "task ended");
    let (delivered, in_stream) = oneshot::channel();
    ledger
        .send(Body::TaskUpdate(update.clone()), Some(delivered))
        .await;
    let _ = in_stream.await;
    // Still held until acknowledged: a new stream resumes its output too.
    ledger
        .holdings()
        .finished
        .insert(task_id.to_string(), update);
}

/// After a reconnect: the output of an ended attempt from where the master says it has it,
/// then its result again, behind that output in the stream (a stream that broke after the
/// result went out may have lost output sent just before it). Its result rejoins the
/// heartbeats only then.
pub async fn resend(ledger: Ledger, task_id: String, attempt: u32, folder: Folder, offset: u64) {
    let mut tail = Tail::new(folder);
    tail.seek(offset);
    send_output(&ledger, &task_id, attempt, &mut tail).await;
    let update = ledger.holdings().finished.get(&task_id).cloned();
    if let Some(update) = update.filter(|u| u.attempt == attempt) {
        let (delivered, in_stream) = oneshot::channel();
        ledger.send(Body::TaskUpdate(update), Some(delivered)).await;
        let _ = in_stream.await;
    }
    ledger.holdings().resending.remove(&task_id);
}

/// The supervisor is gone without an exit file: kill whatever of the task is left and
/// record that it failed.
fn settle_dead(folder: &Folder) -> Exit {
    let spec = folder.read_spec().ok();
    let state = folder.read_state();
    if let Some(spec) = &spec {
        let name = state.as_ref().and_then(|s| s.cgroup.as_deref());
        let kind = Isolation::from_label(&spec.isolation);
        if let Some(cgroup) = name.and_then(|name| cgroup::leftovers(kind, name)) {
            for _ in 0..100 {
                cgroup.kill_all();
                if cgroup.procs().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            cgroup.remove();
        }
        if let Some(runtime) = spec.runtime.as_deref().filter(|_| !spec.image.is_empty()) {
            let _ = std::process::Command::new(runtime)
                .args(["rm", "-f", &spec.container()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    if let Some(pgid) = state.and_then(|s| s.task_pid) {
        // The group outlives its leader only while members remain, so it cannot name
        // someone else's processes.
        for pid in procs::group(pgid) {
            procs::signal(pid, libc::SIGKILL);
        }
    }
    let exit = Exit::failed("the task's supervisor died before the task ended");
    if let Err(err) = folder.write_exit(&exit) {
        warn!(folder = %folder.root.display(), %err, "cannot write the exit file");
    }
    exit
}

/// Before the first heartbeat: takes over what an earlier agent left in the work dir.
pub fn recover(ledger: &Ledger) {
    let Ok(entries) = std::fs::read_dir(ledger.work_dir()) else {
        return;
    };
    let folders: Vec<Folder> = entries
        .flatten()
        .map(|e| Folder { root: e.path() })
        .filter(|f| f.root.is_dir() && !f.is_reported())
        .collect();
    let mut specs: Vec<(Folder, crate::folder::Spec)> = folders
        .into_iter()
        .filter_map(|f| Some((f.clone(), f.read_spec().ok()?)))
        .collect();
    // Newest attempt of each task first: only that one is held; an older one left behind
    // was fenced by the master and must not run on.
    specs.sort_by(|(_, a), (_, b)| (&a.task_id, b.attempt).cmp(&(&b.task_id, a.attempt)));
    for (folder, spec) in specs {
        let (id, attempt) = (spec.task_id.clone(), spec.attempt);
        if ledger.holdings().held.contains_key(&id) {
            warn!(task = %id, attempt, "an older attempt of a held task; stopping it");
            if folder.read_exit().is_none() {
                let _ = folder.write_cancel("a newer attempt of the task is held here");
                if let Some(pid) = supervisor_pid(&folder, None) {
                    procs::signal(pid, libc::SIGTERM);
                }
            }
            let _ = folder.mark_reported();
            continue;
        }
        let state = wait_for_state(&folder);
        let alive = state
            .as_ref()
            .filter(|s| procs::is_same_live(s.pid, s.start_time));
        let supervisor = match (folder.read_exit(), alive) {
            (Some(exit), _) => {
                // Held until reported again, so that the output the master lacks goes
                // first (from where it says, in the first ack).
                info!(task = %id, attempt, outcome = %exit.outcome, "found a result not yet acknowledged");
                Supervisor::Gone
            }
            (None, Some(state)) => {
                info!(task = %id, attempt, supervisor = state.pid, "reattached to a running task");
                Supervisor::Adopted(state.clone())
            }
            (None, None) => {
                warn!(task = %id, attempt, "the task's supervisor is gone; cleaning up");
                Supervisor::Gone
            }
        };
        ledger.holdings().held.insert(
            id.clone(),
            Held {
                attempt,
                folder: folder.clone(),
                child_pid: None,
                // The master says where to continue; until then, from the start.
                resume: None,
            },
        );
        tokio::spawn(watch(ledger.clone(), id, attempt, folder, supervisor));
    }
}

/// The state file, waiting a little for a supervisor that was only just started.
fn wait_for_state(folder: &Folder) -> Option<State> {
    loop {
        if let Some(state) = folder.read_state() {
            return Some(state);
        }
        let young = std::fs::metadata(folder.path("task.json"))
            .and_then(|m| m.modified())
            .is_ok_and(|at| {
                SystemTime::now()
                    .duration_since(at)
                    .is_ok_and(|age| age < STATE_PATIENCE)
            });
        if !young || folder.read_exit().is_some() {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::{OutputWriter, Spec};
    use crate::ledger::{Ledger, Outgoing};
    use tokio::sync::mpsc;

    fn spec(task_id: &str, attempt: u32) -> Spec {
        Spec {
            task_id: task_id.into(),
            attempt,
            image: String::new(),
            command: "true".into(),
            cpu: 1.0,
            memory_gb: 0.0,
            runtime: None,
            isolation: "process group".into(),
            kill_grace_ms: 1000,
            gpu_ids: Vec::new(),
            hide_gpus: false,
            timeout_ms: 0,
            env: Default::default(),
            workdir: String::new(),
            container_name: String::new(),
            keep_on_disconnect: false,
        }
    }

    async fn next(outbox: &mut mpsc::Receiver<Outgoing>) -> Outgoing {
        tokio::time::timeout(Duration::from_secs(10), outbox.recv())
            .await
            .expect("a message within 10 s")
            .expect("the outbox is open")
    }

    #[tokio::test]
    async fn a_result_found_at_start_is_reported_after_the_output_the_master_lacks() {
        use pb::worker_message::Body;
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path(), "t-7", 2);
        std::fs::create_dir_all(&folder.root).unwrap();
        folder.write_spec(&spec("t-7", 2)).unwrap();
        let mut out = OutputWriter::create(&folder).unwrap();
        out.append(pb::OutputStream::Stdout, b"begin\n").unwrap();
        out.append(pb::OutputStream::Stderr, b"oops\n").unwrap();
        out.append(pb::OutputStream::Stdout, b"end\n").unwrap();
        folder
            .write_exit(&Exit {
                outcome: "succeeded".into(),
                exit_code: Some(0),
                signal: None,
                reason: String::new(),
            })
            .unwrap();
        // An older attempt of the same task, also left behind: not reported again.
        let old = Folder::new(dir.path(), "t-7", 1);
        std::fs::create_dir_all(&old.root).unwrap();
        old.write_spec(&spec("t-7", 1)).unwrap();
        old.write_exit(&Exit::failed("lost")).unwrap();

        let (tx, mut outbox) = mpsc::channel(OUTBOX_RESERVE + 8);
        let executor = Ledger::new(dir.path().to_path_buf(), tx);
        recover(&executor);
        let (running, held, finished) = executor.report();
        assert_eq!(
            running,
            vec!["t-7".to_string()],
            "held from the first heartbeat"
        );
        assert_eq!((held[0].task_id.as_str(), held[0].attempt), ("t-7", 2));
        assert!(finished.is_empty());
        assert!(old.is_reported());

        // The master has the first 6 bytes.
        executor.resume(&[pb::OutputResume {
            task_id: "t-7".into(),
            attempt: 2,
            offset: 6,
        }]);
        let mut sent = Vec::new();
        let update = loop {
            let Outgoing { msg, delivered } = next(&mut outbox).await;
            match msg.body.unwrap() {
                Body::Output(o) => sent.push((o.offset, o.stream(), o.data)),
                Body::TaskUpdate(u) => {
                    let _ = delivered.unwrap().send(());
                    break u;
                }
                Body::Heartbeat(_) => unreachable!("heartbeats do not go through the outbox"),
            }
        };
        assert_eq!(
            sent,
            vec![
                (6, pb::OutputStream::Stderr, b"oops\n".to_vec()),
                (11, pb::OutputStream::Stdout, b"end\n".to_vec()),
            ]
        );
        assert_eq!(
            (update.attempt, update.event()),
            (2, pb::TaskEvent::Succeeded)
        );

        // Repeated in heartbeats until acknowledged, then marked reported.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while executor.report().2.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the result never became final"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Held until acknowledged, so that a new stream would resume its output too.
        assert_eq!(executor.report().0, ["t-7"]);
        executor.acknowledged(&["t-7".to_string()]);
        assert!(executor.report().2.is_empty());
        assert!(executor.report().0.is_empty());
        assert!(folder.is_reported());
    }

    /// A stream broke after a result went out, before its acknowledgement: output sent
    /// just before it may be lost. The attempt is still held, so the next stream's first
    /// ack says where its output resumes; the rest goes, then the result again, and only
    /// then does the result rejoin the heartbeats.
    #[tokio::test]
    async fn an_ended_attempt_sends_the_output_in_flight_again_before_its_result() {
        use pb::worker_message::Body;
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path(), "t-9", 1);
        std::fs::create_dir_all(&folder.root).unwrap();
        folder.write_spec(&spec("t-9", 1)).unwrap();
        let mut out = OutputWriter::create(&folder).unwrap();
        out.append(pb::OutputStream::Stdout, b"first\n").unwrap();
        out.append(pb::OutputStream::Stdout, b"last\n").unwrap();
        let (tx, mut outbox) = mpsc::channel(OUTBOX_RESERVE + 8);
        let ledger = Ledger::new(dir.path().to_path_buf(), tx);
        // It ran and ended under this agent: held, with its result not yet acknowledged.
        let update = pb::TaskUpdate {
            task_id: "t-9".into(),
            attempt: 1,
            event: pb::TaskEvent::Succeeded as i32,
            exit_code: Some(0),
            message: String::new(),
        };
        {
            let mut book = ledger.holdings();
            book.held.insert(
                "t-9".into(),
                Held {
                    attempt: 1,
                    folder: folder.clone(),
                    child_pid: None,
                    resume: None,
                },
            );
            book.finished.insert("t-9".into(), update.clone());
        }
        let (running, held, finished) = ledger.report();
        assert_eq!((running.len(), held.len(), finished.len()), (1, 1, 1));
        // The new stream's first ack: the master has only "first\n".
        let ended = ledger.resume(&[pb::OutputResume {
            task_id: "t-9".into(),
            attempt: 1,
            offset: 6,
        }]);
        assert_eq!(ended.len(), 1);
        assert!(
            ledger.report().2.is_empty(),
            "the result waits for its output"
        );
        let (task_id, attempt, folder, offset) = ended.into_iter().next().unwrap();
        tokio::spawn(resend(ledger.clone(), task_id, attempt, folder, offset));
        let Outgoing { msg, .. } = next(&mut outbox).await;
        match msg.body.unwrap() {
            Body::Output(o) => assert_eq!((o.offset, o.data), (6, b"last\n".to_vec())),
            other => panic!("output first, not {other:?}"),
        }
        let Outgoing { msg, delivered } = next(&mut outbox).await;
        match msg.body.unwrap() {
            Body::TaskUpdate(u) => assert_eq!(u, update),
            other => panic!("then the result, not {other:?}"),
        }
        delivered.unwrap().send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ledger.report().2.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the result never came back"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ledger.acknowledged(&["t-9".to_string()]);
        assert_eq!(ledger.report(), (Vec::new(), Vec::new(), Vec::new()));
    }
}
