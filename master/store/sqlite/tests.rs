//! Tests of the store: round trips, migrations, refused writes.
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::histogram::Histogram;
use rusqlite::Connection;

use super::*;
use crate::records::{LivenessRow, TokenRow, WorkerRecord};
use crate::store::Store;
use herd::domain::{Resources, Runtime, WorkerSpec, WorkerState};
use schema::MIGRATIONS;

pub(super) fn out(dir: &tempfile::TempDir) -> OutputDir {
    OutputDir::new(dir.path().join("output"))
}

pub(crate) fn record(id: &str, name: &str) -> WorkerRecord {
    WorkerRecord {
        id: id.into(),
        spec: WorkerSpec {
            name: name.into(),
            host: "h".into(),
            address: "a".into(),
            version: "v".into(),
            capacity: Resources {
                cpu: 4.0,
                memory_gb: 8.0,
                gpu: 1,
                disk_gb: 0.0,
            },
            labels: [("zone".to_string(), "a".to_string())].into(),
            runtime: Some(Runtime::Podman),
            isolation: String::new(),
            gpus: Vec::new(),
        },
        registered_at_ms: 10,
        last_heartbeat_ms: 0,
        state: WorkerState::Inactive,
        draining: false,
        added_labels: [("rack".to_string(), "7".to_string())].into(),
        secret_hash: Some([7; 32]),
    }
}

/// Stores `record(id, name)` as a registration does.
pub(super) async fn store_worker(store: &Store, id: &str, name: &str) {
    store
        .commit(Change::Worker(Box::new(record(id, name))))
        .await
        .unwrap();
}

/// Writes one tick's liveness rows, each `(id, state)` with heartbeat 42.
pub(super) async fn store_liveness(store: &Store, rows: &[(&str, WorkerState)]) {
    let rows = rows
        .iter()
        .map(|&(id, state)| LivenessRow {
            id: id.into(),
            state,
            last_heartbeat_ms: 42,
        })
        .collect();
    store.commit(Change::Liveness(rows)).await.unwrap();
}

#[tokio::test]
async fn workers_round_trip_and_liveness_updates_land() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let (store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    assert!(loaded.workers.is_empty());
    store_worker(&store, "w-1", "a").await;
    store_worker(&store, "w-1", "a").await;
    store_liveness(&store, &[("w-1", WorkerState::Active)]).await;
    drop(store);

    let conn = Connection::open(&path).unwrap();
    assert_eq!(
        read_state(&conn, "w-1").unwrap(),
        Some((true, "Active".into()))
    );
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);

    let (_store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let loaded = loaded.workers;
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].spec, record("w-1", "a").spec);
    assert_eq!(loaded[0].last_heartbeat_ms, 42);
    assert_eq!(loaded[0].state, WorkerState::Active);
}

#[test]
fn a_version_3_database_migrates_with_its_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    {
        let conn = Connection::open(&path).unwrap();
        for (i, sql) in MIGRATIONS[..3].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
        }
        conn.execute(
            "INSERT INTO workers (id, name, host, address, version, cpu, memory_gb, gpu,
                 labels, container_runtime, is_active, last_heartbeat, state,
                 registered_at, draining)
             VALUES ('w-1', 'a', 'h', 'a', 'v', 4.0, 8.0, 1, '{\"zone\":\"a\"}',
                 'podman', 1, 42, 'Active', 10, 1)",
            [],
        )
        .unwrap();
    }
    let (_store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    assert_eq!(loaded.workers.len(), 1);
    let w = &loaded.workers[0];
    assert_eq!(w.spec, record("w-1", "a").spec);
    assert_eq!((w.last_heartbeat_ms, w.draining), (42, true));
    let conn = Connection::open(&path).unwrap();
    assert_eq!(
        read_state(&conn, "w-1").unwrap(),
        Some((true, "Active".into()))
    );
}

