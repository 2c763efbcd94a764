//! End to end, around a take-over by a standby master (a throwaway PostgreSQL of this test
//! process): a leader cut off from the store steps down and, healed, writes nothing; the
//! port stays open through a take-over; the first leader's tokens keep working on the
//! next; a standby that is elected but cannot load the store stays up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herd_testkit as common;

use common::*;
use herd::pb;

use crate::failover::{
    T, answer, herdctl_with, leader_and_standby, leads, master, standby_of, stored_active,
};

/// The leader's link to PostgreSQL stops carrying bytes while its workers still reach it
/// (a relay in front of the store, stalled). It cannot renew its lease and stops leading by
/// itself; a standby leads within 10 s; the running task finishes there once, under the
/// same attempt. A submission it took during the cut was never acknowledged; once the link
/// heals, what it had sent is refused by the term check, so the store never holds that
/// task, and the old leader is a standby of the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_store_steps_down_and_once_healed_writes_nothing() {
    if !postgres_available("takeover::a_leader_cut_off_from_the_store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let port = url
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    let relay = Relay::to(format!("127.0.0.1:{port}").parse().unwrap());
    let via_relay = url.replace(&format!(":{port}/"), &format!(":{}/", relay.addr.port()));
    let a = master(dir.path(), "a", &via_relay);
    leads(&a.url(), T).await;
    let b = master(dir.path(), "b", &url);
    standby_of(&b.url(), &a.url(), T).await;
    let w1 = Worker::start(dir.path(), &format!("{},{}", a.url(), b.url()), "w1", &[]);
    let mut on_a = a.admin().await;
    wait_state(&mut on_a, "w1", pb::WorkerState::Active, T).await;
    stored_active(&url, "w1").await;
    let marker = dir.path().join("ran");
    let command = format!("sleep 2; echo once >> {}", marker.display());
    let task = submit(&mut on_a, &command, 0.1).await;
    wait_task(&mut on_a, &task.id, pb::TaskState::Running, T).await;

    relay.stall();
    let cut = Instant::now();
    let late = pb::SubmitTaskRequest {
        spec: Some(process("echo late", 0.1)),
    };
    let answered = tokio::time::timeout(Duration::from_secs(2), on_a.submit_task(late)).await;
    assert!(
        !matches!(answered, Ok(Ok(_))),
        "a submission was acknowledged without a commit: {answered:?}"
    );
    let took = leads(&b.url(), T).await;
    let took = cut.elapsed().max(took);
    assert!(
        took < Duration::from_secs(10),
        "the standby led after {took:?}"
    );
    let deadline = Deadline::new(T, "the cut-off leader stops leading by itself");
    while !a.log_text().contains("stops leading") {
        deadline.wait().await;
    }

    relay.heal();
    let term = standby_of(&a.url(), &b.url(), T).await;
    assert_eq!(term, 2, "the healed leader is a standby of term 2");
    let mut on_b = b.admin().await;
    let done = wait_task(&mut on_b, &task.id, pb::TaskState::Succeeded, T);
    let Ok(done) = tokio::time::timeout(T, done).await else {
        panic!("{}\n---\n{}", w1.log_text(), b.log_text());
    };
    assert_eq!(
        done.attempts, 1,
        "the same attempt finished on the new leader"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "once\n");
    let stored = postgres_query(&url, "SELECT string_agg(id, ',') FROM tasks");
    assert_eq!(
        stored.trim(),
        task.id,
        "only the acknowledged task is stored\n{}",
        a.log_text()
    );
}

