//! The per-task supervisor, `herd-worker supervise <task-folder>`: a small process of its
//! own per task that outlives the agent. It owns the task's session, cgroup and process
//! group, writes the task's output and exit status into the task folder, kills every
//! process of the task when it ends or is cancelled, and tells the agent that started it
//! ("started" from the task process before its exec, "ended" from here, as lines on our
//! stdout) so the agent does not wait for a poll.
//!
//! It is a subreaper: orphans of the task (even ones that called setsid) become its
//! children, so without a cgroup it still finds them. It has no parent-death signal (the
//! agent may die and come back), but the task's main process does, so killing the
//! supervisor does not orphan the task.

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tracing::{info, warn};

use herd::error::Error;
use herd::pb;

use crate::cgroup::{Cgroup, Isolation, join_from_pre_exec};
use crate::ending::{Stop, Why, describe, last_line};
use crate::folder::{Exit, Folder, OutputWriter, Spec, State};
use crate::lease;
use crate::procs;

/// Largest single read from a task's pipe.
const READ_SIZE: usize = 64 * 1024;
/// How long output may still come after every process of the task is gone.
const DRAIN: Duration = Duration::from_secs(2);
/// Longest the final kill loop keeps at it (a process in uninterruptible sleep).
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// Entry point of the hidden `supervise` mode.
pub fn main(folder: PathBuf) -> ExitCode {
    // Its stderr is the task folder's supervisor.log; the default (HERD_LOG) never fails.
    let _ = herd::logging::LogOptions::default().init(std::io::stderr);
    // SAFETY: plain syscalls on this process. setsid fails harmlessly when the agent
    // already made us a session leader.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    let folder = Folder { root: folder };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return give_up(&folder, &format!("cannot start a runtime: {err}")),
    };
    match runtime.block_on(supervise(&folder)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => give_up(&folder, &format!("{err:#}")),
    }
}

/// Records a failure of the supervisor itself as the task's end.
fn give_up(folder: &Folder, why: &str) -> ExitCode {
    warn!(error = %why, "supervisor failed");
    if folder.read_exit().is_none() {
        let _ = folder.write_exit(&Exit::failed(format!("the supervisor failed: {why}")));
    }
    tell("ended");
    ExitCode::FAILURE
}

