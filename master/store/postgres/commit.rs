//! One commit of the store thread on PostgreSQL: the term checked first (a master that no
//! longer leads writes nothing), then every change of the batch, in one transaction sent as
//! one pipeline. Workers, liveness rows, new tasks and task updates go in multi-row
//! statements (`unnest` of arrays): one round trip for a tick of 10,000 workers or a batch
//! of tasks, and one for the whole commit.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use herd::domain::{Runtime, WorkerState};
use herd::error::Error;

use super::fault::{DEPOSED, Result};
use super::{Fence, Statements};
use crate::output::SEGMENT;
use crate::records::{LivenessRow, Task, WorkerRecord, task_number};
use crate::store::Change;

/// Commits `changes` if this master still leads in `fence.term`; else fails, naming the
/// term that leads now (and `deposed` learns of it). Every statement of the transaction,
/// from BEGIN to COMMIT, is sent at once: one round trip to the server, however many
/// statements (a check that fails aborts the transaction, and its COMMIT rolls back).
pub(super) async fn commit<'a>(
    client: &Client,
    statements: &mut Statements,
    fence: &Fence,
    changes: impl Iterator<Item = &'a Change>,
) -> Result<()> {
    let mut plan = Plan::default();
    plan.push("SELECT herd_fence($1)", vec![p(fence.term)]);
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
                plan.push(sql, vec![p(*written_before_ms)]);
            }
            Change::Worker(r) => batch.worker(r),
            Change::Task(t) => batch.task(t),
            Change::Tasks(tasks) => tasks.iter().for_each(|t| batch.task(t)),
            Change::TaskState(t) => batch.task_state(t),
            Change::Liveness(rows) => {
                batch.flush_workers(&mut plan)?;
                liveness(&mut plan, rows);
            }
            Change::Draining { id, draining } => {
                batch.flush_workers(&mut plan)?;
                let sql = "UPDATE workers SET draining = $2 WHERE id = $1";
                plan.push(sql, vec![p(id.as_str()), p(*draining)]);
            }
            Change::ForgetWorker { id } => {
                batch.flush_workers(&mut plan)?;
                let sql = "DELETE FROM workers WHERE id = $1";
                plan.push(sql, vec![p(id.as_str())]);
            }
            Change::Output {
                task,
                attempt,
                offset,
                data,
            } => output(&mut plan, task, *attempt, *offset, data),
            Change::Setting { key, value } => {
                let sql = "INSERT INTO settings (key, value) VALUES ($1, $2)
                           ON CONFLICT (key) DO UPDATE SET value = excluded.value";
                plan.push(sql, vec![p(key.as_str()), p(value.as_str())]);
            }
            Change::TokenCreate(row) => {
                let sql = "INSERT INTO tokens (name, role, hash, created_at, last_used)
                           VALUES ($1, $2, $3, $4, $5)";
                let params = vec![
                    p(row.name.as_str()),
                    p(row.role.as_str()),
                    p(&row.hash[..]),
                    p(row.created_ms),
                    p(row.last_used_ms),
                ];
                plan.push(sql, params);
            }
            Change::TokenRevoke { name } => {
                let sql = "DELETE FROM tokens WHERE name = $1";
                plan.push(sql, vec![p(name.as_str())]);
            }
            Change::TokenUsed { name, at_ms } => {
                let sql = "UPDATE tokens SET last_used = $2 WHERE name = $1";
                plan.push(sql, vec![p(name.as_str()), p(*at_ms)]);
            }
            Change::Audit(row) => insert_audit(&mut plan, row),
        }
        if let Some(audit) = audit {
            insert_audit(&mut plan, audit);
        }
    }
    batch.flush(&mut plan)?;
    plan.run(client, statements).await.map_err(|err| {
        if err.code().map(|code| code.code()) == Some(DEPOSED) {
            fence.deposed.send_replace(true);
        }
        err.into()
    })
}

/// A statement's parameter, owned by the plan (or borrowing from the changes).
type Param<'a> = Box<dyn ToSql + Sync + 'a>;

fn p<'a, T: ToSql + Sync + 'a>(value: T) -> Param<'a> {
    Box::new(value)
}

/// The statements of one transaction, in order.
#[derive(Default)]
struct Plan<'a> {
    steps: Vec<(&'static str, Vec<Param<'a>>)>,
}

impl<'a> Plan<'a> {
    fn push(&mut self, sql: &'static str, params: Vec<Param<'a>>) {
        self.steps.push((sql, params));
    }

