//! Placements per second of each scheduler over synthetic snapshots of 1,000 and 10,000
//! workers (goal: at least 10,000/s resource-aware over 10,000 workers).
//!
//! `cargo bench --bench scheduler`

use herd_master::scheduler;

use std::hint::black_box;
use std::time::Instant;

use herd::config::SchedulerKind;
use herd::domain::Resources;
use scheduler::{Candidate, Request};

fn snapshot(n: usize, rng: &mut fastrand::Rng) -> Vec<Candidate> {
    (0..n)
        .map(|_| Candidate {
            capacity: Resources {
                cpu: [4.0, 8.0, 16.0, 64.0][rng.usize(..4)],
                memory_gb: [16.0, 32.0, 128.0, 512.0][rng.usize(..4)],
                gpu: [0, 0, 0, 1, 8][rng.usize(..5)],
                disk_gb: 0.0,
            },
            allocated: Resources::default(),
            cpu_percent: rng.f64() * 100.0,
            // One in ten is Inactive or draining.
            schedulable: rng.usize(..10) != 0,
            has_runtime: rng.bool(),
            draining: false,
        })
        .collect()
}

fn main() {
    let placements = 20_000;
    println!(
        "{:<16} {:>8} {:>12} {:>14} {:>10}",
        "scheduler", "workers", "placements", "per second", "µs each"
    );
    for n in [1_000, 10_000] {
        for kind in SchedulerKind::ALL {
            let mut rng = fastrand::Rng::with_seed(7);
            let mut workers = snapshot(n, &mut rng);
            let requests: Vec<Request> = (0..placements)
                .map(|_| Request {
                    resources: Resources {
                        cpu: [0.25, 0.5, 1.0, 2.0][rng.usize(..4)],
                        memory_gb: [0.0, 0.5, 2.0][rng.usize(..3)],
                        gpu: if rng.usize(..50) == 0 { 1 } else { 0 },
                        disk_gb: 0.0,
                    },
                    needs_runtime: rng.usize(..4) == 0,
                })
                .collect();
            let mut policy = scheduler::new(kind);
            let mut placed = 0usize;
            let start = Instant::now();
            for req in &requests {
                if let Some(i) = policy.place(black_box(&workers), req) {
                    let w = &mut workers[i];
                    w.allocated.cpu += req.resources.cpu;
                    w.allocated.memory_gb += req.resources.memory_gb;
                    w.allocated.gpu += req.resources.gpu;
                    placed += 1;
                }
            }
            let took = start.elapsed();
            let per_second = requests.len() as f64 / took.as_secs_f64();
            println!(
                "{:<16} {:>8} {:>12} {:>14.0} {:>10.2}",
                format!("{kind:?}"),
                n,
                placed,
                per_second,
                took.as_secs_f64() * 1e6 / requests.len() as f64
            );
        }
    }
}
