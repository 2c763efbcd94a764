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

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

mod cli;
mod cluster;
mod phases;
mod replay;
mod report;
mod sim;

use cli::Cli;
use cluster::{Launch, MasterProcess, channels, free_port, rss_kib};
use phases::Bench;
use sim::{Mode, Shared};

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
        store: match cli.store.as_deref() {
            Some("scratch") => Some(herd_testkit::postgres_database()),
            other => other.map(String::from),
        },
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
    let conns = channels(&master.url(), cli.connections).await?;
    let mut b = Bench {
        conns: conns.clone(),
        shared: Arc::new(Shared::new(cli.heartbeat_interval, conns)),
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
    match b.master.launch.store {
        None => phases::restart::run(&mut b).await?,
        // Instead of a restart on the same herd.db: a standby takes over.
        Some(_) => phases::failover::run(&mut b).await?,
    }
    for sim in &b.sims {
        sim.mode.send_replace(Mode::Closed);
    }
    Ok(b.figures)
}
