//! One commit of the store thread on PostgreSQL: the term checked first (a master that no
//! longer leads writes nothing), then every change of the batch in one transaction.
//! Workers, liveness rows, new tasks and task updates go in multi-row statements
//! (`unnest` of arrays): one round trip for a tick of 10,000 workers or a batch of tasks.

use std::collections::HashMap;

use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use herd::domain::{Runtime, WorkerState};
use herd::error::Error;

use super::fault::Result;
use super::{Fence, Statements};
use crate::output::SEGMENT;
use crate::records::{LivenessRow, Task, WorkerRecord, task_number};
use crate::store::Change;

/// Commits `changes` if this master still leads in `term`; else fails, naming the term
/// that leads now (and `deposed` learns of it).
pub(super) async fn commit<'a>(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    fence: &Fence,
    changes: impl Iterator<Item = &'a Change>,
) -> Result<()> {
    check_term(tx, fence).await?;
    let mut batch = Batch::default();
    for change in changes {
        let (change, audit) = match change {
            Change::Audited { change, audit } => (change.as_ref(), Some(audit)),
            other => (other, None),
        };
        match change {
            Change::Audited { .. } => {
                return Err(Error::Storage("an audited write inside another".into()).into());
            }
            Change::Barrier => {}
            Change::DropOutput { written_before_ms } => {
                let sql = "DELETE FROM task_output WHERE written_at < $1";
                statements.run(tx, sql, &[written_before_ms]).await?;
            }
            Change::Worker(r) => batch.worker(r),
            Change::Task(t) => batch.task(t),
            Change::Tasks(tasks) => tasks.iter().for_each(|t| batch.task(t)),
            Change::TaskState(t) => batch.task_state(t),
            Change::Liveness(rows) => {
                batch.flush_workers(tx, statements).await?;
                liveness(tx, statements, rows).await?;
            }
            Change::Draining { id, draining } => {
                batch.flush_workers(tx, statements).await?;
                let sql = "UPDATE workers SET draining = $2 WHERE id = $1";
                statements.run(tx, sql, &[id, draining]).await?;
            }
            Change::ForgetWorker { id } => {
                batch.flush_workers(tx, statements).await?;
                let sql = "DELETE FROM workers WHERE id = $1";
                statements.run(tx, sql, &[id]).await?;
            }
            Change::Output {
                task,
                attempt,
                offset,
                data,
            } => output(tx, statements, task, *attempt, *offset, data).await?,
            Change::Setting { key, value } => {
                let sql = "INSERT INTO settings (key, value) VALUES ($1, $2)
                           ON CONFLICT (key) DO UPDATE SET value = excluded.value";
                statements.run(tx, sql, &[key, value]).await?;
            }
            Change::TokenCreate(row) => {
                let sql = "INSERT INTO tokens (name, role, hash, created_at, last_used)
                           VALUES ($1, $2, $3, $4, $5)";
                let hash = &row.hash[..];
                statements
                    .run(
                        tx,
                        sql,
                        &[
                            &row.name,
                            &row.role.as_str(),
                            &hash,
                            &row.created_ms,
                            &row.last_used_ms,
                        ],
                    )
                    .await?;
            }
            Change::TokenRevoke { name } => {
                let sql = "DELETE FROM tokens WHERE name = $1";
                statements.run(tx, sql, &[name]).await?;
            }
            Change::TokenUsed { name, at_ms } => {
                let sql = "UPDATE tokens SET last_used = $2 WHERE name = $1";
                statements.run(tx, sql, &[name, at_ms]).await?;
            }
            Change::Audit(row) => insert_audit(tx, statements, row).await?,
        }
        if let Some(audit) = audit {
            insert_audit(tx, statements, audit).await?;
        }
    }
    batch.flush(tx, statements).await
}

/// Fails unless `term` is still the newest: the row lock taken here is the one a new
/// leader's take-over waits for, so a write either commits before the new term or sees it.
async fn check_term(tx: &Transaction<'_>, fence: &Fence) -> Result<()> {
    let newest: i64 = tx
        .query_one("SELECT term FROM herd_leader WHERE id = 1 FOR SHARE", &[])
        .await?
        .get(0);
    let term = fence.term;
    if newest != term {
        fence.deposed.send_replace(true);
        return Err(Error::Unavailable(format!(
            "this master no longer leads: it led term {term}, and term {newest} leads now"
        ))
        .into());
    }
    Ok(())
}

/// What is written in multi-row statements at the end of the transaction (workers before
/// anything else that touches their rows).
#[derive(Default)]
struct Batch<'a> {
    workers: Vec<&'a WorkerRecord>,
    /// New tasks, in order, each as the last snapshot of it in this commit.
    inserts: Vec<&'a Task>,
    inserted: HashMap<&'a str, usize>,
    /// Of the updates of stored tasks, the last of each.
    updates: HashMap<&'a str, &'a Task>,
}

