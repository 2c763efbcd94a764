//! One commit of the store thread: every write of a batch in one transaction, in order
//! (of several snapshots of one task's row, only the last).

use std::collections::HashMap;

use rusqlite::{Connection, params};

use herd::domain::{Runtime, WorkerState};
use herd::error::Error;

use super::fault::Result;

use super::identity;
use super::rowids::{RowIdChanges, RowIds};
use crate::output::OutputDir;
use crate::records::{Task, task_number};
use crate::store::Change;

/// Commits `writes`; returns what they change in `rowids` (the caller applies it once
/// the commit is known to have succeeded).
pub(super) fn commit<'a>(
    conn: &mut Connection,
    output: &OutputDir,
    rowids: &RowIds,
    writes: impl Iterator<Item = &'a Change>,
) -> Result<RowIdChanges> {
    let mut changes = RowIdChanges::default();
    let tx = conn.transaction()?;
    // A task's changing columns are a whole snapshot: of several in one commit (assigned,
    // started and finished can come together at a high rate), only the last is written,
    // and a task stored in this commit is inserted as that last snapshot has it (a batch
    // and its placements, handed over together, cost one row write per task).
    let writes: Vec<&Change> = writes.collect();
    let mut last_of: HashMap<&str, usize> = HashMap::new();
    for (at, write) in writes.iter().enumerate() {
        if let Change::TaskState(t) = write {
            last_of.insert(t.id.as_str(), at);
        }
    }
    for (at, &write) in writes.iter().enumerate() {
        if let Change::TaskState(t) = write
            && last_of.get(t.id.as_str()) != Some(&at)
        {
            continue;
        }
        // A change with its audit entry: the change, then the entry, in this transaction.
        let (write, audit) = match write {
            Change::Audited { change, audit } => (change.as_ref(), Some(audit)),
            other => (other, None),
        };
        match write {
            Change::Audited { .. } => {
                return Err(Error::Storage("an audited write inside another".into()).into());
            }
            Change::Audit(audit) => identity::insert_audit(&tx, audit)?,
            Change::TokenCreate(row) => identity::insert_token(&tx, row)?,
            Change::TokenRevoke { name } => identity::revoke_token(&tx, name)?,
            Change::TokenUsed { name, at_ms } => identity::token_used(&tx, name, *at_ms)?,
            Change::Worker(r) => {
                let labels = serde_json::to_string(&r.spec.labels)
                    .map_err(|e| Error::Storage(e.to_string()))?;
                let added_labels = serde_json::to_string(&r.added_labels)
                    .map_err(|e| Error::Storage(e.to_string()))?;
                // The row's rowid comes back with the write (no second lookup).
                let rowid: i64 = tx
                    .prepare_cached(
                        "INSERT INTO workers (id, name, is_active, last_heartbeat, state,
                             registered_at, secret_hash)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT(id) DO UPDATE SET
                             name = excluded.name, is_active = excluded.is_active,
                             state = excluded.state, registered_at = excluded.registered_at,
                             secret_hash = excluded.secret_hash
                         RETURNING rowid",
                    )?
                    .query_row(
                        params![
                            r.id,
                            r.spec.name,
                            r.state == WorkerState::Active,
                            r.last_heartbeat_ms,
                            r.state.as_str(),
                            r.registered_at_ms,
                            r.secret_hash.as_ref().map(|h| &h[..]),
                        ],
                        |row| row.get(0),
                    )?;
                if !rowids.contains_key(&r.id) {
                    changes.learned.push((r.id.clone(), rowid));
                }
                tx.prepare_cached(
                    "INSERT INTO worker_specs (id, host, address, version, cpu, memory_gb, gpu,
                         labels, container_runtime, isolation, added_labels, disk_gb, gpus)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                     ON CONFLICT(id) DO UPDATE SET
                         host = excluded.host, address = excluded.address,
                         version = excluded.version, cpu = excluded.cpu,
                         memory_gb = excluded.memory_gb, gpu = excluded.gpu,
                         labels = excluded.labels, container_runtime = excluded.container_runtime,
                         isolation = excluded.isolation, added_labels = excluded.added_labels,
                         disk_gb = excluded.disk_gb, gpus = excluded.gpus",
                )?
                .execute(params![
                    r.id,
                    r.spec.host,
                    r.spec.address,
                    r.spec.version,
                    r.spec.capacity.cpu,
                    r.spec.capacity.memory_gb,
                    r.spec.capacity.gpu,
                    labels,
                    r.spec.runtime.map(Runtime::as_str).unwrap_or(""),
                    r.spec.isolation,
                    added_labels,
                    r.spec.capacity.disk_gb,
                    serde_json::to_string(&r.spec.gpus)
                        .map_err(|e| Error::Storage(e.to_string()))?,
                ])?;
            }
            Change::Task(t) => write_task(&tx, newest(t, at, &writes, &mut last_of))?,
            Change::TaskState(t) => write_task_state(&tx, t)?,
            Change::Tasks(tasks) => {
                for t in tasks {
                    write_task(&tx, newest(t, at, &writes, &mut last_of))?;
                }
            }
            Change::Draining { id, draining } => {
                tx.prepare_cached("UPDATE workers SET draining = ?2 WHERE id = ?1")?
                    .execute(params![id, draining])?;
            }
            Change::Output {
                task,
                attempt,
                offset,
                data,
            } => output.append(task, *attempt, *offset, data).map_err(|e| {
                // A full disk or an I/O error passes: the write is tried again.
                Error::Unavailable(format!("cannot write the output of {task}: {e}"))
            })?,
            Change::Setting { key, value } => {
                tx.prepare_cached(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![key, value])?;
            }
            Change::ForgetWorker { id } => {
                tx.prepare_cached("DELETE FROM worker_specs WHERE id = ?1")?
                    .execute([id])?;
                tx.prepare_cached("DELETE FROM workers WHERE id = ?1")?
                    .execute([id])?;
                changes.forgotten.push(id.clone());
            }
            // Output files are swept by `retention::Sweep::Files`, off this thread.
            Change::Barrier | Change::DropOutput { .. } => {}
            Change::Liveness(rows) => {
                // The id is checked on the row the rowid finds: a rowid the map still holds
                // for a forgotten worker may belong to another worker now, and then nothing
                // is updated.
                let mut by_rowid = tx.prepare_cached(
                    "UPDATE workers SET is_active = ?2, last_heartbeat = ?3, state = ?4
                     WHERE rowid = ?1 AND id = ?5",
                )?;
                let mut by_id = tx.prepare_cached(
                    "UPDATE workers SET is_active = ?2, last_heartbeat = ?3, state = ?4
                     WHERE id = ?1",
                )?;
                for row in rows {
                    let active = row.state == WorkerState::Active;
                    let state = row.state.as_str();
                    match rowids.get(&row.id) {
                        Some(rowid) => by_rowid.execute(params![
                            rowid,
                            active,
                            row.last_heartbeat_ms,
                            state,
                            row.id
                        ])?,
                        None => {
                            by_id.execute(params![row.id, active, row.last_heartbeat_ms, state])?
                        }
                    };
                }
            }
        }
        if let Some(audit) = audit {
            identity::insert_audit(&tx, audit)?;
        }
    }
    tx.commit()?;
    Ok(changes)
}

