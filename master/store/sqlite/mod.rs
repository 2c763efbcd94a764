//! The SQLite engine (`<data-dir>/herd.db`), herd's default store. Everything that speaks
//! SQL or names a rusqlite type lives in this folder; the rest of the master sees only
//! [`Engine`] and [`Reads`].
//!
//! WAL with `synchronous=NORMAL`: a commit survives kill -9 of the master.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension};
use tracing::warn;

use herd::error::Error;

mod checkpoint;
mod commit;
mod fault;
mod identity;
mod pages;
pub mod pcache;
mod rowids;
mod schema;
#[cfg(test)]
pub(crate) mod tests;

use self::checkpoint::{Checkpoints, STORE_TRIES, copy_back_the_wal, retry_every_100us};
use self::rowids::{RowIds, load_rowids};
use super::{CLUSTER_TOKENS, Change, Engine, Loaded, Reads};
use crate::output::OutputDir;
use crate::records::{AuditRow, Task, TaskFilter};

/// The writing side: one connection, owned by the store thread.
pub struct Sqlite {
    conn: Connection,
    output: OutputDir,
    /// Each worker's rowid, so a tick's liveness rows update by rowid.
    rowids: RowIds,
}

/// The reading side: a connection of its own (WAL lets it read while the store thread
/// writes), used from blocking tasks, and the output files.
pub struct Reader {
    conn: Mutex<Connection>,
    output: OutputDir,
}

/// Opens (creating if needed) and migrates the database at `path`; returns both sides and
/// everything it knows. With `checkpoints`, the WAL is copied back on a thread of its own.
pub fn open(
    path: &Path,
    output: OutputDir,
    checkpoints: bool,
) -> Result<(Sqlite, Reader, Loaded), Error> {
    Ok(open_sqlite(path, output, checkpoints)?)
}

fn open_sqlite(
    path: &Path,
    output: OutputDir,
    checkpoints: bool,
) -> fault::Result<(Sqlite, Reader, Loaded)> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Keep the whole working set in memory: a tick touches every worker's row.
    conn.pragma_update(None, "cache_size", -64 * 1024)?;
    // Checkpoints run on a thread of their own (see [`Checkpoints`]), not inside
    // a tick's commit; this is only the safety net if that thread falls behind.
    conn.pragma_update(None, "wal_autocheckpoint", 20_000)?;
    conn.busy_handler(Some(retry_every_100us::<STORE_TRIES>))?;
    schema::migrate(&mut conn)?;
    copy_back_the_wal(&conn, path);
    let loaded = Loaded {
        workers: schema::load_workers(&conn)?,
        tasks: schema::load_tasks(&conn, &output)?,
        finished: schema::final_counts(&conn)?,
        last_task: schema::last_task_number(&conn)?,
        scheduler: schema::setting(&conn, "scheduler")?,
        cluster_tokens: schema::setting(&conn, CLUSTER_TOKENS)?,
        tokens: identity::load_tokens(&conn)?,
    };
    let reader = Connection::open(path)?;
    reader.busy_timeout(std::time::Duration::from_secs(5))?;
    let rowids = load_rowids(&conn).unwrap_or_else(|err| {
        warn!(err = %err.0, "cannot read worker rowids; ticks will update by id");
        RowIds::new()
    });
    if checkpoints {
        Checkpoints::EVERY_SECOND.start(path)?;
    }
    let reader = Reader {
        conn: Mutex::new(reader),
        output: output.clone(),
    };
    let engine = Sqlite {
        conn,
        output,
        rowids,
    };
    Ok((engine, reader, loaded))
}

impl Engine for Sqlite {
    fn commit<'a>(
        &mut self,
        changes: impl Iterator<Item = &'a Change> + Clone,
    ) -> Result<(), Error> {
        let moved = commit::commit(&mut self.conn, &self.output, &self.rowids, changes)?;
        moved.apply(&mut self.rowids);
        Ok(())
    }

    fn read_output(&mut self, id: &str) -> Result<Vec<u8>, Error> {
        let output = self
            .conn
            .query_row("SELECT output FROM tasks WHERE id = ?1", [id], |r| {
                r.get::<_, Option<Vec<u8>>>(0)
            })
            .optional()
            .map_err(fault::Fault::from)?;
        Ok(output.flatten().unwrap_or_default())
    }
}

impl Reader {
    fn with<T>(&self, read: impl FnOnce(&Connection) -> fault::Result<T>) -> Result<T, Error> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(read(&conn)?)
    }
}

impl Reads for Reader {
    fn finished_page(
        &self,
        filter: &TaskFilter,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Task>, Error> {
        self.with(|conn| pages::finished_page(conn, filter, before, limit))
    }

    fn audit_page(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRow>, Error> {
        self.with(|conn| identity::audit_page(conn, before, limit))
    }

    fn task(&self, id: &str) -> Result<Option<Task>, Error> {
        self.with(|conn| schema::task_by_id(conn, id))
    }

    fn output(
        &self,
        task: &str,
        attempt: u32,
        from: u64,
        max: usize,
    ) -> Result<(u64, Vec<u8>), Error> {
        self.output
            .read(task, attempt, from, max)
            .map_err(|e| Error::Storage(format!("cannot read the output of {task}: {e}")))
    }

    fn output_len(&self, task: &str, attempt: u32) -> Result<u64, Error> {
        self.output
            .len(task, attempt)
            .map_err(|e| Error::Storage(format!("cannot read the output of {task}: {e}")))
    }

    fn has_output(&self, task: &str) -> Result<bool, Error> {
        Ok(self.output.exists(task))
    }

    fn masters(&self) -> Result<Vec<herd::pb::MasterInfo>, Error> {
        Ok(Vec::new())
    }
}
