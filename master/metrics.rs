//! Prometheus metrics (`--metrics-listen`): workers and tasks by state, queue length,
//! heartbeats received, scheduling pass and store commit durations, failed commits, and
//! the term a master leads (docs/monitoring/ has alert rules and a dashboard over them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as Prometheus;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::records::Summary;

/// Reads the counts by state at the moment of a scrape.
pub type Counts = Arc<dyn Fn() -> Summary + Send + Sync>;

/// The master's instruments. Cheap to update from any thread.
pub struct Metrics {
    pub heartbeats: Counter<u64, AtomicU64>,
    pub scheduling: Histogram,
    pub flush: Histogram,
    /// Every commit of the store thread (its sum's rate is how busy that thread is).
    pub commits: Histogram,
    pub store_failures: Counter<u64, AtomicU64>,
    /// The term this master leads (0: SQLite, where no election happens).
    pub term: Gauge,
    workers: Family<Vec<(String, String)>, Gauge>,
    tasks: Family<Vec<(String, String)>, Gauge>,
    queue: Gauge,
    prometheus: Prometheus,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let heartbeats = Counter::<u64, AtomicU64>::default();
        // 10 µs .. ~5 s.
        let scheduling = Histogram::new(exponential_buckets(1e-5, 3.0, 12));
        // Fine buckets where the goal lies (10 ms).
        let flush = Histogram::new(
            [
                0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, 250.0,
            ]
            .into_iter()
            .map(|ms| ms / 1000.0),
        );
        // 100 µs .. ~6.5 s.
        let commits = Histogram::new(exponential_buckets(1e-4, 2.0, 17));
        let workers = Family::<Vec<(String, String)>, Gauge>::default();
        let tasks = Family::<Vec<(String, String)>, Gauge>::default();
        let queue = Gauge::default();
        let store_failures = Counter::<u64, AtomicU64>::default();
        let term = Gauge::default();
        let mut prometheus = Prometheus::with_prefix("herd");
        prometheus.register(
            "heartbeats_received",
            "Heartbeats received",
            heartbeats.clone(),
        );
        prometheus.register(
            "scheduling_pass_seconds",
            "Duration of one scheduling pass over the queue",
            scheduling.clone(),
        );
        prometheus.register(
            "store_liveness_commit_seconds",
            "Duration of one store commit that carries a tick's liveness rows (at most \
             1,000 of them)",
            flush.clone(),
        );
        prometheus.register(
            "store_commit_seconds",
            "Duration of every store commit, whatever it carries; the rate of its sum is \
             the fraction of time the store thread is busy (1: every write waits)",
            commits.clone(),
        );
        prometheus.register(
            "store_commit_failures",
            "Store commits that failed (the changes are kept and tried again; nothing that \
             waits on them is acknowledged)",
            store_failures.clone(),
        );
        prometheus.register(
            "leader_term",
            "The term this master leads on a PostgreSQL store (it rises at each fail-over); \
             0 on SQLite",
            term.clone(),
        );
        prometheus.register("workers", "Workers by state", workers.clone());
        prometheus.register("tasks", "Tasks by state", tasks.clone());
        prometheus.register(
            "queue_length",
            "Tasks waiting for a placement",
            queue.clone(),
        );
        Arc::new(Metrics {
            heartbeats,
            scheduling,
            flush,
            commits,
            store_failures,
            term,
            workers,
            tasks,
            queue,
            prometheus,
        })
    }

    pub fn observe(histogram: &Histogram, took: Duration) {
        histogram.observe(took.as_secs_f64());
    }

    /// Prometheus text, with the by-state gauges set from `summary`.
    pub fn render(&self, summary: Summary) -> String {
        for (state, n) in summary.workers {
            self.workers
                .get_or_create(&vec![("state".into(), state.into())])
                .set(n as i64);
        }
        for (state, n) in summary.tasks {
            self.tasks
                .get_or_create(&vec![("state".into(), state.into())])
                .set(n as i64);
        }
        self.queue.set(summary.queued as i64);
        let mut out = String::new();
        if let Err(err) = encode(&mut out, &self.prometheus) {
            warn!(%err, "cannot encode metrics");
        }
        text_format(&out)
    }
}

/// OpenMetrics text (what prometheus_client writes) as the Prometheus text format 0.0.4 the
/// endpoint says it serves: a counter's HELP and TYPE name its `_total` series, and there
/// is no `# EOF`. (Prometheus reads either; `promtool check metrics` and older scrapers
/// read only this one, and found no help text for the counters.)
fn text_format(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Serves `GET /metrics` until `shutdown` flips.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    counts: Counts,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "metrics at /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let text = metrics.render(counts());
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_described_under_their_total_names_in_the_text_format() {
        let metrics = Metrics::new();
        metrics.heartbeats.inc();
        let text = metrics.render(Summary {
            workers: vec![("Active", 2)],
            tasks: vec![],
            queued: 0,
            scheduler: Default::default(),
        });
        assert!(text.contains("# HELP herd_heartbeats_received_total Heartbeats received"));
        assert!(text.contains("# TYPE herd_heartbeats_received_total counter"));
        assert!(text.contains("\nherd_heartbeats_received_total 1\n"));
        assert!(text.contains("# TYPE herd_store_commit_failures_total counter"));
        assert!(text.contains("herd_workers{state=\"Active\"} 2"));
        assert!(!text.contains("# EOF"));
    }
}
