//! Failure detection: a sample of workers close their streams (Inactive at once), another
//! goes silent (Inactive exactly at the timeout, never before, never shown Active after).
//! A sample, because polling thousands of workers every few ms would load the master
//! being measured.

use std::time::{Duration, Instant};

use anyhow::Context;

use herd::pb;

use super::Bench;
use crate::cluster::{heartbeat_timeout, wait_active};
use crate::report::{Figure, percentiles};
use crate::sim::Mode;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let n = b.n;
    let k = (n / 20).clamp(1, 50);
    let closed: Vec<usize> = (0..k).collect();
    let silent: Vec<usize> = (k..2 * k).collect();
    let mut waits = Vec::new();
    for &i in &closed {
        b.sims[i].mode.send_replace(Mode::Closed);
    }
    let closed_at = Instant::now();
    for &i in &silent {
        b.sims[i].mode.send_replace(Mode::Silent);
    }
    let limit = heartbeat_timeout(b.cli.heartbeat_interval) * 3 + Duration::from_secs(10);
    for &i in closed.iter().chain(&silent) {
        let mut admin = b.admin.clone();
        let id = b.sims[i].id.clone();
        let is_closed = i < k;
        waits.push(tokio::spawn(async move {
            let limit = Instant::now() + limit;
            // For a silent worker: the longest silence (by the master's clock) it was still
            // shown Active with, and the silence when it was first shown Inactive.
            let mut longest_active = 0i64;
            loop {
                let info = admin
                    .get_worker(pb::GetWorkerRequest { worker: id.clone() })
                    .await
                    .ok()
                    .map(|r| r.into_inner());
                if let Some(w) = &info {
                    let silence = w.as_of_ms - w.last_heartbeat_ms;
                    match w.state() {
                        pb::WorkerState::Inactive if is_closed => {
                            return Some((closed_at.elapsed().as_secs_f64() * 1000.0, 0.0));
                        }
                        pb::WorkerState::Inactive => {
                            return Some((silence as f64, longest_active as f64));
                        }
                        _ => longest_active = longest_active.max(silence),
                    }
                }
                if Instant::now() > limit {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let mut closed_ms = Vec::new();
    let mut silent_ms = Vec::new();
    let mut still_active_ms = Vec::new();
    for (j, wait) in waits.into_iter().enumerate() {
        let (value, active) = wait.await?.context("a worker never went Inactive")?;
        if j < k {
            closed_ms.push(value);
        } else {
            silent_ms.push(value);
            still_active_ms.push(active);
        }
    }
    let closed_p = percentiles(&mut closed_ms);
    let silent_p = percentiles(&mut silent_ms);
    let timeout_ms = heartbeat_timeout(b.cli.heartbeat_interval).as_secs_f64() * 1000.0;
    b.figures.push(Figure::goal(
        "closed stream to Inactive p99",
        closed_p.p99,
        "ms",
        "< 100 ms".into(),
        closed_p.p99 < 100.0,
    ));
    // Liveness is decided at read time: no answer may show Active after the timeout, and
    // none Inactive before it. (When an answer comes is up to the poller; what it says is
    // the master's.)
    let longest_active = still_active_ms.iter().copied().fold(0.0, f64::max);
    // (Silences are whole milliseconds by the master's clock: 2,999.6 ms reads 3,000.)
    b.figures.push(Figure::goal(
        "silent: longest silence shown Active",
        longest_active,
        "ms",
        format!("<= {timeout_ms:.0} ms (the timeout)"),
        longest_active <= timeout_ms,
    ));
    b.figures.push(Figure::goal(
        "silent: shortest silence shown Inactive",
        silent_p.min,
        "ms",
        format!(">= {timeout_ms:.0} ms"),
        silent_p.min >= timeout_ms,
    ));
    b.progress(&format!(
        "{k} closed: Inactive after p99 {:.1} ms; {k} silent: after {:.0}..{:.0} ms of silence",
        closed_p.p99, silent_p.p50, silent_p.max
    ));
    for &i in &silent {
        b.sims[i].mode.send_replace(Mode::Normal);
    }
    b.live = (n - k) as u32;
    let within = heartbeat_timeout(b.cli.heartbeat_interval) * 2 + Duration::from_secs(30);
    wait_active(&mut b.admin, b.live, "the silent workers' return", within).await?;
    Ok(())
}
