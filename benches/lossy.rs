//! False Inactive over lossy and slow links (issue 24 A4): for each link, a master and five
//! workers on either side of a veth link that drops a share of packets each way, and may
//! hold every byte back (delay ± jitter), at the default timings scaled down (heartbeat
//! every 500 ms, Inactive after 2 s). Every change to Inactive the master logs is a false
//! one: the workers never stop. Prints, per link, the false Inactive per worker-hour. The
//! links run side by side.
//!
//! `cargo bench --bench lossy [-- SECONDS]` (default 120; needs root, iproute2, nftables).
//! This machine's kernel has no netem: loss is nftables on the link, delay a relay in the
//! worker's namespace that holds bytes back (`Link::delay`).

use std::time::Duration;

use herd_testkit::netns::{Link, scaled_down};

const WORKERS: usize = 5;
const MS: fn(u64) -> Duration = Duration::from_millis;
/// (loss each way in %, delay, jitter).
const LINKS: [(u32, u64, u64); 7] = [
    (0, 0, 0),
    (1, 0, 0),
    (5, 0, 0),
    (10, 0, 0),
    (20, 0, 0),
    (5, 100, 50),
    (0, 300, 0),
];

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(120);
    let timings = scaled_down("2s");
    let mut runs = Vec::new();
    for (loss, delay, jitter) in LINKS {
        let Some(link) = Link::new() else { return };
        let dir = tempfile::tempdir().unwrap();
        let (master, url, log) = link.master(dir.path(), &timings);
        let url = match delay {
            0 => url,
            _ => link.delay(MS(delay), MS(jitter)),
        };
        let workers: Vec<_> = (0..WORKERS)
            .map(|i| {
                link.worker_on(
                    &link.worker_ns,
                    dir.path(),
                    &url,
                    &format!("lossy-{i}"),
                    &[],
                )
            })
            .collect();
        runs.push(((loss, delay, jitter), link, dir, master, log, workers));
    }
    // Every worker Active before the loss begins.
    std::thread::sleep(Duration::from_secs(8));
    for ((loss, ..), link, _, _, log, _) in &runs {
        let up = std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("to=Active")
            .count();
        assert!(up >= WORKERS, "{loss}%: only {up} workers came up");
        link.lose(*loss);
    }
    let before: Vec<usize> = runs.iter().map(|r| inactive(&r.4)).collect();
    println!("{WORKERS} workers per link, {seconds} s, heartbeat 500 ms, timeout 2 s");
    std::thread::sleep(Duration::from_secs(seconds));
    println!("loss each way   delay            false Inactive   per worker-hour");
    for (((loss, delay, jitter), _, _, _, log, _), was) in runs.iter().zip(before) {
        let n = inactive(log) - was;
        let hours = (WORKERS as f64) * seconds as f64 / 3600.0;
        let delay = match (delay, jitter) {
            (0, _) => "none".to_string(),
            (d, 0) => format!("{d} ms"),
            (d, j) => format!("{d} ± {j} ms"),
        };
        println!(
            "{loss:>10} %   {delay:<14}   {n:>14}   {:>15.1}",
            n as f64 / hours
        );
    }
}

fn inactive(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("to=Inactive")
        .count()
}