#[tokio::test]
async fn a_name_taken_by_another_id_is_refused_without_sinking_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(
        &dir.path().join("herd.db"),
        out(&dir),
        Histogram::new([1.0]),
    )
    .unwrap();
    store
        .commit(Change::Worker(Box::new(record("w-1", "a"))))
        .await
        .unwrap();
    let dup = store.commit(Change::Worker(Box::new(record("w-2", "a"))));
    let other = store.commit(Change::Worker(Box::new(record("w-3", "b"))));
    let (dup, other) = tokio::join!(dup, other);
    assert!(matches!(dup, Err(Error::Storage(_))));
    other.unwrap();
}

/// Reads one worker's liveness columns.
pub(super) fn read_state(conn: &Connection, id: &str) -> fault::Result<Option<(bool, String)>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT is_active, state FROM workers WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

pub(crate) fn queued_task(n: u64, run: herd::domain::run::RunOptions) -> Task {
    let spec = herd::domain::TaskSpec {
        name: String::new(),
        image: None,
        command: Some("true".into()),
        resources: Resources {
            cpu: 1.0,
            memory_gb: 0.0,
            gpu: 0,
            disk_gb: 0.0,
        },
        priority: 0,
        constraints: Vec::new(),
        run,
    };
    Task {
        id: format!("t-{n}"),
        spec: std::sync::Arc::new(spec),
        state: herd::domain::TaskState::Queued,
        worker_id: None,
        attempts: 0,
        exit_code: None,
        reason: String::new(),
        submitted_ms: 1,
        started_ms: 0,
        finished_ms: 0,
        history: Vec::new(),
        submitted_by: "someone".into(),
        assigned_at: None,
        cancel_requested: false,
        output_len: 0,
    }
}

/// Task `n` in `state`, on its first attempt on `worker`.
pub(crate) fn placed(n: u64, state: herd::domain::TaskState, worker: &str) -> Task {
    let mut t = queued_task(n, Default::default());
    t.state = state;
    t.attempts = 1;
    t.worker_id = Some(worker.into());
    t
}

/// Task `n`, ended in `state` on `worker`.
pub(crate) fn ended(n: u64, state: herd::domain::TaskState, worker: &str) -> Task {
    let mut t = placed(n, state, worker);
    t.finished_ms = 100 + n as i64;
    t
}

#[tokio::test]
async fn a_batch_of_tasks_round_trips_with_how_each_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let (store, _) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let run = |i: u64| herd::domain::run::RunOptions {
        timeout: Some(std::time::Duration::from_millis(1500 + i)),
        env: [("HERD_TASK_INDEX".to_string(), i.to_string())].into(),
        workdir: Some("/srv".into()),
        retries: 2,
        // One keeps its task running when cut off, the others stop theirs.
        on_disconnect: herd::domain::run::OnDisconnect::from_keep(i == 2),
    };
    let batch: Vec<Task> = (1..=3).map(|i| queued_task(i, run(i))).collect();
    store.commit(Change::Tasks(batch)).await.unwrap();
    store
        .commit(Change::Task(Box::new(queued_task(4, Default::default()))))
        .await
        .unwrap();
    drop(store);
    let (_store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let mut tasks = loaded.tasks;
    tasks.sort_by_key(|t| t.id.clone());
    assert_eq!(loaded.last_task, 4);
    let runs: Vec<_> = tasks.iter().map(|t| t.spec.run.clone()).collect();
    assert_eq!(runs, [run(1), run(2), run(3), Default::default()]);
}

