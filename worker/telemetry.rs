//! Live machine usage, sampled on a thread of its own so that reading it never blocks the
//! heartbeat task.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sysinfo::System;

use herd::pb;

/// The latest sample, shared with the heartbeat task.
#[derive(Clone, Default)]
pub struct Telemetry {
    latest: Arc<Mutex<pb::Usage>>,
}

impl Telemetry {
    /// Starts sampling every `period`.
    pub fn start(period: Duration) -> Telemetry {
        let telemetry = Telemetry::default();
        let latest = telemetry.latest.clone();
        let _ = std::thread::Builder::new()
            .name("herd-telemetry".into())
            .spawn(move || {
                let Ok(mut system) = System::new() else {
                    tracing::warn!("cannot read machine usage; heartbeats will report zero");
                    return;
                };
                loop {
                    system.refresh_cpu_usage();
                    system.refresh_memory();
                    let usage = pb::Usage {
                        cpu_percent: system.global_cpu_usage() as f64,
                        memory_used_gb: system.used_memory() as f64 / 1e9,
                    };
                    *latest.lock().unwrap_or_else(|p| p.into_inner()) = usage;
                    std::thread::sleep(period);
                }
            });
        telemetry
    }

    pub fn latest(&self) -> pb::Usage {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Capacity of this machine: logical CPUs, memory in GB (GPUs and disk: `devices`).
pub fn detect_capacity() -> (f64, f64) {
    let total_memory = System::new()
        .map(|mut system| {
            system.refresh_memory();
            system.total_memory()
        })
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let memory_gb = (total_memory as f64 / 1e9 * 10.0).floor() / 10.0;
    (cpus, memory_gb)
}
