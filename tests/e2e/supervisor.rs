//! End to end: tasks run under per-task supervisors that outlive herd-worker. A worker
//! killed with -9 and started again reattaches and reports; cancel leaves no process of
//! the task behind (cgroup and process group); memory limits hold; SIGTERM leaves tasks
//! running (or, with --drain-on-exit, waits for them); output keeps its write order.

use herd_testkit as common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use herd::pb;

const T: Duration = Duration::from_secs(30);
/// Short, so that tests of cancel see SIGKILL come.
const GRACE: &[&str] = &["--kill-grace", "1s"];

/// Arguments for `sleep` of about `secs` seconds, unique to one test run (in the
/// fraction), so that /proc shows only our processes.
fn unique_sleeps(n: usize, secs: u32) -> Vec<String> {
    let base = 100_000 + fastrand::u32(..800_000);
    (0..n)
        .map(|i| format!("{secs}.{:06}", base + i as u32))
        .collect()
}

/// A worker's work dir (as `Worker::start` makes it).
fn work_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("work-{name}"))
}

/// Supervisors a test leaves running are cancelled when it ends, so tasks do not outlive
/// it (the whole point of supervisors is that killing the worker does not stop them).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for folder in entries.flatten().map(|e| e.path()) {
            if folder.join("exit.json").exists() {
                continue;
            }
            let Some(pid) = supervisor_pid(&folder) else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.windows(9).any(|w| w == b"supervise") {
                let _ = std::fs::write(folder.join("cancel"), "the test ended");
                // SAFETY: signalling a supervisor this test started.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
    }
}

/// Polls until no process has any of `args`.
async fn wait_none_left(args: &[String], limit: Duration, what: &str) {
    let deadline = Deadline::new(limit, what.to_string());
    loop {
        let left: Vec<u32> = args.iter().flat_map(|a| processes_with(a)).collect();
        if left.is_empty() {
            return;
        }
        deadline.wait().await;
    }
}

/// Whether the worker uses cgroups; without them, fails in CI and skips elsewhere.
fn cgroups_in_effect(info: &pb::WorkerInfo) -> bool {
    let isolation = info.description.as_ref().unwrap().isolation.clone();
    if isolation.starts_with("cgroup") {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "CI=true but the worker runs without cgroups ({isolation}): run the tests as root \
         on a host with writable cgroups"
    );
    println!("SKIPPED: cgroups are not usable here (isolation: {isolation})");
    eprintln!("SKIPPED: cgroups are not usable here (isolation: {isolation})");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_sigkill_reattaches_and_every_task_runs_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(work_dir(dir.path(), "phoenix"));
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut worker = Worker::start(dir.path(), &master.url(), "phoenix", &["--cpu", "4"]);
    wait_state(&mut admin, "phoenix", pb::WorkerState::Active, T).await;

    // Long enough to still run after the last start marker on a busy machine.
    let sleeps = unique_sleeps(3, 8);
    let mut tasks = Vec::new();
    for (i, sleep) in sleeps.iter().enumerate() {
        let marker = dir.path().join(format!("marker-{i}"));
        let command = format!(
            "echo start >> {m}; sleep {sleep}; echo done >> {m}",
            m = marker.display()
        );
        tasks.push((submit(&mut admin, &command, 1.0).await.id, marker));
    }
    for (id, marker) in &tasks {
        wait_task(&mut admin, id, pb::TaskState::Running, T).await;
        let deadline = Deadline::new(T, format!("{id} writes its start marker"));
        while std::fs::read_to_string(marker).unwrap_or_default() != "start\n" {
            deadline.wait().await;
        }
    }
    worker.kill9();
    // The tasks run on without their agent.
    for sleep in &sleeps {
        assert_eq!(processes_with(sleep).len(), 1, "sleep {sleep} runs on");
    }
    let _back = Worker::start(dir.path(), &master.url(), "phoenix", &["--cpu", "4"]);
    for (id, marker) in &tasks {
        let t = wait_task(&mut admin, id, pb::TaskState::Succeeded, T).await;
        assert_eq!((t.attempts, t.worker_name.as_str()), (1, "phoenix"));
        assert_eq!(std::fs::read_to_string(marker).unwrap(), "start\ndone\n");
    }
    wait_none_left(&sleeps, Duration::from_secs(5), "no task process is left").await;
    let deadline = Deadline::new(Duration::from_secs(5), "every supervisor has left");
    while tasks.iter().any(|(id, _)| {
        let folder = work_dir(dir.path(), "phoenix").join(format!("{id}-1"));
        supervisor_pid(&folder).is_some_and(process_alive)
    }) {
        deadline.wait().await;
    }
}