/// Snapshots of one task's row in one commit: the last one is what SQLite keeps, and
/// the other tasks' rows in between are kept too.
#[tokio::test]
async fn of_several_snapshots_of_a_task_in_one_commit_the_last_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let (store, _) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let assigned = placed(5, herd::domain::TaskState::Assigned, "w-1");
    let mut running = assigned.clone();
    running.state = herd::domain::TaskState::Running;
    running.started_ms = 7;
    // Handed over without waiting, so they meet in one commit (or in order, if not): the
    // rows are inserted, then only the last of t-5's changes is written.
    store.save(Change::Task(Box::new(queued_task(5, Default::default()))));
    store.save(Change::TaskState(Box::new(assigned)));
    store.save(Change::Task(Box::new(queued_task(6, Default::default()))));
    store.save(Change::TaskState(Box::new(running)));
    store.sync().await.unwrap();
    drop(store);
    let (_store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let mut tasks = loaded.tasks;
    tasks.sort_by_key(|t| t.id.clone());
    let seen: Vec<_> = tasks
        .iter()
        .map(|t| (t.id.as_str(), t.state, t.attempts, t.started_ms))
        .collect();
    assert_eq!(
        seen,
        [
            ("t-5", herd::domain::TaskState::Running, 1, 7),
            ("t-6", herd::domain::TaskState::Queued, 0, 0)
        ]
    );
}

pub(crate) fn audit(action: &str, target: &str) -> AuditRow {
    AuditRow {
        seq: 0,
        at_ms: 5,
        who: "ci".into(),
        role: "operator".into(),
        action: action.into(),
        target: target.into(),
        detail: String::new(),
        peer: "127.0.0.1:1".into(),
    }
}

