//! One suite, both engines: every test here runs against SQLite and against a real
//! PostgreSQL (a throwaway server this test process starts), through [`Store`] only.
//! What is engine-specific (SQLite's migrations of old files, the leader's fence) is
//! tested beside its engine.

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;

use herd::domain::{TaskState, WorkerState};
use herd::error::Error;

use super::sqlite::tests::{audit, ended, placed, queued_task, record};
use super::{Change, Loaded, Store, postgres};
use crate::output::OutputDir;
use crate::records::{LivenessRow, TaskFilter, TokenRow};

/// Where a test's store lives, so it can be opened again as a restarted master (or the
/// next leader) would.
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Place {
    fn sqlite() -> Place {
        Place::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh database, unless PostgreSQL is missing here (see `scratch::available`).
    fn postgres(test: &str) -> Option<Place> {
        postgres::scratch::available(test).then(|| Place::Postgres(postgres::scratch::database()))
    }

    /// Opens the store (as the leader of term 0 on PostgreSQL: the term the schema
    /// starts with).
    async fn open(&self) -> (Store, Loaded) {
        match self {
            Place::Sqlite(dir) => {
                let output = OutputDir::new(dir.path().join("output"));
                Store::open(&dir.path().join("herd.db"), output, Histogram::new([1.0])).unwrap()
            }
            Place::Postgres(url) => {
                let fence = postgres::Fence {
                    term: 0,
                    deposed: watch::channel(false).0,
                };
                Store::open_postgres(url, fence, Histogram::new([1.0]))
                    .await
                    .unwrap()
            }
        }
    }
}

/// Runs each test body against both engines.
macro_rules! both_engines {
    ($($name:ident => $body:ident;)*) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$body(super::Place::sqlite()).await })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(place) = super::Place::postgres(stringify!($name)) {
                    super::$body(place).await
                }
            })*
        }
    };
}

both_engines! {
    workers_liveness_draining_and_forgetting_survive_a_restart => workers_round_trip;
    tasks_and_every_change_of_them_survive_a_restart => tasks_round_trip;
    an_update_of_a_task_never_stored_fails_and_stores_nothing => unstored_task;
    tokens_settings_and_audit_survive_a_restart => identity_round_trip;
    output_reads_back_by_offset_and_a_retried_write_lands_once => output_round_trip;
}

/// On PostgreSQL, output is kept in the store, and `--task-retention` drops what was last
/// written before the cutoff, in a commit (SQLite's files are swept off the store thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_output_older_than_the_retention_goes() {
    let Some(place) = Place::postgres("on_postgres_output_older_than_the_retention_goes") else {
        return;
    };
    let (store, _) = place.open().await;
    for n in [1, 2] {
        let task = Change::Task(Box::new(placed(n, TaskState::Running, "w")));
        store.commit(task).await.unwrap();
        let output = Change::Output {
            task: format!("t-{n}"),
            attempt: 1,
            offset: 0,
            data: b"out".to_vec(),
        };
        store.commit(output).await.unwrap();
    }
    let cutoff = herd::time::now_ms() + 1;
    let later = Change::Output {
        task: "t-2".into(),
        attempt: 1,
        offset: 3,
        data: b"put".to_vec(),
    };
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.commit(later).await.unwrap();
    let drop = Change::DropOutput {
        written_before_ms: cutoff,
    };
    store.commit(drop).await.unwrap();
    assert!(
        !store.has_output("t-1").await.unwrap(),
        "written before: gone"
    );
    assert_eq!(
        store.output("t-2", 1, 0, 100).await.unwrap(),
        (3, b"put".to_vec()),
        "what was written after stays"
    );
}

