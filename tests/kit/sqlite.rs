//! Reading (and, for tests of old data, writing) a master's SQLite file directly.

use std::time::Duration;

use crate::Deadline;

/// `(is_active, state)` of a worker row in SQLite.
pub fn db_row(conn: &rusqlite::Connection, id: &str) -> Option<(bool, String)> {
    conn.query_row(
        "SELECT is_active, state FROM workers WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

/// Waits until the worker row `id` in SQLite reads `(is_active, state)`.
pub async fn wait_db(
    conn: &rusqlite::Connection,
    id: &str,
    expected: (bool, &str),
    deadline: Duration,
) {
    let deadline = Deadline::new(deadline, format!("SQLite has {id} as {expected:?}"));
    while db_row(conn, id) != Some((expected.0, expected.1.to_string())) {
        deadline.wait().await;
    }
}

pub fn db_count(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM workers", [], |r| r.get(0))
        .unwrap()
}

/// Tasks rows in SQLite.
pub fn db_tasks(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap()
}

/// Writes `n` finished tasks (every 20,000th with a 64 KiB command) straight into a
/// stopped master's SQLite, as months of use would leave them.
pub fn seed_finished_tasks(db: &rusqlite::Connection, n: u64) {
    db.execute_batch("BEGIN").unwrap();
    {
        let mut insert = db
            .prepare(
                "INSERT INTO tasks (id, name, command, cpu, memory_gb, gpu, state, worker_id,
                     attempts, exit_code, reason, submitted_at, started_at, finished_at,
                     history, seq)
                 VALUES (?1, '', ?2, 1.0, 0.0, 0, ?3, 'w-00000001', 1, 0, '', ?4, ?4, ?4,
                     '[]', ?5)",
            )
            .unwrap();
        let big = "x".repeat(herd::domain::MAX_COMMAND_LEN);
        for i in 1..=n {
            let command = if i % 20_000 == 0 {
                big.as_str()
            } else {
                "true"
            };
            let state = if i % 10 == 0 { "failed" } else { "succeeded" };
            insert
                .execute(rusqlite::params![
                    format!("t-{i}"),
                    command,
                    state,
                    i as i64,
                    i as i64
                ])
                .unwrap();
        }
    }
    db.execute_batch("COMMIT").unwrap();
}
