//! The schema of the PostgreSQL store: versioned migrations (the version is a row of
//! `herd_schema`; a newer schema is refused, never overwritten) and what is read back
//! when a master takes the lead.

use tokio_postgres::{GenericClient, Row};

use herd::constraint::Constraint;
use herd::domain::run::{OnDisconnect, RunOptions};
use herd::domain::{Resources, Runtime, TaskSpec, TaskState, WorkerSpec, WorkerState};
use herd::error::Error;

use super::fault::Result;
use crate::records::{Task, WorkerRecord};

/// Held (transaction-level) while migrating: two masters started together migrate once.
const MIGRATION_LOCK: i64 = 0x6865_7264_0001;

/// Schema versions, applied in order; `herd_schema.version` says how many ran.
pub const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store keeps at its version 14, and what standby masters
    // share: the leader's term and every master's last word.
    "CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        name TEXT UNIQUE NOT NULL,
        is_active BOOLEAN NOT NULL DEFAULT false,
        last_heartbeat BIGINT NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        registered_at BIGINT NOT NULL,
        draining BOOLEAN NOT NULL DEFAULT false,
        secret_hash BYTEA
    );
    CREATE TABLE worker_specs (
        id TEXT PRIMARY KEY REFERENCES workers(id) ON DELETE CASCADE,
        host TEXT NOT NULL DEFAULT '',
        address TEXT NOT NULL DEFAULT '',
        version TEXT NOT NULL DEFAULT '',
        cpu DOUBLE PRECISION NOT NULL,
        memory_gb DOUBLE PRECISION NOT NULL,
        gpu BIGINT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        container_runtime TEXT NOT NULL DEFAULT '',
        isolation TEXT NOT NULL DEFAULT '',
        added_labels TEXT NOT NULL DEFAULT '{}',
        disk_gb DOUBLE PRECISION NOT NULL DEFAULT 0,
        gpus TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        image TEXT,
        command TEXT,
        cpu DOUBLE PRECISION NOT NULL,
        memory_gb DOUBLE PRECISION NOT NULL,
        gpu BIGINT NOT NULL,
        state TEXT NOT NULL,
        worker_id TEXT,
        attempts BIGINT NOT NULL DEFAULT 0,
        exit_code INTEGER,
        reason TEXT NOT NULL DEFAULT '',
        submitted_at BIGINT NOT NULL,
        started_at BIGINT NOT NULL DEFAULT 0,
        finished_at BIGINT NOT NULL DEFAULT 0,
        history TEXT NOT NULL DEFAULT '[]',
        priority INTEGER NOT NULL DEFAULT 0,
        constraints TEXT NOT NULL DEFAULT '[]',
        timeout_ms BIGINT NOT NULL DEFAULT 0,
        env TEXT NOT NULL DEFAULT '{}',
        workdir TEXT NOT NULL DEFAULT '',
        retries BIGINT NOT NULL DEFAULT 0,
        disk_gb DOUBLE PRECISION NOT NULL DEFAULT 0,
        submitted_by TEXT NOT NULL DEFAULT '',
        keep_on_disconnect BOOLEAN NOT NULL DEFAULT false
    );
    CREATE INDEX tasks_open ON tasks(seq) WHERE state IN ('queued', 'assigned', 'running');
    CREATE INDEX tasks_done_by_seq ON tasks(seq)
        WHERE state IN ('succeeded', 'failed', 'cancelled');
    CREATE INDEX tasks_done_by_state ON tasks(state, seq)
        WHERE state IN ('succeeded', 'failed', 'cancelled');
    CREATE INDEX tasks_done_by_worker ON tasks(worker_id, seq)
        WHERE state IN ('succeeded', 'failed', 'cancelled');
    CREATE TABLE task_output (
        task TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        off BIGINT NOT NULL,
        data BYTEA NOT NULL,
        written_at BIGINT NOT NULL,
        PRIMARY KEY (task, attempt, off)
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        hash BYTEA NOT NULL UNIQUE,
        created_at BIGINT NOT NULL,
        last_used BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE audit (
        seq BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        who TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        peer TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE herd_leader (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        term BIGINT NOT NULL,
        address TEXT NOT NULL DEFAULT '',
        http TEXT NOT NULL DEFAULT '',
        pid INTEGER,
        since TIMESTAMPTZ,
        renewed_at TIMESTAMPTZ
    );
    INSERT INTO herd_leader (id, term) VALUES (1, 0);
    CREATE TABLE herd_masters (
        address TEXT PRIMARY KEY,
        http TEXT NOT NULL DEFAULT '',
        role TEXT NOT NULL,
        term BIGINT NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL
    );",
    // 2: the checks of a commit as functions, so that all of its statements can be sent at
    // once (pipelined) and a failed check still aborts the transaction before its COMMIT.
    // herd_fence: fails unless `ours` is the newest term; the row lock it takes is the one a
    // take-over waits for, so a write either commits before the new term or sees it.
    // herd_all_stored: fails naming a task of `wanted` that an UPDATE did not find.
    "CREATE FUNCTION herd_fence(ours BIGINT) RETURNS VOID LANGUAGE plpgsql AS $$
    DECLARE newest BIGINT;
    BEGIN
        SELECT term INTO newest FROM herd_leader WHERE id = 1 FOR SHARE;
        IF newest IS DISTINCT FROM ours THEN
            RAISE EXCEPTION 'this master no longer leads: it led term %, and term % leads now',
                ours, newest USING ERRCODE = 'HE001';
        END IF;
    END $$;
    CREATE FUNCTION herd_all_stored(changed TEXT[], wanted TEXT[]) RETURNS VOID
    LANGUAGE plpgsql AS $$
    DECLARE missing TEXT;
    BEGIN
        IF cardinality(changed) <> cardinality(wanted) THEN
            SELECT w INTO missing FROM unnest(wanted) AS w WHERE NOT (w = ANY(changed)) LIMIT 1;
            RAISE EXCEPTION 'task % is not stored', coalesce(missing, '?')
                USING ERRCODE = 'HE002';
        END IF;
    END $$;",
    // 3: a worker's row changes every ~10 s (its last heartbeat) and at each change of
    // state, in columns no index covers. With room left on each page, PostgreSQL updates
    // it in place (a HOT update: no new index entries, the old version pruned on the
    // page) instead of moving it to another page and indexing it again. Applies to the
    // pages written from now on.
    "ALTER TABLE workers SET (fillfactor = 50);",
];

/// Brings the schema to this master's version, or refuses a newer one.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS herd_schema (version INTEGER NOT NULL)")
        .await?;
    let version: i32 = match tx.query_opt("SELECT version FROM herd_schema", &[]).await? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO herd_schema (version) VALUES (0)", &[])
                .await?;
            0
        }
    };
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(Error::Storage(format!(
            "the PostgreSQL store has schema version {version}, newer than this herd-master \
             knows ({}); use a newer herd-master",
            MIGRATIONS.len()
        ))
        .into());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.batch_execute(sql).await?;
        tx.execute("UPDATE herd_schema SET version = $1", &[&((i + 1) as i32)])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn load_workers(c: &impl GenericClient) -> Result<Vec<WorkerRecord>> {
    let rows = c
        .query(
            "SELECT w.id, w.name, s.host, s.address, s.version, s.cpu, s.memory_gb, s.gpu,
                s.labels, s.container_runtime, w.last_heartbeat, w.state, w.registered_at,
                w.draining, s.isolation, s.added_labels, s.disk_gb, s.gpus, w.secret_hash
         FROM workers w JOIN worker_specs s ON s.id = w.id ORDER BY w.name",
            &[],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let spec = WorkerSpec {
            name: r.get(1),
            host: r.get(2),
            address: r.get(3),
            version: r.get(4),
            capacity: Resources {
                cpu: r.get(5),
                memory_gb: r.get(6),
                gpu: r.get::<_, i64>(7) as u32,
                disk_gb: r.get(16),
            },
            gpus: serde_json::from_str(r.get(17)).unwrap_or_default(),
            labels: serde_json::from_str(r.get(8)).unwrap_or_default(),
            runtime: Runtime::parse_optional(r.get(9)).unwrap_or(None),
            isolation: r.get(14),
        };
        let state: &str = r.get(11);
        out.push(WorkerRecord {
            id: r.get(0),
            spec,
            registered_at_ms: r.get(12),
            last_heartbeat_ms: r.get(10),
            state: WorkerState::parse(state).unwrap_or(WorkerState::Inactive),
            draining: r.get(13),
            added_labels: serde_json::from_str(r.get(15)).unwrap_or_default(),
            secret_hash: r
                .get::<_, Option<Vec<u8>>>(18)
                .and_then(|h| h.try_into().ok()),
        });
    }
    Ok(out)
}

