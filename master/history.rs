//! The last 15 minutes of the cluster, sampled every 10 s for the dashboard's chart:
//! CPU and memory capacity, allocation and use of the Active workers, and how many tasks
//! started and finished in each interval. In memory only (90 samples).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::cluster::Cluster;
use crate::events::Events;
use crate::records::Totals;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: 15 minutes.
pub const KEPT: usize = 90;

/// One point of the chart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    pub t_ms: i64,
    pub cpu_total: f64,
    pub cpu_allocated: f64,
    pub cpu_used: f64,
    pub memory_total_gb: f64,
    pub memory_allocated_gb: f64,
    pub memory_used_gb: f64,
    /// Started in the interval that ends at `t_ms`.
    pub tasks_started: u64,
    /// Finished in the interval that ends at `t_ms`.
    pub tasks_finished: u64,
}

/// The samples, oldest first.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn new() -> Arc<History> {
        Arc::default()
    }

    /// Adds a sample of `now` against the `before` counters, and returns it.
    pub fn record(&self, t_ms: i64, now: Totals, before: Totals) -> Sample {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        let sample = Sample {
            t_ms,
            cpu_total: now.cpu_total,
            cpu_allocated: now.cpu_allocated,
            cpu_used: now.cpu_used,
            memory_total_gb: now.memory_total_gb,
            memory_allocated_gb: now.memory_allocated_gb,
            memory_used_gb: now.memory_used_gb,
            tasks_started: now.tasks_started.saturating_sub(before.tasks_started),
            tasks_finished: now.tasks_finished.saturating_sub(before.tasks_finished),
        };
        samples.push_back(sample.clone());
        sample
    }

    pub fn samples(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.iter().cloned().collect()
    }
}

/// Samples the cluster every [`INTERVAL`] until `shutdown` flips; each sample also goes
/// out as a `sample` event.
pub fn spawn(
    history: Arc<History>,
    cluster: Arc<Cluster>,
    events: Arc<Events>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut before = cluster.totals();
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let now = cluster.totals();
                    let sample = history.record(herd::time::now_ms(), now, before);
                    events.sample(serde_json::to_value(&sample).unwrap_or_default());
                    before = now;
                }
                _ = shutdown.changed() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_fifteen_minutes_and_counts_tasks_per_interval() {
        let h = History::default();
        let mut before = Totals::default();
        for i in 0..100u64 {
            let now = Totals {
                cpu_total: 8.0,
                tasks_started: i * 3,
                tasks_finished: i * 2,
                ..Default::default()
            };
            h.record(i as i64 * 10_000, now, before);
            before = now;
        }
        let s = h.samples();
        assert_eq!(s.len(), KEPT);
        assert_eq!(s[0].t_ms, 100_000);
        assert_eq!((s[5].tasks_started, s[5].tasks_finished), (3, 2));
    }
}
