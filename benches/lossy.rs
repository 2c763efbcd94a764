//! False Inactive over lossy links (issue 24 A4): for each loss rate, a master and five
//! workers on either side of a veth link that drops that share of packets each way, at
//! the default timings scaled down (heartbeat every 500 ms, Inactive after 2 s). Every
//! change to Inactive the master logs is a false one: the workers never stop. Prints, per
//! loss rate, the false Inactive per worker-hour. The loss rates run side by side.
//!
//! `cargo bench --bench lossy [-- SECONDS]` (default 120; needs root, iproute2, nftables).
//! This machine's kernel has no netem, so delay and jitter cannot be added.

use std::time::Duration;

use herd_testkit::netns::{Link, scaled_down};

const WORKERS: usize = 5;
const LOSS: [u32; 5] = [0, 1, 5, 10, 20];

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(120);
    let timings = scaled_down("2s");
    let mut runs = Vec::new();
    for loss in LOSS {
        let Some(link) = Link::new() else { return };
        let dir = tempfile::tempdir().unwrap();
        let (master, url, log) = link.master(dir.path(), &timings);
        let workers: Vec<_> = (0..WORKERS)
            .map(|i| link.worker(dir.path(), &url, &format!("lossy-{i}")))
            .collect();
        runs.push((loss, link, dir, master, log, workers));
    }
    // Every worker Active before the loss begins.
    std::thread::sleep(Duration::from_secs(5));
    for (loss, link, _, _, log, _) in &runs {
        let up = std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("to=Active")
            .count();
        assert!(up >= WORKERS, "{loss}%: only {up} workers came up");
        link.lose(*loss);
    }
    let before: Vec<usize> = runs.iter().map(|r| inactive(&r.4)).collect();
    println!("{WORKERS} workers per loss rate, {seconds} s, heartbeat 500 ms, timeout 2 s");
    std::thread::sleep(Duration::from_secs(seconds));
    println!("loss each way   false Inactive   per worker-hour");
    for ((loss, ..), was) in runs.iter().zip(before) {
        let n = inactive(&runs.iter().find(|r| r.0 == *loss).unwrap().4) - was;
        let hours = (WORKERS as f64) * seconds as f64 / 3600.0;
        println!("{loss:>10} %   {n:>14}   {:>15.1}", n as f64 / hours);
    }
}

fn inactive(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("to=Inactive")
        .count()
}
