//! Where leadership is decided among masters that share a PostgreSQL store: a session
//! advisory lock on a dedicated connection (never pooled, never shared with the store),
//! a term incremented in the same step, and a lease the leader renews every second so a
//! frozen leader (SIGSTOP, a paused VM: its kernel still answers TCP keepalives) or one
//! cut off from PostgreSQL loses the lead within seconds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::{info, warn};

use herd::error::Error;

use crate::store::postgres::{self, redact};

/// The advisory lock key of the leader ("herd" and 1).
const LEADER_LOCK: i64 = 0x6865_7264_0000_0001;
/// How often a standby tries for the lead, and the leader renews its lease.
pub const CAMPAIGN_EVERY: Duration = Duration::from_millis(500);
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A lease not renewed for this long is taken: its leader's session is ended.
pub const LEASE: Duration = Duration::from_secs(5);
/// A leader that could not renew for this long stops leading by itself, before a standby
/// takes its lease.
const STEP_DOWN_AFTER: Duration = Duration::from_secs(3);

/// How this master is reached, as it tells the others (and they tell clients).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Address {
    /// gRPC URL (workers, herdctl).
    pub grpc: String,
    /// HTTP URL of the dashboard and API ("" when off).
    pub http: String,
}

/// Who leads, as a standby knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leader {
    pub address: Address,
    pub term: i64,
}

/// A master that may lead: its own lock connection to the store.
pub struct Candidate {
    url: String,
    me: Address,
    lock: Arc<Client>,
    /// The lock is held on `lock` (a take-over that failed after taking it is tried again
    /// without taking it twice: on one session it would stack).
    holding: bool,
}

