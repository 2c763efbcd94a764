//! What the PostgreSQL store reads off the store thread: pages of finished tasks and of
//! the audit log, one task, task output, and the named tokens a leader loads.

use std::time::Duration;

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio::runtime::Handle;

use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, NoTls};

use herd::domain::Role;
use herd::error::Error;

use super::fault::Result;
use super::schema::{FINAL, TASK_COLUMNS, task_from_row};
use super::{SESSION, redact};
use crate::records::{AuditRow, Task, TaskFilter, TokenRow};
use crate::store::Reads;

/// Connections the reads may use at once.
const READERS: usize = 4;

/// Reads go through a small pool of connections of their own (deadpool-postgres), never
/// the writer's or the leader's lock connection: a slow page holds up no other read. A
/// connection found closed is dropped and another made.
pub struct Reader {
    pool: Pool,
    runtime: Handle,
    /// The store's URL without its password, for messages.
    url: String,
}

impl Reader {
    /// A pool for the store at `url`, with one connection made now: a store that cannot
    /// be reached stops the start here.
    pub(super) async fn open(url: &str) -> std::result::Result<Reader, Error> {
        let manager = Manager::from_config(
            super::config(url)?,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(SESSION)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .max_size(READERS)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| Error::Storage(format!("cannot make the read pool: {e}")))?;
        let reader = Reader {
            pool,
            runtime: Handle::current(),
            url: redact(url),
        };
        drop(reader.connection().await?);
        Ok(reader)
    }

    async fn connection(&self) -> std::result::Result<Object, Error> {
        self.pool.get().await.map_err(|e| {
            Error::Unavailable(format!(
                "cannot reach the PostgreSQL store {}: {e}",
                self.url
            ))
        })
    }

    /// Runs `read` (from a blocking task) on a connection of the pool.
    fn with<T, F>(&self, read: impl FnOnce(Object) -> F) -> std::result::Result<T, Error>
    where
        F: Future<Output = Result<T>>,
    {
        self.runtime
            .block_on(async { Ok(read(self.connection().await?).await?) })
    }
}

pub async fn load_tokens(c: &impl GenericClient) -> Result<Vec<TokenRow>> {
    let rows = c
        .query(
            "SELECT name, role, hash, created_at, last_used FROM tokens ORDER BY name",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        let hash: Vec<u8> = r.get(2);
        // A row this master cannot read grants nothing.
        let (Some(role), Ok(hash)) = (Role::parse(r.get(1)), hash.try_into()) else {
            tracing::error!(token = %name, "a token in the store is unreadable; it is ignored");
            continue;
        };
        out.push(TokenRow {
            name,
            role,
            hash,
            created_ms: r.get(3),
            last_used_ms: r.get(4),
        });
    }
    Ok(out)
}

impl Reads for Reader {
    fn finished_page(
        &self,
        filter: &TaskFilter,
        before: u64,
        limit: usize,
    ) -> std::result::Result<Vec<Task>, Error> {
        if filter.state.is_some_and(|s| !s.is_final()) || limit == 0 {
            return Ok(Vec::new());
        }
        let before = before.min(i64::MAX as u64) as i64;
        let limit = limit as i64;
        let state = filter.state.map(|s| s.as_str());
        // Each condition is skipped when its argument is NULL; PostgreSQL plans the
        // partial indexes for the ones given.
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE {FINAL} AND seq < $1
                 AND ($2::text IS NULL OR state = $2)
                 AND ($3::text IS NULL OR worker_id = $3)
                 AND submitted_at >= $4
             ORDER BY seq DESC LIMIT $5"
        );
        let params: [&(dyn ToSql + Sync); 5] =
            [&before, &state, &filter.worker_id, &filter.since_ms, &limit];
        self.with(|c| async move {
            Ok(c.query(&sql, &params)
                .await?
                .iter()
                .map(task_from_row)
                .collect())
        })
    }

    fn audit_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> std::result::Result<Vec<AuditRow>, Error> {
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let limit = limit as i64;
        self.with(|c| async move {
            let rows = c
                .query(
                    "SELECT seq, at, who, role, action, target, detail, peer FROM audit
                     WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                    &[&before, &limit],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| AuditRow {
                    seq: r.get::<_, i64>(0) as u64,
                    at_ms: r.get(1),
                    who: r.get(2),
                    role: r.get(3),
                    action: r.get(4),
                    target: r.get(5),
                    detail: r.get(6),
                    peer: r.get(7),
                })
                .collect())
        })
    }

    fn task(&self, id: &str) -> std::result::Result<Option<Task>, Error> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
        self.with(
            |c| async move { Ok(c.query_opt(&sql, &[&id]).await?.as_ref().map(task_from_row)) },
        )
    }

    fn output(
        &self,
        task: &str,
        attempt: u32,
        from: u64,
        max: usize,
    ) -> std::result::Result<(u64, Vec<u8>), Error> {
        let (attempt, from_i) = (attempt as i64, from.min(i64::MAX as u64) as i64);
        self.with(|c| async move {
            let rows = c
                .query(
                    "SELECT off, data FROM task_output
                     WHERE task = $1 AND attempt = $2 AND off + length(data) > $3
                     ORDER BY off LIMIT 64",
                    &[&task, &attempt, &from_i],
                )
                .await?;
            let mut start = None;
            let mut out = Vec::new();
            for r in rows {
                let (off, data): (i64, Vec<u8>) = (r.get(0), r.get(1));
                let off = off as u64;
                // Older than what is kept: begin at the oldest kept byte.
                let at = *start.get_or_insert(off.max(from));
                let end = at + out.len() as u64;
                if off > end {
                    break;
                }
                let skip = (end - off) as usize;
                let rest = data.get(skip..).unwrap_or_default();
                let room = max - out.len();
                out.extend_from_slice(&rest[..rest.len().min(room)]);
                if out.len() >= max {
                    break;
                }
            }
            Ok((start.unwrap_or(from), out))
        })
    }

    fn output_len(&self, task: &str, attempt: u32) -> std::result::Result<u64, Error> {
        let attempt = attempt as i64;
        self.with(|c| async move {
            let n: i64 = c
                .query_one(
                    "SELECT coalesce(max(off + length(data)), 0)::int8 FROM task_output
                     WHERE task = $1 AND attempt = $2",
                    &[&task, &attempt],
                )
                .await?
                .get(0);
            Ok(n.max(0) as u64)
        })
    }

    fn masters(&self) -> std::result::Result<Vec<herd::pb::MasterInfo>, Error> {
        self.with(|c| async move {
            let rows = c
                .query(
                    "SELECT address, http, role, term,
                            (extract(epoch FROM last_seen) * 1000)::int8
                     FROM herd_masters ORDER BY role, address",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| herd::pb::MasterInfo {
                    address: r.get(0),
                    http: r.get(1),
                    role: r.get(2),
                    term: r.get(3),
                    last_seen_ms: r.get(4),
                })
                .collect())
        })
    }

    fn has_output(&self, task: &str) -> std::result::Result<bool, Error> {
        self.with(|c| async move {
            let sql = "SELECT EXISTS (SELECT 1 FROM task_output WHERE task = $1)";
            Ok(c.query_one(sql, &[&task]).await?.get(0))
        })
    }
}
