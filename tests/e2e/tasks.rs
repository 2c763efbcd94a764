//! End to end: tasks placed by the scheduler, dispatched over the heartbeat stream, run as
//! processes or containers, logged, cancelled, re-queued, and kept across restarts.

use herd_testkit as common;

use std::time::{Duration, Instant};

use common::*;
use herd::pb;

const T: Duration = Duration::from_secs(30);

/// The process group a task printed as `pgid=$$`.
async fn printed_pgid(admin: &mut Admin, id: &str) -> i32 {
    let deadline = Deadline::new(T, "the task prints its process group");
    loop {
        let out = logs(admin, id, false).await;
        if let Some(pgid) = out
            .split("pgid=")
            .nth(1)
            .and_then(|s| s.trim().parse().ok())
        {
            return pgid;
        }
        deadline.wait().await;
    }
}

/// A short worker-timeout too, for tests of lost workers.
fn quick_removal() -> Vec<&'static str> {
    [TIGHT, &["--worker-timeout", "3s"]].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tasks_succeed_or_report_their_exit_code_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "runner", &[]);
    wait_state(&mut admin, "runner", pb::WorkerState::Active, T).await;

    let ok = submit(&mut admin, "echo hello from $HERD_TASK_ID; pwd", 0.5).await;
    let bad = submit(&mut admin, "echo oops >&2; exit 7", 0.5).await;
    let ok = wait_task(&mut admin, &ok.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(ok.exit_code, Some(0));
    assert_eq!(ok.worker_name, "runner");
    assert_eq!(ok.attempts, 1);
    assert!(ok.started_ms > 0 && ok.finished_ms >= ok.started_ms);
    let out = logs(&mut admin, &ok.id, false).await;
    assert!(out.contains(&format!("hello from {}", ok.id)), "{out}");
    assert!(
        out.contains(&format!("work-runner/{}-1", ok.id)),
        "runs in its own folder: {out}"
    );

    let bad = wait_task(&mut admin, &bad.id, pb::TaskState::Failed, T).await;
    assert_eq!(bad.exit_code, Some(7));
    assert!(bad.reason.contains("code 7"), "{}", bad.reason);
    assert!(logs(&mut admin, &bad.id, false).await.contains("oops"));

    // Allocations fall back when tasks end.
    let w = worker(&mut admin, "runner").await.unwrap();
    assert_eq!(w.allocated.unwrap().cpu, 0.0);

    // What an operator sees through herdctl.
    let (okay, out, _) = herdctl(&master.url(), &["tasks", "--state", "failed"]);
    assert!(okay);
    assert!(
        out.contains(&bad.id) && !out.contains(&format!("{} ", ok.id)),
        "{out}"
    );
    let (okay, out, _) = herdctl(&master.url(), &["task", "status", &bad.id]);
    assert!(okay);
    assert!(out.contains("exit code:  7"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_are_refused_with_a_reason_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    master.admin().await;
    let cases: &[(&[&str], &str)] = &[
        (&["task", "submit"], "--command, --docker-image"),
        (&["task", "submit", "--command", "x", "--cpu", "0"], "--cpu"),
        (
            &["task", "submit", "--command", "x", "--cpu", "-2"],
            "--cpu",
        ),
        (
            &["task", "submit", "--command", "x", "--memory", "-1"],
            "--memory",
        ),
        (
            &["task", "submit", "--command", "x", "--gpu", "1.5"],
            "--gpu",
        ),
        (
            &["task", "submit", "--command", "x", "--gpu", "-1"],
            "--gpu",
        ),
        (
            &["task", "submit", "--command", "x", "--cpu", "lots"],
            "--cpu",
        ),
        (&["task", "submit", "--docker-image", "bad image"], "image"),
    ];
    for (args, expected) in cases {
        let (ok, out, err) = herdctl(&master.url(), args);
        assert!(!ok, "{args:?} was accepted: {out}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    let (ok, out, _) = herdctl(&master.url(), &["tasks"]);
    assert!(ok);
    assert_eq!(out.trim(), "no tasks");
    assert_eq!(db_tasks(&master.db()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_spinning_every_core_never_costs_its_worker_a_heartbeat() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST); // heartbeat-timeout 2s
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "hot", &[]);
    wait_state(&mut admin, "hot", pb::WorkerState::Active, T).await;
    let spin = "end=$(($(date +%s) + 10)); \
                for i in 1 2 3 4; do (while [ $(date +%s) -lt $end ]; do :; done) & done; wait";
    let t = submit(&mut admin, spin, 2.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let start = Instant::now();
    loop {
        let w = worker(&mut admin, "hot").await.unwrap();
        assert_eq!(w.state(), pb::WorkerState::Active, "heartbeats starved");
        if task(&mut admin, &t.id).await.state() == pb::TaskState::Succeeded {
            break;
        }
        assert!(start.elapsed() < T, "the spinning task never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(start.elapsed() >= Duration::from_secs(8));
}

/// The seed scenario: three workers, one stopped; 30 tasks under each scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_goes_to_a_stopped_worker_under_either_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let cpu = ["--cpu", "8", "--memory", "8"];
    let _a = Worker::start(dir.path(), &master.url(), "live-a", &cpu);
    let _b = Worker::start(dir.path(), &master.url(), "live-b", &cpu);
    let stopped = Worker::start(dir.path(), &master.url(), "stopped", &cpu);
    for name in ["live-a", "live-b", "stopped"] {
        wait_state(&mut admin, name, pb::WorkerState::Active, T).await;
    }
    stopped.signal(libc::SIGSTOP);
    wait_state(&mut admin, "stopped", pb::WorkerState::Inactive, T).await;

    for scheduler in ["round-robin", "resource-aware"] {
        let (ok, out, err) = herdctl(&master.url(), &["scheduler", scheduler]);
        assert!(ok && out.contains(scheduler), "{out} {err}");
        let mut ids = Vec::new();
        for _ in 0..30 {
            ids.push(submit(&mut admin, "sleep 1", 0.25).await.id);
        }
        let mut per_worker = std::collections::HashMap::<String, usize>::new();
        for id in &ids {
            let t = wait_task(&mut admin, id, pb::TaskState::Succeeded, T).await;
            *per_worker.entry(t.worker_name).or_default() += 1;
        }
        assert_eq!(
            per_worker.get("stopped"),
            None,
            "{scheduler}: {per_worker:?}"
        );
        let a = per_worker.get("live-a").copied().unwrap_or(0);
        let b = per_worker.get("live-b").copied().unwrap_or(0);
        assert_eq!(a + b, 30);
        assert!(
            a >= 10 && b >= 10,
            "{scheduler} did not spread: {per_worker:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_aware_places_by_free_resources_and_queues_what_fits_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _small = Worker::start(
        dir.path(),
        &master.url(),
        "small",
        &["--cpu", "2", "--memory", "4"],
    );
    let _big = Worker::start(
        dir.path(),
        &master.url(),
        "big",
        &["--cpu", "6", "--memory", "8"],
    );
    wait_state(&mut admin, "small", pb::WorkerState::Active, T).await;
    wait_state(&mut admin, "big", pb::WorkerState::Active, T).await;

    // Fill "big" to 3 of its 6 CPUs: now no worker has 4 CPUs free.
    let filler = submit(&mut admin, "sleep 30", 3.0).await;
    let filler = wait_task(&mut admin, &filler.id, pb::TaskState::Running, T).await;
    assert_eq!(filler.worker_name, "big", "only big has 3 CPUs free");
    let four = submit(&mut admin, "echo four", 4.0).await;
    assert_eq!(four.state(), pb::TaskState::Queued);
    assert_eq!(four.reason, "no Active worker with 4 CPUs free");
    // Smaller tasks behind it are placed meanwhile (backfill).
    let small = submit(&mut admin, "echo small", 1.0).await;
    wait_task(&mut admin, &small.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(
        task(&mut admin, &four.id).await.state(),
        pb::TaskState::Queued
    );
    // Room appears when the filler ends: the 4-CPU task goes where 4 are free.
    admin
        .cancel_task(pb::CancelTaskRequest {
            task_id: filler.id.clone(),
        })
        .await
        .unwrap();
    let four = wait_task(&mut admin, &four.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(four.worker_name, "big");

    // 64 GB fits nowhere: queued with its reason, placed once a big enough worker joins.
    let huge = submit_spec(
        &mut admin,
        pb::TaskSpec {
            command: "echo huge".into(),
            resources: Some(pb::Resources {
                cpu: 1.0,
                memory_gb: 64.0,
                gpu: 0,
                disk_gb: 0.0,
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(huge.reason, "no Active worker with 64 GB free memory");
    let (_, out, _) = herdctl(&master.url(), &["tasks", "--state", "queued"]);
    assert!(
        out.contains("no Active worker with 64 GB free memory"),
        "{out}"
    );
    let _giant = Worker::start(dir.path(), &master.url(), "giant", &["--memory", "128"]);
    let huge = wait_task(&mut admin, &huge.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(huge.worker_name, "giant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "victim", &[]);
    wait_state(&mut admin, "victim", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "echo pgid=$$; sleep 300 & sleep 300; wait", 0.5).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let pgid = printed_pgid(&mut admin, &t.id).await;
    let deadline = Deadline::new(T, "both sleeps run");
    while group_members(pgid).len() < 3 {
        deadline.wait().await;
    }

    let (ok, out, err) = herdctl(&master.url(), &["task", "cancel", &t.id]);
    assert!(ok, "{err}");
    assert!(out.contains(&t.id), "{out}");
    let t = wait_task(&mut admin, &t.id, pb::TaskState::Cancelled, T).await;
    assert!(!t.reason.is_empty());
    assert!(
        group_members(pgid).is_empty(),
        "left: {:?}",
        group_members(pgid)
    );
    let (ok, _, err) = herdctl(&master.url(), &["task", "cancel", &t.id]);
    assert!(!ok && err.contains("already cancelled"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_task_is_requeued_after_the_worker_timeout_and_succeeds_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), &quick_removal());
    let mut admin = master.admin().await;
    let mut first = Worker::start(dir.path(), &master.url(), "doomed", &[]);
    wait_state(&mut admin, "doomed", pb::WorkerState::Active, T).await;
    let t = submit(
        &mut admin,
        "sleep 2; echo finished on attempt $HERD_TASK_ATTEMPT",
        1.0,
    )
    .await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    first.kill9();
    let _second = Worker::start(dir.path(), &master.url(), "heir", &[]);
    wait_state(&mut admin, "heir", pb::WorkerState::Active, T).await;

    // Inactive is not enough to move it: it may only be partitioned.
    wait_state(&mut admin, "doomed", pb::WorkerState::Inactive, T).await;
    let still = task(&mut admin, &t.id).await;
    assert_eq!(still.worker_name, "doomed");
    wait_state(&mut admin, "doomed", pb::WorkerState::Removed, T).await;
    let done = wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(done.worker_name, "heir");
    assert_eq!(done.attempts, 2);
    assert!(
        logs(&mut admin, &t.id, false)
            .await
            .contains("finished on attempt 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_give_up_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(
        dir.path(),
        &[&quick_removal()[..], &["--max-attempts", "1"]].concat(),
    );
    let mut admin = master.admin().await;
    let mut w = Worker::start(dir.path(), &master.url(), "flaky", &[]);
    wait_state(&mut admin, "flaky", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "sleep 30", 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    w.kill9();
    let failed = wait_task(&mut admin, &t.id, pb::TaskState::Failed, T).await;
    assert!(
        failed.reason.contains("gave up after 1 attempts"),
        "{}",
        failed.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_back_before_removal_keeps_its_tasks_and_one_back_after_stops_its_copy() {
    let dir = tempfile::tempdir().unwrap();
    // Removed after 5 s: the fencing deadline is then 3.75 s, and napper stops its tasks
    // 1 s (its kill grace) before that, well after it is Inactive (1 s).
    let master = InProcess::start(dir.path(), &[TIGHT, &["--worker-timeout", "5s"]].concat());
    let mut admin = master.admin().await;
    let napper = Worker::start(dir.path(), &master.url(), "napper", &["--kill-grace", "1s"]);
    wait_state(&mut admin, "napper", pb::WorkerState::Active, T).await;

    // Back before Removed: the task carries on, same attempt.
    let t = submit(&mut admin, "sleep 3; echo done", 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    napper.signal(libc::SIGSTOP);
    wait_state(&mut admin, "napper", pb::WorkerState::Inactive, T).await;
    napper.signal(libc::SIGCONT);
    let t = wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    assert_eq!((t.attempts, t.worker_name.as_str()), (1, "napper"));

    // Back after Removed, its task re-queued elsewhere: its copy is stopped. (A task that
    // stays running while its worker is cut off, or the worker's own fencing would have
    // stopped it already: see crash::a_paused_worker_stops_its_task_before_...)
    let t = submit_kept(&mut admin, "echo pgid=$$; sleep 60", 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let pgid = printed_pgid(&mut admin, &t.id).await;
    napper.signal(libc::SIGSTOP);
    let _other = Worker::start(dir.path(), &master.url(), "other", &[]);
    wait_state(&mut admin, "napper", pb::WorkerState::Removed, T).await;
    let deadline = Deadline::new(T, "the task runs again on the other worker");
    loop {
        let moved = task(&mut admin, &t.id).await;
        if moved.state() == pb::TaskState::Running && moved.worker_name == "other" {
            assert_eq!(moved.attempts, 2);
            break;
        }
        deadline.wait().await;
    }
    assert!(
        !group_members(pgid).is_empty(),
        "the old copy still runs while napper sleeps"
    );
    napper.signal(libc::SIGCONT);
    wait_state(&mut admin, "napper", pb::WorkerState::Active, T).await;
    let deadline = Deadline::new(T, "napper stops its stale copy");
    while !group_members(pgid).is_empty() {
        deadline.wait().await;
    }
    let t = task(&mut admin, &t.id).await;
    assert_eq!(
        (t.state(), t.worker_name.as_str()),
        (pb::TaskState::Running, "other")
    );
    // Leave nothing running: attempt 2 is cancelled, and its worker stops every process
    // of it (its supervisor would outlive the test's worker agent).
    let moved_pgid = printed_pgid(&mut admin, &t.id).await;
    admin
        .cancel_task(pb::CancelTaskRequest {
            task_id: t.id.clone(),
        })
        .await
        .unwrap();
    wait_task(&mut admin, &t.id, pb::TaskState::Cancelled, T).await;
    let deadline = Deadline::new(T, "the cancelled attempt's processes are gone");
    while !group_members(moved_pgid).is_empty() {
        deadline.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_worker_leaves_its_tasks_running_for_its_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut w = Worker::start(dir.path(), &master.url(), "leaver", &[]);
    wait_state(&mut admin, "leaver", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "echo pgid=$$; sleep 3", 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let pgid = printed_pgid(&mut admin, &t.id).await;
    w.signal(libc::SIGTERM);
    let status = w.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // The task is neither stopped nor given up: its supervisor carries on without us.
    assert!(!group_members(pgid).is_empty(), "the task still runs");
    assert_eq!(
        task(&mut admin, &t.id).await.state(),
        pb::TaskState::Running
    );
    let _back = Worker::start(dir.path(), &master.url(), "leaver", &[]);
    let t = wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    assert_eq!((t.attempts, t.worker_name.as_str()), (1, "leaver"));
    assert!(group_members(pgid).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_loses_no_queued_or_running_task() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "steady", &["--cpu", "2"]);
    wait_state(&mut admin, "steady", pb::WorkerState::Active, T).await;
    let running = submit(&mut admin, "sleep 3; echo survived", 2.0).await;
    wait_task(&mut admin, &running.id, pb::TaskState::Running, T).await;
    let queued = submit(&mut admin, "echo queued ran", 2.0).await;
    assert_eq!(queued.state(), pb::TaskState::Queued);
    master.kill9();

    let mut restarted = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = restarted.admin().await;
    let listed: Vec<String> = admin
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(
        listed,
        vec![queued.id.clone(), running.id.clone()],
        "newest first"
    );
    // The running task re-attaches when its worker reports it, and finishes there.
    let done = wait_task(&mut admin, &running.id, pb::TaskState::Succeeded, T).await;
    assert_eq!((done.attempts, done.worker_name.as_str()), (1, "steady"));
    assert!(
        logs(&mut admin, &running.id, false)
            .await
            .contains("survived")
    );
    let done = wait_task(&mut admin, &queued.id, pb::TaskState::Succeeded, T).await;
    assert!(
        logs(&mut admin, &done.id, false)
            .await
            .contains("queued ran")
    );

    // Finished tasks keep their output across another restart (read back from SQLite).
    assert!(restarted.terminate().success());
    let again = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = again.admin().await;
    assert_eq!(
        task(&mut admin, &running.id).await.state(),
        pb::TaskState::Succeeded
    );
    assert_eq!(logs(&mut admin, &running.id, false).await, "survived\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_task_runs_in_podman_with_its_limits_and_never_on_a_worker_without_one() {
    let Some(runtime) = container_runtime() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _plain = Worker::start(dir.path(), &master.url(), "plain", &[]);
    wait_state(&mut admin, "plain", pb::WorkerState::Active, T).await;
    let limits = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
                  cat /sys/fs/cgroup/cpu.max 2>/dev/null || \
                  echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)";
    let spec = pb::TaskSpec {
        name: "limits".into(),
        image: "localhost/busybox:test".into(),
        command: limits.into(),
        resources: Some(pb::Resources {
            cpu: 0.5,
            memory_gb: 0.0671,
            gpu: 0,
            disk_gb: 0.0,
        }),
        ..Default::default()
    };
    let t = submit_spec(&mut admin, spec.clone()).await;
    assert_eq!(t.reason, "no Active worker with a container runtime");

    let _boxed = Worker::start(dir.path(), &master.url(), "boxed", &["--runtime", runtime]);
    let w = wait_state(&mut admin, "boxed", pb::WorkerState::Active, T).await;
    assert_eq!(w.description.unwrap().container_runtime, runtime);
    let t = wait_task(
        &mut admin,
        &t.id,
        pb::TaskState::Succeeded,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(t.worker_name, "boxed");
    let out = logs(&mut admin, &t.id, false).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["67108864", "50000 100000"], "{out}");

    // Cancel stops the container.
    let mut sleeper = spec;
    sleeper.command = "sleep 300".into();
    let t = submit_spec(&mut admin, sleeper).await;
    wait_task(
        &mut admin,
        &t.id,
        pb::TaskState::Running,
        Duration::from_secs(60),
    )
    .await;
    let name = container_name(dir.path(), "boxed", &t.id, 1);
    assert!(name.starts_with(&format!("herd-{}-1-", t.id)), "{name}");
    let exists = || {
        std::process::Command::new(runtime)
            .args(["container", "exists", &name])
            .status()
            .is_ok_and(|s| s.success())
    };
    let deadline = Deadline::new(Duration::from_secs(60), "the container runs");
    while !exists() {
        deadline.wait().await;
    }
    admin
        .cancel_task(pb::CancelTaskRequest {
            task_id: t.id.clone(),
        })
        .await
        .unwrap();
    wait_task(
        &mut admin,
        &t.id,
        pb::TaskState::Cancelled,
        Duration::from_secs(60),
    )
    .await;
    assert!(!exists(), "container {name} still exists");

    // An image that is not there: the reason carries what the runtime said.
    let t = submit_spec(
        &mut admin,
        pb::TaskSpec {
            image: "localhost/no-such-image:gone".into(),
            command: "true".into(),
            resources: Some(pb::Resources {
                cpu: 0.5,
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let t = wait_task(
        &mut admin,
        &t.id,
        pb::TaskState::Failed,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        t.reason.starts_with("exited with code 125: "),
        "{}",
        t.reason
    );
    assert!(
        t.reason.len() > "exited with code 125: ".len() + 10,
        "{}",
        t.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_ended_task_says_how_it_ended_before_and_after_it_leaves_memory() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "ender", &[]);
    wait_state(&mut admin, "ender", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "true", 1.0).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    // A finished task leaves memory a tick (100 ms here) after its end is stored: ask on
    // both sides of that moment.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let status = admin
            .cancel_task(pb::CancelTaskRequest {
                task_id: t.id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("already succeeded"),
            "{}",
            status.message()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