/// One line to the agent that started us; once it is gone the write fails (EPIPE,
/// SIGPIPE is ignored by the Rust runtime) and that is fine: a later agent polls.
fn tell(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn supervise(folder: &Folder) -> anyhow::Result<()> {
    let spec = folder.read_spec()?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut children = signal(SignalKind::child())?;
    // The agent started us with SIGTERM blocked, so a cancel sent before the handler
    // existed is pending, not fatal; now it can be taken.
    unblock_sigterm();
    let me = std::process::id() as i32;
    let mut state = State {
        pid: me,
        start_time: procs::own_start_time(),
        task_pid: None,
        cgroup: None,
        deadline_ms: None,
    };
    folder.write_state(&state)?;
    let output = Arc::new(Mutex::new(OutputWriter::create(folder)?));

    if let Err(why) = check_workdir(&spec) {
        folder.write_exit(&Exit::failed(why.to_string()))?;
        tell("ended");
        return Ok(());
    }

    // Our pid in the name: two workers on one host (of two masters) may both hold t-1.
    let name = format!("{}-{me}", folder.name());
    // A container gets its limits from the runtime (--cpus, --memory); here they would
    // only squeeze the runtime's own CLI.
    let (cpu, memory_gb) = if spec.image.is_empty() {
        (spec.cpu, spec.memory_gb)
    } else {
        (0.0, 0.0)
    };
    let cgroup = match Isolation::from_label(&spec.isolation) {
        Isolation::ProcessGroup => None,
        kind => match Cgroup::create(kind, &name, cpu, memory_gb) {
            Ok(cgroup) => Some(cgroup),
            Err(err) => {
                // The worker found cgroups usable at its start: running the task without
                // its limits now would break the promise, so it fails instead.
                let why = format!("cannot make the task's cgroup ({}): {err}", kind.label());
                folder.write_exit(&Exit::failed(why.to_string()))?;
                tell("ended");
                return Ok(());
            }
        },
    };
    state.cgroup = cgroup.as_ref().map(|_| name);
    let recorded = folder.write_state(&state);
    let spawned = recorded.and_then(|()| spawn(&spec, folder, cgroup.as_ref()));
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            if let Some(cgroup) = &cgroup {
                cgroup.remove();
            }
            folder.write_exit(&Exit::failed(format!("cannot start the task: {err}")))?;
            tell("ended");
            return Ok(());
        }
    };
    let task_pid = child.id() as i32;
    state.task_pid = Some(task_pid);
    // The time limit runs from the start, on our clock: this process outlives any agent
    // restart, so a reattached task still ends on time. The wall-clock deadline is
    // recorded for whoever reads the folder.
    let limit = Some(Duration::from_millis(spec.timeout_ms)).filter(|d| !d.is_zero());
    let deadline = limit.map(|d| Instant::now() + d);
    state.deadline_ms = limit.map(|d| herd::time::now_ms() + d.as_millis() as i64);
    // From here on the task runs: whatever fails (the folder may even be deleted under
    // us), it must still be waited for, killed to the last process, and cleaned up.
    if let Err(err) = folder.write_state(&state) {
        warn!(%err, "cannot record the task's pid");
    }
    info!(task = %spec.task_id, attempt = spec.attempt, pid = task_pid, "task started");
    let pumps = [
        child
            .stdout
            .take()
            .map(|p| pump(p.into(), pb::OutputStream::Stdout, &output)),
        child
            .stderr
            .take()
            .map(|p| pump(p.into(), pb::OutputStream::Stderr, &output)),
    ];
    // We reap with waitpid(-1) (orphans are ours too), never through `child`.
    drop(child);

    let task = Task {
        me,
        task_pid,
        cgroup: cgroup.as_ref(),
    };
    let mut reaper = Reaper {
        main: task_pid,
        status: None,
    };
    let grace = Duration::from_millis(spec.kill_grace_ms);
    let mut stop: Option<Stop> = None;
    let mut killed = false;
    let work_dir = folder.root.parent().map(PathBuf::from).unwrap_or_default();
    let status = loop {
        reaper.reap();
        if let Some(status) = reaper.status {
            break status;
        }
        // Cut off from the master past the fencing deadline (its agent renews the lease at
        // every acknowledgement): stop the task before the master runs it elsewhere.
        if stop.is_none()
            && !spec.keep_on_disconnect
            && let Some(reason) = lease::expired(&work_dir, grace)
        {
            warn!(%reason, "stopping the task: its worker is cut off from the master");
            remove_container(&spec).await;
            task.signal_all(libc::SIGTERM);
            stop = Some(Stop {
                reason,
                kill_at: Instant::now() + grace,
                why: Why::Fenced,
            });
        }
        let kill_at = stop.as_ref().map(|s| s.kill_at);
        tokio::select! {
            _ = children.recv() => {}
            _ = terminate.recv(), if stop.is_none() => {
                let reason = folder
                    .cancel_reason()
                    .unwrap_or_else(|| "cancelled".into());
                info!(%reason, "cancelling the task");
                remove_container(&spec).await;
                task.signal_all(libc::SIGTERM);
                stop = Some(Stop { reason, kill_at: Instant::now() + grace, why: Why::Cancelled });
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                if deadline.is_some() && stop.is_none() => {
                let reason = format!("timed out after {}", herd::time::short(limit.unwrap_or_default()));
                info!(%reason, "stopping the task: its time is up");
                remove_container(&spec).await;
                task.signal_all(libc::SIGTERM);
                stop = Some(Stop { reason, kill_at: Instant::now() + grace, why: Why::TimedOut });
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)),
                if kill_at.is_some() && !killed => {
                task.signal_all(libc::SIGKILL);
                killed = true;
            }
            // SIGCHLDs coalesce; look again now and then regardless.
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    };

    // The main process is gone; nothing else of the task may stay. A stopped task's
    // other processes get the rest of their grace period after SIGTERM.
    if let Some(Stop { kill_at, .. }) = &stop {
        while !task.everything().is_empty() && Instant::now() < *kill_at {
            reaper.reap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    task.kill_everything(&mut reaper).await;
    let mut stderr_tail = Vec::new();
    let [stdout, stderr] = pumps;
    for (pump, is_stderr) in [(stdout, false), (stderr, true)] {
        let Some(pump) = pump else { continue };
        match tokio::time::timeout(DRAIN, pump).await {
            Ok(Ok(tail)) if is_stderr => stderr_tail = tail,
            Ok(_) => {}
            Err(_) => warn!("output still open after every task process ended; leaving it"),
        }
    }

    let mut exit = describe(status, stop, cgroup.as_ref());
    // A container that never ran (125: the runtime failed; 126, 127: the command could
    // not run in it): the runtime said why on stderr, and that is the reason.
    if !spec.image.is_empty()
        && matches!(exit.exit_code, Some(125..=127))
        && let Some(line) = last_line(&stderr_tail)
    {
        exit.reason = format!("{}: {line}", exit.reason);
    }
    info!(outcome = %exit.outcome, reason = %exit.reason, "task ended");
    if let Some(cgroup) = &cgroup {
        cgroup.remove();
    }
    if let Err(err) = folder.write_exit(&exit) {
        warn!(%err, "cannot write the exit status");
    }
    tell("ended");
    Ok(())
}

/// GPU indices as CUDA_VISIBLE_DEVICES takes them: `0,2`.
fn gpu_list(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// What gives a container its GPUs: docker `--gpus device=0,2` (the NVIDIA container
/// toolkit), podman `--device nvidia.com/gpu=0` per index (CDI, `nvidia-ctk cdi
/// generate`).
fn container_gpu_args(runtime: &str, ids: &[u32]) -> Vec<String> {
    if ids.is_empty() {
        return Vec::new();
    }
    if runtime == "docker" {
        return vec!["--gpus".into(), format!("\"device={}\"", gpu_list(ids))];
    }
    ids.iter()
        .flat_map(|i| ["--device".to_string(), format!("nvidia.com/gpu={i}")])
        .collect()
}

/// A process task's working directory must exist on this worker (a container's is the
/// runtime's business: it says so itself when the image lacks it).
fn check_workdir(spec: &Spec) -> Result<(), Error> {
    if spec.workdir.is_empty() || !spec.image.is_empty() {
        return Ok(());
    }
    match std::fs::metadata(&spec.workdir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::FailedPrecondition(format!(
            "workdir {} is not a directory",
            spec.workdir
        ))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(Error::FailedPrecondition(
            format!("workdir {} does not exist on this worker", spec.workdir),
        )),
        Err(err) => Err(Error::FailedPrecondition(format!(
            "cannot use workdir {}: {err}",
            spec.workdir
        ))),
    }
}

/// Starts the task: `sh -c CMD`, or the container through the runtime's CLI.
fn spawn(
    spec: &Spec,
    folder: &Folder,
    cgroup: Option<&Cgroup>,
) -> std::io::Result<std::process::Child> {
    let work = folder.work();
    std::fs::create_dir_all(&work)?;
    let mut command = if spec.image.is_empty() {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&spec.command);
        c
    } else {
        let runtime = spec.runtime.as_deref().ok_or_else(|| {
            std::io::Error::other("this worker has no container runtime for image tasks")
        })?;
        let mut c = Command::new(runtime);
        c.args(["run", "--rm", "--name", &spec.container()]);
        c.arg("--cpus").arg(format!("{}", spec.cpu));
        if spec.memory_gb > 0.0 {
            let mib = (spec.memory_gb * 1e9 / 1048576.0).ceil().max(6.0) as u64;
            c.arg("--memory").arg(format!("{mib}m"));
        }
        c.args(container_gpu_args(runtime, &spec.gpu_ids));
        if !spec.workdir.is_empty() {
            c.arg("--workdir").arg(&spec.workdir);
        }
        // By name only: the runtime takes each value from its own environment (set
        // below), so no value shows in the process list.
        for key in spec.env.keys() {
            c.arg("--env").arg(key);
        }
        c.arg(&spec.image);
        if !spec.command.is_empty() {
            c.arg("sh").arg("-c").arg(&spec.command);
        }
        c
    };
    let cwd = if spec.workdir.is_empty() || !spec.image.is_empty() {
        work
    } else {
        PathBuf::from(&spec.workdir)
    };
    command
        .current_dir(&cwd)
        // The task's own variables first: herd's below win over them.
        .envs(&spec.env)
        .env("HERD_TASK_ID", &spec.task_id)
        .env("HERD_TASK_ATTEMPT", spec.attempt.to_string())
        // The worker's credentials are not the task's business.
        .env_remove("HERD_TOKEN")
        .env_remove("HERD_TOKEN_FILE")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A process task sees only the GPUs herd gave it, whatever its own variables say. (A
    // container gets its devices from the runtime's flag above, renumbered from 0, and
    // the runtime sets NVIDIA_VISIBLE_DEVICES inside; without the flag it has none.)
    let gpus = if !spec.image.is_empty() {
        None
    } else if !spec.gpu_ids.is_empty() {
        let ids = gpu_list(&spec.gpu_ids);
        Some((ids.clone(), ids))
    } else if spec.hide_gpus {
        // Given none on a machine with GPUs: none, rather than all of them.
        Some((String::new(), "void".to_string()))
    } else {
        None
    };
    if let Some((cuda, nvidia)) = gpus {
        command
            .env("CUDA_VISIBLE_DEVICES", cuda)
            .env("NVIDIA_VISIBLE_DEVICES", nvidia);
    }
    let parent = std::process::id() as i32;
    let procs_files = cgroup.map(Cgroup::procs_files).unwrap_or_default();
    // Our line to the agent, for the task process to say "started" (closed at its exec).
    // SAFETY: fcntl duplicates our stdout; the copy is closed below.
    let notify = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: prctl, getppid, signal, write and the cgroup join are async-signal-safe and
    // touch only the child; the paths and the message were prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            // A killed supervisor must not leave its task behind unsupervised.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "the supervisor died during the spawn",
                ));
            }
            // The task exists and is ours: tell the agent now, not after the cgroup
            // join, which on cgroup v1 waits for an RCU grace period (10-20 ms; the
            // benchmarked submit-to-start is ~2.5 ms). No task code runs before the join.
            // SIGPIPE is ignored around the write: the agent may be gone.
            if notify >= 0 {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                libc::write(notify, STARTED.as_ptr().cast(), STARTED.len());
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            join_from_pre_exec(&procs_files)
        });
    }
    let spawned = command.spawn();
    if notify >= 0 {
        // SAFETY: closing the duplicate made above.
        unsafe { libc::close(notify) };
    }
    spawned
}

