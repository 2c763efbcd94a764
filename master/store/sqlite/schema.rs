//! The schema of `herd.db`: versioned migrations (`PRAGMA user_version`) and what is read
//! back at start.

use rusqlite::Connection;

use herd::domain::run::RunOptions;
use herd::domain::{Resources, Runtime, TaskSpec, TaskState, WorkerSpec, WorkerState};
use herd::error::Error;

use super::fault::Result;

use crate::output::OutputDir;
use crate::records::{Task, WorkerRecord};

/// Schema versions, applied in order; `PRAGMA user_version` says how many ran.
pub const MIGRATIONS: &[&str] = &[
    // 1: workers
    "CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        name TEXT UNIQUE NOT NULL,
        host TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT '',
        version TEXT NOT NULL DEFAULT '',
        cpu REAL NOT NULL,
        memory_gb REAL NOT NULL,
        gpu INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        container_runtime TEXT NOT NULL DEFAULT '',
        is_active INTEGER NOT NULL DEFAULT 0,
        last_heartbeat INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        registered_at INTEGER NOT NULL
    );",
    // 2: tasks
    "CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        image TEXT,
        command TEXT,
        cpu REAL NOT NULL,
        memory_gb REAL NOT NULL,
        gpu INTEGER NOT NULL,
        state TEXT NOT NULL,
        worker_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        submitted_at INTEGER NOT NULL,
        started_at INTEGER NOT NULL DEFAULT 0,
        finished_at INTEGER NOT NULL DEFAULT 0,
        output BLOB,
        output_total INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX tasks_by_state ON tasks(state);",
    // 3: drain survives restarts
    "ALTER TABLE workers ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;",
    // 4: the description moves to a table of its own. `workers` keeps identity and
    // liveness: a tick rewrites narrow rows (~3 ms for 10,000 instead of 20-30 ms).
    "CREATE TABLE worker_specs (
        id TEXT PRIMARY KEY REFERENCES workers(id),
        host TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT '',
        version TEXT NOT NULL DEFAULT '',
        cpu REAL NOT NULL,
        memory_gb REAL NOT NULL,
        gpu INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        container_runtime TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO worker_specs
        SELECT id, host, address, version, cpu, memory_gb, gpu, labels, container_runtime
        FROM workers;
    ALTER TABLE workers DROP COLUMN host;
    ALTER TABLE workers DROP COLUMN address;
    ALTER TABLE workers DROP COLUMN version;
    ALTER TABLE workers DROP COLUMN cpu;
    ALTER TABLE workers DROP COLUMN memory_gb;
    ALTER TABLE workers DROP COLUMN gpu;
    ALTER TABLE workers DROP COLUMN labels;
    ALTER TABLE workers DROP COLUMN container_runtime;",
    // 5: every attempt of a task (JSON), and how a worker contains its tasks. Output now
    // lives in files under <data-dir>/output; the old column stays for tasks that ended
    // before.
    "ALTER TABLE tasks ADD COLUMN history TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE worker_specs ADD COLUMN isolation TEXT NOT NULL DEFAULT '';",
    // 6: finished tasks are read from SQLite by index (the master keeps only unfinished
    // ones in memory), in task-number order; settings that survive a restart.
    "ALTER TABLE tasks ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    UPDATE tasks SET seq = CAST(substr(id, 3) AS INTEGER);
    CREATE INDEX tasks_by_seq ON tasks(seq);
    CREATE INDEX tasks_by_state_seq ON tasks(state, seq);
    CREATE INDEX tasks_by_worker_seq ON tasks(worker_id, seq);
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // 7: priorities and placement constraints.
    "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN constraints TEXT NOT NULL DEFAULT '[]';",
    // 8: workers pre-registered by an operator (`worker add`, state 'Pending') and the
    // labels given there, merged over the reported ones at every registration.
    "ALTER TABLE worker_specs ADD COLUMN added_labels TEXT NOT NULL DEFAULT '{}';",
    // 9: how a task runs — its time limit, environment (JSON object), working directory
    // and retries on a non-zero exit.
    "ALTER TABLE tasks ADD COLUMN timeout_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN env TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE tasks ADD COLUMN workdir TEXT NOT NULL DEFAULT '';
    ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;",
    // 10: disk requests and capacity, and each worker's GPU devices (JSON: index,
    // model, memory_gb). The GPU indices an attempt holds live in its entry of `history`.
    "ALTER TABLE tasks ADD COLUMN disk_gb REAL NOT NULL DEFAULT 0;
    ALTER TABLE worker_specs ADD COLUMN disk_gb REAL NOT NULL DEFAULT 0;
    ALTER TABLE worker_specs ADD COLUMN gpus TEXT NOT NULL DEFAULT '[]';",
    // 11: identities (issue 13): who submitted each task; each worker's secret (its hash;
    // NULL for workers known from before, issued one when they next register); named
    // operator tokens (their hashes); the audit log of Admin changes.
    "ALTER TABLE tasks ADD COLUMN submitted_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE workers ADD COLUMN secret_hash BLOB;
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        last_used INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        who TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        peer TEXT NOT NULL DEFAULT ''
    );",
    // 12: a task's row changes three or four times in a few milliseconds (submitted,
    // assigned, running, ended), and every index on `state` or `worker_id` changed with
    // it. Finished tasks are read from SQLite, unfinished ones only at start: each index
    // now covers one of the two (partial indexes), so a task in flight touches the small
    // `tasks_open` only, and the finished-task indexes get one entry, once.
    "DROP INDEX tasks_by_state;
    DROP INDEX tasks_by_seq;
    DROP INDEX tasks_by_state_seq;
    DROP INDEX tasks_by_worker_seq;
    CREATE INDEX tasks_open ON tasks(seq)
        WHERE (state = 'queued' OR state = 'assigned' OR state = 'running');
    CREATE INDEX tasks_done_by_seq ON tasks(seq)
        WHERE (state = 'succeeded' OR state = 'failed' OR state = 'cancelled');
    CREATE INDEX tasks_done_by_state ON tasks(state, seq)
        WHERE (state = 'succeeded' OR state = 'failed' OR state = 'cancelled');
    CREATE INDEX tasks_done_by_worker ON tasks(worker_id, seq)
        WHERE (state = 'succeeded' OR state = 'failed' OR state = 'cancelled');",
    // 13: sorted by worker first, every finished task went to a page of its own in
    // `tasks_done_by_worker` (wherever its worker's tasks were): at 10,000 tasks a second,
    // two thirds of the WAL written. Sorted by block of 1,024 task numbers first, the
    // tasks finishing now share the few pages of the newest block; a worker's page reads
    // the blocks newest first (see `pages`).
    "DROP INDEX tasks_done_by_worker;
    CREATE INDEX tasks_done_by_worker ON tasks(seq / 1024, worker_id, seq)
        WHERE (state = 'succeeded' OR state = 'failed' OR state = 'cancelled');",
    // 14: what the worker does with a task when it is cut off from the master past its
    // fencing deadline: stop it (0, the default) or keep it running (1).
    "ALTER TABLE tasks ADD COLUMN keep_on_disconnect INTEGER NOT NULL DEFAULT 0;",
];