/// The columns a task is read from, in the order [`task_from_row`] takes them.
pub const TASK_COLUMNS: &str = "id, name, image, command, cpu, memory_gb, gpu, state, worker_id,
    attempts, exit_code, reason, submitted_at, started_at, finished_at, history, priority,
    constraints, timeout_ms, env, workdir, retries, disk_gb, submitted_by, keep_on_disconnect";

/// A task is done (the condition of the finished-task indexes, word for word).
pub const FINAL: &str = "state IN ('succeeded', 'failed', 'cancelled')";
/// A task in flight (the `tasks_open` index).
const OPEN: &str = "state IN ('queued', 'assigned', 'running')";

pub fn task_from_row(r: &Row) -> Task {
    let state: &str = r.get(7);
    Task {
        id: r.get(0),
        spec: std::sync::Arc::new(TaskSpec {
            name: r.get(1),
            image: r.get(2),
            command: r.get(3),
            resources: Resources {
                cpu: r.get(4),
                memory_gb: r.get(5),
                gpu: r.get::<_, i64>(6) as u32,
                disk_gb: r.get(22),
            },
            priority: r.get(16),
            constraints: serde_json::from_str::<Vec<String>>(r.get(17))
                .unwrap_or_default()
                .iter()
                .filter_map(|c| Constraint::parse(c).ok())
                .collect(),
            run: RunOptions {
                timeout: Some(r.get::<_, i64>(18))
                    .filter(|ms| *ms > 0)
                    .map(|ms| std::time::Duration::from_millis(ms as u64)),
                env: serde_json::from_str(r.get(19)).unwrap_or_default(),
                workdir: Some(r.get::<_, String>(20)).filter(|w| !w.is_empty()),
                retries: r.get::<_, i64>(21) as u32,
                on_disconnect: OnDisconnect::from_keep(r.get(24)),
            },
        }),
        state: TaskState::parse(state).unwrap_or(TaskState::Queued),
        worker_id: r.get(8),
        attempts: r.get::<_, i64>(9) as u32,
        exit_code: r.get(10),
        reason: r.get(11),
        submitted_ms: r.get(12),
        started_ms: r.get(13),
        finished_ms: r.get(14),
        history: serde_json::from_str(r.get(15)).unwrap_or_default(),
        submitted_by: r.get(23),
        assigned_at: None,
        cancel_requested: false,
        output_len: 0,
    }
}

