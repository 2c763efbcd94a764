//! Scorers: how good is this worker for this task, among those that pass the filters?
//! Small pure functions (the Kubernetes scheduler's score plugins); the policies pick the
//! lowest or the highest.

use super::{Candidate, Request};

/// The share of one resource held after placing the task (0 when the worker has none).
#[inline]
fn share(used: f64, asked: f64, total: f64) -> f64 {
    if total > 0.0 {
        (used + asked) / total
    } else {
        0.0
    }
}

/// The share of the worker's most-used resource (CPU, memory, GPU, disk) once the task is
/// placed: 0 for an idle machine, 1 for a full one. The one measure of "how full" that both
/// spreading (lowest first) and packing (highest first) use.
#[inline]
pub fn fullness_after(w: &Candidate, r: &Request) -> f64 {
    let (a, c, q) = (&w.allocated, &w.capacity, &r.resources);
    let cpu = share(a.cpu, q.cpu, c.cpu);
    let memory = share(a.memory_gb, q.memory_gb, c.memory_gb);
    let gpu = share(a.gpu as f64, q.gpu as f64, c.gpu as f64);
    let disk = share(a.disk_gb, q.disk_gb, c.disk_gb);
    cpu.max(memory).max(gpu).max(disk)
}

/// Live CPU use of the machine from heartbeats, 0..1.
#[inline]
pub fn live_cpu(w: &Candidate) -> f64 {
    (w.cpu_percent / 100.0).clamp(0.0, 1.0)
}

/// resource-aware (lower is better): mostly what was promised, a quarter what the machine
/// actually does (a quiet machine wins a near-tie).
#[inline]
pub fn spread(w: &Candidate, r: &Request) -> f64 {
    0.75 * fullness_after(w, r) + 0.25 * live_cpu(w)
}

/// bin-pack (higher is better): the fullest worker that still fits.
#[inline]
pub fn pack(w: &Candidate, r: &Request) -> f64 {
    fullness_after(w, r)
}
