//! The PostgreSQL engine (`--store postgres://...`): the store standby masters share.
//! Everything that speaks SQL to PostgreSQL or names a postgres type lives in this folder;
//! the rest of the master sees only [`Engine`] and [`Reads`], as with SQLite.
//!
//! The engine writes as the leader of one term ([`crate::leader`] takes it): every
//! transaction checks that term first, so a deposed master writes nothing.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{Client, NoTls, Statement};
use tracing::{debug, warn};

use herd::error::Error;

mod commit;
pub(crate) mod fault;
mod reads;
mod schema;
#[cfg(any(test, feature = "testing"))]
pub mod scratch;

use super::{CLUSTER_TOKENS, Change, Engine, Loaded};
pub use reads::Reader;

/// How this master writes: as the leader of `term`. A write that finds a newer term fails,
/// and `deposed` is set, so the master stops leading at once.
#[derive(Debug, Clone)]
pub struct Fence {
    pub term: i64,
    pub deposed: watch::Sender<bool>,
}

/// The writing side: one connection, owned by the store thread.
pub struct Postgres {
    url: String,
    /// Made on the first commit, and again when lost.
    client: Option<Client>,
    statements: Statements,
    fence: Fence,
    /// The store thread's own runtime, made on its first commit: the writing connection's
    /// I/O runs on the thread that waits for it. (On the master's runtime, each answer
    /// waited for a busy worker thread to poll the connection, then to wake this one: at
    /// 5,000 placements a second that queueing was most of submit-to-start.)
    runtime: Option<tokio::runtime::Runtime>,
    /// A commit timed out: its connection is not used again.
    broken: bool,
}

/// The longest a commit may take before its connection is given up (and the change is
/// tried again on a new one).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Statements prepared once per connection.
#[derive(Default)]
pub(crate) struct Statements(pub(super) HashMap<&'static str, Statement>);

/// A connection's settings: TCP keepalives and a user timeout of seconds, not the
/// system's two hours, so a dead server or a cut link is seen within seconds.
pub fn config(url: &str) -> Result<tokio_postgres::Config, Error> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
        Error::InvalidArgument(format!(
            "--store {}: {e} (expected postgres://USER@HOST:PORT/DATABASE)",
            redact(url)
        ))
    })?;
    config
        .application_name("herd-master")
        .connect_timeout(Duration::from_secs(5))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(2))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(5));
    Ok(config)
}

/// `url` without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((who, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match who.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Connects to the store at `url`; the connection's I/O runs on this runtime.
pub async fn connect(url: &str) -> Result<Client, Error> {
    let unreachable = |e: tokio_postgres::Error| {
        Error::Unavailable(format!(
            "cannot reach the PostgreSQL store {}: {e}",
            redact(url)
        ))
    };
    let (client, connection) = config(url)?.connect(NoTls).await.map_err(unreachable)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(%err, "a connection to the PostgreSQL store ended");
        }
    });
    // A session left inside a transaction by a master that froze (SIGSTOP, a paused VM)
    // would hold its row locks for ever, and the next leader's take-over would wait on
    // them: the server ends such a session after 3 s. No lock is waited on for long
    // either: a statement that waits fails, and is tried again. (Set here rather than as
    // startup options, which a pool in session mode may refuse or drop.)
    client.batch_execute(SESSION).await.map_err(unreachable)?;
    Ok(client)
}

/// Every connection's session settings (see [`connect`]).
const SESSION: &str = "SET idle_in_transaction_session_timeout = 3000; SET lock_timeout = 5000";

/// The writing connection's planner settings. Every statement it runs finds its rows by
/// primary key, and each is prepared once and its plan kept: a plan made while a table
/// was small (a hash join over a scan of the whole table, cheapest for a few rows) stayed
/// in use as the table grew, and a 100-row update of tasks read all 150,000 of them
/// (10 ms instead of 1.3 ms; the store thread was busy 92% of the time at 5,000
/// placements a second). With scans and hash or merge joins off, the plan is the index
/// lookup at any size. (A statement with no index to use still scans.)
pub const KEYED_PLANS: &str =
    "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off";

/// Migrates the schema at `url` (creating it on an empty database) without loading it:
/// what a standby does at start, so a bad URL or a newer schema stops it at once.
pub async fn prepare(url: &str) -> Result<(), Error> {
    let mut client = connect(url).await?;
    Ok(schema::migrate(&mut client).await?)
}

