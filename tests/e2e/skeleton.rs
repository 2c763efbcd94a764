//! End to end: registration, heartbeat streams, liveness, SQLite and restarts, with real
//! herd-master and herd-worker processes on 127.0.0.1.

use herd_testkit as common;

use std::time::{Duration, Instant};

use common::*;
use herd::pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_register_with_distinct_ids_and_are_listed_active() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _a = Worker::start(dir.path(), &master.url(), "alpha", &[]);
    let _b = Worker::start(
        dir.path(),
        &master.url(),
        "beta",
        &["--cpu", "3", "--memory", "2.5"],
    );
    let a = wait_state(&mut admin, "alpha", pb::WorkerState::Active, T).await;
    let b = wait_state(&mut admin, "beta", pb::WorkerState::Active, T).await;
    assert_ne!(a.id, b.id);
    assert!(a.id.starts_with("w-"), "{}", a.id);
    let cap = b.description.unwrap().capacity.unwrap();
    assert_eq!((cap.cpu, cap.memory_gb), (3.0, 2.5));

    // What an operator sees: the table names both, Active.
    let table = herd_console::render::workers(
        &workers(&mut admin).await,
        herd_console::render::Style::plain(),
    );
    for name in ["alpha", "beta"] {
        let line = table.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(line.contains("Active"), "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_keeps_its_id_and_sqlite_has_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut first = Worker::start(dir.path(), &master.url(), "gamma", &[]);
    let before = wait_state(&mut admin, "gamma", pb::WorkerState::Active, T).await;
    first.kill9();
    wait_state(&mut admin, "gamma", pb::WorkerState::Inactive, T).await;
    let _second = Worker::start(dir.path(), &master.url(), "gamma", &[]);
    let after = wait_state(&mut admin, "gamma", pb::WorkerState::Active, T).await;
    assert_eq!(before.id, after.id);
    assert_eq!(workers(&mut admin).await.len(), 1);
    assert_eq!(db_count(&master.db()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_registering_from_many_connections_at_once_gets_one_id() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    master.admin().await;
    let mut calls = Vec::new();
    for _ in 0..16 {
        let url = master.url();
        calls.push(tokio::spawn(async move {
            let (_, mut client) = clients(&url).await.unwrap();
            client
                .register(pb::RegisterRequest {
                    worker: Some(description("twin")),
                    ..Default::default()
                })
                .await
        }));
    }
    // The first takes the name (and its secret); the others, without it, are refused.
    let mut ids = Vec::new();
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => ids.push(r.into_inner().worker_id),
            Err(status) => {
                assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                assert!(status.message().contains("'twin'"), "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((ids.len(), refused), (1, 15), "{ids:?}");
    assert_eq!(db_count(&master.db()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_inactive_within_a_second_and_in_sqlite_after_a_tick() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let mut w = Worker::start(dir.path(), &master.url(), "delta", &[]);
    let info = wait_state(&mut admin, "delta", pb::WorkerState::Active, T).await;
    let db = master.db();
    wait_db(&db, &info.id, (true, "Active"), T).await;

    let killed = Instant::now();
    w.kill9();
    wait_state(&mut admin, "delta", pb::WorkerState::Inactive, T).await;
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "Inactive only after {took:?}"
    );
    wait_db(&db, &info.id, (false, "Inactive"), Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_goes_inactive_exactly_after_the_timeout_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(1);
    let tick = Duration::from_millis(100);
    let master = InProcess::start(dir.path(), &[TIGHT, &["--worker-timeout", "4s"]].concat());
    let mut admin = master.admin().await;
    let w = Worker::start(dir.path(), &master.url(), "epsilon", &[]);
    let active = wait_state(&mut admin, "epsilon", pb::WorkerState::Active, T).await;
    let db = master.db();

    w.signal(libc::SIGSTOP);
    // Poll closely: the first Inactive view must come no earlier than the timeout after the
    // last heartbeat, and no later than the timeout plus one tick (plus polling slack).
    let mut last_active = None;
    let inactive = loop {
        let seen = worker(&mut admin, "epsilon").await.unwrap();
        match seen.state() {
            pb::WorkerState::Active => last_active = Some(seen),
            pb::WorkerState::Inactive => break seen,
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let observed = now_ms();
    assert!(last_active.is_some(), "never seen Active after SIGSTOP");
    let silent = Duration::from_millis((observed - inactive.last_heartbeat_ms) as u64);
    assert!(
        silent >= timeout,
        "Inactive after only {silent:?} of silence"
    );
    assert!(
        silent <= timeout + tick + Duration::from_millis(400),
        "Inactive only after {silent:?} of silence"
    );
    wait_db(&db, &active.id, (false, "Inactive"), Duration::from_secs(2)).await;

    w.signal(libc::SIGCONT);
    let back = wait_state(&mut admin, "epsilon", pb::WorkerState::Active, T).await;
    assert_eq!(back.id, active.id);

    w.signal(libc::SIGSTOP);
    let removed = wait_state(&mut admin, "epsilon", pb::WorkerState::Removed, T).await;
    assert_eq!(removed.id, active.id);
    wait_db(&db, &active.id, (false, "Removed"), Duration::from_secs(2)).await;
    // `workers` without --all hides it.
    let visible = admin
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert!(visible.is_empty(), "{visible:?}");

    // It comes back by itself: NOT_FOUND, register again, same id.
    w.signal(libc::SIGCONT);
    let again = wait_state(&mut admin, "epsilon", pb::WorkerState::Active, T).await;
    assert_eq!(again.id, active.id);
    assert_eq!(db_count(&db), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_restarts_with_every_worker_and_they_come_back_with_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let mut master = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = master.admin().await;
    let names = ["m1", "m2", "m3"];
    let _workers: Vec<Worker> = names
        .iter()
        .map(|n| Worker::start(dir.path(), &master.url(), n, &[]))
        .collect();
    let mut ids = Vec::new();
    for n in names {
        ids.push(
            wait_state(&mut admin, n, pb::WorkerState::Active, T)
                .await
                .id,
        );
    }
    master.kill9();

    let restarted = Master::start_on(dir.path(), &data, port, FAST);
    let mut admin = restarted.admin().await;
    // Listed from SQLite at once, before any worker reconnected, and none Removed.
    let listed = workers(&mut admin).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|w| w.state() != pb::WorkerState::Removed));
    for (n, id) in names.iter().zip(&ids) {
        let back = wait_state(&mut admin, n, pb::WorkerState::Active, T).await;
        assert_eq!(&back.id, id, "{n} changed id");
    }
    assert_eq!(workers(&mut admin).await.len(), 3);
    assert_eq!(db_count(&restarted.db()), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_gets_not_found_and_a_worker_recovers_from_a_wiped_master() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut master = Master::start_on(dir.path(), &dir.path().join("one"), port, FAST);
    let mut registry = master.registry().await;

    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::WorkerMessage {
        body: Some(pb::worker_message::Body::Heartbeat(pb::Heartbeat {
            worker_id: "w-00000000".into(),
            sequence: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let status = match registry.heartbeat(ReceiverStream::new(rx)).await {
        Err(status) => status,
        Ok(mut stream) => stream.get_mut().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("register again"), "{status:?}");

    let mut admin = master.admin().await;
    let w = Worker::start(dir.path(), &master.url(), "zeta", &[]);
    wait_state(&mut admin, "zeta", pb::WorkerState::Active, T).await;
    master.kill9();

    // Same address, empty data dir: the master has never heard of zeta's id.
    let wiped = Master::start_on(dir.path(), &dir.path().join("two"), port, FAST);
    let mut admin = wiped.admin().await;
    wait_state(&mut admin, "zeta", pb::WorkerState::Active, T).await;
    assert!(
        w.log_text().contains("registering again"),
        "{}",
        w.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut registry = master.registry().await;
    let mut admin = master.admin().await;
    let cases: Vec<(&str, pb::WorkerDescription)> = vec![
        ("empty name", description("")),
        ("negative cpu", {
            let mut d = description("bad-cpu");
            d.capacity.as_mut().unwrap().cpu = -2.0;
            d
        }),
        ("absurd memory", {
            let mut d = description("bad-mem");
            d.capacity.as_mut().unwrap().memory_gb = 1e15;
            d
        }),
        ("absurd gpu", {
            let mut d = description("bad-gpu");
            d.capacity.as_mut().unwrap().gpu = u32::MAX;
            d
        }),
        ("no capacity", {
            let mut d = description("no-cap");
            d.capacity = None;
            d
        }),
    ];
    for (what, d) in cases {
        let status = registry
            .register(pb::RegisterRequest {
                worker: Some(d),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}");
    }
    let status = registry
        .register(pb::RegisterRequest {
            worker: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(workers(&mut admin).await.is_empty());
    assert_eq!(db_count(&master.db()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_worker_registers_and_stops_with_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("HERD_WORKER_NAME", "local-one"), ("HERD_RUNTIME", "none")];
    let start = || {
        Master::start_with_env(
            dir.path(),
            &data,
            free_port(),
            &[FAST, &["--local-worker"]].concat(),
            &env,
        )
    };
    let mut master = start();
    let mut admin = master.admin().await;
    wait_state(&mut admin, "local-one", pb::WorkerState::Active, T).await;
    let pid = local_worker_pid(&master).await;
    assert!(process_alive(pid));

    // A graceful stop takes the local worker along and flushes state.
    let status = master.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        !process_alive(pid),
        "local worker {pid} outlived the master"
    );
    assert!(master.log_text().contains("herd-master stopped"));

    // kill -9 of the master: the worker dies with it (parent-death signal).
    let mut master = start();
    let mut admin = master.admin().await;
    let again = wait_state(&mut admin, "local-one", pb::WorkerState::Active, T).await;
    assert_eq!(workers(&mut admin).await.len(), 1, "same name, same worker");
    let pid = local_worker_pid(&master).await;
    master.kill9();
    let deadline = Deadline::new(Duration::from_secs(10), "the orphaned local worker exits");
    while process_alive(pid) {
        deadline.wait().await;
    }
    assert!(again.id.starts_with("w-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_machine_does_not_make_a_worker_miss_heartbeats() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let master = InProcess::start(dir.path(), FAST);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "busy", &[]);
    wait_state(&mut admin, "busy", pb::WorkerState::Active, T).await;

    // Two spinning processes per core, for longer than the heartbeat timeout.
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new("sh")
                .args([
                    "-c",
                    "end=$(($(date +%s) + 6)); while [ $(date +%s) -lt $end ]; do :; done",
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let w = worker(&mut admin, "busy").await.unwrap();
        assert_eq!(
            w.state(),
            pb::WorkerState::Active,
            "missed heartbeats under load"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut s in spinners {
        let _ = s.kill();
        let _ = s.wait();
    }
}
