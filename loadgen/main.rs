//! herd-bench: a load generator and benchmark report against a real herd-master started on
//! 127.0.0.1. It simulates N workers (N heartbeat streams multiplexed over a few HTTP/2
//! connections), then measures what docs/BENCHMARKS.md lists: master CPU and RSS,
//! heartbeat throughput and latency, false Inactive, time to Inactive, registration
//! throughput, restart reload, submit-to-start and placements. Each figure is printed with
//! its goal and `ok` or `missed`.
//!
//! `herd-bench` (N = 10,000, 60 s steady phase), `herd-bench --smoke` (seconds, for CI),
//! `--json` for machines. `--pin` runs the master on core 0 and the generator on core 1.
//!
//! Layout: cluster.rs (the master process and its figures), sim.rs (simulated workers),
//! phases/ (one module per phase, in the order they run), report.rs; replay/ is
//! `herd-bench replay` (policies compared on a trace, in simulated time).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use herd::time::parse_duration;

mod cluster;
mod phases;
mod replay;
mod report;
mod sim;

use cluster::{Launch, MasterProcess, channels, free_port, rss_kib};
use phases::Bench;
use sim::{Mode, Shared};

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
    workers: usize,
    /// HTTP/2 connections the workers' streams are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Heartbeat period of every simulated worker (the master's heartbeat timeout is three
    /// of them, at least 3 s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// Length of the steady phase (CPU, RSS, latency, false Inactive).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Length of the saturation phase (heartbeats as fast as the master takes them).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    saturation: Duration,
    /// How long placements are sustained (batches submitted as fast as the master takes
    /// them).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    placements_for: Duration,
    /// Tasks per batch (SubmitTasks) in the placement phase.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Tasks offered per second in the placement phase.
    #[arg(long, default_value_t = 10_000.0)]
    placement_rate: f64,
    /// Tasks submitted one by one for the submit-to-start figure.
    #[arg(long, default_value_t = 100)]
    latency_tasks: usize,
    /// Write each sampled task of the placement phase to this CSV (`due_unix_s,latency_ms`:
    /// when its batch was due, in seconds since the Unix epoch to line up with other
    /// traces, and its submit-to-start latency).
    #[arg(long, value_name = "CSV")]
    placement_trace: Option<PathBuf>,
    /// Small and short: N = 200, a few seconds per phase (CI runs this).
    #[arg(long)]
    smoke: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Run the master on core 0 (taskset) and the generator on core 1.
    #[arg(long)]
    pin: bool,
    /// The herd-master binary (default: next to herd-bench).
    #[arg(long)]
    master_bin: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("replay") {
        return replay::main(std::env::args().skip(2));
    }
    let mut cli = Cli::parse();
    if cli.smoke {
        cli.workers = cli.workers.min(200);
        cli.connections = cli.connections.min(2);
        cli.duration = Duration::from_secs(3);
        cli.saturation = Duration::from_secs(2);
        cli.placements_for = Duration::from_secs(2);
        cli.latency_tasks = cli.latency_tasks.min(20);
    }
    if let Some(path) = &cli.placement_trace {
        // A path that cannot be written fails now, not after minutes of phases.
        std::fs::File::create(path)
            .with_context(|| format!("cannot write the placement trace {}", path.display()))?;
    }
    if cli.pin {
        // SAFETY: a zeroed cpu_set_t with one bit set, for this process.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(1, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let bin = match &cli.master_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("herd-master"),
    };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let launch = Launch {
        bin,
        data,
        port: free_port(),
        metrics_port: free_port(),
        interval: cli.heartbeat_interval,
        pin: cli.pin,
    };
    let figures = run(cli.clone(), &launch).await?;
    report::report(&cli, &figures);
    Ok(())
}

async fn run(cli: Cli, launch: &Launch) -> anyhow::Result<Vec<report::Figure>> {
    let mut master = MasterProcess::start(launch)?;
    let admin = master.admin().await?;
    let n = cli.workers;
    report::progress(
        cli.json,
        &format!(
            "master up (pid {}), registering {n} workers over {} connections",
            master.pid(),
            cli.connections
        ),
    );
    let mut b = Bench {
        conns: channels(&master.url(), cli.connections).await?,
        shared: Arc::new(Shared::new(cli.heartbeat_interval)),
        baseline_rss: rss_kib(master.pid()),
        sims: Vec::with_capacity(n),
        figures: Vec::new(),
        live: n as u32,
        n,
        cli,
        master,
        admin,
    };
    let ids = phases::registration::run(&mut b).await?;
    phases::steady::open_streams(&mut b, &ids).await?;
    phases::steady::steady(&mut b).await?;
    phases::steady::saturation(&mut b).await?;
    phases::detection::run(&mut b).await?;
    phases::tasks::submit_to_start(&mut b).await?;
    phases::tasks::placements(&mut b).await?;
    phases::restart::run(&mut b).await?;
    for sim in &b.sims {
        sim.mode.send_replace(Mode::Closed);
    }
    Ok(b.figures)
}
