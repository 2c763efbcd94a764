//! End to end: the master's side of "work survives crashes", with real processes and real
//! signals: one master per data dir, kill -9 of the master while work finishes, fencing of
//! a stale attempt, a paused master, a graceful stop.

use herd_testkit as common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use herd::pb;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_master_on_the_same_data_dir_exits_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let first = Master::start(dir.path(), FAST);
    let mut admin = first.admin().await;
    let task = submit(&mut admin, "true", 0.1).await;

    let mut second = Master::start_on(dir.path(), &first.data_dir, free_port(), FAST);
    let deadline = Deadline::new(T, "the second master exits");
    let status = loop {
        if let Some(status) = second.child.try_wait().unwrap() {
            break status;
        }
        deadline.wait().await;
    };
    assert!(!status.success(), "the second master must fail");
    let log = second.log_text();
    assert!(log.contains("is in use by another herd-master"), "{log}");
    assert!(log.contains(&format!("pid {}", first.child.id())), "{log}");
    assert!(log.contains(&first.data_dir.display().to_string()), "{log}");

    // The first one still answers and still has its task, and the second wrote nothing.
    assert_eq!(common::task(&mut admin, &task.id).await.id, task.id);
    assert_eq!(db_tasks(&first.db()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_again_and_again_loses_no_result_and_runs_no_task_twice() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "steady", &["--cpu", "4"]);
    wait_state(&mut admin, "steady", pb::WorkerState::Active, T).await;

    // Four at a time, 0.2 s each: about five seconds of work for 100 tasks.
    let ran = dir.path().join("ran");
    let command = format!("sleep 0.2; echo $HERD_TASK_ID >> {}", ran.display());
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(submit(&mut admin, &command, 1.0).await.id);
    }
    // kill -9 the master every 200-600 ms while the worker works through them.
    let deadline = Deadline::new(Duration::from_secs(120), "every task succeeded");
    let mut kills = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(200 + fastrand::u64(..400))).await;
        let all_done = {
            let tasks = admin
                .list_tasks(pb::ListTasksRequest::default())
                .await
                .map(|r| r.into_inner().tasks)
                .unwrap_or_default();
            tasks.len() == 100 && tasks.iter().all(|t| t.state() == pb::TaskState::Succeeded)
        };
        if all_done {
            break;
        }
        if kills < 12 {
            master.kill9();
            kills += 1;
            master = Master::start_on(dir.path(), &data, port, FAST);
            admin = master.admin().await;
        }
        deadline.wait().await;
    }
    assert!(kills >= 3, "the master was killed only {kills} times");
    // One more restart: what was acknowledged is what SQLite has.
    master.kill9();
    let master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for line in std::fs::read_to_string(&ran).unwrap().lines() {
        *runs.entry(line.to_string()).or_default() += 1;
    }
    for id in &ids {
        let t = task(&mut admin, id).await;
        assert_eq!(t.state(), pb::TaskState::Succeeded, "{id}: {}", t.reason);
        assert_eq!(runs.get(id), Some(&1), "{id} ran {:?} times", runs.get(id));
    }
    assert_eq!(runs.len(), 100, "{runs:?}");
}