#[tokio::test]
async fn tokens_and_audit_entries_survive_a_restart_and_a_failed_change_leaves_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let (store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    assert!(loaded.tokens.is_empty());
    let token = |name: &str, byte: u8| TokenRow {
        name: name.into(),
        role: herd::domain::Role::Viewer,
        hash: [byte; 32],
        created_ms: 1,
        last_used_ms: 0,
    };
    for (name, byte) in [("keep", 1), ("gone", 2)] {
        store
            .commit(Change::Audited {
                change: Box::new(Change::TokenCreate(token(name, byte))),
                audit: Box::new(audit("token create", name)),
            })
            .await
            .unwrap();
    }
    store
        .commit(Change::TokenUsed {
            name: "keep".into(),
            at_ms: 99,
        })
        .await
        .unwrap();
    store
        .commit(Change::Audited {
            change: Box::new(Change::TokenRevoke {
                name: "gone".into(),
            }),
            audit: Box::new(audit("token revoke", "gone")),
        })
        .await
        .unwrap();
    // A change that fails (a name taken) is not in the log either.
    let failed = store
        .commit(Change::Audited {
            change: Box::new(Change::TokenCreate(token("keep", 3))),
            audit: Box::new(audit("token create", "keep again")),
        })
        .await;
    assert!(failed.is_err());
    drop(store);

    let (store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    assert_eq!(
        loaded.tokens,
        vec![TokenRow {
            last_used_ms: 99,
            ..token("keep", 1)
        }]
    );
    let page = store.audit_page(None, 10).await.unwrap();
    let seen: Vec<&str> = page.iter().map(|a| a.target.as_str()).collect();
    assert_eq!(
        seen,
        ["gone", "gone", "keep"],
        "newest first, the failed one absent"
    );
    let older = store.audit_page(Some(page[0].seq), 1).await.unwrap();
    assert_eq!(older[0].seq, page[1].seq);
}

/// Finished tasks are paged through the partial indexes of migration 12, newest first,
/// by every filter; tasks in flight are in none of those pages and are what a restart
/// loads; the highest number given out counts both.
#[tokio::test]
async fn finished_pages_walk_the_finished_indexes_and_a_restart_loads_the_rest() {
    use herd::domain::TaskState::{Cancelled, Failed, Running, Succeeded};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let (store, _) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let done = [
        ended(1, Succeeded, "w-1"),
        ended(2, Failed, "w-2"),
        ended(3, Succeeded, "w-2"),
        ended(4, Cancelled, "w-1"),
        ended(5, Succeeded, "w-1"),
    ];
    let batch: Vec<Task> = (1..=7)
        .map(|n| queued_task(n, Default::default()))
        .collect();
    store.commit(Change::Tasks(batch)).await.unwrap();
    for t in &done {
        store.save(Change::TaskState(Box::new(t.clone())));
    }
    let mut running = queued_task(7, Default::default());
    running.state = Running;
    running.worker_id = Some("w-1".into());
    store
        .commit(Change::TaskState(Box::new(running)))
        .await
        .unwrap();
    let page = |filter: TaskFilter, before: u64, limit: usize| {
        let store = store.clone();
        async move {
            let tasks = store.finished_page(filter, before, limit).await.unwrap();
            tasks.iter().map(|t| t.id.clone()).collect::<Vec<_>>()
        }
    };
    let all = TaskFilter::default();
    assert_eq!(
        page(all.clone(), 100, 10).await,
        ["t-5", "t-4", "t-3", "t-2", "t-1"]
    );
    assert_eq!(
        page(all, 4, 2).await,
        ["t-3", "t-2"],
        "a page before a number"
    );
    let succeeded = TaskFilter {
        state: Some(Succeeded),
        ..Default::default()
    };
    assert_eq!(page(succeeded, 100, 10).await, ["t-5", "t-3", "t-1"]);
    let on_w1 = TaskFilter {
        worker_id: Some("w-1".into()),
        ..Default::default()
    };
    assert_eq!(page(on_w1.clone(), 100, 10).await, ["t-5", "t-4", "t-1"]);
    let succeeded_on_w1 = TaskFilter {
        state: Some(Succeeded),
        ..on_w1
    };
    assert_eq!(page(succeeded_on_w1, 5, 10).await, ["t-1"]);
    let running = TaskFilter {
        state: Some(Running),
        ..Default::default()
    };
    assert!(page(running, 100, 10).await.is_empty(), "not a final state");
    drop(store);
    let (_store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let mut open: Vec<_> = loaded
        .tasks
        .iter()
        .map(|t| (t.id.clone(), t.state))
        .collect();
    open.sort_by_key(|(id, _)| id.clone());
    assert_eq!(
        open,
        [
            ("t-6".to_string(), herd::domain::TaskState::Queued),
            ("t-7".to_string(), Running)
        ]
    );
    assert_eq!(loaded.last_task, 7);
    let mut counts = loaded.finished.clone();
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(counts, [(Cancelled, 1), (Failed, 1), (Succeeded, 3)]);
}

/// A database of version 11 with tasks in flight and finished migrates, and keeps them.
#[test]
fn a_version_11_database_migrates_with_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        for (i, sql) in MIGRATIONS[..11].iter().enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as i64)
                .unwrap();
        }
        // Rows as today's writer writes them, less the columns added after version 11.
        conn.execute_batch(MIGRATIONS[13]).unwrap();
        let tx = conn.transaction().unwrap();
        commit::write_task(&tx, &ended(1, herd::domain::TaskState::Succeeded, "w-1")).unwrap();
        commit::write_task(&tx, &queued_task(2, Default::default())).unwrap();
        tx.commit().unwrap();
        conn.execute_batch("ALTER TABLE tasks DROP COLUMN keep_on_disconnect")
            .unwrap();
    }
    let (_store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let ids: Vec<_> = loaded.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["t-2"]);
    assert!(
        !loaded.tasks[0].spec.run.on_disconnect.keeps(),
        "stop, by default"
    );
    assert_eq!(loaded.last_task, 2);
    assert_eq!(loaded.finished, [(herd::domain::TaskState::Succeeded, 1)]);
}