/// What the task process tells the agent between fork and exec.
const STARTED: &[u8] = b"started\n";

/// The end of a pipe kept in memory, for a reason that quotes it.
const TAIL: usize = 1024;

/// Copies one of the task's pipes into the output files until it closes; returns its
/// last [`TAIL`] bytes.
fn pump(
    fd: std::os::fd::OwnedFd,
    stream: pb::OutputStream,
    output: &Arc<Mutex<OutputWriter>>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    let output = output.clone();
    tokio::spawn(async move {
        let mut tail = Vec::new();
        let Ok(mut pipe) = pipe::Receiver::from_owned_fd(fd) else {
            return tail;
        };
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            let n = match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            tail.extend_from_slice(&buf[..n]);
            let excess = tail.len().saturating_sub(TAIL);
            tail.drain(..excess);
            let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(err) = out.append(stream, &buf[..n]) {
                warn!(%err, "cannot write the task's output");
            }
        }
        tail
    })
}

/// Reaps every child that ended (orphans of the task included), keeping the main one's
/// status.
struct Reaper {
    main: i32,
    status: Option<ExitStatus>,
}

impl Reaper {
    fn reap(&mut self) {
        loop {
            let mut raw = 0;
            // SAFETY: waitpid writes only `raw`.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if pid == self.main {
                self.status = Some(ExitStatus::from_raw(raw));
            }
        }
    }
}

