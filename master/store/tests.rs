//! Tests of the store: round trips, migrations, refused writes.
use super::schema::MIGRATIONS;
use super::*;
use herd::domain::{Resources, Runtime, WorkerSpec, WorkerState};

fn out(dir: &tempfile::TempDir) -> OutputDir {
    OutputDir::new(dir.path().join("output"))
}

fn record(id: &str, name: &str) -> WorkerRecord {
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

#[tokio::test]
async fn workers_round_trip_and_liveness_updates_land() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herd.db");
    let (store, loaded) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
    assert!(loaded.workers.is_empty());
    store
        .write(Write::Worker(Box::new(record("w-1", "a"))))
        .await
        .unwrap();
    store
        .write(Write::Worker(Box::new(record("w-1", "a"))))
        .await
        .unwrap();
    store
        .write(Write::Liveness(vec![LivenessRow {
            id: "w-1".into(),
            state: WorkerState::Active,
            last_heartbeat_ms: 42,
        }]))
        .await
        .unwrap();
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
        .write(Write::Worker(Box::new(record("w-1", "a"))))
        .await
        .unwrap();
    let dup = store.write(Write::Worker(Box::new(record("w-2", "a"))));
    let other = store.write(Write::Worker(Box::new(record("w-3", "b"))));
    let (dup, other) = tokio::join!(dup, other);
    assert!(matches!(dup, Err(Error::Storage(_))));
    other.unwrap();
}

/// Reads one worker's liveness columns.
fn read_state(conn: &Connection, id: &str) -> Result<Option<(bool, String)>, Error> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT is_active, state FROM workers WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

fn queued_task(n: u64, run: herd::domain::run::RunOptions) -> Task {
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
        spec,
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
    };
    let batch: Vec<Task> = (1..=3).map(|i| queued_task(i, run(i))).collect();
    store.write(Write::Tasks(batch)).await.unwrap();
    store
        .write(Write::Task(Box::new(queued_task(4, Default::default()))))
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
    let mut running = queued_task(5, Default::default());
    running.state = herd::domain::TaskState::Running;
    running.attempts = 1;
    running.worker_id = Some("w-1".into());
    running.started_ms = 7;
    // Handed over without waiting, so they meet in one commit (or in order, if not).
    store.enqueue(Write::Task(Box::new(queued_task(5, Default::default()))));
    store.enqueue(Write::Task(Box::new(queued_task(6, Default::default()))));
    store.enqueue(Write::Task(Box::new(running)));
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

fn audit(action: &str, target: &str) -> AuditRow {
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
            .write(Write::Audited {
                change: Box::new(Write::TokenCreate(token(name, byte))),
                audit: Box::new(audit("token create", name)),
            })
            .await
            .unwrap();
    }
    store
        .write(Write::TokenUsed {
            name: "keep".into(),
            at_ms: 99,
        })
        .await
        .unwrap();
    store
        .write(Write::Audited {
            change: Box::new(Write::TokenRevoke {
                name: "gone".into(),
            }),
            audit: Box::new(audit("token revoke", "gone")),
        })
        .await
        .unwrap();
    // A change that fails (a name taken) is not in the log either.
    let failed = store
        .write(Write::Audited {
            change: Box::new(Write::TokenCreate(token("keep", 3))),
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