    /// Sends BEGIN, every statement and COMMIT without waiting between them (statements
    /// seen for the first time on this connection are prepared first, also at once), then
    /// reads every answer: the first failure, in statement order, is the commit's.
    async fn run(
        &self,
        client: &Client,
        statements: &mut Statements,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let mut new: Vec<&'static str> = Vec::new();
        for (sql, _) in &self.steps {
            if !statements.0.contains_key(sql) && !new.contains(sql) {
                new.push(sql);
            }
        }
        let prepared = in_order(new.iter().map(|sql| client.prepare(sql)).collect()).await;
        for (sql, prepared) in new.iter().zip(prepared) {
            statements.0.insert(sql, prepared?);
        }
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = self
            .steps
            .iter()
            .map(|(_, params)| params.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect())
            .collect();
        let mut requests: Vec<Request<'_>> = Vec::with_capacity(self.steps.len() + 2);
        requests.push(Box::pin(async {
            client.batch_execute("BEGIN").await.map(|()| 0)
        }));
        for ((sql, _), params) in self.steps.iter().zip(&params) {
            requests.push(Box::pin(client.execute(&statements.0[sql], params)));
        }
        requests.push(Box::pin(async {
            client.batch_execute("COMMIT").await.map(|()| 0)
        }));
        // The first failure in statement order is the cause; the ones after it only say
        // that the transaction was aborted.
        in_order(requests)
            .await
            .into_iter()
            .try_for_each(|r| r.map(drop))
    }
}

/// One statement sent to the server, answering how many rows it changed.
type Request<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<u64, tokio_postgres::Error>> + 'a>>;

