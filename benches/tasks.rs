//! Submit-to-start latency of process tasks on an idle local worker (goal: median under
//! 10 ms), with real herd-master and herd-worker processes on 127.0.0.1.
//!
//! Start is when the master learns the task runs (the worker's STARTED report), as the
//! client sees it: the bench polls `GetTask` without pause from the moment it submits.
//!
//! `cargo bench --bench tasks [-- COUNT]` (default 100).

use herd_testkit as common;

use std::time::{Duration, Instant};

use common::*;
use herd::pb;

fn main() {
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    tokio::runtime::Runtime::new().unwrap().block_on(run(count));
}

async fn run(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), &["--heartbeat-interval", "1s"]);
    let mut admin = master.admin().await;
    let _w = Worker::start(dir.path(), &master.url(), "bench", &["--cpu", "2"]);
    wait_state(
        &mut admin,
        "bench",
        pb::WorkerState::Active,
        Duration::from_secs(30),
    )
    .await;

    let mut client_side = Vec::with_capacity(count);
    let mut acks = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        let t = submit(&mut admin, "true", 1.0).await;
        acks.push(start.elapsed());
        loop {
            let seen = task(&mut admin, &t.id).await;
            if matches!(
                seen.state(),
                pb::TaskState::Running | pb::TaskState::Succeeded | pb::TaskState::Failed
            ) {
                client_side.push(start.elapsed());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "task {} never started",
                t.id
            );
        }
        // Let it finish so the worker is idle for the next one.
        wait_task(
            &mut admin,
            &t.id,
            pb::TaskState::Succeeded,
            Duration::from_secs(10),
        )
        .await;
        eprint!("\r{}/{count}", i + 1);
    }
    eprintln!();
    println!(
        "submit acknowledged (stored)  {}",
        latency_summary(&mut acks)
    );
    println!(
        "submit to start               {}",
        latency_summary(&mut client_side)
    );
}