/// This master leads in `term` until `deposed` turns true: the lease could not be
/// renewed, the lock connection was lost, or a newer term was found (here or by a write).
pub struct Leadership {
    pub term: i64,
    pub deposed: watch::Sender<bool>,
    renewer: JoinHandle<()>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Candidate {
    /// Opens the lock connection, and refuses a connection pooler in transaction mode: a
    /// session lock taken through it is silently lost.
    pub async fn connect(url: &str, me: Address) -> Result<Candidate, Error> {
        let lock = Arc::new(postgres::connect(url).await?);
        refuse_pooling(&lock, url).await?;
        Ok(Candidate {
            url: url.to_string(),
            me,
            lock,
            holding: false,
        })
    }

    /// Waits until this master leads; meanwhile tells `leader` who does. A lease its leader
    /// stopped renewing is taken over: that leader's session is ended first.
    pub async fn campaign(&mut self, leader: &watch::Sender<Leader>) -> Result<Leadership, Error> {
        let mut every = tokio::time::interval(CAMPAIGN_EVERY);
        loop {
            every.tick().await;
            match self.try_lead(leader).await {
                Ok(Some(leadership)) => return Ok(leadership),
                Ok(None) => {}
                Err(err) => {
                    warn!(%err, "cannot reach the store to elect a leader; trying again");
                    if self.lock.is_closed() {
                        match postgres::connect(&self.url).await {
                            Ok(fresh) => {
                                self.lock = Arc::new(fresh);
                                self.holding = false;
                            }
                            Err(err) => warn!(%err, "cannot reconnect"),
                        }
                    }
                }
            }
        }
    }

    async fn try_lead(
        &mut self,
        leader: &watch::Sender<Leader>,
    ) -> Result<Option<Leadership>, Error> {
        let c = &self.lock;
        // Tried only while not held: taken twice on one session, the lock would stack.
        if !self.holding {
            self.holding = c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                .await
                .map_err(fail)?
                .get(0);
        }
        if self.holding {
            return self.take_over().await.map(Some);
        }
        let row = c
            .query_one(
                "SELECT term, address, http, pid,
                        coalesce(extract(epoch FROM now() - renewed_at), 0)::float8
                 FROM herd_leader WHERE id = 1",
                &[],
            )
            .await
            .map_err(fail)?;
        let (term, grpc, http, pid, stale): (i64, String, String, Option<i32>, f64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        leader.send_if_modified(|known| {
            let now = Leader {
                address: Address { grpc, http },
                term,
            };
            let changed = *known != now;
            *known = now;
            changed
        });
        self.record("standby", term).await?;
        if let Some(pid) = pid
            && stale > LEASE.as_secs_f64()
        {
            warn!(
                term,
                pid,
                stale_s = stale,
                "the leader has not renewed its lease (frozen, or cut off from the store): ending its session to take over"
            );
            c.execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(fail)?;
        }
        Ok(None)
    }

    /// Holding the lock: the term goes up by one, with this master's address and session.
    async fn take_over(&mut self) -> Result<Leadership, Error> {
        let held: i64 = self
            .lock
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(fail)?
            .get(0);
        if held != 1 {
            return Err(Error::Storage(format!(
                "the lock connection holds {held} advisory locks, not 1"
            )));
        }
        let term: i64 = self
            .lock
            .query_one(
                "UPDATE herd_leader SET term = term + 1, address = $1, http = $2,
                     pid = pg_backend_pid(), since = now(), renewed_at = now()
                 WHERE id = 1 RETURNING term",
                &[&self.me.grpc, &self.me.http],
            )
            .await
            .map_err(fail)?
            .get(0);
        self.record("leader", term).await?;
        // The one that led before, if it is still listed as leading, no longer is.
        self.lock
            .execute(
                "UPDATE herd_masters SET role = 'deposed'
                 WHERE role = 'leader' AND address <> $1",
                &[&self.me.grpc],
            )
            .await
            .map_err(fail)?;
        info!(term, address = %self.me.grpc, "this master leads");
        let (deposed, _) = watch::channel(false);
        let renewer = tokio::spawn(renew(
            self.lock.clone(),
            self.me.clone(),
            term,
            deposed.clone(),
        ));
        Ok(Leadership {
            term,
            deposed,
            renewer,
        })
    }

    /// This master's line in `herd_masters` (what `status` lists).
    async fn record(&self, role: &str, term: i64) -> Result<(), Error> {
        record(&self.lock, &self.me, role, term).await
    }
}

async fn record(c: &Client, me: &Address, role: &str, term: i64) -> Result<(), Error> {
    c.execute(
        "INSERT INTO herd_masters (address, http, role, term, last_seen)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (address) DO UPDATE SET http = excluded.http, role = excluded.role,
             term = excluded.term, last_seen = excluded.last_seen",
        &[&me.grpc, &me.http, &role, &term],
    )
    .await
    .map_err(fail)?;
    Ok(())
}

/// Renews the lease every second while the term is this master's; sets `deposed` (and
/// ends) when it is not, when the lock connection is lost, or when no renewal went
/// through for [`STEP_DOWN_AFTER`].
async fn renew(lock: Arc<Client>, me: Address, term: i64, deposed: watch::Sender<bool>) {
    let mut every = tokio::time::interval(RENEW_EVERY);
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        every.tick().await;
        if *deposed.borrow() {
            return;
        }
        let renewal = async {
            let renewed = lock
                .execute(
                    "UPDATE herd_leader SET renewed_at = now() WHERE id = 1 AND term = $1",
                    &[&term],
                )
                .await
                .map_err(fail)?;
            record(&lock, &me, "leader", term).await?;
            Ok::<u64, Error>(renewed)
        };
        match tokio::time::timeout(STEP_DOWN_AFTER, renewal).await {
            Ok(Ok(1)) => last_renewed = tokio::time::Instant::now(),
            Ok(Ok(_)) => {
                warn!(term, "a newer leader took over; this master stops leading");
                deposed.send_replace(true);
                return;
            }
            Ok(Err(err)) if lock.is_closed() => {
                warn!(term, %err, "the lock connection was lost; this master stops leading");
                deposed.send_replace(true);
                return;
            }
            Ok(Err(err)) => warn!(term, %err, "cannot renew the lease"),
            Err(_) => warn!(term, "renewing the lease is taking long"),
        }
        if last_renewed.elapsed() >= STEP_DOWN_AFTER {
            warn!(
                term,
                "the lease was not renewed for {STEP_DOWN_AFTER:?}; this master stops leading"
            );
            deposed.send_replace(true);
            return;
        }
    }
}

/// Fails when the server session behind `lock` is not its own. Directly on PostgreSQL a
/// connection keeps one backend for its life, and no other open connection has it. Behind
/// a pooler in transaction mode, a connection's statements run on whichever server
/// session is free: an idle pool hands the same one to everyone (so a second connection
/// sees the lock connection's pid), a busy one hands out another (so the lock connection
/// sees two pids). Either way the session lock would belong to someone else's session.
async fn refuse_pooling(lock: &Client, url: &str) -> Result<(), Error> {
    let probe = postgres::connect(url).await?;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        ours.push(backend_pid(lock).await?);
        theirs.push(backend_pid(&probe).await?);
    }
    ours.dedup();
    let shared = theirs.iter().find(|pid| ours.contains(pid));
    if ours.len() == 1 && shared.is_none() {
        return Ok(());
    }
    let seen = match shared {
        Some(pid) => format!("two connections both ran on server session {pid}"),
        None => format!(
            "one connection's statements ran on server sessions {}",
            ours.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(Error::setup(format!(
        "--store {}: {seen}: a connection pooler in transaction mode (PgBouncer) is in \
         between, and it would hand the leader's lock to other sessions; point --store at \
         PostgreSQL itself, or at a pool in session mode",
        redact(url)
    )))
}

/// The server session's pid, asked in the simple protocol: no prepared statement, which a
/// transaction-mode pool would prepare on one server session and run on another.
async fn backend_pid(c: &Client) -> Result<i32, Error> {
    let messages = c
        .simple_query("SELECT pg_backend_pid()")
        .await
        .map_err(fail)?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
            _ => None,
        })
        .ok_or_else(|| Error::Storage("pg_backend_pid() answered no number".into()))
}

/// The store's own wording of a failure (the server's message, not "db error").
fn fail(err: tokio_postgres::Error) -> Error {
    postgres::fault::Fault::from(err).0
}