impl<'a> Batch<'a> {
    fn worker(&mut self, r: &'a WorkerRecord) {
        self.workers.retain(|w| w.id != r.id);
        self.workers.push(r);
    }

    fn task(&mut self, t: &'a Task) {
        self.inserted.insert(&t.id, self.inserts.len());
        self.inserts.push(t);
    }

    fn task_state(&mut self, t: &'a Task) {
        match self.inserted.get(t.id.as_str()) {
            // Stored in this commit: inserted as its last snapshot.
            Some(&at) => self.inserts[at] = t,
            None => {
                self.updates.insert(&t.id, t);
            }
        }
    }

    async fn flush_workers(&mut self, tx: &Transaction<'_>, s: &mut Statements) -> Result<()> {
        if self.workers.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.workers);
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let names: Vec<&str> = rows.iter().map(|r| r.spec.name.as_str()).collect();
        let active: Vec<bool> = rows
            .iter()
            .map(|r| r.state == WorkerState::Active)
            .collect();
        let heartbeats: Vec<i64> = rows.iter().map(|r| r.last_heartbeat_ms).collect();
        let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
        let registered: Vec<i64> = rows.iter().map(|r| r.registered_at_ms).collect();
        let secrets: Vec<Option<&[u8]>> = rows
            .iter()
            .map(|r| r.secret_hash.as_ref().map(|h| &h[..]))
            .collect();
        let sql = "INSERT INTO workers (id, name, is_active, last_heartbeat, state,
                       registered_at, secret_hash)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::int8[],
                       $5::text[], $6::int8[], $7::bytea[])
                   ON CONFLICT (id) DO UPDATE SET
                       name = excluded.name, is_active = excluded.is_active,
                       state = excluded.state, registered_at = excluded.registered_at,
                       secret_hash = excluded.secret_hash";
        let params: [&(dyn ToSql + Sync); 7] = [
            &ids,
            &names,
            &active,
            &heartbeats,
            &states,
            &registered,
            &secrets,
        ];
        s.run(tx, sql, &params).await?;
        let hosts: Vec<&str> = rows.iter().map(|r| r.spec.host.as_str()).collect();
        let addresses: Vec<&str> = rows.iter().map(|r| r.spec.address.as_str()).collect();
        let versions: Vec<&str> = rows.iter().map(|r| r.spec.version.as_str()).collect();
        let cpu: Vec<f64> = rows.iter().map(|r| r.spec.capacity.cpu).collect();
        let memory: Vec<f64> = rows.iter().map(|r| r.spec.capacity.memory_gb).collect();
        let gpu: Vec<i64> = rows.iter().map(|r| r.spec.capacity.gpu as i64).collect();
        let disk: Vec<f64> = rows.iter().map(|r| r.spec.capacity.disk_gb).collect();
        let labels = rows
            .iter()
            .map(|r| r.spec.labels.json())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let added = rows
            .iter()
            .map(|r| r.added_labels.json())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let gpus = rows
            .iter()
            .map(|r| r.spec.gpus.json())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let runtimes: Vec<&str> = rows
            .iter()
            .map(|r| r.spec.runtime.map(Runtime::as_str).unwrap_or(""))
            .collect();
        let isolation: Vec<&str> = rows.iter().map(|r| r.spec.isolation.as_str()).collect();
        let sql = "INSERT INTO worker_specs (id, host, address, version, cpu, memory_gb, gpu,
                       labels, container_runtime, isolation, added_labels, disk_gb, gpus)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                       $5::float8[], $6::float8[], $7::int8[], $8::text[], $9::text[],
                       $10::text[], $11::text[], $12::float8[], $13::text[])
                   ON CONFLICT (id) DO UPDATE SET
                       host = excluded.host, address = excluded.address,
                       version = excluded.version, cpu = excluded.cpu,
                       memory_gb = excluded.memory_gb, gpu = excluded.gpu,
                       labels = excluded.labels, container_runtime = excluded.container_runtime,
                       isolation = excluded.isolation, added_labels = excluded.added_labels,
                       disk_gb = excluded.disk_gb, gpus = excluded.gpus";
        let params: [&(dyn ToSql + Sync); 13] = [
            &ids, &hosts, &addresses, &versions, &cpu, &memory, &gpu, &labels, &runtimes,
            &isolation, &added, &disk, &gpus,
        ];
        s.run(tx, sql, &params).await?;
        Ok(())
    }

    async fn flush(mut self, tx: &Transaction<'_>, s: &mut Statements) -> Result<()> {
        self.flush_workers(tx, s).await?;
        if !self.inserts.is_empty() {
            insert_tasks(tx, s, &self.inserts).await?;
        }
        if !self.updates.is_empty() {
            let updates: Vec<&Task> = self.updates.into_values().collect();
            update_tasks(tx, s, &updates).await?;
        }
        Ok(())
    }
}

