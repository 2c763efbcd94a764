//! Pages of finished tasks, read from SQLite newest first (the master keeps only
//! unfinished ones in memory). Each filter walks one of the finished-task indexes in
//! task-number order, named so that SQLite never walks another and sorts a million rows
//! instead.

use rusqlite::Connection;
use rusqlite::types::Value;

use super::fault::Result;

use super::schema::{FINAL, TASK_COLUMNS, task_from_row};
use crate::records::{Task, TaskFilter};

/// Task numbers per block of `tasks_done_by_worker` (schema version 13): the index is
/// sorted by `seq / BLOCK` first, so that tasks finishing together share its pages.
const BLOCK: u64 = 1024;

/// Finished tasks numbered below `before`, newest first, matching `filter`.
pub fn finished_page(
    conn: &Connection,
    filter: &TaskFilter,
    before: u64,
    limit: usize,
) -> Result<Vec<Task>> {
    if filter.state.is_some_and(|s| !s.is_final()) || limit == 0 {
        return Ok(Vec::new());
    }
    let before = before.min(i64::MAX as u64);
    if filter.worker_id.is_some() {
        return on_worker(conn, filter, before, limit);
    }
    let index = match filter.state {
        Some(_) => "tasks_done_by_state",
        None => "tasks_done_by_seq",
    };
    let (conditions, mut args) = conditions(filter);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks INDEXED BY {index}
         WHERE {FINAL} AND seq < ?{conditions} ORDER BY seq DESC LIMIT ?"
    ))?;
    args.insert(0, Value::Integer(before as i64));
    args.push(Value::Integer(limit as i64));
    let rows = stmt.query_map(rusqlite::params_from_iter(args), task_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The finished tasks of one worker: one range of `tasks_done_by_worker` per block,
/// from the block of `before` down to the block of the oldest finished task, until the
/// page is full. A worker that ran nothing in a block costs one lookup for it (a page of
/// a worker that ran nothing reads 977 blocks per million finished tasks: about 13 ms).
fn on_worker(
    conn: &Connection,
    filter: &TaskFilter,
    before: u64,
    limit: usize,
) -> Result<Vec<Task>> {
    // The walk starts at the newest finished task, not at `before`: a page token far
    // beyond it (u64::MAX) would walk empty blocks for ever.
    let (oldest, newest): (Option<i64>, Option<i64>) = conn.query_row(
        &format!(
            "SELECT (SELECT min(seq) FROM tasks INDEXED BY tasks_done_by_seq WHERE {FINAL}),
                    (SELECT max(seq) FROM tasks INDEXED BY tasks_done_by_seq WHERE {FINAL})"
        ),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (Some(oldest), Some(newest), Some(last)) = (oldest, newest, before.checked_sub(1)) else {
        return Ok(Vec::new());
    };
    let last = last.min(newest.max(0) as u64);
    let oldest = oldest.max(0) as u64;
    let (conditions, filters) = conditions(filter);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_done_by_worker
         WHERE {FINAL} AND seq / {BLOCK} = ? AND seq < ?{conditions}
         ORDER BY seq DESC LIMIT ?"
    ))?;
    let mut page = Vec::new();
    let mut block = last / BLOCK;
    while page.len() < limit && block >= oldest / BLOCK {
        let mut args = vec![Value::Integer(block as i64), Value::Integer(before as i64)];
        args.extend(filters.iter().cloned());
        args.push(Value::Integer((limit - page.len()) as i64));
        let rows = stmt.query_map(rusqlite::params_from_iter(args), task_from_row)?;
        for row in rows {
            page.push(row?);
        }
        let Some(lower) = block.checked_sub(1) else {
            break;
        };
        block = lower;
    }
    Ok(page)
}

/// The conditions of `filter` after the index's own (`AND ...`), and their arguments.
fn conditions(filter: &TaskFilter) -> (String, Vec<Value>) {
    let (mut sql, mut args) = (String::new(), Vec::new());
    if let Some(state) = filter.state {
        sql.push_str(" AND state = ?");
        args.push(Value::Text(state.as_str().into()));
    }
    if let Some(worker) = &filter.worker_id {
        sql.push_str(" AND worker_id = ?");
        args.push(Value::Text(worker.clone()));
    }
    if filter.since_ms > 0 {
        sql.push_str(" AND +submitted_at >= ?");
        args.push(Value::Integer(filter.since_ms));
    }
    (sql, args)
}

