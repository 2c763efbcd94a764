//! The task lifecycle, one rule a test, over the harness: fake workers, the real cluster
//! and operations, a scratch SQLite store, paused time. No process, no network.

use std::time::Duration;

use herd::pb;
use herd::pb::TaskEvent::{Cancelled, Failed, Lost, Started, Succeeded};

use super::{HEARTBEAT_TIMEOUT, Harness, Sent, WORKER_TIMEOUT, spec};

fn assign(task: &str, attempt: u32) -> Sent {
    Sent::Assign(task.into(), attempt, Vec::new())
}

fn outcomes(info: &pb::TaskInfo) -> Vec<(u32, String, String)> {
    info.history
        .iter()
        .map(|a| (a.attempt, a.worker_name.clone(), a.outcome.clone()))
        .collect()
}

fn state(info: &pb::TaskInfo) -> pb::TaskState {
    info.state()
}

#[tokio::test(start_paused = true)]
async fn a_placement_is_attempt_1_sent_only_after_its_commit_and_started_makes_it_running() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.submit(spec(1.0, 0)).await;
    assert_eq!(h.sent_to("a").await, vec![assign(&t, 1)]);
    let info = h.task(&t).await;
    assert_eq!(state(&info), pb::TaskState::Assigned);
    assert_eq!(info.attempts, 1);
    // The row SQLite holds says so too (the assignment left after its commit).
    h.restart().await;
    assert_eq!(h.task(&t).await.attempts, 1);
    h.connect("a").await.unwrap();
    h.update("a", &t, 1, Started, None).unwrap();
    assert_eq!(state(&h.task(&t).await), pb::TaskState::Running);
}

#[tokio::test(start_paused = true)]
async fn a_result_is_acknowledged_only_once_committed_and_applied_once() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.submit(spec(1.0, 0)).await;
    h.sent_to("a").await;
    h.finish("a", &t, 1, Succeeded, Some(0)).unwrap();
    // The heartbeat that repeats it gets the acknowledgement, after the commit.
    assert_eq!(h.heartbeat("a").await.unwrap(), vec![t.clone()]);
    let info = h.task(&t).await;
    assert_eq!(state(&info), pb::TaskState::Succeeded);
    assert_eq!(info.exit_code, Some(0));
    // The same result again (a worker that missed the acknowledgement) changes nothing.
    h.update("a", &t, 1, Failed, Some(3)).unwrap();
    assert_eq!(h.task(&t).await.exit_code, Some(0));
    h.restart().await;
    assert_eq!(state(&h.task(&t).await), pb::TaskState::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_worker_cannot_speak_for_a_task_it_was_never_given() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    h.join("b", 1.0, 0).await;
    let t = h.submit(spec(2.0, 0)).await; // fits a only
    assert_eq!(h.sent_to("a").await, vec![assign(&t, 1)]);
    let refused = h.update("b", &t, 1, Succeeded, Some(0)).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(state(&h.task(&t).await), pb::TaskState::Assigned);
}