/// `serde_json::to_string` as a store error, for the JSON columns.
trait Json {
    fn json(&self) -> std::result::Result<String, Error>;
}

impl<T: serde::Serialize> Json for T {
    fn json(&self) -> std::result::Result<String, Error> {
        serde_json::to_string(self).map_err(|e| Error::Storage(e.to_string()))
    }
}

async fn liveness(tx: &Transaction<'_>, s: &mut Statements, rows: &[LivenessRow]) -> Result<()> {
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let active: Vec<bool> = rows
        .iter()
        .map(|r| r.state == WorkerState::Active)
        .collect();
    let heartbeats: Vec<i64> = rows.iter().map(|r| r.last_heartbeat_ms).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
    let sql = "UPDATE workers w SET is_active = u.active, last_heartbeat = u.heartbeat,
                   state = u.state
               FROM unnest($1::text[], $2::bool[], $3::int8[], $4::text[])
                   AS u(id, active, heartbeat, state)
               WHERE w.id = u.id";
    s.run(tx, sql, &[&ids, &active, &heartbeats, &states])
        .await?;
    Ok(())
}

async fn insert_tasks(tx: &Transaction<'_>, s: &mut Statements, tasks: &[&Task]) -> Result<()> {
    let col = |f: &dyn Fn(&Task) -> String| tasks.iter().map(|t| f(t)).collect::<Vec<_>>();
    let ids = col(&|t| t.id.clone());
    let seqs: Vec<i64> = tasks
        .iter()
        .map(|t| task_number(&t.id).unwrap_or(0) as i64)
        .collect();
    let names = col(&|t| t.spec.name.clone());
    let images: Vec<Option<&str>> = tasks.iter().map(|t| t.spec.image.as_deref()).collect();
    let commands: Vec<Option<&str>> = tasks.iter().map(|t| t.spec.command.as_deref()).collect();
    let cpu: Vec<f64> = tasks.iter().map(|t| t.spec.resources.cpu).collect();
    let memory: Vec<f64> = tasks.iter().map(|t| t.spec.resources.memory_gb).collect();
    let gpu: Vec<i64> = tasks.iter().map(|t| t.spec.resources.gpu as i64).collect();
    let states = col(&|t| t.state.as_str().to_string());
    let workers: Vec<Option<&str>> = tasks.iter().map(|t| t.worker_id.as_deref()).collect();
    let attempts: Vec<i64> = tasks.iter().map(|t| t.attempts as i64).collect();
    let exits: Vec<Option<i32>> = tasks.iter().map(|t| t.exit_code).collect();
    let reasons = col(&|t| t.reason.clone());
    let submitted: Vec<i64> = tasks.iter().map(|t| t.submitted_ms).collect();
    let started: Vec<i64> = tasks.iter().map(|t| t.started_ms).collect();
    let finished: Vec<i64> = tasks.iter().map(|t| t.finished_ms).collect();
    let history = json_col(tasks, |t| t.history.json())?;
    let priority: Vec<i32> = tasks.iter().map(|t| t.spec.priority).collect();
    let constraints = json_col(tasks, |t| {
        let texts: Vec<String> = t.spec.constraints.iter().map(|c| c.to_string()).collect();
        texts.json()
    })?;
    let timeouts: Vec<i64> = tasks
        .iter()
        .map(|t| t.spec.run.timeout.map_or(0, |d| d.as_millis() as i64))
        .collect();
    let env = json_col(tasks, |t| t.spec.run.env.json())?;
    let workdirs: Vec<&str> = tasks
        .iter()
        .map(|t| t.spec.run.workdir.as_deref().unwrap_or(""))
        .collect();
    let retries: Vec<i64> = tasks.iter().map(|t| t.spec.run.retries as i64).collect();
    let disk: Vec<f64> = tasks.iter().map(|t| t.spec.resources.disk_gb).collect();
    let by = col(&|t| t.submitted_by.clone());
    let keep: Vec<bool> = tasks
        .iter()
        .map(|t| t.spec.run.on_disconnect.keeps())
        .collect();
    let sql = "INSERT INTO tasks (id, seq, name, image, command, cpu, memory_gb, gpu, state,
                   worker_id, attempts, exit_code, reason, submitted_at, started_at,
                   finished_at, history, priority, constraints, timeout_ms, env, workdir,
                   retries, disk_gb, submitted_by, keep_on_disconnect)
               SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[],
                   $5::text[], $6::float8[], $7::float8[], $8::int8[], $9::text[],
                   $10::text[], $11::int8[], $12::int4[], $13::text[], $14::int8[],
                   $15::int8[], $16::int8[], $17::text[], $18::int4[], $19::text[],
                   $20::int8[], $21::text[], $22::text[], $23::int8[], $24::float8[],
                   $25::text[], $26::bool[])";
    let params: [&(dyn ToSql + Sync); 26] = [
        &ids,
        &seqs,
        &names,
        &images,
        &commands,
        &cpu,
        &memory,
        &gpu,
        &states,
        &workers,
        &attempts,
        &exits,
        &reasons,
        &submitted,
        &started,
        &finished,
        &history,
        &priority,
        &constraints,
        &timeouts,
        &env,
        &workdirs,
        &retries,
        &disk,
        &by,
        &keep,
    ];
    s.run(tx, sql, &params).await?;
    Ok(())
}

