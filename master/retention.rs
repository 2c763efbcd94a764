//! Task output retention (`--task-retention`): an hourly sweeper that removes output last
//! written longer ago, from the files of the SQLite store (`output.rs`) or in a commit of a
//! store that keeps output in its database (PostgreSQL).

use std::time::Duration;

use crate::output::OutputDir;
use crate::store::{Change, Store};

/// Where a master keeps task output, as the sweeper removes it.
pub enum Sweep {
    /// SQLite's store: the files under `<data-dir>/output`, swept off the store thread.
    Files(OutputDir),
    /// A store that keeps output in its database (PostgreSQL): removed in a commit.
    Store(Store),
}

/// Removes output last written more than `retention` ago, at start and every hour until
/// `shutdown` flips.
pub fn spawn_sweeper(
    sweep: Sweep,
    retention: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut hourly = tokio::time::interval(Duration::from_secs(3600));
        hourly.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = hourly.tick() => sweep.once(retention).await,
                _ = shutdown.changed() => return,
            }
        }
    })
}

impl Sweep {
    async fn once(&self, retention: Duration) {
        match self {
            Sweep::Files(output) => {
                let out = output.clone();
                if let Ok(n) = tokio::task::spawn_blocking(move || out.sweep(retention)).await
                    && n > 0
                {
                    tracing::info!(tasks = n, ?retention, "removed old task output");
                }
            }
            Sweep::Store(store) => {
                let cutoff = herd::time::now_ms() - retention.as_millis() as i64;
                let drop = Change::DropOutput {
                    written_before_ms: cutoff,
                };
                if let Err(err) = store.commit(drop).await {
                    tracing::warn!(%err, "cannot remove old task output; trying next hour");
                }
            }
        }
    }
}
