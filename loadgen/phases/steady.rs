//! Streams and the steady state: every worker opens its heartbeat stream (first
//! heartbeats spread over one interval), then master CPU, RSS, heartbeat latency and false
//! Inactive are measured for `--duration`, then every worker floods for `--saturation`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Bench;
use crate::cluster::{
    cpu_time, heartbeats_received, histogram_mean, rss_kib, scrape, summary, wait_active,
};
use crate::report::{Figure, percentiles};
use crate::sim::{Mode, Sim, description, simulate};

/// Opens a stream per worker and waits until all are Active.
pub async fn open_streams(b: &mut Bench, ids: &[(String, String)]) -> anyhow::Result<()> {
    let n = b.n;
    let interval = b.cli.heartbeat_interval;
    let started = Instant::now();
    for (i, (id, secret)) in ids.iter().enumerate() {
        let (mode, mode_rx) = watch::channel(Mode::Normal);
        b.sims.push(Sim {
            id: id.clone(),
            mode,
        });
        tokio::spawn(simulate(
            b.shared.clone(),
            i,
            description(i),
            id.clone(),
            secret.clone(),
            mode_rx,
        ));
        // Spread the first heartbeats over one interval, as real workers would be.
        if i % 100 == 99 {
            tokio::time::sleep(interval.mul_f64(100.0 / n as f64)).await;
        }
    }
    let within = Duration::from_secs(30);
    let result = wait_active(&mut b.admin, n as u32, "the workers' first streams", within).await;
    b.master.check_alive()?;
    result?;
    let took = started.elapsed();
    b.figures.push(Figure::goal(
        "all Active after their first streams",
        took.as_secs_f64() * 1000.0,
        "ms",
        format!("< {} ms", within.as_millis()),
        took < within,
    ));
    b.progress(&format!(
        "all {n} Active after {took:.2?}; steady phase for {:?}",
        b.cli.duration
    ));
    Ok(())
}

/// CPU, RSS, latency and false Inactive while every worker heartbeats at its interval.
pub async fn steady(b: &mut Bench) -> anyhow::Result<()> {
    let (n, pid, metrics_port) = (b.n, b.master.pid(), b.master.metrics_port());
    tokio::time::sleep(b.cli.heartbeat_interval * 2).await;
    b.shared.recording.store(1, Ordering::Relaxed);
    let cpu_before = cpu_time(pid);
    let hb_before = heartbeats_received(metrics_port);
    let started = Instant::now();
    let mut false_inactive = 0u32;
    let mut peak_rss = 0;
    let mut reported = 0;
    while started.elapsed() < b.cli.duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        b.master.check_alive()?;
        let counts = summary(&mut b.admin).await;
        let not_active = counts.get("Inactive").copied().unwrap_or(0)
            + counts.get("Removed").copied().unwrap_or(0);
        false_inactive = false_inactive.max(not_active);
        peak_rss = peak_rss.max(rss_kib(pid));
        let secs = started.elapsed().as_secs();
        if secs / 10 > reported {
            reported = secs / 10;
            b.progress(&format!(
                "steady {secs}s: master cpu {:.1}%",
                (cpu_time(pid) - cpu_before).as_secs_f64() / started.elapsed().as_secs_f64()
                    * 100.0
            ));
        }
    }
    let elapsed = started.elapsed();
    b.shared.recording.store(0, Ordering::Relaxed);
    let cpu = (cpu_time(pid) - cpu_before).as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let hb_rate = (heartbeats_received(metrics_port) - hb_before) / elapsed.as_secs_f64();
    let mut latencies: Vec<f64> = b
        .shared
        .latencies
        .lock()
        .unwrap()
        .iter()
        .map(|&us| us as f64 / 1000.0)
        .collect();
    let lat = percentiles(&mut latencies);
    let rss_per_worker = peak_rss.saturating_sub(b.baseline_rss) as f64 / n as f64;
    let flush_mean_ms =
        histogram_mean(&scrape(metrics_port), "herd_store_liveness_commit_seconds") * 1000.0;
    let rate = 1.0 / b.cli.heartbeat_interval.as_secs_f64();
    let flush_name = match b.master.launch.store {
        None => "SQLite flush of a tick, steady (mean)",
        Some(_) => "store liveness commit, steady (mean)",
    };
    let f = &mut b.figures;
    f.push(Figure::goal(
        "master CPU, steady",
        cpu,
        "%",
        "< 50% of one core".into(),
        cpu < 50.0,
    ));
    f.push(Figure {
        goal: format!("{:.0}/s (N x rate)", n as f64 * rate),
        ..Figure::info("heartbeats received", hb_rate, "/s")
    });
    f.push(Figure::info("heartbeat-to-ack p50", lat.p50, "ms"));
    f.push(Figure::info("heartbeat-to-ack p99", lat.p99, "ms"));
    f.push(Figure::goal(
        "false Inactive",
        false_inactive as f64,
        "",
        "0".into(),
        false_inactive == 0,
    ));
    f.push(Figure::goal(
        "RSS per connected worker",
        rss_per_worker,
        "KiB",
        "< 16 KiB".into(),
        rss_per_worker < 16.0,
    ));
    f.push(Figure::info("master RSS", peak_rss as f64 / 1024.0, "MiB"));
    f.push(Figure::goal(
        flush_name,
        flush_mean_ms,
        "ms",
        "< 10 ms".into(),
        flush_mean_ms < 10.0,
    ));
    b.progress(&format!(
        "steady: cpu {cpu:.1}%, {hb_rate:.0} hb/s, ack p50 {:.2} ms p99 {:.2} ms; saturating for {:?}",
        lat.p50, lat.p99, b.cli.saturation
    ));
    Ok(())
}

/// Every worker heartbeats as fast as acknowledgements come back; then the flood is let
/// drain before anything that depends on how fast the master answers.
pub async fn saturation(b: &mut Bench) -> anyhow::Result<()> {
    let (pid, metrics_port) = (b.master.pid(), b.master.metrics_port());
    for sim in &b.sims {
        sim.mode.send_replace(Mode::Flood);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hb_before = heartbeats_received(metrics_port);
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    tokio::time::sleep(b.cli.saturation).await;
    let elapsed = started.elapsed();
    let sat_cpu = (cpu_time(pid) - cpu_before).as_secs_f64() / elapsed.as_secs_f64();
    let sat_rate = (heartbeats_received(metrics_port) - hb_before) / elapsed.as_secs_f64();
    // Per core of master CPU actually used.
    let per_core = sat_rate / sat_cpu.max(0.01);
    for sim in &b.sims {
        sim.mode.send_replace(Mode::Normal);
    }
    b.master.check_alive()?;
    b.figures
        .push(Figure::info("saturation heartbeats", sat_rate, "/s"));
    b.figures.push(Figure::goal(
        "saturation per master core",
        per_core,
        "/s",
        ">= 50000/s".into(),
        per_core >= 50_000.0,
    ));
    b.progress(&format!(
        "saturation: {sat_rate:.0} hb/s with the master at {:.0}% ({per_core:.0}/s per core)",
        sat_cpu * 100.0
    ));
    // Wait until a second brings no more heartbeats than the steady rate.
    let steady = b.n as f64 / b.cli.heartbeat_interval.as_secs_f64() * 1.5;
    for _ in 0..30 {
        let before = heartbeats_received(metrics_port);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if heartbeats_received(metrics_port) - before <= steady {
            break;
        }
    }
    tokio::time::sleep(b.cli.heartbeat_interval * 2).await;
    Ok(())
}
