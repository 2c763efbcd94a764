//! Prometheus metrics (`--metrics-listen`): workers and tasks by state, queue length,
//! heartbeats received, scheduling pass and SQLite flush durations.

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
        let workers = Family::<Vec<(String, String)>, Gauge>::default();
        let tasks = Family::<Vec<(String, String)>, Gauge>::default();
        let queue = Gauge::default();
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
            "sqlite_flush_seconds",
            "Duration of one commit of a tick's liveness flush to SQLite (at most 1,000 rows)",
            flush.clone(),
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
        out
    }
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