/// Runs `futures` to their ends, polling them always in the order given, and returns
/// their outputs in that order. A tokio-postgres request leaves on its first poll, so the
/// requests reach the server in this order, all before the first answer comes back.
async fn in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(done) => *output = Some(done),
                    Poll::Pending => pending = true,
                }
            }
        }
        match pending {
            true => Poll::Pending,
            false => Poll::Ready(()),
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future ended"))
        .collect()
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

    fn flush_workers(&mut self, plan: &mut Plan<'a>) -> Result<()> {
        if self.workers.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.workers);
        let ids: Vec<&str> = rows.iter().copied().map(|r| r.id.as_str()).collect();
        let names: Vec<&str> = rows.iter().copied().map(|r| r.spec.name.as_str()).collect();
        let active: Vec<bool> = rows
            .iter()
            .copied()
            .map(|r| r.state == WorkerState::Active)
            .collect();
        let heartbeats: Vec<i64> = rows.iter().copied().map(|r| r.last_heartbeat_ms).collect();
        let states: Vec<&str> = rows.iter().copied().map(|r| r.state.as_str()).collect();
        let registered: Vec<i64> = rows.iter().copied().map(|r| r.registered_at_ms).collect();
        let secrets: Vec<Option<&[u8]>> = rows
            .iter()
            .copied()
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
        let params = vec![
            p(ids.clone()),
            p(names),
            p(active),
            p(heartbeats),
            p(states),
            p(registered),
            p(secrets),
        ];
        plan.push(sql, params);
        let hosts: Vec<&str> = rows.iter().copied().map(|r| r.spec.host.as_str()).collect();
        let addresses: Vec<&str> = rows
            .iter()
            .copied()
            .map(|r| r.spec.address.as_str())
            .collect();
        let versions: Vec<&str> = rows
            .iter()
            .copied()
            .map(|r| r.spec.version.as_str())
            .collect();
        let cpu: Vec<f64> = rows.iter().copied().map(|r| r.spec.capacity.cpu).collect();
        let memory: Vec<f64> = rows
            .iter()
            .copied()
            .map(|r| r.spec.capacity.memory_gb)
            .collect();
        let gpu: Vec<i64> = rows
            .iter()
            .copied()
            .map(|r| r.spec.capacity.gpu as i64)
            .collect();
        let disk: Vec<f64> = rows
            .iter()
            .copied()
            .map(|r| r.spec.capacity.disk_gb)
            .collect();
        let labels = rows
            .iter()
            .copied()
            .map(|r| r.spec.labels.json())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let added = rows
            .iter()
            .copied()
            .map(|r| r.added_labels.json())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let gpus = rows
            .iter()
            .copied()
            .map(|r| r.spec.gpus.json())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let runtimes: Vec<&str> = rows
            .iter()
            .copied()
            .map(|r| r.spec.runtime.map(Runtime::as_str).unwrap_or(""))
            .collect();
        let isolation: Vec<&str> = rows
            .iter()
            .copied()
            .map(|r| r.spec.isolation.as_str())
            .collect();
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
        let params = vec![
            p(ids),
            p(hosts),
            p(addresses),
            p(versions),
            p(cpu),
            p(memory),
            p(gpu),
            p(labels),
            p(runtimes),
            p(isolation),
            p(added),
            p(disk),
            p(gpus),
        ];
        plan.push(sql, params);
        Ok(())
    }

    fn flush(mut self, plan: &mut Plan<'a>) -> Result<()> {
        self.flush_workers(plan)?;
        if !self.inserts.is_empty() {
            insert_tasks(plan, &self.inserts)?;
        }
        if !self.updates.is_empty() {
            let updates: Vec<&Task> = self.updates.into_values().collect();
            update_tasks(plan, &updates)?;
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

/// A tick's liveness rows, by worker id.
pub(super) const LIVENESS: &str = "UPDATE workers w SET is_active = u.active,
        last_heartbeat = u.heartbeat, state = u.state
    FROM unnest($1::text[], $2::bool[], $3::int8[], $4::text[]) AS u(id, active, heartbeat, state)
    WHERE w.id = u.id";

fn liveness<'a>(plan: &mut Plan<'a>, rows: &'a [LivenessRow]) {
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let active: Vec<bool> = rows
        .iter()
        .map(|r| r.state == WorkerState::Active)
        .collect();
    let heartbeats: Vec<i64> = rows.iter().map(|r| r.last_heartbeat_ms).collect();
    let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
    plan.push(LIVENESS, vec![p(ids), p(active), p(heartbeats), p(states)]);
}

fn insert_tasks<'a>(plan: &mut Plan<'a>, tasks: &[&'a Task]) -> Result<()> {
    let col = |f: &dyn Fn(&Task) -> String| tasks.iter().copied().map(f).collect::<Vec<_>>();
    let ids = col(&|t| t.id.clone());
    let seqs: Vec<i64> = tasks
        .iter()
        .copied()
        .map(|t| task_number(&t.id).unwrap_or(0) as i64)
        .collect();
    let names = col(&|t| t.spec.name.clone());
    let images: Vec<Option<&str>> = tasks
        .iter()
        .copied()
        .map(|t| t.spec.image.as_deref())
        .collect();
    let commands: Vec<Option<&str>> = tasks
        .iter()
        .copied()
        .map(|t| t.spec.command.as_deref())
        .collect();
    let cpu: Vec<f64> = tasks
        .iter()
        .copied()
        .map(|t| t.spec.resources.cpu)
        .collect();
    let memory: Vec<f64> = tasks
        .iter()
        .copied()
        .map(|t| t.spec.resources.memory_gb)
        .collect();
    let gpu: Vec<i64> = tasks
        .iter()
        .copied()
        .map(|t| t.spec.resources.gpu as i64)
        .collect();
    let states = col(&|t| t.state.as_str().to_string());
    let workers: Vec<Option<&str>> = tasks
        .iter()
        .copied()
        .map(|t| t.worker_id.as_deref())
        .collect();
    let attempts: Vec<i64> = tasks.iter().copied().map(|t| t.attempts as i64).collect();
    let exits: Vec<Option<i32>> = tasks.iter().copied().map(|t| t.exit_code).collect();
    let reasons = col(&|t| t.reason.clone());
    let submitted: Vec<i64> = tasks.iter().copied().map(|t| t.submitted_ms).collect();
    let started: Vec<i64> = tasks.iter().copied().map(|t| t.started_ms).collect();
    let finished: Vec<i64> = tasks.iter().copied().map(|t| t.finished_ms).collect();
    let history = json_col(tasks, |t| t.history.json())?;
    let priority: Vec<i32> = tasks.iter().copied().map(|t| t.spec.priority).collect();
    let constraints = json_col(tasks, |t| {
        let texts: Vec<String> = t.spec.constraints.iter().map(|c| c.to_string()).collect();
        texts.json()
    })?;
    let timeouts: Vec<i64> = tasks
        .iter()
        .copied()
        .map(|t| t.spec.run.timeout.map_or(0, |d| d.as_millis() as i64))
        .collect();
    let env = json_col(tasks, |t| t.spec.run.env.json())?;
    let workdirs: Vec<&str> = tasks
        .iter()
        .copied()
        .map(|t| t.spec.run.workdir.as_deref().unwrap_or(""))
        .collect();
    let retries: Vec<i64> = tasks
        .iter()
        .copied()
        .map(|t| t.spec.run.retries as i64)
        .collect();
    let disk: Vec<f64> = tasks
        .iter()
        .copied()
        .map(|t| t.spec.resources.disk_gb)
        .collect();
    let by = col(&|t| t.submitted_by.clone());
    let keep: Vec<bool> = tasks
        .iter()
        .copied()
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
    let params = vec![
        p(ids),
        p(seqs),
        p(names),
        p(images),
        p(commands),
        p(cpu),
        p(memory),
        p(gpu),
        p(states),
        p(workers),
        p(attempts),
        p(exits),
        p(reasons),
        p(submitted),
        p(started),
        p(finished),
        p(history),
        p(priority),
        p(constraints),
        p(timeouts),
        p(env),
        p(workdirs),
        p(retries),
        p(disk),
        p(by),
        p(keep),
    ];
    plan.push(sql, params);
    Ok(())
}

fn json_col(
    tasks: &[&Task],
    f: impl Fn(&Task) -> std::result::Result<String, Error>,
) -> std::result::Result<Vec<String>, Error> {
    tasks.iter().copied().map(f).collect()
}

/// Updates the columns of stored tasks that change after submission. A task that is not
/// stored fails the write (`herd_all_stored`), and with it what waits for its commit: a
/// placement of a task whose row could not be stored is never sent.
fn update_tasks<'a>(plan: &mut Plan<'a>, tasks: &[&'a Task]) -> Result<()> {
    let each = || tasks.iter().copied();
    let ids: Vec<&str> = each().map(|t| t.id.as_str()).collect();
    let states: Vec<&str> = each().map(|t| t.state.as_str()).collect();
    let workers: Vec<Option<&str>> = each().map(|t| t.worker_id.as_deref()).collect();
    let attempts: Vec<i64> = each().map(|t| t.attempts as i64).collect();
    let exits: Vec<Option<i32>> = each().map(|t| t.exit_code).collect();
    let reasons: Vec<&str> = each().map(|t| t.reason.as_str()).collect();
    let started: Vec<i64> = each().map(|t| t.started_ms).collect();
    let finished: Vec<i64> = each().map(|t| t.finished_ms).collect();
    let history = json_col(tasks, |t| t.history.json())?;
    let params = vec![
        p(ids),
        p(states),
        p(workers),
        p(attempts),
        p(exits),
        p(reasons),
        p(started),
        p(finished),
        p(history),
    ];
    plan.push(UPDATE_TASKS, params);
    Ok(())
}

/// The changing columns of stored tasks, by id; fails naming a task it did not find.
pub(super) const UPDATE_TASKS: &str = "WITH changed AS (
        UPDATE tasks t SET state = u.state, worker_id = u.worker_id, attempts = u.attempts,
            exit_code = u.exit_code, reason = u.reason, started_at = u.started_at,
            finished_at = u.finished_at, history = u.history
        FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int4[], $6::text[],
            $7::int8[], $8::int8[], $9::text[])
            AS u(id, state, worker_id, attempts, exit_code, reason, started_at, finished_at,
                history)
        WHERE t.id = u.id
        RETURNING t.id)
    SELECT herd_all_stored(ARRAY(SELECT id FROM changed), $1::text[])";

