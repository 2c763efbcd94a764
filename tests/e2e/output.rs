//! A task's output as people read it: streamed while it runs, kept after its worker is
//! gone, and printed by herdctl byte for byte.

use herd_testkit as common;

use std::time::{Duration, Instant};

use common::*;
use herd::pb;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_stream_while_running_and_outlive_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut w = Worker::start(dir.path(), &master.url(), "talker", &[]);
    wait_state(&mut admin, "talker", pb::WorkerState::Active, T).await;
    let t = submit(&mut admin, "echo first; sleep 3; echo second", 0.5).await;

    // Output shows up within about a second of being written.
    wait_task(&mut admin, &t.id, pb::TaskState::Running, T).await;
    let seen = Instant::now();
    let deadline = Deadline::new(Duration::from_secs(2), "the first line shows up");
    while !logs(&mut admin, &t.id, false).await.contains("first") {
        deadline.wait().await;
    }
    assert!(seen.elapsed() < Duration::from_secs(2));

    // --follow streams until the task ends.
    let followed = logs(&mut admin, &t.id, true).await;
    assert_eq!(followed, "first\nsecond\n");
    assert_eq!(
        task(&mut admin, &t.id).await.state(),
        pb::TaskState::Succeeded
    );

    // The worker is gone; the output is still there, through herdctl too.
    w.kill9();
    wait_state(&mut admin, "talker", pb::WorkerState::Inactive, T).await;
    let (ok, out, _) = herdctl(&master.url(), &["task", "logs", &t.id]);
    assert!(ok);
    assert_eq!(out, "first\nsecond\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herdctl_task_logs_piped_is_the_task_s_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "exact", &[]);
    wait_state(&mut admin, "exact", pb::WorkerState::Active, T).await;
    // No newline at the end, and one in the middle.
    let t = submit(&mut admin, "printf 'one\\ntwo'", 0.1).await;
    wait_task(&mut admin, &t.id, pb::TaskState::Succeeded, T).await;
    let (ok, out, err) = herdctl(&master.url(), &["task", "logs", &t.id]);
    assert!(ok, "{err}");
    assert_eq!(out, "one\ntwo");
    // `--help` after a command is that command's help, not an error.
    let (ok, out, err) = herdctl(&master.url(), &["task", "logs", "--help"]);
    assert!(ok, "{err}");
    assert!(out.contains("task logs <id>"), "{out}");
    let (ok, out, _) = herdctl(&master.url(), &["workers", "-h"]);
    assert!(ok && out.contains("workers [--all]"), "{out}");
}
