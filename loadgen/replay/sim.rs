//! The simulation: a cluster of [`Candidate`]s with their [`GpuPool`]s, a queue ordered as
//! the master's, and a clock that jumps from event to event (submissions and ends). Every
//! pass asks the master's policy code for a place for each queued task, exactly as the
//! master's scheduling pass does; no process runs and no time passes for real.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use herd::config::SchedulerKind;
use herd::domain::Resources;

use super::scheduler::gpus::GpuPool;
use super::scheduler::{self, Candidate, Request, queue};
use super::trace::TraceTask;

/// One kind of machine in the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Machine {
    pub cpu: f64,
    pub memory_gb: f64,
    pub gpu: u32,
}

/// Parses `COUNTxCPU:MEMORY:GPU,...`, e.g. `12x16:64:0,2x32:256:4`.
pub fn parse_cluster(text: &str) -> anyhow::Result<Vec<Machine>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || anyhow::anyhow!("'{part}' is not COUNTxCPU:MEMORY_GB:GPU (e.g. 12x16:64:0)");
        let (count, shape) = part.split_once('x').ok_or_else(bad)?;
        let count: usize = count.parse().map_err(|_| bad())?;
        let f: Vec<&str> = shape.split(':').collect();
        if f.len() != 3 || count == 0 || count > 100_000 {
            return Err(bad());
        }
        let machine = Machine {
            cpu: f[0].parse().map_err(|_| bad())?,
            memory_gb: f[1].parse().map_err(|_| bad())?,
            gpu: f[2].parse().map_err(|_| bad())?,
        };
        if machine.cpu <= 0.0 || machine.memory_gb <= 0.0 || machine.gpu > 1024 {
            return Err(bad());
        }
        out.extend(std::iter::repeat_n(machine, count));
    }
    if out.is_empty() {
        anyhow::bail!("the cluster has no machines");
    }
    Ok(out)
}

/// Allocated shares of the cluster at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t_ms: u64,
    pub cpu: f64,
    pub memory: f64,
    pub gpu: f64,
}

/// What one policy did with the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub policy: SchedulerKind,
    /// From the first submission to the last end, ms.
    pub makespan_ms: u64,
    /// Submission to placement of every placed task, ms, sorted.
    pub waits_ms: Vec<u64>,
    /// Time-weighted mean allocated share over the makespan, 0..1.
    pub cpu: f64,
    pub memory: f64,
    pub gpu: f64,
    /// Still queued when everything else has ended (fits on no machine, even empty).
    pub never_placed: usize,
    /// Allocated shares after every event, for the SVG.
    pub samples: Vec<Sample>,
    /// Placements made.
    pub placed: usize,
}

impl Outcome {
    pub fn mean_wait_ms(&self) -> f64 {
        if self.waits_ms.is_empty() {
            return 0.0;
        }
        self.waits_ms.iter().sum::<u64>() as f64 / self.waits_ms.len() as f64
    }

    /// The 99th percentile (nearest rank).
    pub fn p99_wait_ms(&self) -> u64 {
        if self.waits_ms.is_empty() {
            return 0;
        }
        let rank = (0.99 * self.waits_ms.len() as f64).ceil() as usize;
        self.waits_ms[rank.clamp(1, self.waits_ms.len()) - 1]
    }
}

/// The cluster as the policy sees it, and the running tasks.
struct Cluster {
    workers: Vec<Candidate>,
    pools: Vec<GpuPool>,
    capacity: Resources,
    allocated: Resources,
    /// (end, task index, worker), soonest first.
    running: BinaryHeap<Reverse<(u64, usize, usize)>>,
}

impl Cluster {
    fn new(machines: &[Machine]) -> Cluster {
        let workers: Vec<Candidate> = machines
            .iter()
            .map(|m| Candidate {
                capacity: Resources {
                    cpu: m.cpu,
                    memory_gb: m.memory_gb,
                    gpu: m.gpu,
                    disk_gb: 0.0,
                },
                schedulable: true,
                has_runtime: true,
                ..Default::default()
            })
            .collect();
        let mut capacity = Resources::default();
        for w in &workers {
            capacity.cpu += w.capacity.cpu;
            capacity.memory_gb += w.capacity.memory_gb;
            capacity.gpu += w.capacity.gpu;
        }
        Cluster {
            pools: machines.iter().map(|m| GpuPool::new(0..m.gpu)).collect(),
            workers,
            capacity,
            allocated: Resources::default(),
            running: BinaryHeap::new(),
        }
    }

    fn sample(&self, t_ms: u64) -> Sample {
        let share = |a: f64, c: f64| if c > 0.0 { a / c } else { 0.0 };
        Sample {
            t_ms,
            cpu: share(self.allocated.cpu, self.capacity.cpu),
            memory: share(self.allocated.memory_gb, self.capacity.memory_gb),
            gpu: share(self.allocated.gpu as f64, self.capacity.gpu as f64),
        }
    }