/// Every process that belongs to the task.
struct Task<'a> {
    me: i32,
    task_pid: i32,
    cgroup: Option<&'a Cgroup>,
}

impl Task<'_> {
    /// The task's processes now: its cgroup, our descendants (the subreaper sees orphans
    /// that left the process group) and its process group.
    fn everything(&self) -> Vec<i32> {
        let mut all = self.cgroup.map(Cgroup::procs).unwrap_or_default();
        all.extend(procs::descendants(self.me));
        all.extend(procs::group(self.task_pid));
        all.sort_unstable();
        all.dedup();
        all.retain(|&pid| pid != self.me && procs::Stat::read(pid).is_some_and(|s| !s.is_dead()));
        all
    }

    fn signal_all(&self, signal: i32) {
        for pid in self.everything() {
            procs::signal(pid, signal);
        }
    }

    /// SIGKILL until nothing of the task is left (a process may fork meanwhile).
    async fn kill_everything(&self, reaper: &mut Reaper) {
        let deadline = Instant::now() + KILL_PATIENCE;
        loop {
            if let Some(cgroup) = self.cgroup {
                cgroup.kill_all();
            }
            let left = self.everything();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                warn!(?left, "task processes survive SIGKILL; giving up on them");
                return;
            }
            for pid in left {
                procs::signal(pid, libc::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            reaper.reap();
        }
    }
}

/// A container is stopped through its runtime as well: its processes are not ours.
async fn remove_container(spec: &Spec) {
    let Some(runtime) = spec.runtime.as_deref().filter(|_| !spec.image.is_empty()) else {
        return;
    };
    let removed = tokio::process::Command::new(runtime)
        .args(["rm", "-f", &spec.container()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), removed).await;
}

fn unblock_sigterm() {
    // SAFETY: a sigset on the stack, then the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Blocks SIGTERM in a freshly forked supervisor (from the agent's `pre_exec`), so a cancel
/// that comes before the supervisor can handle it waits instead of killing it.
pub fn block_sigterm_from_pre_exec() {
    // SAFETY: sigemptyset, sigaddset and sigprocmask are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn containers_get_their_gpus_through_the_runtime() {
        assert!(super::container_gpu_args("podman", &[]).is_empty());
        assert_eq!(
            super::container_gpu_args("docker", &[0, 2]),
            ["--gpus", "\"device=0,2\""]
        );
        assert_eq!(
            super::container_gpu_args("podman", &[1, 3]),
            [
                "--device",
                "nvidia.com/gpu=1",
                "--device",
                "nvidia.com/gpu=3"
            ]
        );
    }
}
