//! `herd-bench replay [TRACE.csv]`: compares the scheduling policies on a trace, in
//! simulated time. The master's own scheduler module (`herd_master::scheduler`: the same
//! code, not a copy) is driven over a simulated cluster by [`sim`]; a day of trace
//! takes seconds. Without a trace, a synthetic one is generated from `--seed`.
//!
//! Per policy it prints makespan, mean and p99 wait (submission to placement), mean
//! allocated CPU, memory and GPU share, and the tasks never placed; `--svg FILE` draws the
//! shares over time. Same trace and cluster: same figures, to the digit.

use herd_master::scheduler;

mod sim;
mod svg;
mod trace;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use herd::config::SchedulerKind;
use serde_json::json;

/// The cluster replayed on unless `--cluster` says otherwise: 20 machines, 448 CPUs,
/// 2,048 GB, 16 GPUs.
const DEFAULT_CLUSTER: &str = "12x16:64:0,6x32:128:0,2x32:256:8";

#[derive(Parser, Debug)]
#[command(
    name = "herd-bench replay",
    about = "Compare the scheduling policies on a trace, in simulated time"
)]
struct Cli {
    /// CSV trace: submit_s,duration_s,cpu,memory_gb,gpu,priority (a header line is
    /// allowed). Without it, a synthetic trace from --seed.
    trace: Option<PathBuf>,
    /// Seed of the synthetic trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tasks in the synthetic trace.
    #[arg(long, default_value_t = 3_000)]
    tasks: usize,
    /// Hours the synthetic trace's submissions span.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Write the trace replayed (e.g. the synthetic one) to this CSV file.
    #[arg(long)]
    write_trace: Option<PathBuf>,
    /// Machines: COUNTxCPU:MEMORY_GB:GPU, comma-separated.
    #[arg(long, default_value = DEFAULT_CLUSTER)]
    cluster: String,
    /// Draw allocated CPU, memory and GPU over time, per policy, to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `herd-bench replay` with the words after `replay`.
pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let cli = Cli::parse_from(std::iter::once("herd-bench replay".to_string()).chain(args));
    let machines = sim::parse_cluster(&cli.cluster)?;
    let (tasks, source) = match &cli.trace {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let tasks =
                trace::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let source = format!("{} ({} tasks)", path.display(), tasks.len());
            (tasks, source)
        }
        None => (
            trace::synthetic(cli.seed, cli.tasks, cli.hours),
            format!(
                "synthetic, seed {}, {} tasks over {} h",
                cli.seed, cli.tasks, cli.hours
            ),
        ),
    };
    if let Some(path) = &cli.write_trace {
        std::fs::write(path, trace::to_csv(&tasks))?;
    }
    let started = Instant::now();
    let outcomes: Vec<sim::Outcome> = SchedulerKind::ALL
        .into_iter()
        .map(|policy| sim::run(&tasks, &machines, policy))
        .collect();
    let took = started.elapsed();
    let cluster = describe(&machines);
    if let Some(path) = &cli.svg {
        let title = format!("{source}; {cluster}");
        std::fs::write(path, svg::render(&outcomes, &title))?;
    }
    if cli.json {
        let policies: Vec<_> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "policy": o.policy.as_str(),
                    "makespan_s": o.makespan_ms as f64 / 1000.0,
                    "mean_wait_s": o.mean_wait_ms() / 1000.0,
                    "p99_wait_s": o.p99_wait_ms() as f64 / 1000.0,
                    "cpu_utilisation": o.cpu,
                    "memory_utilisation": o.memory,
                    "gpu_utilisation": o.gpu,
                    "placed": o.placed,
                    "never_placed": o.never_placed,
                })
            })
            .collect();
        let out = json!({
            "trace": source,
            "tasks": tasks.len(),
            "cluster": cluster,
            "simulated_in_s": took.as_secs_f64(),
            "policies": policies,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("trace:    {source}");
    println!("cluster:  {cluster}");
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>6} {:>7} {:>6} {:>13}",
        "policy", "makespan", "mean wait", "p99 wait", "cpu", "memory", "gpu", "never placed"
    );
    for o in &outcomes {
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>5.1}% {:>6.1}% {:>5.1}% {:>13}",
            o.policy.as_str(),
            duration(o.makespan_ms as f64),
            duration(o.mean_wait_ms()),
            duration(o.p99_wait_ms() as f64),
            100.0 * o.cpu,
            100.0 * o.memory,
            100.0 * o.gpu,
            o.never_placed
        );
    }
    println!(
        "(simulated {} policies in {:.2} s; utilisation = allocated share, time-weighted over the makespan)",
        outcomes.len(),
        took.as_secs_f64()
    );
    Ok(())
}

/// `20 machines: 448 CPUs, 2176 GB, 8 GPUs`.
fn describe(machines: &[sim::Machine]) -> String {
    let cpu: f64 = machines.iter().map(|m| m.cpu).sum();
    let mem: f64 = machines.iter().map(|m| m.memory_gb).sum();
    let gpu: u32 = machines.iter().map(|m| m.gpu).sum();
    format!(
        "{} machines: {cpu} CPUs, {mem} GB, {gpu} GPUs",
        machines.len()
    )
}

/// A duration for the table: `42 s`, `12.5 min`, `3.2 h`.
fn duration(ms: f64) -> String {
    let s = ms / 1000.0;
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}