/// The standby and then the leader serve on the same sockets: a client that connects
/// while the standby takes over waits in the backlog and is answered by the leader; none
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_is_refused_while_the_standby_takes_over() {
    if !postgres_available("takeover::no_connection_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let (mut a, b) = leader_and_standby(dir.path(), &url).await;
    let (refused, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let prober = {
        let (refused, stop, addr) = (refused.clone(), stop.clone(), b.addr);
        std::thread::spawn(move || {
            let mut tries = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Err(err) = std::net::TcpStream::connect(addr) {
                    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                tries += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            tries
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    a.kill9();
    leads(&b.url(), T).await;
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let tries = prober.join().unwrap();
    let refused = refused.load(Ordering::Relaxed);
    assert_eq!(
        refused,
        0,
        "{refused} of {tries} connections refused during the take-over\n{}",
        b.log_text()
    );
}

/// A standby elected while the store cannot be read (here a column of `tasks` renamed
/// under it) gives the lead back and stays up as a standby, trying again later, instead of
/// exiting; once the store is whole again it leads, with what was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elected_standby_that_cannot_load_the_store_stays_up_and_leads_once_it_can() {
    if !postgres_available("takeover::an_elected_standby_that_cannot_load") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let (mut a, mut b) = leader_and_standby(dir.path(), &url).await;
    let mut admin = a.admin().await;
    let task = submit(&mut admin, "true", 0.1).await;
    postgres_query(
        &url,
        "ALTER TABLE tasks RENAME COLUMN history TO history_moved",
    );
    a.kill9();

    let deadline = Deadline::new(T, "the standby tries to lead and gives the lead back");
    while !b.log_text().contains("cannot lead") {
        deadline.wait().await;
    }
    assert!(
        b.child.try_wait().unwrap().is_none(),
        "the standby stays up: {}",
        b.log_text()
    );
    assert!(
        matches!(answer(&b.url()).await, Err((tonic::Code::Unavailable, _))),
        "it does not lead meanwhile"
    );

    postgres_query(
        &url,
        "ALTER TABLE tasks RENAME COLUMN history_moved TO history",
    );
    leads(&b.url(), T).await;
    let mut admin = b.admin().await;
    let kept = wait_task(&mut admin, &task.id, pb::TaskState::Queued, T).await;
    assert_eq!(
        kept.id, task.id,
        "the task submitted to the old leader is there"
    );
}

/// Masters given no tokens make their own: the first leader's become the cluster's, and
/// after its kill -9 the standby accepts them, so herdctl and a worker holding them carry
/// on there (the standby's own tokens work there too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_leaders_own_tokens_work_on_the_standby_after_a_fail_over() {
    if !postgres_available("takeover::the_first_leaders_own_tokens") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database();
    let made = [("HERD_TOKEN", ""), ("HERD_JOIN_TOKEN", "")];
    let start = |name: &str| {
        let args = [FAST, &["--store", &url]].concat();
        Master::start_with_env(
            dir.path(),
            &dir.path().join(name),
            free_port(),
            &args,
            &made,
        )
    };
    let token_of = |name: &str, file: &str| {
        let path = dir.path().join(name).join(file);
        let deadline = std::time::Instant::now() + T;
        loop {
            match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => return text.trim().to_string(),
                _ if std::time::Instant::now() > deadline => panic!("no {}", path.display()),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    };
    let mut a = start("a");
    let (admin, join) = (token_of("a", "token"), token_of("a", "join-token"));
    assert_ne!(admin, TOKEN, "a made its own");
    let b = start("b");
    standby_of(&b.url(), &a.url(), T).await;
    let both = format!("{},{}", a.url(), b.url());
    let w1 = Worker::start_with_env(
        dir.path(),
        &both,
        "w1",
        "work-w1",
        &[],
        &[("HERD_TOKEN", &join)],
    );
    let mut on_a = admin_with(&a.url(), &admin).await;
    wait_state(&mut on_a, "w1", pb::WorkerState::Active, T).await;
    stored_active(&url, "w1").await;

    a.kill9();
    let deadline = Deadline::new(T, "b leads and takes a's admin token");
    while !herdctl_with(&both, &admin, "workers").0 {
        deadline.wait().await;
    }
    let mut on_b = admin_with(&b.url(), &admin).await;
    // A task reaches w1 only over a stream b took with a's join token.
    let task = submit(&mut on_b, "true", 0.1).await;
    let done = wait_task(&mut on_b, &task.id, pb::TaskState::Succeeded, T);
    if tokio::time::timeout(T, done).await.is_err() {
        panic!("{}\n---\n{}", w1.log_text(), b.log_text());
    }
    let (ok, text) = herdctl_with(&b.url(), &token_of("b", "token"), "workers");
    assert!(
        ok && text.contains("w1"),
        "b's own token works on b: {text}"
    );
    assert!(
        b.log_text().contains("not the cluster's"),
        "{}",
        b.log_text()
    );
}
