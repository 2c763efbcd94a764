//! A master with a long history: 1,000,000 finished tasks in SQLite. Goals (issue 9): the
//! master starts in under 2 s, its RSS stays within 50 MiB of an empty master's, and the
//! first page of `tasks` answers in under 50 ms — because finished tasks are read from
//! SQLite by index, never loaded into memory.
//!
//! `cargo bench --bench store [-- TASKS]` (default 1,000,000).

use herd_testkit as common;

use std::time::{Duration, Instant};

use common::*;
use herd::pb;

fn main() {
    let tasks: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    tokio::runtime::Runtime::new().unwrap().block_on(run(tasks));
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Starts a master on `data` and returns it with the time to its first answer.
async fn started(dir: &std::path::Path, data: &std::path::Path, port: u16) -> (Master, Duration) {
    let start = Instant::now();
    let master = Master::start_on(dir, data, port, &[]);
    master.admin().await;
    (master, start.elapsed())
}

async fn run(tasks: u64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");

    let (mut empty, empty_start) = started(dir.path(), &data, port).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let empty_rss = rss_kib(empty.child.id());
    assert!(empty.terminate().success());

    let seeding = Instant::now();
    seed_finished_tasks(&empty.db(), tasks);
    eprintln!("seeded {tasks} finished tasks in {:?}", seeding.elapsed());

    let (master, loaded_start) = started(dir.path(), &data, port).await;
    let mut admin = master.admin().await;
    let mut pages = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let page = admin
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .unwrap()
            .into_inner();
        pages.push(t.elapsed());
        assert_eq!(page.tasks.len(), 100);
    }
    let first_page = pages[0];
    pages.sort();
    let mut small = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        admin
            .list_tasks(pb::ListTasksRequest {
                page_size: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        small.push(t.elapsed());
    }
    small.sort();
    let t = Instant::now();
    let one = task(&mut admin, "t-1").await;
    let old_task = t.elapsed();
    assert_eq!(one.state(), pb::TaskState::Succeeded);
    let rss = rss_kib(master.child.id());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("finished tasks in SQLite           {tasks}");
    println!(
        "start to first answer              {:>8.1} ms (empty: {:.1} ms; goal < 2000 ms)",
        ms(loaded_start),
        ms(empty_start)
    );
    println!(
        "RSS                                {:>8.1} MiB (empty: {:.1} MiB; goal within 50 MiB)",
        rss as f64 / 1024.0,
        empty_rss as f64 / 1024.0
    );
    println!(
        "first page of tasks (100)          {:>8.2} ms first, median {:.2} ms of 20 (goal < 50 ms)",
        ms(first_page),
        ms(pages[pages.len() / 2])
    );
    println!(
        "a page of 10                       {:>8.2} ms median",
        ms(small[small.len() / 2])
    );
    println!(
        "one old task by id                 {:>8.2} ms",
        ms(old_task)
    );
}