/// The tasks that are not finished, with how much output of their current attempt the
/// store holds.
pub async fn load_tasks(c: &impl GenericClient) -> Result<Vec<Task>> {
    let rows = c
        .query(
            &format!(
                "SELECT {TASK_COLUMNS},
                 (SELECT coalesce(max(o.off + length(o.data)), 0) FROM task_output o
                  WHERE o.task = t.id AND o.attempt = t.attempts)
             FROM tasks t WHERE {OPEN} ORDER BY seq"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut task = task_from_row(r);
            task.output_len = r.get::<_, i64>(25) as u64;
            task
        })
        .collect())
}

/// How many finished tasks there are in each final state.
pub async fn final_counts(c: &impl GenericClient) -> Result<Vec<(TaskState, u64)>> {
    let rows = c
        .query(
            &format!("SELECT state, count(*) FROM tasks WHERE {FINAL} GROUP BY state"),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((TaskState::parse(r.get(0))?, r.get::<_, i64>(1) as u64)))
        .collect())
}

/// The highest task number ever given out.
pub async fn last_task_number(c: &impl GenericClient) -> Result<u64> {
    let n: Option<i64> = c.query_one("SELECT max(seq) FROM tasks", &[]).await?.get(0);
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// A setting kept across restarts and fail-overs.
pub async fn setting(c: &impl GenericClient, key: &str) -> Result<Option<String>> {
    Ok(
        c.query_opt("SELECT value FROM settings WHERE key = $1", &[&key])
            .await?
            .map(|r| r.get(0)),
    )
}
