//! The liveness ticker: every `--check-interval` it applies the liveness rule to every
//! worker (logging transitions, ending the streams of Removed workers) and flushes what
//! changed to SQLite in one transaction.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::warn;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Store, Write};

/// Starts the ticker. It flushes once more when `shutdown` flips, then ends.
pub fn spawn(
    registry: Arc<Registry>,
    store: Store,
    metrics: Arc<Metrics>,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => tick(&registry, &store, &metrics).await,
                _ = shutdown.changed() => {
                    tick(&registry, &store, &metrics).await;
                    break;
                }
            }
        }
    })
}

/// One tick: apply the rule, flush the dirty rows. A failed flush is retried next tick.
pub async fn tick(registry: &Registry, store: &Store, metrics: &Metrics) {
    let outcome = registry.tick(Instant::now());
    if outcome.rows.is_empty() {
        return;
    }
    let mut rows = outcome.rows;
    rows.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let started = std::time::Instant::now();
    let flushed = store.write(Write::Liveness(rows)).await;
    Metrics::observe(&metrics.flush, started.elapsed());
    if let Err(err) = flushed {
        warn!(%err, rows = ids.len(), "liveness flush failed; retrying next tick");
        registry.mark_dirty(ids);
    }
}