/// Output of an attempt, stored at its offset (written again, the same bytes land on the
/// same row). Like the files of the SQLite store, the last 1-2 MiB of each attempt are
/// kept: once output reaches a new MiB, what ended before the one before goes.
fn output<'a>(plan: &mut Plan<'a>, task: &'a str, attempt: u32, offset: u64, data: &'a [u8]) {
    let now = herd::time::now_ms();
    let sql = "INSERT INTO task_output (task, attempt, off, data, written_at)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (task, attempt, off) DO UPDATE SET data = excluded.data,
                   written_at = excluded.written_at";
    let (attempt, off) = (attempt as i64, offset as i64);
    plan.push(sql, vec![p(task), p(attempt), p(off), p(data), p(now)]);
    let end = offset + data.len() as u64;
    if end / SEGMENT > offset / SEGMENT && end / SEGMENT >= 2 {
        let keep_from = ((end / SEGMENT - 1) * SEGMENT) as i64;
        let sql = "DELETE FROM task_output
                   WHERE task = $1 AND attempt = $2 AND off + length(data) <= $3";
        plan.push(sql, vec![p(task), p(attempt), p(keep_from)]);
    }
}

fn insert_audit<'a>(plan: &mut Plan<'a>, row: &'a crate::records::AuditRow) {
    let sql = "INSERT INTO audit (at, who, role, action, target, detail, peer)
               VALUES ($1, $2, $3, $4, $5, $6, $7)";
    let params = vec![
        p(row.at_ms),
        p(row.who.as_str()),
        p(row.role.as_str()),
        p(row.action.as_str()),
        p(row.target.as_str()),
        p(row.detail.as_str()),
        p(row.peer.as_str()),
    ];
    plan.push(sql, params);
}
