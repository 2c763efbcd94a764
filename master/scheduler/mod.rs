//! Placement policies: pure functions over a plain snapshot of workers (no I/O, no
//! locks), so they are easy to test and to benchmark. See README.md beside this file.

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
        }
    }

    /// Whether the task may go here now.
    pub fn fits(&self, req: &Request) -> bool {
        let free = self.free();
        self.schedulable
            && (self.has_runtime || !req.needs_runtime)
            && free.cpu + EPSILON >= req.resources.cpu
            && free.memory_gb + EPSILON >= req.resources.memory_gb
            && free.gpu >= req.resources.gpu
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
        SchedulerKind::ResourceAware => Box::new(ResourceAware),
    }
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

/// Among the workers that fit, the one with the lowest score (ties: the first):
/// `0.75 × share of the most-used resource after placement + 0.25 × live CPU use`.
/// Allocations dominate, so tasks spread by what was promised; live use breaks near-ties
/// towards machines that are actually quieter.
#[derive(Debug, Default)]
pub struct ResourceAware;

impl ResourceAware {
    pub fn score(worker: &Candidate, req: &Request) -> f64 {
        let share = |used: f64, asked: f64, total: f64| {
            if total > 0.0 {
                (used + asked) / total
            } else {
                0.0
            }
        };
        let cpu = share(worker.allocated.cpu, req.resources.cpu, worker.capacity.cpu);
        let memory = share(
            worker.allocated.memory_gb,
            req.resources.memory_gb,
            worker.capacity.memory_gb,
        );
        let gpu = share(
            worker.allocated.gpu as f64,
            req.resources.gpu as f64,
            worker.capacity.gpu as f64,
        );
        let live = (worker.cpu_percent / 100.0).clamp(0.0, 1.0);
        0.75 * cpu.max(memory).max(gpu) + 0.25 * live
    }
}

impl Scheduler for ResourceAware {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::ResourceAware
    }

    fn place(&mut self, workers: &[Candidate], req: &Request) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, w) in workers.iter().enumerate() {
            if !w.fits(req) {
                continue;
            }
            let score = ResourceAware::score(w, req);
            if best.is_none_or(|(_, s)| score < s) {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }
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
    if best_cpu + EPSILON < r.cpu {
        format!("no Active worker with {} CPUs free", fmt_num(r.cpu))
    } else if best_mem + EPSILON < r.memory_gb {
        format!(
            "no Active worker with {} GB free memory",
            fmt_num(r.memory_gb)
        )
    } else if best_gpu < r.gpu {
        format!("no Active worker with {} GPUs free", r.gpu)
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn worker(cpu: f64, mem: f64, gpu: u32) -> Candidate {
        Candidate {
            capacity: Resources {
                cpu,
                memory_gb: mem,
                gpu,
            },
            schedulable: true,
            ..Default::default()
        }
    }

    fn req(cpu: f64, mem: f64, gpu: u32) -> Request {
        Request {
            resources: Resources {
                cpu,
                memory_gb: mem,
                gpu,
            },
            needs_runtime: false,
        }
    }

    #[test]
    fn round_robin_takes_turns_and_skips_what_does_not_fit() {
        let mut workers = vec![worker(2.0, 4.0, 0); 3];
        workers[1].schedulable = false;
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..4)
            .map(|_| rr.place(&workers, &req(0.1, 0.0, 0)).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        assert_eq!(rr.place(&workers, &req(4.0, 0.0, 0)), None);
    }

    #[test]
    fn resource_aware_spreads_by_allocation_then_live_use() {
        let mut workers = vec![worker(4.0, 8.0, 0), worker(4.0, 8.0, 0)];
        workers[0].allocated.cpu = 2.0;
        assert_eq!(ResourceAware.place(&workers, &req(1.0, 0.0, 0)), Some(1));
        workers[0].allocated.cpu = 0.0;
        workers[1].cpu_percent = 90.0;
        assert_eq!(ResourceAware.place(&workers, &req(1.0, 0.0, 0)), Some(0));
        // Only a worker with 4 free CPUs takes a 4-CPU task.
        workers[0].allocated.cpu = 1.0;
        assert_eq!(ResourceAware.place(&workers, &req(4.0, 0.0, 0)), Some(1));
    }

    #[test]
    fn the_reason_names_what_is_missing() {
        let workers = vec![worker(4.0, 8.0, 0)];
        assert_eq!(
            why_not(&workers, &req(1.0, 64.0, 0)),
            "no Active worker with 64 GB free memory"
        );
        assert_eq!(
            why_not(&workers, &req(8.0, 1.0, 0)),
            "no Active worker with 8 CPUs free"
        );
        let mut image = req(1.0, 1.0, 0);
        image.needs_runtime = true;
        assert_eq!(
            why_not(&workers, &image),
            "no Active worker with a container runtime"
        );
        assert_eq!(why_not(&[], &req(1.0, 1.0, 0)), "no Active worker");
        let drained = Candidate {
            schedulable: false,
            draining: true,
            ..worker(4.0, 8.0, 0)
        };
        assert_eq!(
            why_not(&[drained], &req(1.0, 1.0, 0)),
            "no Active worker that is not draining (1 draining: 'undrain' one)"
        );
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            0.5f64..64.0,
            0.5f64..256.0,
            0u32..4,
            0.0f64..1.2,
            0.0f64..1.2,
            0u32..5,
            0.0f64..100.0,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(cpu, mem, gpu, fc, fm, ag, live, sched, rt)| Candidate {
                capacity: Resources {
                    cpu,
                    memory_gb: mem,
                    gpu,
                },
                allocated: Resources {
                    cpu: cpu * fc,
                    memory_gb: mem * fm,
                    gpu: ag.min(gpu + 1),
                },
                cpu_percent: live,
                schedulable: sched,
                has_runtime: rt,
                draining: false,
            })
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        (0.01f64..16.0, 0.0f64..64.0, 0u32..3, any::<bool>()).prop_map(|(c, m, g, rt)| Request {
            resources: Resources {
                cpu: c,
                memory_gb: m,
                gpu: g,
            },
            needs_runtime: rt,
        })
    }

    proptest! {
        #[test]
        fn neither_scheduler_picks_an_unfit_worker(
            workers in prop::collection::vec(arb_candidate(), 0..40),
            requests in prop::collection::vec(arb_request(), 1..20),
        ) {
            for kind in [SchedulerKind::RoundRobin, SchedulerKind::ResourceAware] {
                let mut scheduler = new(kind);
                let mut workers = workers.clone();
                for r in &requests {
                    match scheduler.place(&workers, r) {
                        Some(i) => {
                            let w = &mut workers[i];
                            prop_assert!(w.schedulable, "{kind:?} chose an inactive or draining worker");
                            prop_assert!(w.has_runtime || !r.needs_runtime);
                            let free = w.free();
                            prop_assert!(free.cpu + EPSILON >= r.resources.cpu);
                            prop_assert!(free.memory_gb + EPSILON >= r.resources.memory_gb);
                            prop_assert!(free.gpu >= r.resources.gpu);
                            w.allocated.cpu += r.resources.cpu;
                            w.allocated.memory_gb += r.resources.memory_gb;
                            w.allocated.gpu += r.resources.gpu;
                        }
                        None => prop_assert!(!workers.iter().any(|w| w.fits(r)),
                            "{kind:?} found no place although one fits"),
                    }
                }
            }
        }
    }
}