/// A task that keeps running on a worker cut off from the master (`--on-disconnect keep`):
/// run again elsewhere once its worker is Removed, and stopped where it ran when that
/// worker comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_worker_that_comes_back_is_told_to_kill_its_stale_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), &[TIGHT, &["--worker-timeout", "3s"]].concat());
    let mut admin = master.admin().await;
    let stale = Worker::start(dir.path(), &master.url(), "stale", &[]);
    wait_state(&mut admin, "stale", pb::WorkerState::Active, T).await;

    let marker = dir.path().join("marker");
    // A sleep no other test runs, to find attempt 1's process by.
    let seconds = (5000 + fastrand::u32(..4000)).to_string();
    let long_sleep = format!("sleep {seconds}");
    let command = format!(
        "echo start-$HERD_TASK_ATTEMPT >> {m}; \
         if [ $HERD_TASK_ATTEMPT = 1 ]; then {long_sleep}; else sleep 1; fi; \
         echo done-$HERD_TASK_ATTEMPT >> {m}",
        m = marker.display()
    );
    let t = submit_kept(&mut admin, &command, 0.5).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let _fresh = Worker::start(dir.path(), &master.url(), "fresh", &[]);
    wait_state(&mut admin, "fresh", pb::WorkerState::Active, T).await;

    // The stale worker goes silent past the worker timeout: Removed, the task re-queued.
    stale.signal(libc::SIGSTOP);
    let deadline = Deadline::new(T, "attempt 2 runs on the fresh worker");
    loop {
        let info = task(&mut admin, &t.id).await;
        if info.attempts == 2 && info.worker_name == "fresh" {
            break;
        }
        deadline.wait().await;
    }
    assert_eq!(
        processes_with(&seconds).len(),
        1,
        "attempt 1 still runs (kept)"
    );
    // Back: it is told to kill attempt 1, and does.
    stale.signal(libc::SIGCONT);
    let deadline = Deadline::new(T, "the stale attempt is killed");
    while !processes_with(&seconds).is_empty() {
        deadline.wait().await;
    }
    let done = wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(done.attempts, 2);
    assert_eq!(done.worker_name, "fresh");
    let history: Vec<(u32, &str, &str)> = done
        .history
        .iter()
        .map(|a| (a.attempt, a.worker_name.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        history,
        vec![(1, "stale", "fenced"), (2, "fresh", "succeeded")]
    );
    let marker = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(marker, "start-1\nstart-2\ndone-2\n");
    // `task status` shows every attempt.
    let (ok, out, err) = herdctl(&master.url(), &["task", "status", &t.id]);
    assert!(ok, "{err}");
    assert!(out.contains("fenced") && out.contains("succeeded"), "{out}");
}