    /// Books task `i` on worker `w`: its resources, its GPU indices, and what the
    /// machine's live CPU use becomes (the simulated tasks use what they asked for).
    fn place(&mut self, i: usize, w: usize, r: &Resources, end_ms: u64) -> bool {
        if self.pools[w].take(r.gpu, &i.to_string()).is_none() {
            return false;
        }
        let c = &mut self.workers[w];
        c.book(r);
        c.cpu_percent = (100.0 * c.allocated.cpu / c.capacity.cpu).min(100.0);
        self.allocated.cpu += r.cpu;
        self.allocated.memory_gb += r.memory_gb;
        self.allocated.gpu += r.gpu;
        self.running.push(Reverse((end_ms, i, w)));
        true
    }

    fn release(&mut self, i: usize, w: usize, r: &Resources) {
        self.pools[w].release(&i.to_string());
        let c = &mut self.workers[w];
        let a = &mut c.allocated;
        a.cpu = (a.cpu - r.cpu).max(0.0);
        a.memory_gb = (a.memory_gb - r.memory_gb).max(0.0);
        a.gpu -= r.gpu;
        c.cpu_percent = (100.0 * c.allocated.cpu / c.capacity.cpu).min(100.0);
        self.allocated.cpu = (self.allocated.cpu - r.cpu).max(0.0);
        self.allocated.memory_gb = (self.allocated.memory_gb - r.memory_gb).max(0.0);
        self.allocated.gpu -= r.gpu;
    }

    /// The most any one worker has free: a request above it fits nowhere (an upper bound
    /// once placements are made, so skipping by it never skips a task that fits).
    fn most_free(&self) -> Resources {
        let mut m = Resources::default();
        for w in &self.workers {
            let f = w.free();
            m.cpu = m.cpu.max(f.cpu);
            m.memory_gb = m.memory_gb.max(f.memory_gb);
            m.gpu = m.gpu.max(f.gpu);
        }
        m
    }
}

fn request(t: &TraceTask) -> Request {
    Request {
        resources: Resources {
            cpu: t.cpu,
            memory_gb: t.memory_gb,
            gpu: t.gpu,
            disk_gb: 0.0,
        },
        needs_runtime: false,
    }
}

