//! Filters: may this worker take this task now? Each is a small pure function of one
//! candidate and one request (Nomad's feasibility checkers, the Kubernetes scheduler's
//! filter plugins); [`feasible`] is all of them, and every policy places only where it
//! holds.

use super::{Candidate, EPSILON, Request};

/// A filter, as the tests and `herd-bench replay` walk them.
pub type Filter = fn(&Candidate, &Request) -> bool;

/// Every filter, by name (the master calls [`feasible`], which is all of them).
pub const FILTERS: [(&str, Filter); 6] = [
    ("schedulable", schedulable),
    ("runtime", runtime),
    ("cpu", cpu),
    ("memory", memory),
    ("gpu", gpu),
    ("disk", disk),
];

/// Active (liveness applied at the snapshot), not draining, and its stream open.
#[inline]
pub fn schedulable(w: &Candidate, _: &Request) -> bool {
    w.schedulable
}

/// An image task needs a container runtime.
#[inline]
pub fn runtime(w: &Candidate, r: &Request) -> bool {
    w.has_runtime || !r.needs_runtime
}

#[inline]
pub fn cpu(w: &Candidate, r: &Request) -> bool {
    w.capacity.cpu - w.allocated.cpu + EPSILON >= r.resources.cpu
}

#[inline]
pub fn memory(w: &Candidate, r: &Request) -> bool {
    w.capacity.memory_gb - w.allocated.memory_gb + EPSILON >= r.resources.memory_gb
}

/// Whole GPUs: which indices is decided by [`super::gpus::GpuPool`] once the worker is
/// chosen (any free ones will do, so the count is the whole question).
#[inline]
pub fn gpu(w: &Candidate, r: &Request) -> bool {
    w.capacity.gpu.saturating_sub(w.allocated.gpu) >= r.resources.gpu
}

/// Disk of the worker's work dir, counted like memory.
#[inline]
pub fn disk(w: &Candidate, r: &Request) -> bool {
    w.capacity.disk_gb - w.allocated.disk_gb + EPSILON >= r.resources.disk_gb
}

/// Every filter holds. Written out rather than looped over [`FILTERS`] so that the
/// compiler inlines it into the policies' scans of 10,000 workers.
#[inline]
pub fn feasible(w: &Candidate, r: &Request) -> bool {
    schedulable(w, r) && runtime(w, r) && cpu(w, r) && memory(w, r) && gpu(w, r) && disk(w, r)
}