/// Issue 24 A3, with a paused worker: a worker agent stopped (SIGSTOP) past the worker
/// timeout cannot stop anything itself, yet its task's supervisor stops the task at the
/// fencing deadline, before the master runs it elsewhere: the last output of attempt 1 is
/// older than the first output of attempt 2. Back, the worker says the attempt was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_stops_its_task_before_the_master_runs_it_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let _leftovers = KillUnder(dir.path().to_path_buf());
    let master = InProcess::start(dir.path(), &[TIGHT, &["--worker-timeout", "4s"]].concat());
    let mut admin = master.admin().await;
    let paused = Worker::start(dir.path(), &master.url(), "paused", &["--kill-grace", "1s"]);
    wait_state(&mut admin, "paused", pb::WorkerState::Active, T).await;
    // Prints the time (ns) every 20 ms, on both attempts alike.
    let t = submit(&mut admin, STAMPS, 0.5).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let _fresh = Worker::start(dir.path(), &master.url(), "fresh", &[]);
    wait_state(&mut admin, "fresh", pb::WorkerState::Active, T).await;

    paused.signal(libc::SIGSTOP);
    let deadline = Deadline::new(T, "attempt 2 prints on the fresh worker");
    let second = dir.path().join(format!("work-fresh/{}-2/output.log", t.id));
    while stamps(&second).is_empty() {
        deadline.wait().await;
    }
    let first = dir
        .path()
        .join(format!("work-paused/{}-1/output.log", t.id));
    let exit = dir.path().join(format!("work-paused/{}-1/exit.json", t.id));
    let deadline = Deadline::new(T, "attempt 1 has an exit record");
    while !exit.exists() {
        deadline.wait().await;
    }
    let (last_of_1, first_of_2) = (stamps(&first).last().copied(), stamps(&second)[0]);
    assert!(
        last_of_1.is_some_and(|last| last < first_of_2),
        "attempt 1 printed until {last_of_1:?}, attempt 2 from {first_of_2}: both ran at once"
    );
    let exit = std::fs::read_to_string(&exit).unwrap();
    assert!(
        exit.contains("\"lost\"") && exit.contains("no word from the master"),
        "{exit}"
    );

    // Back: the attempt it stopped is reported, and changes nothing on the master.
    paused.signal(libc::SIGCONT);
    let info = task(&mut admin, &t.id).await;
    assert_eq!((info.attempts, info.worker_name.as_str()), (2, "fresh"));
    assert_eq!(info.history[0].outcome, "lost");
    admin
        .cancel_task(pb::CancelTaskRequest {
            task_id: t.id.clone(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_master_removes_no_worker_and_requeues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Inactive after 1 s of silence, Removed after 3 s; the master is paused for 6 s.
    let master = Master::start(dir.path(), &[TIGHT, &["--worker-timeout", "3s"]].concat());
    let mut admin = master.admin().await;
    let names = ["p1", "p2", "p3"];
    let _workers: Vec<Worker> = names
        .iter()
        .map(|n| Worker::start(dir.path(), &master.url(), n, &[]))
        .collect();
    for n in names {
        wait_state(&mut admin, n, pb::WorkerState::Active, T).await;
    }
    // Kept running when cut off: a worker that hears nothing from its master past the
    // fencing deadline stops its other tasks (it cannot tell a paused master from a
    // partition; see a_paused_worker_stops_its_task_before_the_master_runs_it_elsewhere),
    // and this test is about what the master does after its own pause.
    let t = submit_kept(&mut admin, "sleep 20", 0.5).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;

    let pid = master.child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_secs(6)).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let resumed = Instant::now();

    let deadline = Deadline::new(Duration::from_secs(5), "every worker is Active again");
    loop {
        let all = workers(&mut admin).await;
        for w in &all {
            assert_ne!(w.state(), pb::WorkerState::Removed, "{w:?}");
        }
        if all.iter().all(|w| w.state() == pb::WorkerState::Active) {
            break;
        }
        deadline.wait().await;
    }
    eprintln!("all Active {:?} after SIGCONT", resumed.elapsed());
    let info = task(&mut admin, &t.id).await;
    assert_eq!(info.attempts, 1, "re-queued: {info:?}");
    assert_eq!(info.state(), pb::TaskState::Running);
    let log = master.log_text();
    assert!(log.contains("the master did not run for"), "{log}");
    assert!(!log.contains("task re-queued"), "{log}");
    assert!(!log.contains("to=Removed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_master_at_once_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "busy", &[]);
    wait_state(&mut admin, "busy", pb::WorkerState::Active, T).await;
    let done = submit(&mut admin, "echo finished-before", 0.5).await;
    wait_task(&mut admin, &done.id, pb::TaskState::Succeeded, T).await;
    let queued = submit(&mut admin, "true", 64.0).await;

    let started = Instant::now();
    let status = master.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let t = task(&mut admin, &done.id).await;
    assert_eq!(t.state(), pb::TaskState::Succeeded);
    assert_eq!(logs(&mut admin, &done.id, false).await, "finished-before\n");
    assert_eq!(
        task(&mut admin, &queued.id).await.state(),
        pb::TaskState::Queued
    );
}

/// The master runs SQLite's page cache behind its own wrapper (master/store/pcache.rs,
/// which skips truncations that can drop nothing). Thousands of tasks stored and changed,
/// so that B-trees split and rebalance, then a kill -9: the database passes SQLite's
/// integrity check and holds every task as it was acknowledged. (This workload never
/// needs a truncation to drop a page; when one must, is unit-tested in pcache.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_page_cache_wrapper_rebalanced_tables_survive_kill_9_intact() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let mut master = Master::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let spec = pb::TaskSpec {
        command: "echo a command long enough that a few rows fill a page; ".repeat(4),
        resources: Some(pb::Resources {
            cpu: 0.1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let ids = admin
        .submit_tasks(pb::SubmitTasksRequest {
            specs: vec![spec],
            count: 3_000,
        })
        .await
        .unwrap()
        .into_inner()
        .task_ids;
    for id in ids.iter().step_by(3) {
        admin
            .cancel_task(pb::CancelTaskRequest {
                task_id: id.clone(),
            })
            .await
            .unwrap();
    }
    master.kill9();

    let log = master.log_text();
    assert!(
        log.contains("SQLite's page cache skips truncations that drop nothing"),
        "the wrapper was not installed: {log}"
    );
    let db = master.db();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(db_tasks(&db), 3_000);
    let cancelled: i64 = db
        .query_row(
            "SELECT count(*) FROM tasks WHERE state = 'cancelled'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(cancelled, 1_000);
}
