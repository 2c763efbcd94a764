//! Placement policies: pure functions over a plain snapshot of workers (no I/O, no
//! locks), so they are easy to test, to benchmark and to replay (`herd-bench replay`
//! drives this very module). Filters ([`filters`]) say who may take a task, scorers
//! ([`scores`]) rank them, and a policy is a way to walk them; [`gpus`] hands out GPU
//! indices on the chosen worker. See README.md beside this file.

pub mod filters;
pub mod gpus;
pub mod queue;
pub mod scores;

use herd::config::SchedulerKind;
use herd::domain::Resources;

/// Slack for float comparisons of CPU and memory.
const EPSILON: f64 = 1e-9;

/// One worker as the scheduler sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Candidate {
    pub capacity: Resources,
    /// Held by tasks placed on the worker.
    pub allocated: Resources,
    /// Live CPU use of the machine, 0..100, from heartbeats.
    pub cpu_percent: f64,
    /// Active and not draining.
    pub schedulable: bool,
    /// Has a container runtime (needed for image tasks).
    pub has_runtime: bool,
    /// Active but drained by an operator (so not schedulable): named in queue reasons.
    pub draining: bool,
}

impl Candidate {
    pub fn free(&self) -> Resources {
        Resources {
            cpu: self.capacity.cpu - self.allocated.cpu,
            memory_gb: self.capacity.memory_gb - self.allocated.memory_gb,
            gpu: self.capacity.gpu.saturating_sub(self.allocated.gpu),
            disk_gb: self.capacity.disk_gb - self.allocated.disk_gb,
        }
    }

    /// Whether the task may go here now: every filter holds.
    #[inline]
    pub fn fits(&self, req: &Request) -> bool {
        filters::feasible(self, req)
    }

    /// Books a placement in the snapshot, so later placements of one pass see it.
    pub fn book(&mut self, r: &Resources) {
        let a = &mut self.allocated;
        a.cpu += r.cpu;
        a.memory_gb += r.memory_gb;
        a.gpu += r.gpu;
        a.disk_gb += r.disk_gb;
    }
}

/// What a task asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub resources: Resources,
    pub needs_runtime: bool,
}

/// A placement policy. `place` returns the index of the chosen worker, which must
/// [`Candidate::fits`] the request, or `None` when none does.
pub trait Scheduler: Send {
    fn kind(&self) -> SchedulerKind;
    fn place(&mut self, workers: &[Candidate], req: &Request) -> Option<usize>;
}

pub fn new(kind: SchedulerKind) -> Box<dyn Scheduler> {
    match kind {
        SchedulerKind::RoundRobin => Box::new(RoundRobin::default()),
        SchedulerKind::ResourceAware => Box::new(ResourceAware::default()),
        SchedulerKind::BinPack => Box::new(BinPack::default()),
    }
}

/// Workers scored per placement in a large cluster: at least this many that fit.
pub const SCORE_AT_LEAST: usize = 100;

/// How many workers that fit a scoring policy compares before it chooses: all of them up
/// to [`SCORE_AT_LEAST`] (an exact choice, ties to the first by name), else a 100th of
/// the cluster, but at least that many. As in the Kubernetes scheduler
/// (`percentageOfNodesToScore`) and Nomad (which scores log2(N) workers, or 2 for batch
/// jobs), the best of a sample is as good in practice: the best of 100 is in the top 1%
/// of the workers it walked. At 10,000 workers that is 100 scored per placement; a 20th
/// (500) cost the master 9.5% of its core at 10,000 placements a second.
pub fn sample_size(workers: usize) -> usize {
    (workers / 100).max(SCORE_AT_LEAST)
}

/// The worker that fits with the best score (`better(new, best)`) among the first
/// [`sample_size`] that fit, starting at `cursor` (which then moves past the workers
/// looked at, so the next placement looks at the next ones); the first on ties. A cluster
/// no larger than the sample is scanned whole from its first worker.
#[inline]
fn best_by(
    workers: &[Candidate],
    req: &Request,
    cursor: &mut usize,
    score: impl Fn(&Candidate, &Request) -> f64,
    better: impl Fn(f64, f64) -> bool,
) -> Option<usize> {
    let n = workers.len();
    let limit = sample_size(n);
    let start = if n <= limit { 0 } else { *cursor % n };
    let mut best: Option<(usize, f64)> = None;
    let mut fitting = 0;
    let mut looked = 0;
    // From `start` to the end, then from the first worker (no division per worker).
    let order = (start..n).chain(0..start);
    for (w, i) in workers[start..].iter().chain(&workers[..start]).zip(order) {
        looked += 1;
        if !w.fits(req) {
            continue;
        }
        let s = score(w, req);
        if best.is_none_or(|(_, b)| better(s, b)) {
            best = Some((i, s));
        }
        fitting += 1;
        if fitting == limit {
            break;
        }
    }
    *cursor = (start + looked) % n.max(1);
    best.map(|(i, _)| i)
}

/// Takes workers in turn (the snapshot's stable order), skipping any that does not fit.
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: usize,
}

impl Scheduler for RoundRobin {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::RoundRobin
    }

    fn place(&mut self, workers: &[Candidate], req: &Request) -> Option<usize> {
        let n = workers.len();
        let start = if n == 0 { 0 } else { self.cursor % n };
        let chosen = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| workers[i].fits(req))?;
        self.cursor = chosen + 1;
        Some(chosen)
    }
}