async fn workers_round_trip(place: Place) {
    let (store, loaded) = place.open().await;
    assert!(loaded.workers.is_empty());
    for (id, name) in [("w-1", "a"), ("w-2", "b"), ("w-3", "c")] {
        let change = Change::Worker(Box::new(record(id, name)));
        store.commit(change).await.unwrap();
    }
    // Registered again: one row, updated.
    store
        .commit(Change::Worker(Box::new(record("w-1", "a"))))
        .await
        .unwrap();
    let rows = vec![
        LivenessRow {
            id: "w-1".into(),
            state: WorkerState::Active,
            last_heartbeat_ms: 42,
        },
        LivenessRow {
            id: "w-2".into(),
            state: WorkerState::Removed,
            last_heartbeat_ms: 41,
        },
    ];
    store.commit(Change::Liveness(rows)).await.unwrap();
    let draining = Change::Draining {
        id: "w-1".into(),
        draining: true,
    };
    store.commit(draining).await.unwrap();
    let forget = Change::ForgetWorker { id: "w-3".into() };
    store.commit(forget).await.unwrap();
    drop(store);

    let (_store, loaded) = place.open().await;
    let seen: Vec<_> = loaded
        .workers
        .iter()
        .map(|w| (w.id.as_str(), w.state, w.last_heartbeat_ms, w.draining))
        .collect();
    assert_eq!(
        seen,
        [
            ("w-1", WorkerState::Active, 42, true),
            ("w-2", WorkerState::Removed, 41, false)
        ]
    );
    let w1 = &loaded.workers[0];
    let want = record("w-1", "a");
    assert_eq!(w1.spec, want.spec);
    assert_eq!(w1.added_labels, want.added_labels);
    assert_eq!(w1.secret_hash, want.secret_hash);
    assert_eq!(w1.registered_at_ms, want.registered_at_ms);
}

async fn tasks_round_trip(place: Place) {
    let (store, _) = place.open().await;
    let run = herd::domain::run::RunOptions {
        timeout: Some(std::time::Duration::from_millis(1500)),
        env: [("A".to_string(), "b".to_string())].into(),
        workdir: Some("/srv".into()),
        retries: 2,
        on_disconnect: herd::domain::run::OnDisconnect::from_keep(true),
    };
    let batch = (1..=3).map(|n| queued_task(n, run.clone())).collect();
    store.commit(Change::Tasks(batch)).await.unwrap();
    // A task stored and changed three times in one commit: the last snapshot is kept.
    store.save(Change::Task(Box::new(queued_task(4, Default::default()))));
    store.save(Change::TaskState(Box::new(placed(
        4,
        TaskState::Assigned,
        "w-1",
    ))));
    let mut running = placed(4, TaskState::Running, "w-1");
    running.started_ms = 7;
    store.save(Change::TaskState(Box::new(running)));
    // Stored tasks changed: one placed, two finished.
    store.save(Change::TaskState(Box::new(placed(
        1,
        TaskState::Assigned,
        "w-2",
    ))));
    store.save(Change::TaskState(Box::new(ended(
        2,
        TaskState::Succeeded,
        "w-2",
    ))));
    let mut failed = ended(3, TaskState::Failed, "w-1");
    failed.exit_code = Some(3);
    failed.reason = "exit 3".into();
    store.save(Change::TaskState(Box::new(failed)));
    store.sync().await.unwrap();
    drop(store);

    let (store, loaded) = place.open().await;
    assert_eq!(loaded.last_task, 4);
    let mut open: Vec<_> = loaded
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), t.state, t.worker_id.as_deref(), t.started_ms))
        .collect();
    open.sort_by_key(|t| t.0);
    assert_eq!(
        open,
        [
            ("t-1", TaskState::Assigned, Some("w-2"), 0),
            ("t-4", TaskState::Running, Some("w-1"), 7)
        ]
    );
    let t1 = loaded.tasks.iter().find(|t| t.id == "t-1").unwrap();
    assert_eq!(t1.spec.run, run);
    assert_eq!(t1.submitted_by, "someone");
    let mut finished = loaded.finished.clone();
    finished.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        finished,
        [(TaskState::Failed, 1), (TaskState::Succeeded, 1)]
    );

    let page = store
        .finished_page(TaskFilter::default(), u64::MAX, 10)
        .await
        .unwrap();
    let ids: Vec<_> = page.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["t-3", "t-2"], "newest first");
    let on_w1 = TaskFilter {
        worker_id: Some("w-1".into()),
        ..Default::default()
    };
    let page = store.finished_page(on_w1, u64::MAX, 10).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(
        (page[0].exit_code, page[0].reason.as_str()),
        (Some(3), "exit 3")
    );
    let failed_only = TaskFilter {
        state: Some(TaskState::Succeeded),
        ..Default::default()
    };
    let page = store
        .finished_page(failed_only, u64::MAX, 10)
        .await
        .unwrap();
    assert_eq!(page[0].id, "t-2");
    let before_3 = store
        .finished_page(TaskFilter::default(), 3, 10)
        .await
        .unwrap();
    assert_eq!(before_3.len(), 1, "only t-2 is numbered below 3");
    let t4 = store.task("t-4").await.unwrap().unwrap();
    assert_eq!(t4.state, TaskState::Running);
    assert!(store.task("t-99").await.unwrap().is_none());
}

