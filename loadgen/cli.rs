//! herd-bench's flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use herd::time::parse_duration;

#[derive(Parser, Clone)]
#[command(
    name = "herd-bench",
    version,
    about = "Load generator and benchmark report for herd",
    after_help = "herd-bench replay [TRACE.csv]: compare the scheduling policies on a trace in \
                  simulated time (herd-bench replay --help)"
)]
pub struct Cli {
    /// Simulated workers.
    #[arg(long, default_value_t = 10_000)]
    pub workers: usize,
    /// HTTP/2 connections the workers' streams are spread over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Heartbeat period of every simulated worker (the master's heartbeat timeout is three
    /// of them, at least 3 s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Length of the steady phase (CPU, RSS, latency, false Inactive).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Length of the saturation phase (heartbeats as fast as the master takes them).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub saturation: Duration,
    /// How long placements are sustained (batches submitted as fast as the master takes
    /// them).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub placements_for: Duration,
    /// Tasks per batch (SubmitTasks) in the placement phase.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Tasks offered per second in the placement phase.
    #[arg(long, default_value_t = 10_000.0)]
    pub placement_rate: f64,
    /// Tasks submitted one by one for the submit-to-start figure.
    #[arg(long, default_value_t = 100)]
    pub latency_tasks: usize,
    /// Write each sampled task of the placement phase to this CSV (`due_unix_s,latency_ms`:
    /// when its batch was due, in seconds since the Unix epoch to line up with other
    /// traces, and its submit-to-start latency).
    #[arg(long, value_name = "CSV")]
    pub placement_trace: Option<PathBuf>,
    /// Small and short: N = 200, a few seconds per phase (CI runs this).
    #[arg(long)]
    pub smoke: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run the master on core 0 (taskset) and the generator on core 1.
    #[arg(long)]
    pub pin: bool,
    /// The herd-master binary (default: next to herd-bench).
    #[arg(long)]
    pub master_bin: Option<PathBuf>,
    /// The master's store: a postgres://... URL, or `scratch` for a throwaway PostgreSQL
    /// started here (initdb in a temporary folder); SQLite in its data dir by default. On
    /// PostgreSQL, the restart phase is a fail-over: a standby master takes over from the
    /// leader's kill -9.
    #[arg(long)]
    pub store: Option<String>,
}
