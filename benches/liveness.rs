//! How fast the master notices a dead worker, with real processes on 127.0.0.1:
//! - kill -9 of a worker until `workers` shows it Inactive (goal: under 1 s);
//! - SIGSTOP of a worker until Inactive, as silence past the timeout (goal: the
//!   heartbeat timeout plus at most one check interval).
//!
//! `cargo bench --bench liveness [-- ROUNDS]` (default 20 rounds).

use herd_testkit as common;

use std::time::{Duration, Instant};

use common::*;
use herd::pb;

const TIMEOUT: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(rounds));
}

async fn run(rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let master = Master::start(dir.path(), TIGHT);
    let mut admin = master.admin().await;
    let patience = Duration::from_secs(20);

    let db = master.db();
    let mut killed = Vec::new();
    let mut stopped = Vec::new();
    let mut flushed = Vec::new();
    for round in 0..rounds {
        let name = format!("bench-{round}");
        let mut w = Worker::start(dir.path(), &master.url(), &name, &[]);
        wait_state(&mut admin, &name, pb::WorkerState::Active, patience).await;
        let start = Instant::now();
        w.kill9();
        poll_inactive(&mut admin, &name).await;
        killed.push(start.elapsed());

        let w = Worker::start(dir.path(), &master.url(), &name, &[]);
        wait_state(&mut admin, &name, pb::WorkerState::Active, patience).await;
        w.signal(libc::SIGSTOP);
        let info = poll_inactive(&mut admin, &name).await;
        let silent = Duration::from_millis((now_ms() - info.last_heartbeat_ms) as u64);
        stopped.push(silent);
        // The ticker's view: when SQLite says is_active = 0.
        while db_row(&db, &info.id).is_none_or(|(active, _)| active) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        flushed.push(Duration::from_millis(
            (now_ms() - info.last_heartbeat_ms) as u64,
        ));
        eprint!("\rround {}/{rounds}", round + 1);
    }
    eprintln!();

    println!(
        "kill -9 to Inactive        {}",
        latency_summary(&mut killed)
    );
    println!(
        "SIGSTOP: silence at Inactive {}  (timeout {TIMEOUT:?}, tick {TICK:?})",
        latency_summary(&mut stopped)
    );
    println!(
        "SIGSTOP: silence at is_active=0 {}  (ticker + SQLite flush)",
        latency_summary(&mut flushed)
    );
}

/// Polls as fast as the Admin service answers until the worker reads Inactive.
async fn poll_inactive(admin: &mut Admin, name: &str) -> pb::WorkerInfo {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = admin
            .get_worker(pb::GetWorkerRequest {
                worker: name.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if info.state() == pb::WorkerState::Inactive {
            return info;
        }
        assert!(Instant::now() < deadline, "{name} never went Inactive");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