#[cfg(test)]
mod tests {
    use herd::domain::TaskState::{Failed, Succeeded};

    use super::*;
    use crate::store::sqlite::commit::write_task;
    use crate::store::sqlite::schema::migrate;
    use crate::store::sqlite::tests::ended;

    fn ids(tasks: &[Task]) -> Vec<u64> {
        tasks
            .iter()
            .map(|t| crate::records::task_number(&t.id).unwrap())
            .collect()
    }

    /// A worker's tasks in three blocks, with a block between them where it ran nothing:
    /// pages walk the blocks newest first, across block boundaries, and end at the oldest.
    #[test]
    fn a_workers_finished_tasks_page_across_blocks_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("herd.db")).unwrap();
        migrate(&mut conn).unwrap();
        let mine = [5, 1023, 1024, 3 * 1024 + 7, 3 * 1024 + 8];
        let tx = conn.transaction().unwrap();
        for n in 1..=4 * 1024u64 {
            let (state, worker) = match n {
                _ if mine.contains(&n) => (if n == 1024 { Failed } else { Succeeded }, "w-1"),
                _ => (Succeeded, "w-2"),
            };
            write_task(&tx, &ended(n, state, worker)).unwrap();
        }
        tx.commit().unwrap();
        let on_w1 = TaskFilter {
            worker_id: Some("w-1".into()),
            ..Default::default()
        };
        let page = |filter: &TaskFilter, before, limit| {
            ids(&finished_page(&conn, filter, before, limit).unwrap())
        };
        assert_eq!(page(&on_w1, 10_000, 10), [3080, 3079, 1024, 1023, 5]);
        assert_eq!(page(&on_w1, 10_000, 3), [3080, 3079, 1024], "a full page");
        assert_eq!(page(&on_w1, 1024, 3), [1023, 5], "the next page");
        assert_eq!(page(&on_w1, 3080, 1), [3079], "before, within a block");
        assert!(page(&on_w1, 5, 10).is_empty(), "nothing older");
        assert_eq!(
            page(&on_w1, u64::MAX, 1),
            [3080],
            "a token far beyond the newest"
        );
        let failed_on_w1 = TaskFilter {
            state: Some(Failed),
            ..on_w1.clone()
        };
        assert_eq!(page(&failed_on_w1, 10_000, 10), [1024]);
        let nobody = TaskFilter {
            worker_id: Some("w-3".into()),
            ..Default::default()
        };
        assert!(page(&nobody, 10_000, 10).is_empty());
        assert_eq!(page(&TaskFilter::default(), 10_000, 2), [4096, 4095]);
    }

    /// What a finished task costs `tasks_done_by_worker`: tasks ending together (each on
    /// another of 1,000 workers) share the pages of their block instead of a page each.
    #[test]
    fn tasks_finishing_together_share_pages_of_the_worker_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("herd.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        migrate(&mut conn).unwrap();
        let mut n = 0;
        let mut write = |conn: &mut Connection, count: u64| {
            let tx = conn.transaction().unwrap();
            for _ in 0..count {
                n += 1;
                let worker = format!("w-{:08x}", (n * 7919) % 1000);
                write_task(&tx, &ended(n, Succeeded, &worker)).unwrap();
            }
            tx.commit().unwrap();
        };
        // 20,000 tasks first, so the index spans many pages.
        write(&mut conn, 20_000);
        let frames = |conn: &Connection, mode: &str| -> i64 {
            conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(1))
                .unwrap()
        };
        // An empty WAL: what is in it after this is what 100 commits wrote.
        assert_eq!(frames(&conn, "TRUNCATE"), 0);
        for _ in 0..100 {
            write(&mut conn, 100);
        }
        let per_commit = frames(&conn, "PASSIVE") as f64 / 100.0;
        // Sorted by worker first, each commit wrote more than 100 pages (one per task).
        assert!(per_commit < 40.0, "{per_commit} WAL frames per commit");
    }
}