/// The update every task goes through several times does no more than its row and the
/// indexes it moves in: no temporary table (an `IN (...)` in a partial index's condition
/// costs two per index), no scan.
#[test]
fn a_task_update_opens_no_temporary_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("herd.db")).unwrap();
    schema::migrate(&mut conn).unwrap();
    let mut stmt = conn
        .prepare(&format!("EXPLAIN {}", commit::UPDATE_TASK_STATE))
        .unwrap();
    let ops: Vec<String> = stmt
        .query_map(rusqlite::params![1, 2, 3, 4, 5, 6, 7, 8, 9], |r| r.get(1))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!ops.iter().any(|op| op == "OpenEphemeral"), "{ops:?}");
    let plan: String = conn
        .query_row(
            &format!("EXPLAIN QUERY PLAN {}", commit::UPDATE_TASK_STATE),
            rusqlite::params![1, 2, 3, 4, 5, 6, 7, 8, 9],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("USING INDEX"), "{plan}");
}

/// A batch and the placements handed over right after it: one row per task, as its last
/// snapshot has it. A placement of a task whose row is not stored fails, and what waits
/// for its commit (sending it to the worker) never runs.
#[tokio::test]
async fn a_batch_and_its_placements_share_a_commit_and_an_unstored_task_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let (store, _) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let assigned = placed(1, herd::domain::TaskState::Assigned, "w-1");
    let stored = store.commit(Change::Tasks(vec![
        queued_task(1, Default::default()),
        queued_task(2, Default::default()),
    ]));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let then = |n: u32| {
        let sent = sent.clone();
        move || sent.lock().unwrap().push(n)
    };
    store.save_then(Change::TaskState(Box::new(assigned)), then(1));
    store.save_then(
        Change::TaskState(Box::new(queued_task(3, Default::default()))),
        then(3),
    );
    stored.await.unwrap();
    store.sync().await.unwrap();
    assert_eq!(
        *sent.lock().unwrap(),
        [1],
        "sent for a task that is not stored"
    );
    drop(store);
    let (_store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    let mut seen: Vec<_> = loaded
        .tasks
        .iter()
        .map(|t| (t.id.clone(), t.state, t.worker_id.clone()))
        .collect();
    seen.sort_by_key(|(id, ..)| id.clone());
    assert_eq!(
        seen,
        [
            (
                "t-1".to_string(),
                herd::domain::TaskState::Assigned,
                Some("w-1".to_string())
            ),
            ("t-2".to_string(), herd::domain::TaskState::Queued, None)
        ]
    );
}

/// Inside a runtime, what waits for a commit is told by a task of the runtime, in commit
/// order: the store thread wakes that task once per commit instead of waking every waiter
/// itself (a busy runtime polls tasks woken from outside only now and then).
#[tokio::test]
async fn commits_are_told_from_inside_the_runtime_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::scratch(dir.path());
    let seen = Arc::new(Mutex::new(Vec::new()));
    for n in 1..=3 {
        let seen = seen.clone();
        store.save_then(
            Change::Tasks(vec![queued_task(n, Default::default())]),
            move || {
                let thread = std::thread::current().name().map(str::to_string);
                seen.lock().unwrap().push((n, thread));
            },
        );
    }
    store.sync().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    for (_, thread) in &seen {
        assert_ne!(
            thread.as_deref(),
            Some("herd-store"),
            "told on the store thread"
        );
    }
}

/// A master killed under load leaves its WAL behind; the next one copies it back before
/// it answers (and keeps every row), so that no tick's commit has to.
#[test]
fn a_store_opens_on_an_empty_wal_with_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let wal = dir.path().join("herd.db-wal");
    // Left open, like the connection of a master killed with kill -9: nothing checkpoints.
    let mut left = Connection::open(&path).unwrap();
    left.pragma_update(None, "journal_mode", "WAL").unwrap();
    left.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    schema::migrate(&mut left).unwrap();
    let tx = left.transaction().unwrap();
    for n in 1..=500 {
        commit::write_task(&tx, &queued_task(n, Default::default())).unwrap();
    }
    tx.commit().unwrap();
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    let (_store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        0,
        "the WAL is copied back"
    );
    assert_eq!(loaded.tasks.len(), 500);
    assert_eq!(loaded.last_task, 500);
    drop(left);
}
