//! Tasks: submit-to-start one at a time (submitted, placed, committed, dispatched on the
//! stream, received by the simulated worker), then placements in bulk end to end (the
//! simulated workers report Started and Succeeded at once, so results are stored too).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use herd::pb;

use super::Bench;
use crate::cluster::{histogram_mean, scrape};
use crate::report::{Figure, percentiles};

pub fn task_spec() -> pb::TaskSpec {
    pb::TaskSpec {
        command: "true".into(),
        resources: Some(pb::Resources {
            cpu: 0.01,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How long one task may take to reach a worker: long enough for an assignment the
/// master could not send to be placed again (it re-queues it at its next pass).
const REACH: Duration = Duration::from_secs(30);

pub async fn submit_to_start(b: &mut Bench) -> anyhow::Result<()> {
    let mut latency = Vec::new();
    for _ in 0..b.cli.latency_tasks {
        let start = Instant::now();
        let info = b
            .admin
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(task_spec()),
            })
            .await?
            .into_inner();
        let arrival = b.shared.arrivals.when(&info.id);
        let at = match tokio::time::timeout(REACH, arrival).await {
            Ok(Ok(at)) => at,
            _ => {
                b.master.check_alive()?;
                bail!(
                    "task {} never reached a worker within {REACH:?}; the master has it as {}",
                    info.id,
                    master_view(b, &info.id).await
                );
            }
        };
        latency.push(at.duration_since(start).as_secs_f64() * 1000.0);
    }
    let lat = percentiles(&mut latency);
    b.figures.push(Figure::goal(
        "submit-to-start median",
        lat.p50,
        "ms",
        "< 5 ms".into(),
        lat.p50 < 5.0,
    ));
    b.figures.push(Figure::goal(
        "submit-to-start p99",
        lat.p99,
        "ms",
        "< 50 ms".into(),
        lat.p99 < 50.0,
    ));
    b.progress(&format!(
        "submit-to-start median {:.2} ms, p99 {:.2} ms; placements for {:?}",
        lat.p50, lat.p99, b.cli.placements_for
    ));
    Ok(())
}

/// What the master says of a task, for an error message.
async fn master_view(b: &mut Bench, id: &str) -> String {
    match b
        .admin
        .get_task(pb::GetTaskRequest {
            task_id: id.to_string(),
        })
        .await
    {
        Ok(t) => {
            let t = t.into_inner();
            format!(
                "{:?} on {} (attempt {}; reason: {})",
                t.state(),
                if t.worker_name.is_empty() {
                    "no worker"
                } else {
                    &t.worker_name
                },
                t.attempts,
                if t.reason.is_empty() { "-" } else { &t.reason }
            )
        }
        Err(status) => format!("unknown ({})", status.message()),
    }
}

/// Batches of submit calls in flight at most: a master this far behind (at 10,000/s in
/// batches of 100, 320 ms of tasks) holds the generator back, and the rate falls.
const IN_FLIGHT: usize = 32;

/// Placements sustained for `--placements-for` at `--placement-rate`, offered open loop:
/// a batch of `--batch` tasks (SubmitTasks: one call, one transaction) leaves on a steady
/// beat whether or not the calls before it were answered (at most [`IN_FLIGHT`] at once),
/// so a slow answer neither lowers the offered rate nor hides the tasks it delays.
/// The rate is the tasks that reached a worker over the time from the first batch to the
/// beat after the last one left (late if it left a beat or more after it was due); every
/// offered task must reach a worker. A sample of tasks gives submit-to-start at that
/// rate, from the instant its batch was due (not when it left) to its arrival.
pub async fn placements(b: &mut Bench) -> anyhow::Result<()> {
    let window = b.cli.placements_for;
    let batch = b.cli.batch.clamp(1, 10_000) as u32;
    let target = b.cli.placement_rate.max(1.0);
    let beat = Duration::from_secs_f64(f64::from(batch) / target);
    let batches = (window.as_secs_f64() / beat.as_secs_f64()).round().max(1.0) as u64;
    let before = b.shared.tasks_started.load(Ordering::Relaxed);
    let busy_before = store_busy(b.master.metrics_port());
    let started = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::from_std(started), beat);
    // Open loop: a beat missed (the generator held back) is made up at once.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut calls = tokio::task::JoinSet::new();
    let (mut held_back, mut last_sent) = (0u64, started);
    for n in 0..batches {
        let due = ticks.tick().await.into_std();
        let permit = match in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                held_back += 1;
                in_flight.clone().acquire_owned().await?
            }
        };
        // Left on time (within a beat of when it was due), or late by how much.
        let sent = Instant::now();
        last_sent = if sent.duration_since(due) >= beat {
            sent
        } else {
            due
        };
        let mut admin = b.admin.clone();
        let shared = b.shared.clone();
        calls.spawn(async move {
            let ids = admin
                .submit_tasks(pb::SubmitTasksRequest {
                    specs: vec![task_spec()],
                    count: batch,
                })
                .await?
                .into_inner()
                .task_ids;
            drop(permit);
            // Every 10th batch: its first and last task, timed to their arrival.
            let mut waits = Vec::new();
            if n % 10 == 0 {
                for id in [ids.first(), ids.last()].into_iter().flatten() {
                    waits.push((due, shared.arrivals.when(id)));
                }
            }
            Ok::<_, tonic::Status>((ids.len() as u64, waits))
        });
    }
    let mut submitted = 0;
    let mut waits = Vec::new();
    while let Some(call) = calls.join_next().await {
        let (n, w) = call??;
        submitted += n;
        waits.extend(w);
    }
    // Up to the beat after the last batch left: `window` when the master kept up.
    let elapsed = last_sent.duration_since(started) + beat;
    let reach = Instant::now() + Duration::from_secs(60);
    while b.shared.tasks_started.load(Ordering::Relaxed) - before < submitted {
        if Instant::now() > reach {
            b.master.check_alive()?;
            let reached = b.shared.tasks_started.load(Ordering::Relaxed) - before;
            bail!(
                "only {reached} of {submitted} tasks reached a worker within 60 s of the last batch"
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let busy =
        (store_busy(b.master.metrics_port()) - busy_before) / started.elapsed().as_secs_f64();
    let mut samples = Vec::new();
    for (t0, rx) in waits {
        let at = tokio::time::timeout(REACH, rx).await??;
        samples.push((t0, at.duration_since(t0).as_secs_f64() * 1000.0));
    }
    if let Some(path) = &b.cli.placement_trace {
        std::fs::write(path, trace_csv(started, &samples))
            .with_context(|| format!("cannot write the placement trace {}", path.display()))?;
    }
    let mut latency: Vec<f64> = samples.iter().map(|&(_, ms)| ms).collect();
    b.shared.arrivals.clear();
    let rate = submitted as f64 / elapsed.as_secs_f64();
    let lat = percentiles(&mut latency);
    b.figures.push(Figure::goal(
        "placements end to end, sustained",
        rate,
        "/s",
        format!(">= 10000/s for {window:?} (offered {target:.0}/s)"),
        rate >= 10_000.0,
    ));
    b.figures.push(Figure::goal(
        "  submit-to-start median at that rate",
        lat.p50,
        "ms",
        "< 5 ms".into(),
        lat.p50 < 5.0,
    ));
    b.figures.push(Figure::goal(
        "  submit-to-start p99 at that rate",
        lat.p99,
        "ms",
        "< 50 ms".into(),
        lat.p99 < 50.0,
    ));
    let pass_us = histogram_mean(
        &scrape(b.master.metrics_port()),
        "herd_scheduling_pass_seconds",
    ) * 1e6;
    b.figures
        .push(Figure::info("scheduling pass (mean)", pass_us, "µs"));
    b.figures.push(Figure::info(
        "  store thread busy committing",
        busy * 100.0,
        "%",
    ));
    b.figures.push(Figure::info(
        "  batches held back (in flight at limit)",
        held_back as f64,
        "",
    ));
    b.progress(&format!(
        "{rate:.0} placements/s end to end over {window:?} (batches of {batch}), submit-to-start p50 {:.2} ms p99 {:.2} ms",
        lat.p50, lat.p99
    ));
    Ok(())
}

/// Seconds the master's store thread has spent committing since it started.
fn store_busy(metrics_port: u16) -> f64 {
    scrape(metrics_port)
        .get("herd_store_commit_seconds_sum")
        .copied()
        .unwrap_or(0.0)
}

/// The sampled tasks as CSV: when each one's batch was due (seconds since the Unix
/// epoch, from `started`'s place on the wall clock) and its submit-to-start latency.
fn trace_csv(started: Instant, samples: &[(Instant, f64)]) -> String {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        - started.elapsed().as_secs_f64();
    let mut csv = String::from("due_unix_s,latency_ms\n");
    for &(due, ms) in samples {
        let at = wall + due.saturating_duration_since(started).as_secs_f64();
        csv.push_str(&format!("{at:.4},{ms:.3}\n"));
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_has_a_header_and_a_row_per_sample_on_the_wall_clock() {
        let started = Instant::now();
        let samples = [
            (started, 4.25),
            (started + Duration::from_millis(1500), 61.0),
        ];
        let csv = trace_csv(started, &samples);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "due_unix_s,latency_ms");
        let rows: Vec<(f64, f64)> = lines[1..]
            .iter()
            .map(|l| {
                let (at, ms) = l.split_once(',').unwrap();
                (at.parse().unwrap(), ms.parse().unwrap())
            })
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].1, rows[1].1), (4.25, 61.0));
        assert!((rows[1].0 - rows[0].0 - 1.5).abs() < 0.001, "{rows:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - rows[0].0).abs() < 5.0, "{} is not now", rows[0].0);
    }
}
