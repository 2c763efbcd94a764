//! The liveness ticker: every `--check-interval` it applies the liveness rule to every
//! worker (logging transitions, ending the streams of Removed workers) and flushes what
//! changed to the store, in commits of at most [`FLUSH_CHUNK`] rows. Deciding never waits
//! for the store: a flush still in flight when the next tick comes (a slow disk, a
//! PostgreSQL server that stopped answering) leaves that tick's rows for a later one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::warn;

use crate::cluster::Cluster;
use crate::records::LivenessRow;
use crate::store::{Change, Store};

/// Starts the ticker. It flushes once more when `shutdown` flips, then ends.
pub fn spawn(
    cluster: Arc<Cluster>,
    store: Store,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut flushing: Option<JoinHandle<()>> = None;
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    let rows = cluster.tick(false).rows;
                    if flushing.as_ref().is_some_and(|f| !f.is_finished()) {
                        // The store has not taken the last flush yet: these rows go with
                        // a later one. (Waiting here would stop liveness being decided,
                        // and the gap would look like a stall of the whole master.)
                        cluster.mark_dirty(rows.into_iter().map(|r| r.id));
                        continue;
                    }
                    let (cluster, store) = (cluster.clone(), store.clone());
                    flushing = Some(tokio::spawn(async move { flush(&cluster, &store, rows).await }));
                }
                _ = shutdown.changed() => {
                    if let Some(flushing) = flushing.take() {
                        let _ = flushing.await;
                    }
                    tick(&cluster, &store, true).await;
                    break;
                }
            }
        }
    })
}

/// Rows of a tick's flush committed together. After a restart every worker's row changes
/// at once (10,000 took 28 ms in one commit, holding up every placement behind it); in
/// commits of this many, each takes a few milliseconds, other writes go between them, and
/// the whole flush still ends within the tick.
pub const FLUSH_CHUNK: usize = 1_000;

/// One tick: apply the rule, flush the changed rows (all of them with `everything`), and
/// wait for the flush.
pub async fn tick(cluster: &Cluster, store: &Store, everything: bool) {
    let rows = cluster.tick(everything).rows;
    flush(cluster, store, rows).await;
}

/// Commits `rows` in commits of at most [`FLUSH_CHUNK`]; rows a commit failed to store
/// are marked dirty, for the next tick.
async fn flush(cluster: &Cluster, store: &Store, mut rows: Vec<LivenessRow>) {
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(FLUSH_CHUNK));
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        if let Err(err) = store.commit(Change::Liveness(rows)).await {
            warn!(%err, rows = ids.len() + rest.len(), "liveness flush failed; retrying next tick");
            cluster.mark_dirty(ids.into_iter().chain(rest.into_iter().map(|r| r.id)));
            return;
        }
        rows = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd::pb;

    use crate::cluster::tests::{registry_on, spec};
    use crate::harness::{Harness, INTERVAL, WORKER_TIMEOUT};
    use crate::identity::secret;
    use crate::metrics::Metrics;
    use crate::output::OutputDir;

    /// A flush of more rows than [`FLUSH_CHUNK`] (every worker's row, as after a restart)
    /// goes in commits of at most that many, and every row is stored.
    #[tokio::test]
    async fn a_large_flush_goes_in_chunks_and_stores_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herd.db");
        let metrics = Metrics::new();
        let (store, _) = Store::open(
            &path,
            OutputDir::new(dir.path().join("output")),
            metrics.flush.clone(),
        )
        .unwrap();
        let cluster = registry_on(store.clone(), metrics.clone());
        let n = 2 * FLUSH_CHUNK + 1;
        for i in 0..n {
            let registered = cluster
                .register(
                    spec(&format!("w{i:05}")),
                    "",
                    None,
                    secret::issue().unwrap(),
                )
                .unwrap();
            store.save(Change::Worker(Box::new(registered.record)));
        }
        store.sync().await.unwrap();
        // Rows that say something else: only the flush can set them right.
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute("UPDATE workers SET state = 'Removed'", [])
            .unwrap();

        tick(&cluster, &store, true).await;

        let text = metrics.render(cluster.summary());
        let commits = text
            .lines()
            .find_map(|l| l.strip_prefix("herd_store_liveness_commit_seconds_count "))
            .expect("the flush histogram is rendered");
        assert_eq!(commits, "3", "{n} rows in commits of at most {FLUSH_CHUNK}");
        let wrong: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM workers WHERE state != 'Inactive'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(wrong, 0, "every row is flushed");
    }

    /// Liveness is decided every interval while the store takes no commit at all: a worker
    /// that falls silent during the stall is Removed at its worker timeout and its task
    /// queued again then, not only once the store answers (the ticker used to wait for its
    /// flush, and nothing was decided until the store came back).
    #[tokio::test(start_paused = true)]
    async fn a_stalled_store_does_not_stop_liveness_being_decided() {
        let mut h = Harness::new();
        h.join("a", 4.0, 0).await;
        let t = h.running("a", crate::harness::spec(1.0, 0)).await;
        h.commit().await;
        let (stop, stopped) = watch::channel(false);
        let ticker = super::spawn(
            h.app.cluster.clone(),
            h.app.store.clone(),
            INTERVAL,
            stopped,
        );
        let release = h.app.store.stall();
        // "a" falls silent; time passes, one interval at a time.
        let mut waited = Duration::ZERO;
        while h.task(&t).await.state() != pb::TaskState::Queued {
            assert!(
                waited <= WORKER_TIMEOUT + INTERVAL * 3,
                "not re-queued {waited:?} into the stall: {:?}",
                h.task(&t).await
            );
            tokio::time::advance(INTERVAL).await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            waited += INTERVAL;
        }
        assert!(waited >= WORKER_TIMEOUT, "re-queued after {waited:?}");
        drop(release);
        let _ = stop.send(true);
        ticker.await.unwrap();
        h.commit().await;
        assert_eq!(h.task(&t).await.state(), pb::TaskState::Queued);
    }
}
