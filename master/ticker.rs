//! The liveness ticker: every `--check-interval` it applies the liveness rule to every
//! worker (logging transitions, ending the streams of Removed workers) and flushes what
//! changed to SQLite in one transaction.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::warn;

use crate::registry::Registry;
use crate::store::{Store, Write};

/// Starts the ticker. It flushes once more when `shutdown` flips, then ends.
pub fn spawn(
    registry: Arc<Registry>,
    store: Store,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => tick(&registry, &store, false).await,
                _ = shutdown.changed() => {
                    tick(&registry, &store, true).await;
                    break;
                }
            }
        }
    })
}

/// One tick: apply the rule, flush the changed rows (all of them with `everything`). A
/// failed flush is retried next tick.
pub async fn tick(registry: &Registry, store: &Store, everything: bool) {
    let outcome = registry.tick(everything);
    if outcome.rows.is_empty() {
        return;
    }
    let rows = outcome.rows;
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    if let Err(err) = store.write(Write::Liveness(rows)).await {
        warn!(%err, rows = ids.len(), "liveness flush failed; retrying next tick");
        registry.mark_dirty(ids);
    }
}