/// Replays `trace` on `machines` under `policy`.
pub fn run(trace: &[TraceTask], machines: &[Machine], policy: SchedulerKind) -> Outcome {
    let mut scheduler = scheduler::new(policy);
    let mut cluster = Cluster::new(machines);
    let requests: Vec<Request> = trace.iter().map(request).collect();
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut waits = Vec::with_capacity(trace.len());
    let mut samples = vec![cluster.sample(0)];
    let start = trace.first().map_or(0, |t| t.submit_ms);
    let (mut next, mut last_end) = (0usize, start);
    let mut integral = (0.0, 0.0, 0.0);
    let mut now = start;
    loop {
        let next_submit = trace.get(next).map(|t| t.submit_ms);
        let next_end = cluster.running.peek().map(|Reverse((end, _, _))| *end);
        let Some(t) = [next_submit, next_end].into_iter().flatten().min() else {
            break;
        };
        // The shares held since the last event, over the time that passed.
        let s = cluster.sample(now);
        let dt = (t - now) as f64;
        integral.0 += s.cpu * dt;
        integral.1 += s.memory * dt;
        integral.2 += s.gpu * dt;
        now = t;
        while let Some(&Reverse((end, i, w))) = cluster.running.peek() {
            if end != t {
                break;
            }
            cluster.running.pop();
            cluster.release(i, w, &requests[i].resources);
            last_end = last_end.max(end);
        }
        while next < trace.len() && trace[next].submit_ms == t {
            let at = queue::position(&queue, trace[next].priority, false, |&q| trace[q].priority);
            queue.insert(at, next);
            next += 1;
        }
        // One pass over the whole queue, in order, placing whatever fits (backfill).
        // Free resources only shrink during a pass, so a request at least as large as one
        // that found no place cannot find one either: the policy is not asked (it would
        // say None, and None changes no policy's state), which keeps a long queue cheap.
        let most = cluster.most_free();
        let mut failed: Vec<Resources> = Vec::new();
        let mut left = VecDeque::with_capacity(queue.len());
        let mut held: Vec<usize> = Vec::new();
        for i in queue.drain(..) {
            let r = &requests[i];
            let q = &r.resources;
            let hopeless = q.cpu > most.cpu + 1e-9
                || q.memory_gb > most.memory_gb + 1e-9
                || q.gpu > most.gpu
                || failed
                    .iter()
                    .any(|f| q.cpu >= f.cpu && q.memory_gb >= f.memory_gb && q.gpu >= f.gpu);
            let placed = !hopeless
                && match scheduler.place(&cluster.workers, r) {
                    Some(w) => cluster.place(i, w, q, t + trace[i].duration_ms),
                    None => {
                        failed.push(*q);
                        false
                    }
                };
            if placed {
                waits.push(t - trace[i].submit_ms);
            } else {
                // As the master does: a task that waited too long has a worker held for it.
                if t - trace[i].submit_ms >= scheduler::RESERVE_AFTER_MS
                    && held.len() < scheduler::MAX_HELD
                    && let Some(w) = scheduler::reservation(&cluster.workers, r)
                {
                    cluster.workers[w].schedulable = false;
                    held.push(w);
                }
                left.push_back(i);
            }
        }
        for w in held.drain(..) {
            cluster.workers[w].schedulable = true;
        }
        queue = left;
        samples.push(cluster.sample(t));
    }
    let span = (last_end - start).max(1) as f64;
    waits.sort_unstable();
    Outcome {
        policy,
        makespan_ms: last_end - start,
        placed: waits.len(),
        waits_ms: waits,
        cpu: integral.0 / span,
        memory: integral.1 / span,
        gpu: integral.2 / span,
        never_placed: queue.len(),
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::trace::synthetic;

    fn task(submit_s: u64, duration_s: u64, cpu: f64, gpu: u32, priority: i32) -> TraceTask {
        TraceTask {
            submit_ms: submit_s * 1000,
            duration_ms: duration_s * 1000,
            cpu,
            memory_gb: 1.0,
            gpu,
            priority,
        }
    }

    #[test]
    fn priority_first_fifo_within_and_no_head_of_line_blocking() {
        let machines = parse_cluster("1x4:16:0").unwrap();
        let trace = vec![
            task(0, 10, 4.0, 0, 0), // takes the machine until t=10
            task(1, 10, 8.0, 0, 9), // fits nowhere, ever: must not block the rest
            task(2, 10, 4.0, 0, 0), // low, first
            task(3, 10, 4.0, 0, 5), // high: goes before the one at t=2
            task(4, 10, 4.0, 0, 0), // low, second
        ];
        let out = run(&trace, &machines, SchedulerKind::ResourceAware);
        assert_eq!(out.never_placed, 1);
        // Starts: 0 at 0; 3 at 10; 2 at 20; 4 at 30.
        assert_eq!(out.waits_ms, vec![0, 7_000, 18_000, 26_000]);
        assert_eq!(out.makespan_ms, 40_000);
        assert!((out.cpu - 1.0).abs() < 1e-9, "{}", out.cpu);
    }

    /// A machine kept three-quarters busy by a steady stream of small tasks never has all
    /// four CPUs free at once: a large task gets it held after five minutes of waiting, and
    /// runs within the hour (with backfill alone it waited until the stream ended, 12 h on).
    #[test]
    fn a_large_task_is_not_starved_by_a_stream_of_small_ones() {
        let machines = parse_cluster("1x4:16:0").unwrap();
        let mut trace: Vec<TraceTask> = (0..216).map(|k| task(k * 200, 600, 1.0, 0, 0)).collect();
        trace.push(task(60, 600, 4.0, 0, 0));
        trace.sort_by_key(|t| t.submit_ms);
        let out = run(&trace, &machines, SchedulerKind::ResourceAware);
        assert_eq!(out.never_placed, 0);
        let longest = *out.waits_ms.last().unwrap();
        assert!(longest < 3_600_000, "longest wait {longest} ms");
        assert!(out.makespan_ms < 13 * 3_600_000, "{}", out.makespan_ms);
    }

    #[test]
    fn gpu_tasks_wait_for_free_indices() {
        let machines = parse_cluster("1x8:64:2").unwrap();
        let trace = vec![
            task(0, 10, 1.0, 1, 0),
            task(0, 10, 1.0, 1, 0),
            task(0, 10, 1.0, 1, 0),
        ];
        let out = run(&trace, &machines, SchedulerKind::BinPack);
        assert_eq!(out.waits_ms, vec![0, 0, 10_000]);
        assert!((out.gpu - 0.75).abs() < 1e-9, "{}", out.gpu);
    }

    #[test]
    fn a_replay_is_deterministic_for_a_seed() {
        let machines = parse_cluster("4x16:64:0,1x32:256:4").unwrap();
        let trace = synthetic(11, 400, 6.0);
        for policy in SchedulerKind::ALL {
            assert_eq!(
                run(&trace, &machines, policy),
                run(&trace, &machines, policy)
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        /// Any seed: the same trace and the same figures twice, for every policy.
        #[test]
        fn replay_is_deterministic_for_any_seed(seed in proptest::prelude::any::<u64>()) {
            let machines = parse_cluster("3x8:32:0,1x16:128:2").unwrap();
            let trace = synthetic(seed, 150, 4.0);
            proptest::prop_assert_eq!(&trace, &synthetic(seed, 150, 4.0));
            for policy in SchedulerKind::ALL {
                let (a, b) = (run(&trace, &machines, policy), run(&trace, &machines, policy));
                proptest::prop_assert_eq!(a, b);
            }
        }
    }
}