#[tokio::test(start_paused = true)]
async fn an_inactive_worker_keeps_its_tasks_and_gets_no_new_one() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    h.join("b", 4.0, 0).await;
    let t = h.submit(spec(1.0, 0)).await;
    let on = if h.sent_to("a").await.is_empty() {
        "b"
    } else {
        "a"
    };
    let other = if on == "a" { "b" } else { "a" };
    h.sent_to(other).await;
    h.update(on, &t, 1, Started, None).unwrap();
    // Silent past the heartbeat timeout, short of the worker timeout: Inactive.
    h.advance(HEARTBEAT_TIMEOUT + Duration::from_secs(1), &[other])
        .await;
    let w = h.cluster().get(on).unwrap();
    assert_eq!(w.state(), pb::WorkerState::Inactive);
    let info = h.task(&t).await;
    assert_eq!(state(&info), pb::TaskState::Running);
    assert_eq!(info.worker_name, on);
    // New work goes to the Active one only.
    let u = h.submit(spec(1.0, 0)).await;
    assert_eq!(h.sent_to(other).await, vec![assign(&u, 1)]);
    assert!(h.sent_to(on).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_removed_worker_s_task_is_requeued_once_as_attempt_2_elsewhere() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.running("a", spec(1.0, 0)).await;
    h.join("b", 4.0, 0).await;
    h.advance(WORKER_TIMEOUT + Duration::from_secs(1), &["b"])
        .await;
    assert_eq!(h.state_of("a"), pb::WorkerState::Removed);
    assert_eq!(h.sent_to("b").await, vec![assign(&t, 2)]);
    let info = h.task(&t).await;
    assert_eq!(
        outcomes(&info),
        vec![
            (1, "a".into(), "lost".into()),
            (2, "b".into(), "assigned".into())
        ]
    );
    // More ticks re-queue nothing more.
    h.advance(Duration::from_secs(5), &["b"]).await;
    assert_eq!(h.task(&t).await.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_closes_as_its_worker_becomes_removed_still_requeues_its_tasks() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.running("a", spec(1.0, 0)).await;
    h.join("b", 4.0, 0).await;
    // a is silent (SIGSTOP) with its stream still open past the worker timeout; the
    // stream closes (HTTP/2 keepalive gives up) before the ticker has run.
    h.advance(WORKER_TIMEOUT - Duration::from_secs(1), &["b"])
        .await;
    tokio::time::advance(Duration::from_secs(2)).await;
    h.close_stream("a");
    assert_eq!(h.state_of("a"), pb::WorkerState::Removed);
    h.advance(Duration::from_secs(2), &["b"]).await;
    assert_eq!(h.sent_to("b").await, vec![assign(&t, 2)]);
    assert_eq!(
        outcomes(&h.task(&t).await),
        vec![
            (1, "a".into(), "lost".into()),
            (2, "b".into(), "assigned".into())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn forgetting_an_inactive_worker_requeues_its_tasks_once() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.submit(spec(1.0, 0)).await;
    h.sent_to("a").await;
    h.close_stream("a");
    let active = h.app.forget(&crate::identity::Caller::repl(), "a").await;
    assert!(active.is_ok(), "{active:?}");
    h.join("b", 4.0, 0).await;
    assert_eq!(h.sent_to("b").await, vec![assign(&t, 2)]);
    h.advance(WORKER_TIMEOUT * 2, &["b"]).await;
    assert_eq!(h.task(&t).await.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn an_active_worker_cannot_be_forgotten() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let refused = h
        .app
        .forget(&crate::identity::Caller::repl(), "a")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, herd::Error::FailedPrecondition(_)),
        "{refused:?}"
    );
    assert_eq!(h.state_of("a"), pb::WorkerState::Active);
}

#[tokio::test(start_paused = true)]
async fn a_worker_back_with_a_replaced_attempt_is_told_to_stop_it_and_its_result_is_ignored() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.running("a", spec(1.0, 0)).await;
    h.join("b", 4.0, 0).await;
    h.advance(WORKER_TIMEOUT + Duration::from_secs(1), &["b"])
        .await;
    assert_eq!(h.sent_to("b").await, vec![assign(&t, 2)]);
    // a comes back (registers again by name, same id) still holding attempt 1.
    h.join("a", 4.0, 0).await;
    assert_eq!(h.sent_to("a").await, vec![Sent::Cancel(t.clone(), 1)]);
    // Its result for attempt 1 changes nothing: attempt 2 is the task.
    h.finish("a", &t, 1, Succeeded, Some(0)).unwrap();
    h.heartbeat("a").await.unwrap();
    let info = h.task(&t).await;
    assert_eq!(state(&info), pb::TaskState::Assigned);
    assert_eq!(info.worker_name, "b");
    assert_eq!(info.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_is_retried_and_retries_do_not_count_against_max_attempts() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let mut s = spec(1.0, 0);
    s.retries = 3;
    let t = h.submit(s).await;
    // Three failing runs and a fourth that succeeds: 4 attempts, over --max-attempts 3.
    for attempt in 1..=3 {
        assert_eq!(h.sent_to("a").await, vec![assign(&t, attempt)]);
        h.finish("a", &t, attempt, Failed, Some(1)).unwrap();
    }
    assert_eq!(h.sent_to("a").await, vec![assign(&t, 4)]);
    h.finish("a", &t, 4, Succeeded, Some(0)).unwrap();
    let info = h.task(&t).await;
    assert_eq!(state(&info), pb::TaskState::Succeeded);
    let runs: Vec<String> = info.history.iter().map(|a| a.outcome.clone()).collect();
    assert_eq!(runs, ["failed", "failed", "failed", "succeeded"]);
}

#[tokio::test(start_paused = true)]
async fn a_run_killed_or_out_of_retries_is_not_retried() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let mut s = spec(1.0, 0);
    s.retries = 1;
    let killed = h.submit(s.clone()).await;
    assert_eq!(h.sent_to("a").await, vec![assign(&killed, 1)]);
    // No exit code: killed (timeout, out of memory), never retried.
    h.finish("a", &killed, 1, Failed, None).unwrap();
    assert_eq!(state(&h.task(&killed).await), pb::TaskState::Failed);
    let spent = h.submit(s).await;
    assert_eq!(h.sent_to("a").await, vec![assign(&spent, 1)]);
    h.finish("a", &spent, 1, Failed, Some(2)).unwrap();
    assert_eq!(h.sent_to("a").await, vec![assign(&spent, 2)]);
    h.finish("a", &spent, 2, Failed, Some(2)).unwrap();
    let info = h.task(&spent).await;
    assert_eq!(state(&info), pb::TaskState::Failed);
    assert_eq!(info.attempts, 2);
    assert!(h.sent_to("a").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_task_lost_with_its_worker_max_attempts_times_fails_saying_so() {
    let mut h = Harness::new();
    let t = {
        h.join("w1", 4.0, 0).await;
        h.submit(spec(1.0, 0)).await
    };
    // Each worker that takes it is lost; the third loss fails it (--max-attempts 3).
    for (attempt, name) in [(1, "w1"), (2, "w2"), (3, "w3")] {
        if attempt > 1 {
            h.join(name, 4.0, 0).await;
        }
        // A keeper stays alive so that no removal is a mass removal.
        h.join("keeper", 0.5, 0).await;
        assert_eq!(h.sent_to(name).await, vec![assign(&t, attempt)]);
        h.close_stream(name);
        h.advance(WORKER_TIMEOUT + Duration::from_secs(1), &["keeper"])
            .await;
    }
    let info = h.task(&t).await;
    assert_eq!(state(&info), pb::TaskState::Failed);
    assert!(
        info.reason.contains("gave up after 3 attempts"),
        "{}",
        info.reason
    );
}

#[tokio::test(start_paused = true)]
async fn an_assignment_that_cannot_be_delivered_is_requeued_and_not_counted() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    // The stream is gone on the worker's side but the master has not seen it close yet:
    // the assignment cannot be sent.
    h.drop_inbox("a");
    let t = h.submit(spec(1.0, 0)).await;
    h.commit().await;
    h.tick().await;
    h.commit().await;
    let info = h.task(&t).await;
    assert_eq!(info.history[0].outcome, "undelivered", "{info:?}");
    h.join("b", 4.0, 0).await;
    h.tick().await;
    let sent = h.sent_to("b").await;
    assert_eq!(sent, vec![assign(&t, 2)]);
    // Undelivered placements do not count against --max-attempts.
    let info = h.task(&t).await;
    assert_eq!(state(&info), pb::TaskState::Assigned);
}

#[tokio::test(start_paused = true)]
async fn cancel_in_every_state() {
    let mut h = Harness::new();
    h.join("a", 1.0, 0).await;
    // Running: the worker is told, and the task is cancelled when it reports so.
    let running = h.running("a", spec(1.0, 0)).await;
    // Queued (no room): cancelled at once, never sent.
    let queued = h.submit(spec(1.0, 0)).await;
    let info = h.cancel(&queued).await.unwrap();
    assert_eq!(state(&info), pb::TaskState::Cancelled);
    let info = h.cancel(&running).await.unwrap();
    assert_eq!(state(&info), pb::TaskState::Running);
    assert_eq!(h.sent_to("a").await, vec![Sent::Cancel(running.clone(), 1)]);
    h.finish("a", &running, 1, Cancelled, None).unwrap();
    assert_eq!(state(&h.task(&running).await), pb::TaskState::Cancelled);
    // Ended: refused, saying how it ended.
    let again = h.cancel(&running).await.unwrap_err();
    assert!(again.to_string().contains("cancelled"), "{again}");
    // Assigned to a worker that is away: cancelled at once; if it comes back with it, it
    // is told to stop.
    let away = h.submit(spec(1.0, 0)).await;
    assert_eq!(h.sent_to("a").await, vec![assign(&away, 1)]);
    h.close_stream("a");
    assert_eq!(
        state(&h.cancel(&away).await.unwrap()),
        pb::TaskState::Cancelled
    );
    h.connect("a").await.unwrap();
    assert_eq!(h.sent_to("a").await, vec![Sent::Cancel(away.clone(), 1)]);
    h.finish("a", &away, 1, Cancelled, None).unwrap();
    // Never sent to anyone again.
    h.advance(Duration::from_secs(3), &["a"]).await;
    assert!(h.sent_to("a").await.is_empty());
    assert_eq!(state(&h.task(&queued).await), pb::TaskState::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn a_running_task_whose_cancel_races_a_success_ends_succeeded() {
    let mut h = Harness::new();
    h.join("a", 1.0, 0).await;
    let t = h.running("a", spec(1.0, 0)).await;
    h.cancel(&t).await.unwrap();
    h.finish("a", &t, 1, Succeeded, Some(0)).unwrap();
    assert_eq!(state(&h.task(&t).await), pb::TaskState::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_held_attempts_are_reattached_and_missing_ones_requeued() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let kept = h.submit(spec(1.0, 0)).await;
    let lost = h.submit(spec(1.0, 0)).await;
    assert_eq!(h.sent_to("a").await.len(), 2);
    h.update("a", &kept, 1, Started, None).unwrap();
    h.update("a", &lost, 1, Started, None).unwrap();
    h.restart().await;
    // Known workers are Inactive until they reconnect; nothing is placed twice.
    assert_eq!(h.state_of("a"), pb::WorkerState::Inactive);
    h.drop_task("a", &lost);
    h.connect("a").await.unwrap();
    h.advance(Duration::from_secs(5), &["a"]).await;
    let info = h.task(&kept).await;
    assert_eq!(state(&info), pb::TaskState::Running);
    assert_eq!(info.attempts, 1);
    // The one the worker no longer has is queued again and placed as attempt 2.
    assert_eq!(h.sent_to("a").await, vec![assign(&lost, 2)]);
    assert_eq!(h.task(&lost).await.history[0].outcome, "lost");
}

#[tokio::test(start_paused = true)]
async fn gpu_indices_are_never_held_twice_and_are_restored_at_load() {
    let mut h = Harness::new();
    h.join("g", 8.0, 2).await;
    let first = h.submit(spec(1.0, 1)).await;
    assert_eq!(
        h.sent_to("g").await,
        vec![Sent::Assign(first.clone(), 1, vec![0])]
    );
    h.update("g", &first, 1, Started, None).unwrap();
    h.restart().await;
    h.connect("g").await.unwrap();
    // After the restart index 0 is still held by the first task: the next gets 1, and a
    // third waits.
    let second = h.submit(spec(1.0, 1)).await;
    let third = h.submit(spec(1.0, 1)).await;
    assert_eq!(
        h.sent_to("g").await,
        vec![Sent::Assign(second.clone(), 1, vec![1])]
    );
    assert_eq!(state(&h.task(&third).await), pb::TaskState::Queued);
    // Once the first ends, its index goes to the third.
    h.finish("g", &first, 1, Succeeded, Some(0)).unwrap();
    assert_eq!(
        h.sent_to("g").await,
        vec![Sent::Assign(third.clone(), 1, vec![0])]
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_worker_is_never_removed_while_it_heartbeats() {
    let mut h = Harness::new();
    h.join("a", 1.0, 0).await;
    let t = h.running("a", spec(1.0, 0)).await;
    h.advance(WORKER_TIMEOUT * 3, &["a"]).await;
    assert_eq!(h.state_of("a"), pb::WorkerState::Active);
    let info = h.task(&t).await;
    assert_eq!((state(&info), info.attempts), (pb::TaskState::Running, 1));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_the_master_never_placed_is_told_to_stop() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    // A task folder from another cluster's master, or from before a wiped data dir.
    h.hold("a", "t-42", 1);
    h.heartbeat("a").await.unwrap();
    assert_eq!(h.sent_to("a").await, vec![Sent::Cancel("t-42".into(), 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_removed_worker_s_stream_ends_and_it_registers_again_under_its_id() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    h.join("keeper", 1.0, 0).await;
    let id = h.id("a");
    h.advance(WORKER_TIMEOUT + Duration::from_secs(1), &["keeper"])
        .await;
    let ended = h.ended("a").expect("the master ended the stream");
    assert_eq!(ended.code(), tonic::Code::NotFound, "{ended:?}");
    let refused = h.connect("a").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    h.join("a", 4.0, 0).await;
    assert_eq!(h.id("a"), id);
    assert_eq!(h.state_of("a"), pb::WorkerState::Active);
}

#[tokio::test(start_paused = true)]
async fn a_result_the_store_cannot_write_is_not_acknowledged_and_runs_nowhere_again() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.running("a", spec(1.0, 0)).await;
    h.commit().await;
    // The disk fills up as the task ends: its result cannot be committed, so it is not
    // acknowledged, and the worker keeps sending it.
    h.disk_full(true);
    h.finish("a", &t, 1, Succeeded, Some(0)).unwrap();
    assert!(h.heartbeat("a").await.unwrap().is_empty());
    assert!(h.heartbeat("a").await.unwrap().is_empty());
    // kill -9 of the master; it starts again with room on the disk. The worker's result
    // reaches it: the task ends once, where it ran, and is never placed again.
    h.restart().await;
    h.connect("a").await.unwrap();
    h.advance(Duration::from_secs(5), &["a"]).await;
    let info = h.task(&t).await;
    assert_eq!((state(&info), info.attempts), (pb::TaskState::Succeeded, 1));
    assert!(h.sent_to("a").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_result_is_acknowledged_once_the_disk_has_room_again() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.submit(spec(1.0, 0)).await;
    h.sent_to("a").await;
    h.commit().await;
    h.disk_full(true);
    h.finish("a", &t, 1, Failed, Some(3)).unwrap();
    assert!(h.heartbeat("a").await.unwrap().is_empty());
    h.disk_full(false);
    // The store writes what it kept first: the next heartbeat is acknowledged.
    assert_eq!(h.heartbeat("a").await.unwrap(), vec![t.clone()]);
    h.restart().await;
    assert_eq!(h.task(&t).await.exit_code, Some(3));
}

#[tokio::test(start_paused = true)]
async fn output_in_flight_when_a_stream_breaks_comes_again_before_the_result() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.running("a", spec(1.0, 0)).await;
    h.output("a", &t, 1, 0, b"first\n").unwrap();
    // "last\n" and the result were in flight when the stream broke: both lost.
    h.end_unsent("a", &t, 1, Succeeded, Some(0));
    h.close_stream("a");
    // The new stream's first heartbeat holds the attempt and repeats its result; the
    // master says where output resumes, and does not end the task before it has it.
    let resume = h.connect("a").await.unwrap();
    assert_eq!(resume, vec![(t.clone(), 1, 6)]);
    assert_eq!(state(&h.task(&t).await), pb::TaskState::Running);
    h.output("a", &t, 1, 6, b"last\n").unwrap();
    h.update("a", &t, 1, Succeeded, Some(0)).unwrap();
    assert_eq!(h.heartbeat("a").await.unwrap(), vec![t.clone()]);
    let info = h.task(&t).await;
    assert_eq!((state(&info), info.attempts), (pb::TaskState::Succeeded, 1));
    assert_eq!(h.kept_output(&t, 1).await, b"first\nlast\n");
}

#[tokio::test(start_paused = true)]
async fn a_task_its_cut_off_worker_stopped_runs_again_as_a_lost_placement() {
    let mut h = Harness::new();
    h.join("a", 4.0, 0).await;
    let t = h.submit(spec(1.0, 0)).await;
    assert_eq!(h.sent_to("a").await, vec![assign(&t, 1)]);
    h.update("a", &t, 1, Started, None).unwrap();
    // Cut off: Inactive, and the master leaves the task where it runs.
    h.close_stream("a");
    h.advance(HEARTBEAT_TIMEOUT + Duration::from_secs(1), &[])
        .await;
    assert_eq!(h.state_of("a"), pb::WorkerState::Inactive);
    assert_eq!(state(&h.task(&t).await), pb::TaskState::Running);
    // Back before the worker timeout, having stopped the task at its fencing deadline: it
    // says so, and the task runs again (here, on the same worker: it has room).
    h.connect("a").await.unwrap();
    h.finish("a", &t, 1, Lost, None).unwrap();
    assert_eq!(h.heartbeat("a").await.unwrap(), vec![t.clone()]);
    assert_eq!(h.sent_to("a").await, vec![assign(&t, 2)]);
    let info = h.task(&t).await;
    assert_eq!(
        outcomes(&info),
        vec![
            (1, "a".into(), "lost".into()),
            (2, "a".into(), "assigned".into())
        ]
    );
    assert!(
        info.history[0].reason.contains("cut off"),
        "{}",
        info.history[0].reason
    );
    // A lost placement counts against --max-attempts, as one lost with its worker does.
    for attempt in 2..=3 {
        h.update("a", &t, attempt, Started, None).unwrap();
        h.finish("a", &t, attempt, Lost, None).unwrap();
        h.heartbeat("a").await.unwrap();
        h.sent_to("a").await;
    }
    let info = h.task(&t).await;
    assert_eq!(state(&info), pb::TaskState::Failed);
    assert!(
        info.reason.contains("gave up after 3 attempts"),
        "{}",
        info.reason
    );
}

/// A placement the store cannot write yet (a full disk) is not sent, so its worker does
/// not report it; that is not taken for a lost task. No attempt is spent while the disk is
/// full (the task would have failed after its third without ever running), and once the
/// disk has room the task reaches the worker as attempt 1.
#[tokio::test(start_paused = true)]
async fn a_placement_held_up_by_the_store_spends_no_attempt() {
    let mut h = Harness::new();
    h.join("a", 1.0, 0).await;
    let first = h.running("a", spec(1.0, 0)).await;
    let second = h.submit(spec(1.0, 0)).await;
    h.commit().await;
    h.disk_full(true);
    // The first ends: its room goes to the second, whose placement cannot be stored.
    h.finish("a", &first, 1, Succeeded, Some(0)).unwrap();
    h.advance(HEARTBEAT_TIMEOUT * 4, &["a"]).await;
    let info = h.task(&second).await;
    assert_eq!(
        (state(&info), info.attempts),
        (pb::TaskState::Assigned, 1),
        "{info:?}"
    );
    h.disk_full(false);
    h.advance(Duration::from_secs(2), &["a"]).await;
    assert_eq!(h.sent_to("a").await, vec![assign(&second, 1)]);
    h.hold("a", &second, 1);
    h.advance(HEARTBEAT_TIMEOUT * 2, &["a"]).await;
    let info = h.task(&second).await;
    assert_eq!(
        (state(&info), info.attempts),
        (pb::TaskState::Running, 1),
        "{info:?}"
    );
}