/// Spread: among the workers that fit, the lowest [`scores::spread`] (ties: the first):
/// `0.75 × share of the most-used resource after placement + 0.25 × live CPU use`.
/// Allocations dominate, so tasks spread by what was promised; live use breaks near-ties
/// towards machines that are actually quieter.
#[derive(Debug, Default)]
pub struct ResourceAware {
    cursor: usize,
}

impl Scheduler for ResourceAware {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::ResourceAware
    }

    fn place(&mut self, workers: &[Candidate], req: &Request) -> Option<usize> {
        best_by(workers, req, &mut self.cursor, scores::spread, |s, best| {
            s < best
        })
    }
}

/// Pack: among the workers that fit, the fullest after placement ([`scores::pack`]; ties:
/// the first), so small tasks fill machines already in use and whole machines stay free
/// for large tasks (or can be switched off).
#[derive(Debug, Default)]
pub struct BinPack {
    cursor: usize,
}

impl Scheduler for BinPack {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::BinPack
    }

    fn place(&mut self, workers: &[Candidate], req: &Request) -> Option<usize> {
        best_by(workers, req, &mut self.cursor, scores::pack, |s, best| {
            s > best
        })
    }
}

/// How long a task may wait, fitting some worker's whole capacity but never its free room,
/// before a worker is held for it: from then on no task after it in the queue is placed on
/// that worker, which drains as its tasks end until the large task fits. Backfill keeps the
/// cluster busy; this keeps a large task from starving behind an endless stream of small
/// ones (as Slurm's backfill reserves for the first job that cannot start).
pub const RESERVE_AFTER_MS: u64 = 5 * 60 * 1000;

/// Workers held in one pass at most: for the first tasks in queue order that waited too
/// long (Slurm too reserves for the first few only), so a long queue of large tasks costs
/// a pass no more than a few walks over the workers.
pub const MAX_HELD: usize = 4;

/// The worker to hold for a task that waited [`RESERVE_AFTER_MS`]: of the schedulable ones
/// whose whole capacity could take it (runtime too), the one already closest to having
/// room (least full once it is placed; ties: the first). `None` if no worker could ever.
pub fn reservation(workers: &[Candidate], req: &Request) -> Option<usize> {
    let r = &req.resources;
    let mut best: Option<(usize, f64)> = None;
    for (i, w) in workers.iter().enumerate() {
        let c = &w.capacity;
        let could = w.schedulable
            && (w.has_runtime || !req.needs_runtime)
            && c.cpu + EPSILON >= r.cpu
            && c.memory_gb + EPSILON >= r.memory_gb
            && c.gpu >= r.gpu
            && c.disk_gb + EPSILON >= r.disk_gb;
        if !could {
            continue;
        }
        let full = scores::fullness_after(w, req);
        if best.is_none_or(|(_, b)| full < b) {
            best = Some((i, full));
        }
    }
    best.map(|(i, _)| i)
}

/// Why a request fits nowhere, in words an operator can act on.
pub fn why_not(workers: &[Candidate], req: &Request) -> String {
    let live: Vec<&Candidate> = workers.iter().filter(|w| w.schedulable).collect();
    if live.is_empty() {
        return match workers.iter().filter(|w| w.draining).count() {
            0 => "no Active worker".into(),
            n => format!("no Active worker that is not draining ({n} draining: 'undrain' one)"),
        };
    }
    let live: Vec<&Candidate> = if req.needs_runtime {
        let with: Vec<_> = live.into_iter().filter(|w| w.has_runtime).collect();
        if with.is_empty() {
            return "no Active worker with a container runtime".into();
        }
        with
    } else {
        live
    };
    let r = req.resources;
    let best_cpu = live.iter().map(|w| w.free().cpu).fold(f64::MIN, f64::max);
    let best_mem = live
        .iter()
        .map(|w| w.free().memory_gb)
        .fold(f64::MIN, f64::max);
    let best_gpu = live.iter().map(|w| w.free().gpu).max().unwrap_or(0);
    let best_disk = live
        .iter()
        .map(|w| w.free().disk_gb)
        .fold(f64::MIN, f64::max);
    if best_cpu + EPSILON < r.cpu {
        format!("no Active worker with {} CPUs free", fmt_num(r.cpu))
    } else if best_mem + EPSILON < r.memory_gb {
        format!(
            "no Active worker with {} GB free memory",
            fmt_num(r.memory_gb)
        )
    } else if best_gpu < r.gpu {
        format!("no Active worker with {} GPUs free", r.gpu)
    } else if best_disk + EPSILON < r.disk_gb {
        format!("no Active worker with {} GB free disk", fmt_num(r.disk_gb))
    } else if r.disk_gb > 0.0 {
        format!(
            "no Active worker with {} CPUs, {} GB, {} GPUs and {} GB disk free at once",
            fmt_num(r.cpu),
            fmt_num(r.memory_gb),
            r.gpu,
            fmt_num(r.disk_gb)
        )
    } else {
        format!(
            "no Active worker with {} CPUs, {} GB and {} GPUs free at once",
            fmt_num(r.cpu),
            fmt_num(r.memory_gb),
            r.gpu
        )
    }
}

fn fmt_num(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests;