fn json_col(
    tasks: &[&Task],
    f: impl Fn(&Task) -> std::result::Result<String, Error>,
) -> std::result::Result<Vec<String>, Error> {
    tasks.iter().map(|t| f(t)).collect()
}

/// Updates the columns of stored tasks that change after submission. A task that is not
/// stored fails the write (and with it what waits for its commit: a placement of a task
/// whose row could not be stored is never sent).
async fn update_tasks(tx: &Transaction<'_>, s: &mut Statements, tasks: &[&Task]) -> Result<()> {
    let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let states: Vec<&str> = tasks.iter().map(|t| t.state.as_str()).collect();
    let workers: Vec<Option<&str>> = tasks.iter().map(|t| t.worker_id.as_deref()).collect();
    let attempts: Vec<i64> = tasks.iter().map(|t| t.attempts as i64).collect();
    let exits: Vec<Option<i32>> = tasks.iter().map(|t| t.exit_code).collect();
    let reasons: Vec<&str> = tasks.iter().map(|t| t.reason.as_str()).collect();
    let started: Vec<i64> = tasks.iter().map(|t| t.started_ms).collect();
    let finished: Vec<i64> = tasks.iter().map(|t| t.finished_ms).collect();
    let history = json_col(tasks, |t| t.history.json())?;
    let sql = "UPDATE tasks t SET state = u.state, worker_id = u.worker_id,
                   attempts = u.attempts, exit_code = u.exit_code, reason = u.reason,
                   started_at = u.started_at, finished_at = u.finished_at, history = u.history
               FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int4[],
                   $6::text[], $7::int8[], $8::int8[], $9::text[])
                   AS u(id, state, worker_id, attempts, exit_code, reason, started_at,
                        finished_at, history)
               WHERE t.id = u.id";
    let params: [&(dyn ToSql + Sync); 9] = [
        &ids, &states, &workers, &attempts, &exits, &reasons, &started, &finished, &history,
    ];
    let changed = s.run(tx, sql, &params).await?;
    if changed as usize != tasks.len() {
        let stored: Vec<String> = tx
            .query("SELECT id FROM tasks WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing = ids.iter().find(|id| !stored.iter().any(|s| s == *id));
        let missing = missing.unwrap_or(&"?");
        return Err(Error::Storage(format!("task {missing} is not stored")).into());
    }
    Ok(())
}

/// Output of an attempt, stored at its offset (written again, the same bytes land on the
/// same row). Like the files of the SQLite store, the last 1-2 MiB of each attempt are
/// kept: once output reaches a new MiB, what ended before the one before goes.
async fn output(
    tx: &Transaction<'_>,
    s: &mut Statements,
    task: &str,
    attempt: u32,
    offset: u64,
    data: &[u8],
) -> Result<()> {
    let now = herd::time::now_ms();
    let sql = "INSERT INTO task_output (task, attempt, off, data, written_at)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (task, attempt, off) DO UPDATE SET data = excluded.data,
                   written_at = excluded.written_at";
    let (attempt, off) = (attempt as i64, offset as i64);
    s.run(tx, sql, &[&task, &attempt, &off, &data, &now])
        .await?;
    let end = offset + data.len() as u64;
    if end / SEGMENT > offset / SEGMENT && end / SEGMENT >= 2 {
        let keep_from = ((end / SEGMENT - 1) * SEGMENT) as i64;
        let sql = "DELETE FROM task_output
                   WHERE task = $1 AND attempt = $2 AND off + length(data) <= $3";
        s.run(tx, sql, &[&task, &attempt, &keep_from]).await?;
    }
    Ok(())
}

async fn insert_audit(
    tx: &Transaction<'_>,
    s: &mut Statements,
    row: &crate::records::AuditRow,
) -> Result<()> {
    let sql = "INSERT INTO audit (at, who, role, action, target, detail, peer)
               VALUES ($1, $2, $3, $4, $5, $6, $7)";
    s.run(
        tx,
        sql,
        &[
            &row.at_ms,
            &row.who,
            &row.role,
            &row.action,
            &row.target,
            &row.detail,
            &row.peer,
        ],
    )
    .await?;
    Ok(())
}