/// The pid a task folder's state file names.
fn supervisor_pid(folder: &Path) -> Option<u32> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("supervisor.json")).ok()?).ok()?;
    state["pid"].as_u64().map(|pid| pid as u32)
}

/// Cancels `trap "" TERM; setsid sleep A & sleep B & sleep C` and checks nothing is left
/// once the grace period is over.
async fn cancel_leaves_nothing(isolation: &str) {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(work_dir(dir.path(), "victim"));
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let args = [GRACE, &["--isolation", isolation]].concat();
    let _w = Worker::start(dir.path(), &master.url(), "victim", &args);
    let info = wait_state(&mut admin, "victim", pb::WorkerState::Active, T).await;
    let in_effect = info.description.as_ref().unwrap().isolation.clone();
    if isolation == "process-group" {
        assert_eq!(in_effect, "process group");
    } else if !cgroups_in_effect(&info) {
        return;
    }

    let sleeps = unique_sleeps(3, 1000);
    let command = format!(
        "trap '' TERM; setsid sleep {} & sleep {} & sleep {}",
        sleeps[0], sleeps[1], sleeps[2]
    );
    let t = submit(&mut admin, &command, 0.5).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let deadline = Deadline::new(T, "all three sleeps run");
    while sleeps.iter().any(|s| processes_with(s).is_empty()) {
        deadline.wait().await;
    }
    let (ok, _, err) = herdctl(&master.url(), &["task", "cancel", &t.id]);
    assert!(ok, "{err}");
    // SIGTERM is ignored by all of them: only SIGKILL after the 1 s grace ends them.
    wait_none_left(
        &sleeps,
        Duration::from_secs(4),
        "the grace period is over and every process of the task is gone",
    )
    .await;
    let t = wait_task(&mut admin, &t.id, pb::TaskState::Cancelled, T).await;
    assert!(!t.reason.is_empty());
    if in_effect.starts_with("cgroup") {
        let folder = work_dir(dir.path(), "victim").join(format!("{}-1", t.id));
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder.join("supervisor.json")).unwrap())
                .unwrap();
        let name = state["cgroup"]
            .as_str()
            .expect("the supervisor names its cgroup");
        for hierarchy in ["", "pids", "cpu", "memory"] {
            let cgroup = Path::new("/sys/fs/cgroup")
                .join(hierarchy)
                .join("herd")
                .join(name);
            assert!(!cgroup.exists(), "{} is left", cgroup.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_every_process_of_the_task_in_its_cgroup() {
    cancel_leaves_nothing("auto").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_every_process_of_the_task_without_cgroups() {
    cancel_leaves_nothing("process-group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_over_its_memory_limit_fails_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(work_dir(dir.path(), "tight"));
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "tight", &["--memory", "4"]);
    let info = wait_state(&mut admin, "tight", pb::WorkerState::Active, T).await;
    if !cgroups_in_effect(&info) {
        return;
    }
    let spec = |command: &str| pb::TaskSpec {
        command: command.into(),
        resources: Some(pb::Resources {
            cpu: 0.5,
            memory_gb: 0.05,
            gpu: 0,
            disk_gb: 0.0,
        }),
        ..Default::default()
    };
    let hog = submit_spec(
        &mut admin,
        spec("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"),
    )
    .await;
    // Within the limit, the same task runs fine.
    let modest = submit_spec(
        &mut admin,
        spec("x=$(head -c 1000000 /dev/zero | tr '\\0' a); echo ${#x}"),
    )
    .await;
    let hog = wait_task(&mut admin, &hog.id, pb::TaskState::Failed, T).await;
    assert!(
        hog.reason.contains("out of memory") && hog.reason.contains("0.05 GB"),
        "{}",
        hog.reason
    );
    assert!(!logs(&mut admin, &hog.id, false).await.contains("survived"));
    wait_task(&mut admin, &modest.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(logs(&mut admin, &modest.id, false).await, "1000000\n");
}

/// Waits for a child to exit, with a deadline.
async fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Deadline::new(limit, "the worker exits");
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        deadline.wait().await;
    }
}

/// Liveness slow enough that "Inactive at once" cannot be a heartbeat timeout.
const SLOW_TIMEOUT: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-timeout",
    "20s",
    "--check-interval",
    "100ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_tasks_running_and_the_next_worker_reports_them_with_all_output() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(work_dir(dir.path(), "leaver"));
    let master = InProcess::start(dir.path(), SLOW_TIMEOUT);
    let mut admin = master.admin().await;
    let mut w = Worker::start(dir.path(), &master.url(), "leaver", &[]);
    wait_state(&mut admin, "leaver", pb::WorkerState::Active, T).await;
    let sleep = unique_sleeps(1, 3).remove(0);
    let command = format!("echo begin; sleep {sleep}; echo end");
    let t = submit(&mut admin, &command, 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let deadline = Deadline::new(T, "the first line reaches the master");
    while logs(&mut admin, &t.id, false).await != "begin\n" {
        deadline.wait().await;
    }

    w.signal(libc::SIGTERM);
    let status = wait_exit(&mut w.child, Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
    // STOPPING: Inactive at once, long before the 20 s heartbeat timeout.
    wait_state(
        &mut admin,
        "leaver",
        pb::WorkerState::Inactive,
        Duration::from_secs(2),
    )
    .await;
    let still = task(&mut admin, &t.id).await;
    assert_eq!(still.state(), pb::TaskState::Running, "{}", still.reason);
    assert_eq!(processes_with(&sleep).len(), 1, "the task runs on");

    let _back = Worker::start(dir.path(), &master.url(), "leaver", &[]);
    let t = wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    assert_eq!((t.attempts, t.worker_name.as_str()), (1, "leaver"));
    assert_eq!(logs(&mut admin, &t.id, false).await, "begin\nend\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_on_exit_waits_for_the_running_task_before_leaving() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(work_dir(dir.path(), "drainer"));
    let master = InProcess::start(dir.path(), SLOW_TIMEOUT);
    let mut admin = master.admin().await;
    let mut w = Worker::start(dir.path(), &master.url(), "drainer", &["--drain-on-exit"]);
    wait_state(&mut admin, "drainer", pb::WorkerState::Active, T).await;
    // The worker's token is not the task's: it sees none.
    let t = submit(&mut admin, "sleep 2; echo drained$HERD_TOKEN", 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;

    w.signal(libc::SIGTERM);
    let status = wait_exit(&mut w.child, T).await;
    assert!(status.success(), "{status:?}");
    // It left only after the task's result was acknowledged.
    let t = task(&mut admin, &t.id).await;
    assert_eq!(t.state(), pb::TaskState::Succeeded, "{}", t.reason);
    assert_eq!(logs(&mut admin, &t.id, false).await, "drained\n");
    wait_state(
        &mut admin,
        "drainer",
        pb::WorkerState::Inactive,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_come_back_in_the_order_they_were_written() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(work_dir(dir.path(), "chatter"));
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "chatter", &[]);
    wait_state(&mut admin, "chatter", pb::WorkerState::Active, T).await;
    let t = submit(
        &mut admin,
        "for i in 1 2 3; do echo out$i; sleep 0.1; echo err$i >&2; sleep 0.1; done",
        0.5,
    )
    .await;
    let t = wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(
        logs(&mut admin, &t.id, false).await,
        "out1\nerr1\nout2\nerr2\nout3\nerr3\n"
    );
    // The task folder keeps which stream each chunk came from (1 stdout, 2 stderr).
    let folder = work_dir(dir.path(), "chatter").join(format!("{}-1", t.id));
    let records = std::fs::read(folder.join("output.streams")).unwrap();
    let streams: Vec<u8> = records.chunks(5).map(|r| r[0]).collect();
    assert_eq!(streams, vec![1, 2, 1, 2, 1, 2]);
    let log = std::fs::read_to_string(folder.join("output.log")).unwrap();
    assert_eq!(log, "out1\nerr1\nout2\nerr2\nout3\nerr3\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_from_while_the_worker_was_down_is_reported_and_its_folder_later_removed() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(work_dir(dir.path(), "sleeper"));
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut first = Worker::start(dir.path(), &master.url(), "sleeper", &[]);
    wait_state(&mut admin, "sleeper", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "sleep 1; echo late; exit 3", 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    first.kill9();
    // The task ends while no agent is there to hear it.
    let folder = work_dir(dir.path(), "sleeper").join(format!("{}-1", t.id));
    let deadline = Deadline::new(T, "the supervisor writes the exit status");
    while !folder.join("exit.json").exists() {
        deadline.wait().await;
    }
    let mut second = Worker::start(dir.path(), &master.url(), "sleeper", &[]);
    let t = wait_task(&mut admin, &t.id, pb::TaskState::Failed, T).await;
    assert_eq!((t.attempts, t.exit_code), (1, Some(3)));
    assert_eq!(logs(&mut admin, &t.id, false).await, "late\n");
    let deadline = Deadline::new(T, "the acknowledged result is marked reported");
    while !folder.join("reported").exists() {
        deadline.wait().await;
    }
    second.kill9();

    // Removed at the start of a worker whose retention has passed since the report.
    let deadline = Deadline::new(T, "a second has passed since the report");
    while std::fs::metadata(folder.join("reported"))
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap_or_default()
        < Duration::from_millis(1100)
    {
        deadline.wait().await;
    }
    let _third = Worker::start(
        dir.path(),
        &master.url(),
        "sleeper",
        &["--task-retention", "1s"],
    );
    let deadline = Deadline::new(T, "the old task folder is removed");
    while folder.exists() {
        deadline.wait().await;
    }
    assert_eq!(
        task(&mut admin, &t.id).await.state(),
        pb::TaskState::Failed,
        "reported once, not again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_supervisor_is_killed_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(work_dir(dir.path(), "orphan"));
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "orphan", GRACE);
    let info = wait_state(&mut admin, "orphan", pb::WorkerState::Active, T).await;
    let cgroups = info.description.unwrap().isolation.starts_with("cgroup");
    let sleeps = unique_sleeps(2, 1000);
    let t = submit(
        &mut admin,
        &format!("sleep {} & sleep {}", sleeps[0], sleeps[1]),
        0.5,
    )
    .await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let deadline = Deadline::new(T, "both sleeps run");
    while sleeps.iter().any(|s| processes_with(s).is_empty()) {
        deadline.wait().await;
    }
    let folder = work_dir(dir.path(), "orphan").join(format!("{}-1", t.id));
    let supervisor = supervisor_pid(&folder).unwrap() as i32;
    // SAFETY: killing the supervisor this test's worker started.
    assert_eq!(unsafe { libc::kill(supervisor, libc::SIGKILL) }, 0);

    let t = wait_task(&mut admin, &t.id, pb::TaskState::Failed, T).await;
    assert!(t.reason.contains("supervisor died"), "{}", t.reason);
    if cgroups {
        // The cgroup holds every process of the task: the agent finds and kills them all.
        wait_none_left(&sleeps, Duration::from_secs(5), "no task process is left").await;
    }
}
