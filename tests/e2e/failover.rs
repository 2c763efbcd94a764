//! End to end: standby masters on a real PostgreSQL (a throwaway server of this test
//! process). Two masters on one store, one leads; a standby refuses calls and names the
//! leader; kill -9 or SIGSTOP of the leader hands the lead to the standby, the worker
//! follows, its running task finishes there under the same attempt, and a deposed leader,
//! resumed, leads no more.

use herd_testkit as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use herd::pb;

const T: Duration = Duration::from_secs(30);

/// A master of the store at `url`, with its own data dir under `dir/name`.
fn master(dir: &Path, name: &str, url: &str) -> Master {
    let args = [FAST, &["--store", url]].concat();
    Master::start_on(dir, &dir.join(name), free_port(), &args)
}

/// What a master says to an Admin call: Ok, or the refusal's leader and term.
async fn answer(url: &str) -> Result<(), (tonic::Code, Option<(String, i64)>)> {
    let Ok((mut admin, _)) = clients(url).await else {
        return Err((tonic::Code::Unavailable, None));
    };
    match admin.list_workers(pb::ListWorkersRequest::default()).await {
        Ok(_) => Ok(()),
        Err(status) => Err((status.code(), herd::client::leader_hint(&status))),
    }
}

/// Waits until the store at `url` has worker `name` Active (the ticker wrote it).
async fn stored_active(url: &str, name: &str) {
    let deadline = Deadline::new(T, format!("{name} is stored Active"));
    let sql = format!("SELECT state FROM workers WHERE name = '{name}'");
    while postgres_query(url, &sql).trim() != "Active" {
        deadline.wait().await;
    }
}

/// Waits until the master at `url` leads (answers an Admin call).
async fn leads(url: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let deadline = Deadline::new(within, format!("{url} leads"));
    while answer(url).await.is_err() {
        deadline.wait().await;
    }
    start.elapsed()
}

/// Waits until the master at `url` refuses as a standby naming `leader`; returns the term.
async fn standby_of(url: &str, leader: &str, within: Duration) -> i64 {
    let deadline = Deadline::new(within, format!("{url} is a standby of {leader}"));
    loop {
        if let Err((tonic::Code::Unavailable, Some((named, term)))) = answer(url).await
            && named == leader
        {
            return term;
        }
        deadline.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_hands_the_lead_to_the_standby_and_the_task_finishes_there() {
    if !postgres_available("failover::kill_9") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let mut a = master(dir.path(), "a", &url);
    leads(&a.url(), T).await;
    let b = master(dir.path(), "b", &url);
    // The standby refuses, naming the leader and its term.
    let term = standby_of(&b.url(), &a.url(), T).await;
    assert_eq!(term, 1, "the first leader's term");

    // The worker is given the standby first: it follows the hint to the leader.
    let both = format!("{},{}", b.url(), a.url());
    let w1 = Worker::start(dir.path(), &both, "w1", &[]);
    let mut admin = a.admin().await;
    wait_state(&mut admin, "w1", pb::WorkerState::Active, T).await;
    let marker = dir.path().join("ran");
    let command = format!("sleep 2; echo once >> {}", marker.display());
    let task = submit(&mut admin, &command, 0.1).await;
    wait_task(&mut admin, &task.id, pb::TaskState::Running, T).await;
    stored_active(&url, "w1").await;

    a.kill9();
    let took = leads(&b.url(), T).await;
    assert!(
        took < Duration::from_secs(10),
        "the standby led after {took:?}"
    );
    let mut admin = b.admin().await;
    // Active at once on the new leader (the failover grace), and never Inactive.
    let seen = worker(&mut admin, "w1")
        .await
        .expect("the new leader knows w1");
    assert_eq!(
        seen.state(),
        pb::WorkerState::Active,
        "{}\n----\n{}",
        b.log_text(),
        w1.log_text()
    );
    let done = wait_task(&mut admin, &task.id, pb::TaskState::Succeeded, T).await;
    assert_eq!(
        done.attempts, 1,
        "the same attempt finished on the new leader"
    );
    let ran = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(ran, "once\n", "the task ran exactly once");
    let seen = worker(&mut admin, "w1").await.unwrap();
    assert_eq!(seen.state(), pb::WorkerState::Active);
    assert!(
        w1.log_text().contains("a standby named the leader"),
        "{}",
        w1.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_loses_the_lead_and_resumed_it_is_a_standby() {
    if !postgres_available("failover::a_frozen_leader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let a = master(dir.path(), "a", &url);
    leads(&a.url(), T).await;
    let b = master(dir.path(), "b", &url);
    standby_of(&b.url(), &a.url(), T).await;
    let both = format!("{},{}", a.url(), b.url());
    let w1 = Worker::start(dir.path(), &both, "w1", &[]);
    let mut admin = a.admin().await;
    wait_state(&mut admin, "w1", pb::WorkerState::Active, T).await;
    stored_active(&url, "w1").await;

    // SAFETY: signalling our own child.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGSTOP) };
    let took = leads(&b.url(), T).await;
    assert!(
        took < Duration::from_secs(10),
        "the standby led after {took:?}"
    );
    let mut admin = b.admin().await;
    let seen = worker(&mut admin, "w1").await.unwrap();
    assert_eq!(seen.state(), pb::WorkerState::Active, "{}", b.log_text());

    // SAFETY: as above.
    unsafe { libc::kill(a.child.id() as i32, libc::SIGCONT) };
    // Resumed, the old leader finds its session ended and a newer term: it is a standby
    // of the new leader, and the worker stays there.
    let term = tokio::time::timeout(T, standby_of(&a.url(), &b.url(), T * 2)).await;
    let last = answer(&a.url()).await;
    let term = term.unwrap_or_else(|_| panic!("{last:?}\n{}", a.log_text()));
    assert_eq!(term, 2);
    assert!(
        a.log_text().contains("no longer the leader"),
        "{}",
        a.log_text()
    );
    let task = submit(&mut admin, "true", 0.1).await;
    let done = wait_task(&mut admin, &task.id, pb::TaskState::Succeeded, T);
    if tokio::time::timeout(T, done).await.is_err() {
        panic!("{}\n---\n{}", w1.log_text(), b.log_text());
    }
    let seen = worker(&mut admin, "w1").await.unwrap();
    assert_eq!(seen.state(), pb::WorkerState::Active);
}
