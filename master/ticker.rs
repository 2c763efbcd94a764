//! The liveness ticker: every `--check-interval` it applies the liveness rule to every
//! worker (logging transitions, ending the streams of Removed workers) and flushes what
//! changed to SQLite, in commits of at most [`FLUSH_CHUNK`] rows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::warn;

use crate::cluster::Cluster;
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
        loop {
            tokio::select! {
                _ = interval.tick() => tick(&cluster, &store, false).await,
                _ = shutdown.changed() => {
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

/// One tick: apply the rule, flush the changed rows (all of them with `everything`), in
/// commits of at most [`FLUSH_CHUNK`] rows. A failed flush is retried next tick.
pub async fn tick(cluster: &Cluster, store: &Store, everything: bool) {
    let mut rows = cluster.tick(everything).rows;
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
    use crate::cluster::tests::{registry_on, spec};
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
}