/// Opens the store at `url` to write as the leader of `fence.term`: migrates it, and
/// returns both sides and everything it knows.
pub async fn open(url: &str, fence: Fence) -> Result<(Postgres, Reader, Loaded), Error> {
    let mut client = connect(url).await?;
    schema::migrate(&mut client).await?;
    let loaded = load(&mut client).await?;
    let reader = Reader::open(url).await?;
    let engine = Postgres {
        url: url.to_string(),
        client: None,
        statements: Statements::default(),
        fence,
        runtime: None,
        broken: false,
    };
    Ok((engine, reader, loaded))
}

/// Everything a leader starts from, read in one snapshot.
async fn load(client: &mut Client) -> fault::Result<Loaded> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let loaded = Loaded {
        workers: schema::load_workers(&tx).await?,
        tasks: schema::load_tasks(&tx).await?,
        finished: schema::final_counts(&tx).await?,
        last_task: schema::last_task_number(&tx).await?,
        scheduler: schema::setting(&tx, "scheduler").await?,
        cluster_tokens: schema::setting(&tx, CLUSTER_TOKENS).await?,
        tokens: reads::load_tokens(&tx).await?,
    };
    tx.commit().await?;
    Ok(loaded)
}

impl Postgres {
    /// Commits `changes` in one transaction, first making the connection again if it was
    /// lost (the server restarted, a link was cut); its statements are prepared again.
    async fn write<'a>(&mut self, changes: impl Iterator<Item = &'a Change>) -> fault::Result<()> {
        let lost = self.client.as_ref().is_some_and(Client::is_closed) || self.broken;
        if lost {
            warn!("the connection to the PostgreSQL store was lost; connecting again");
        }
        if lost || self.client.is_none() {
            self.broken = false;
            self.client = None;
            self.statements = Statements::default();
            let client = connect(&self.url).await?;
            client.batch_execute(KEYED_PLANS).await?;
            self.client = Some(client);
        }
        let client = self.client.as_ref().expect("connected above");
        commit::commit(client, &mut self.statements, &self.fence, changes).await
    }
}

impl Engine for Postgres {
    fn commit<'a>(
        &mut self,
        changes: impl Iterator<Item = &'a Change> + Clone,
    ) -> Result<(), Error> {
        if changes.clone().all(|c| matches!(c, Change::Barrier)) {
            return Ok(());
        }
        let runtime = match self.runtime.take() {
            Some(runtime) => runtime,
            None => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Storage(format!("cannot start the store's runtime: {e}")))?,
        };
        let written = runtime
            .block_on(async { tokio::time::timeout(COMMIT_TIMEOUT, self.write(changes)).await });
        self.runtime = Some(runtime);
        match written {
            Ok(written) => Ok(written?),
            Err(_) => {
                self.broken = true;
                Err(Error::Unavailable(format!(
                    "the PostgreSQL store did not answer a commit within {COMMIT_TIMEOUT:?}"
                )))
            }
        }
    }

    fn read_output(&mut self, _id: &str) -> Result<Vec<u8>, Error> {
        // Output in a column belongs to SQLite databases from before output files; a
        // PostgreSQL store has only `task_output`.
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::commit::{LIVENESS, UPDATE_TASKS};
    use super::{KEYED_PLANS, prepare, scratch};

    /// The plan the writing connection keeps for `sql` (prepared on empty tables, where a
    /// scan is cheapest) with `args`.
    fn kept_plan(url: &str, sql: &str, args: &str) -> String {
        scratch::query(
            url,
            &format!(
                "{KEYED_PLANS}; SET plan_cache_mode = force_generic_plan; \
                 PREPARE s AS {sql}; EXPLAIN EXECUTE s({args})"
            ),
        )
    }

    /// The writer's updates by id stay index lookups whatever the size of the table when
    /// they were first planned: a plan kept from an empty table scanned the whole table
    /// on every commit once it held 150,000 tasks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writers_updates_look_rows_up_by_key_even_when_planned_on_empty_tables() {
        if !scratch::available("the_writers_updates_look_rows_up_by_key") {
            return;
        }
        let url = scratch::database();
        prepare(&url).await.unwrap();
        let tasks = kept_plan(
            &url,
            UPDATE_TASKS,
            "'{t-1}', '{running}', '{w}', '{1}', '{0}', '{\"\"}', '{1}', '{0}', '{[]}'",
        );
        assert!(tasks.contains("Index Scan using tasks_pkey"), "{tasks}");
        assert!(!tasks.contains("Seq Scan on tasks"), "{tasks}");
        let workers = kept_plan(&url, LIVENESS, "'{w}', '{t}', '{1}', '{Active}'");
        assert!(
            workers.contains("Index Scan using workers_pkey"),
            "{workers}"
        );
        assert!(!workers.contains("Seq Scan on workers"), "{workers}");
    }
}