/// A setting kept across restarts (e.g. the scheduler chosen at run time).
pub fn setting(conn: &Connection, key: &str) -> Result<Option<String>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(Error::Storage(format!(
            "herd.db has schema version {version}, newer than this herd-master knows ({}); \
             use a newer herd-master",
            MIGRATIONS.len()
        ))
        .into());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

pub fn load_workers(conn: &Connection) -> Result<Vec<WorkerRecord>> {
    let mut stmt = conn.prepare(
        "SELECT w.id, w.name, s.host, s.address, s.version, s.cpu, s.memory_gb, s.gpu,
                s.labels, s.container_runtime, w.last_heartbeat, w.state, w.registered_at,
                w.draining, s.isolation, s.added_labels, s.disk_gb, s.gpus, w.secret_hash
         FROM workers w JOIN worker_specs s ON s.id = w.id ORDER BY w.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            WorkerSpec {
                name: r.get(1)?,
                host: r.get(2)?,
                address: r.get(3)?,
                version: r.get(4)?,
                capacity: Resources {
                    cpu: r.get(5)?,
                    memory_gb: r.get(6)?,
                    gpu: r.get(7)?,
                    disk_gb: r.get(16)?,
                },
                gpus: serde_json::from_str(&r.get::<_, String>(17)?).unwrap_or_default(),
                labels: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
                runtime: Runtime::parse_optional(&r.get::<_, String>(9)?).unwrap_or(None),
                isolation: r.get(14)?,
            },
            r.get::<_, i64>(10)?,
            r.get::<_, String>(11)?,
            r.get::<_, i64>(12)?,
            r.get::<_, bool>(13)?,
            serde_json::from_str(&r.get::<_, String>(15)?).unwrap_or_default(),
            r.get::<_, Option<Vec<u8>>>(18)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, spec, last_heartbeat_ms, state, registered_at_ms, draining, added_labels, secret) =
            row?;
        out.push(WorkerRecord {
            id,
            spec,
            registered_at_ms,
            last_heartbeat_ms,
            state: WorkerState::parse(&state).unwrap_or(WorkerState::Inactive),
            draining,
            added_labels,
            secret_hash: secret.and_then(|h| h.try_into().ok()),
        });
    }
    Ok(out)
}