async fn unstored_task(place: Place) {
    let (store, _) = place.open().await;
    store
        .commit(Change::Task(Box::new(queued_task(1, Default::default()))))
        .await
        .unwrap();
    let err = store
        .commit(Change::TaskState(Box::new(placed(
            9,
            TaskState::Assigned,
            "w",
        ))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    assert!(err.to_string().contains("t-9 is not stored"), "{err}");
    // The store goes on: the next change lands.
    store
        .commit(Change::TaskState(Box::new(placed(
            1,
            TaskState::Assigned,
            "w",
        ))))
        .await
        .unwrap();
    assert_eq!(
        store.task("t-1").await.unwrap().unwrap().state,
        TaskState::Assigned
    );
}

async fn identity_round_trip(place: Place) {
    let (store, loaded) = place.open().await;
    assert!(loaded.tokens.is_empty());
    let token = |name: &str, byte: u8| TokenRow {
        name: name.into(),
        role: herd::domain::Role::Viewer,
        hash: [byte; 32],
        created_ms: 3,
        last_used_ms: 0,
    };
    let create = Change::TokenCreate(token("ci", 1)).audited(audit("token create", "ci"));
    store.commit(create).await.unwrap();
    store
        .commit(Change::TokenCreate(token("old", 2)))
        .await
        .unwrap();
    let revoke = Change::TokenRevoke { name: "old".into() };
    store
        .commit(revoke.audited(audit("token revoke", "old")))
        .await
        .unwrap();
    let used = Change::TokenUsed {
        name: "ci".into(),
        at_ms: 99,
    };
    store.commit(used).await.unwrap();
    // A token whose hash is taken is refused, and its audit entry with it.
    let twin = Change::TokenCreate(token("twin", 1)).audited(audit("token create", "twin"));
    store.commit(twin).await.unwrap_err();
    let setting = Change::Setting {
        key: "scheduler".into(),
        value: "spread".into(),
    };
    store.commit(setting).await.unwrap();
    drop(store);

    let (store, loaded) = place.open().await;
    let mut ci = token("ci", 1);
    ci.last_used_ms = 99;
    assert_eq!(loaded.tokens, [ci]);
    assert_eq!(loaded.scheduler.as_deref(), Some("spread"));
    let entries = store.audit_page(None, 10).await.unwrap();
    let seen: Vec<_> = entries
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(seen, [("token revoke", "old"), ("token create", "ci")]);
    assert!(entries[0].seq > entries[1].seq);
    let older = store.audit_page(Some(entries[0].seq), 10).await.unwrap();
    assert_eq!(older.len(), 1);
}

async fn output_round_trip(place: Place) {
    let (store, _) = place.open().await;
    store
        .commit(Change::Task(Box::new(placed(1, TaskState::Running, "w"))))
        .await
        .unwrap();
    let piece = |offset: u64, data: &[u8]| Change::Output {
        task: "t-1".into(),
        attempt: 1,
        offset,
        data: data.to_vec(),
    };
    assert!(!store.has_output("t-1").await.unwrap());
    store.commit(piece(0, b"hello ")).await.unwrap();
    // The same piece again (a write retried): its bytes are there once.
    store.commit(piece(0, b"hello ")).await.unwrap();
    store.commit(piece(6, b"world\n")).await.unwrap();
    assert!(store.has_output("t-1").await.unwrap());
    assert_eq!(store.output_len("t-1", 1).await.unwrap(), 12);
    let all = store.output("t-1", 1, 0, 1 << 20).await.unwrap();
    assert_eq!(all, (0, b"hello world\n".to_vec()));
    let middle = store.output("t-1", 1, 3, 5).await.unwrap();
    assert_eq!(middle, (3, b"lo wo".to_vec()));
    assert_eq!(
        store.output("t-1", 2, 0, 10).await.unwrap(),
        (0, Vec::new())
    );
    drop(store);
    // A restarted master (or the next leader) knows how much output the attempt has.
    let (_store, loaded) = place.open().await;
    assert_eq!(loaded.tasks[0].output_len, 12);
}

/// A master that no longer leads writes nothing: once a newer term is in the store, its
/// commits fail (UNAVAILABLE, naming both terms), its change is not stored, and it learns
/// it was deposed. A newer schema than this master knows is refused, not overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_deposed_master_writes_nothing_and_a_newer_schema_is_refused() {
    let Some(Place::Postgres(url)) = Place::postgres("on_postgres_a_deposed_master_writes_nothing")
    else {
        return;
    };
    let (deposed, seen) = watch::channel(false);
    let fence = postgres::Fence { term: 0, deposed };
    let (store, _) = Store::open_postgres(&url, fence, Histogram::new([1.0]))
        .await
        .unwrap();
    store_task(&store, 1).await.unwrap();
    postgres::scratch::query(&url, "UPDATE herd_leader SET term = 1");
    let err = store_task(&store, 2).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("term 1 leads now"), "{err}");
    assert!(*seen.borrow(), "the master learns it was deposed");
    let stored = postgres::scratch::query(&url, "SELECT string_agg(id, ',') FROM tasks");
    assert_eq!(
        stored.trim(),
        "t-1",
        "nothing of the deposed term is stored"
    );

    postgres::scratch::query(&url, "UPDATE herd_schema SET version = 99");
    let err = postgres::prepare(&url).await.unwrap_err();
    assert!(
        err.to_string().contains("schema version 99, newer"),
        "{err}"
    );
}

async fn store_task(store: &Store, n: u64) -> Result<(), Error> {
    let task = Change::Task(Box::new(queued_task(n, Default::default())));
    store.commit(task).await
}

/// On PostgreSQL reads have connections of their own, several: a read held up on the
/// server (here the audit table locked by another session) does not hold up another read
/// behind it, which one shared connection did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_read_held_up_on_the_server_holds_up_no_other_read() {
    let Some(place) = Place::postgres("on_postgres_a_read_held_up") else {
        return;
    };
    let (store, _) = place.open().await;
    store_task(&store, 1).await.unwrap();
    let Place::Postgres(url) = &place else {
        unreachable!()
    };
    let (locker, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("BEGIN; LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let held = tokio::spawn({
        let store = store.clone();
        async move { store.audit_page(None, 10).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "the audit read waits for the lock");
    let other = tokio::time::timeout(std::time::Duration::from_secs(5), store.task("t-1")).await;
    let task = other.expect("the other read is not held up").unwrap();
    assert_eq!(task.map(|t| t.id).as_deref(), Some("t-1"));
    locker.batch_execute("COMMIT").await.unwrap();
    held.await.unwrap().unwrap();
}