/// The snapshot a task stored in this commit is inserted as: the last of its snapshots
/// handed over after it, which is then not written again (it is no longer the last of
/// `last_of`).
fn newest<'a>(
    t: &'a Task,
    at: usize,
    writes: &[&'a Change],
    last_of: &mut HashMap<&'a str, usize>,
) -> &'a Task {
    if let Some(&later) = last_of.get(t.id.as_str())
        && later > at
        && let Change::TaskState(newer) = writes[later]
    {
        last_of.remove(t.id.as_str());
        return newer;
    }
    t
}

/// The update of a task's changing columns (three or four per task).
pub(super) const UPDATE_TASK_STATE: &str =
    "UPDATE tasks SET state = ?2, worker_id = ?3, attempts = ?4, exit_code = ?5,
         reason = ?6, started_at = ?7, finished_at = ?8, history = ?9
     WHERE id = ?1";

/// Updates the columns of a stored task that change after its submission.
/// A task that is not stored fails the write (and with it what waits for its commit:
/// a placement of a task whose row could not be stored is never sent).
fn write_task_state(tx: &rusqlite::Transaction<'_>, t: &Task) -> Result<()> {
    let changed = tx.prepare_cached(UPDATE_TASK_STATE)?.execute(params![
        t.id,
        t.state.as_str(),
        t.worker_id,
        t.attempts,
        t.exit_code,
        t.reason,
        t.started_ms,
        t.finished_ms,
        serde_json::to_string(&t.history).map_err(|e| Error::Storage(e.to_string()))?,
    ])?;
    if changed != 1 {
        return Err(Error::Storage(format!("task {} is not stored", t.id)).into());
    }
    Ok(())
}

/// Inserts a new task's row (once, at submission; its changes are [`UPDATE_TASK_STATE`]).
pub(super) fn write_task(tx: &rusqlite::Transaction<'_>, t: &Task) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO tasks (id, name, image, command, cpu, memory_gb, gpu, state,
                 worker_id, attempts, exit_code, reason, submitted_at, started_at,
                 finished_at, history, seq, priority, constraints, timeout_ms, env,
                 workdir, retries, disk_gb, submitted_by, keep_on_disconnect)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                 ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
    )?
    .execute(params![
        t.id,
        t.spec.name,
        t.spec.image,
        t.spec.command,
        t.spec.resources.cpu,
        t.spec.resources.memory_gb,
        t.spec.resources.gpu,
        t.state.as_str(),
        t.worker_id,
        t.attempts,
        t.exit_code,
        t.reason,
        t.submitted_ms,
        t.started_ms,
        t.finished_ms,
        serde_json::to_string(&t.history).map_err(|e| Error::Storage(e.to_string()))?,
        task_number(&t.id).unwrap_or(0) as i64,
        t.spec.priority,
        serde_json::to_string(
            &t.spec
                .constraints
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
        )
        .map_err(|e| Error::Storage(e.to_string()))?,
        t.spec.run.timeout.map_or(0, |d| d.as_millis() as i64),
        serde_json::to_string(&t.spec.run.env).map_err(|e| Error::Storage(e.to_string()))?,
        t.spec.run.workdir.as_deref().unwrap_or(""),
        t.spec.run.retries,
        t.spec.resources.disk_gb,
        t.submitted_by,
        t.spec.run.on_disconnect.keeps(),
    ])?;
    Ok(())
}