/// The columns a task is read from, in the order [`task_from_row`] takes them.
pub(super) const TASK_COLUMNS: &str =
    "id, name, image, command, cpu, memory_gb, gpu, state, worker_id,
    attempts, exit_code, reason, submitted_at, started_at, finished_at, history, priority,
    constraints, timeout_ms, env, workdir, retries, disk_gb, submitted_by, keep_on_disconnect";

/// A task is done: these rows live in SQLite only. A query that reads them says this, word
/// for word as the partial indexes of migration 12 do, or SQLite cannot use those indexes.
/// (Comparisons, not `IN (...)`: SQLite evaluates an `IN` list in an index's condition
/// with a temporary table, twice per index, at every update of a row.)
pub(super) const FINAL: &str = "(state = 'succeeded' OR state = 'failed' OR state = 'cancelled')";
/// A task in flight (the `tasks_open` index), likewise.
const OPEN: &str = "(state = 'queued' OR state = 'assigned' OR state = 'running')";

pub(super) fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Task> {
    let state: String = r.get(7)?;
    Ok(Task {
        id: r.get(0)?,
        spec: std::sync::Arc::new(TaskSpec {
            name: r.get(1)?,
            image: r.get(2)?,
            command: r.get(3)?,
            resources: Resources {
                cpu: r.get(4)?,
                memory_gb: r.get(5)?,
                gpu: r.get(6)?,
                disk_gb: r.get(22)?,
            },
            priority: r.get(16)?,
            constraints: serde_json::from_str::<Vec<String>>(&r.get::<_, String>(17)?)
                .unwrap_or_default()
                .iter()
                .filter_map(|c| herd::constraint::Constraint::parse(c).ok())
                .collect(),
            run: RunOptions {
                timeout: Some(r.get::<_, i64>(18)?)
                    .filter(|ms| *ms > 0)
                    .map(|ms| std::time::Duration::from_millis(ms as u64)),
                env: serde_json::from_str(&r.get::<_, String>(19)?).unwrap_or_default(),
                workdir: Some(r.get::<_, String>(20)?).filter(|w| !w.is_empty()),
                retries: r.get(21)?,
                on_disconnect: herd::domain::run::OnDisconnect::from_keep(r.get(24)?),
            },
        }),
        state: TaskState::parse(&state).unwrap_or(TaskState::Queued),
        worker_id: r.get(8)?,
        attempts: r.get(9)?,
        exit_code: r.get(10)?,
        reason: r.get(11)?,
        submitted_ms: r.get(12)?,
        started_ms: r.get(13)?,
        finished_ms: r.get(14)?,
        history: serde_json::from_str(&r.get::<_, String>(15)?).unwrap_or_default(),
        submitted_by: r.get(23)?,
        assigned_at: None,
        cancel_requested: false,
        output_len: 0,
    })
}

/// The tasks that are not finished (the master keeps those in memory), with how much
/// output of their current attempt is on disk.
pub fn load_tasks(conn: &Connection, output: &OutputDir) -> Result<Vec<Task>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_open WHERE {OPEN}"
    ))?;
    let mut tasks = Vec::new();
    for task in stmt.query_map([], task_from_row)? {
        let mut task = task?;
        if task.attempts > 0 {
            task.output_len = output.len(&task.id, task.attempts).map_err(|e| {
                Error::Storage(format!("cannot read the output of {}: {e}", task.id))
            })?;
        }
        tasks.push(task);
    }
    Ok(tasks)
}

/// How many finished tasks there are in each final state.
pub fn final_counts(conn: &Connection) -> Result<Vec<(TaskState, u64)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT state, count(*) FROM tasks INDEXED BY tasks_done_by_state
         WHERE {FINAL} GROUP BY state"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (state, n) = row?;
        if let Some(state) = TaskState::parse(&state) {
            out.push((state, n));
        }
    }
    Ok(out)
}

/// The highest task number ever given out (every task is either in flight or done: the
/// larger of the two indexes' last entries).
pub fn last_task_number(conn: &Connection) -> Result<u64> {
    let n: i64 = conn.query_row(
        &format!(
            "SELECT max(
                 coalesce((SELECT max(seq) FROM tasks INDEXED BY tasks_open
                           WHERE {OPEN}), 0),
                 coalesce((SELECT max(seq) FROM tasks INDEXED BY tasks_done_by_seq
                           WHERE {FINAL}), 0))"
        ),
        [],
        |r| r.get(0),
    )?;
    Ok(n.max(0) as u64)
}

/// One task by id, whatever its state.
pub fn task_by_id(conn: &Connection, id: &str) -> Result<Option<Task>> {
    use rusqlite::OptionalExtension;
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?;
    Ok(stmt.query_row([id], task_from_row).optional()?)
}
