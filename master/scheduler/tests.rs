//! The policies, filters, scorers and GPU pools: examples, then properties over random
//! snapshots and random sequences of placements and releases.

use super::*;
use proptest::prelude::*;

fn worker(cpu: f64, mem: f64, gpu: u32) -> Candidate {
    Candidate {
        capacity: Resources {
            cpu,
            memory_gb: mem,
            gpu,
            disk_gb: 100.0,
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
            disk_gb: 0.0,
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
    assert_eq!(
        ResourceAware::default().place(&workers, &req(1.0, 0.0, 0)),
        Some(1)
    );
    workers[0].allocated.cpu = 0.0;
    workers[1].cpu_percent = 90.0;
    assert_eq!(
        ResourceAware::default().place(&workers, &req(1.0, 0.0, 0)),
        Some(0)
    );
    // Only a worker with 4 free CPUs takes a 4-CPU task.
    workers[0].allocated.cpu = 1.0;
    assert_eq!(
        ResourceAware::default().place(&workers, &req(4.0, 0.0, 0)),
        Some(1)
    );
}

#[test]
fn bin_pack_fills_the_fullest_worker_that_fits() {
    let mut workers = vec![
        worker(4.0, 8.0, 0),
        worker(4.0, 8.0, 0),
        worker(4.0, 8.0, 0),
    ];
    // All empty: the first.
    assert_eq!(
        BinPack::default().place(&workers, &req(1.0, 0.0, 0)),
        Some(0)
    );
    workers[1].allocated.cpu = 2.0;
    assert_eq!(
        BinPack::default().place(&workers, &req(1.0, 0.0, 0)),
        Some(1)
    );
    // The fullest cannot take it: the next fullest.
    workers[1].allocated.cpu = 3.5;
    workers[2].allocated.cpu = 1.0;
    assert_eq!(
        BinPack::default().place(&workers, &req(1.0, 0.0, 0)),
        Some(2)
    );
}

#[test]
fn disk_is_counted_like_memory() {
    let mut workers = vec![worker(4.0, 8.0, 0)];
    let mut r = req(1.0, 0.0, 0);
    r.resources.disk_gb = 60.0;
    assert_eq!(ResourceAware::default().place(&workers, &r), Some(0));
    workers[0].book(&r.resources);
    assert_eq!(ResourceAware::default().place(&workers, &r), None);
    assert_eq!(
        why_not(&workers, &r),
        "no Active worker with 60 GB free disk"
    );
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
    assert_eq!(
        why_not(&workers, &req(1.0, 1.0, 1)),
        "no Active worker with 1 GPUs free"
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
        (0.5f64..64.0, 0.5f64..256.0, 0u32..4, 0.0f64..500.0),
        (0.0f64..1.2, 0.0f64..1.2, 0u32..5, 0.0f64..1.2),
        0.0f64..100.0,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |((cpu, mem, gpu, disk), (fc, fm, ag, fd), live, sched, rt)| Candidate {
                capacity: Resources {
                    cpu,
                    memory_gb: mem,
                    gpu,
                    disk_gb: disk,
                },
                allocated: Resources {
                    cpu: cpu * fc,
                    memory_gb: mem * fm,
                    gpu: ag.min(gpu + 1),
                    disk_gb: disk * fd,
                },
                cpu_percent: live,
                schedulable: sched,
                has_runtime: rt,
                draining: false,
            },
        )
}

fn arb_request() -> impl Strategy<Value = Request> {
    (
        0.01f64..16.0,
        0.0f64..64.0,
        0u32..3,
        prop_oneof![Just(0.0), 0.0f64..200.0],
        any::<bool>(),
    )
        .prop_map(|(c, m, g, d, rt)| Request {
            resources: Resources {
                cpu: c,
                memory_gb: m,
                gpu: g,
                disk_gb: d,
            },
            needs_runtime: rt,
        })
}

/// One step of a random history: place a task, or end the n-th running one.
#[derive(Debug, Clone)]
enum Step {
    Place(Request),
    Release(usize),
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            3 => arb_request().prop_map(Step::Place),
            2 => any::<usize>().prop_map(Step::Release),
        ],
        1..120,
    )
}

/// Empty workers with GPUs and disk, all schedulable.
fn arb_cluster() -> impl Strategy<Value = Vec<Candidate>> {
    prop::collection::vec(
        (
            0.5f64..32.0,
            0.5f64..128.0,
            0u32..5,
            0.0f64..300.0,
            any::<bool>(),
        ),
        1..12,
    )
    .prop_map(|ws| {
        ws.into_iter()
            .map(|(cpu, mem, gpu, disk, rt)| Candidate {
                capacity: Resources {
                    cpu,
                    memory_gb: mem,
                    gpu,
                    disk_gb: disk,
                },
                schedulable: true,
                has_runtime: rt,
                ..Default::default()
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn no_policy_picks_an_unfit_worker(
        workers in prop::collection::vec(arb_candidate(), 0..40),
        requests in prop::collection::vec(arb_request(), 1..20),
    ) {
        for kind in SchedulerKind::ALL {
            let mut scheduler = new(kind);
            let mut workers = workers.clone();
            for r in &requests {
                match scheduler.place(&workers, r) {
                    Some(i) => {
                        let w = &mut workers[i];
                        for (name, filter) in filters::FILTERS {
                            prop_assert!(filter(w, r), "{kind:?} chose a worker failing {name}");
                        }
                        w.book(&r.resources);
                    }
                    None => prop_assert!(!workers.iter().any(|w| w.fits(r)),
                        "{kind:?} found no place although one fits"),
                }
            }
        }
    }

    /// Under any sequence of placements and releases, for every policy: no worker holds
    /// more CPU, memory, disk or GPUs than it has, and no GPU index is held by two tasks.
    #[test]
    fn no_resource_is_ever_over_allocated(cluster in arb_cluster(), steps in arb_steps()) {
        for kind in SchedulerKind::ALL {
            let mut scheduler = new(kind);
            let mut workers = cluster.clone();
            let mut pools: Vec<gpus::GpuPool> =
                workers.iter().map(|w| gpus::GpuPool::new(0..w.capacity.gpu)).collect();
            // (task, worker, request, gpu indices)
            let mut running: Vec<(String, usize, Resources, Vec<u32>)> = Vec::new();
            for (n, step) in steps.iter().enumerate() {
                match step {
                    Step::Place(r) => {
                        let Some(i) = scheduler.place(&workers, r) else { continue };
                        let task = format!("t-{n}");
                        let ids = pools[i].take(r.resources.gpu, &task);
                        prop_assert!(ids.is_some(), "{kind:?}: worker {i} fits but has no free GPU");
                        workers[i].book(&r.resources);
                        running.push((task, i, r.resources, ids.unwrap_or_default()));
                    }
                    Step::Release(k) if !running.is_empty() => {
                        let (task, i, r, ids) = running.remove(k % running.len());
                        let a = &mut workers[i].allocated;
                        a.cpu -= r.cpu;
                        a.memory_gb -= r.memory_gb;
                        a.gpu -= r.gpu;
                        a.disk_gb -= r.disk_gb;
                        prop_assert_eq!(pools[i].release(&task), ids);
                    }
                    Step::Release(_) => {}
                }
                for (i, w) in workers.iter().enumerate() {
                    let on: Vec<_> = running.iter().filter(|t| t.1 == i).collect();
                    let sum = |f: fn(&Resources) -> f64| on.iter().map(|t| f(&t.2)).sum::<f64>();
                    prop_assert!(sum(|r| r.cpu) <= w.capacity.cpu + 1e-6, "{kind:?}: cpu");
                    prop_assert!(sum(|r| r.memory_gb) <= w.capacity.memory_gb + 1e-6, "{kind:?}: memory");
                    prop_assert!(sum(|r| r.disk_gb) <= w.capacity.disk_gb + 1e-6, "{kind:?}: disk");
                    let mut ids: Vec<u32> = on.iter().flat_map(|t| t.3.iter().copied()).collect();
                    let held = ids.len();
                    prop_assert!(held as u32 <= w.capacity.gpu, "{kind:?}: gpu count");
                    ids.sort_unstable();
                    ids.dedup();
                    prop_assert_eq!(ids.len(), held, "{:?}: a GPU index given to two tasks", kind);
                    prop_assert!(ids.iter().all(|&x| x < w.capacity.gpu));
                    prop_assert_eq!(pools[i].len() - pools[i].free(), held as u32);
                }
            }
        }
    }

    /// Each filter on its own: a worker failing it is never chosen, by any policy.
    #[test]
    fn a_worker_failing_any_one_filter_is_never_chosen(
        w in arb_candidate(),
        r in arb_request(),
        copies in 1usize..5,
    ) {
        let workers = vec![w; copies];
        for (name, filter) in filters::FILTERS {
            if filter(&w, &r) {
                continue;
            }
            for kind in SchedulerKind::ALL {
                prop_assert_eq!(new(kind).place(&workers, &r), None, "{:?} ignored {}", kind, name);
            }
        }
    }

    /// The scorers: fullness grows with what is allocated; spread prefers the emptier
    /// worker and bin-pack the fuller one, whatever the numbers.
    #[test]
    fn spread_and_pack_order_workers_oppositely(
        base in arb_candidate(),
        r in arb_request(),
        extra in 0.01f64..4.0,
    ) {
        let mut fuller = base;
        fuller.allocated.cpu += extra;
        let (a, b) = (scores::fullness_after(&base, &r), scores::fullness_after(&fuller, &r));
        prop_assert!(b >= a);
        prop_assert!(scores::spread(&fuller, &r) >= scores::spread(&base, &r));
        prop_assert!(scores::pack(&fuller, &r) >= scores::pack(&base, &r));
    }
}

/// At 20,000 workers a scoring policy compares a sample (a 100th of the cluster) from a
/// moving start: placements go round the cluster, the best of the sample wins, and a
/// worker that fits is never missed however few there are.
#[test]
fn large_clusters_are_sampled_from_a_moving_start_and_never_miss_a_fit() {
    let n = 20_000;
    let sample = sample_size(n);
    assert_eq!(sample, 200);
    assert_eq!(sample_size(10_000), 100);
    assert_eq!(sample_size(5_000), 100);
    let mut workers = vec![worker(4.0, 8.0, 0); n];
    for policy in [
        Box::new(ResourceAware::default()) as Box<dyn Scheduler>,
        Box::new(BinPack::default()),
    ] {
        let mut policy = policy;
        // Equal workers: each placement starts where the last sample ended.
        let picks: Vec<usize> = (0..4)
            .map(|_| policy.place(&workers, &req(1.0, 0.0, 0)).unwrap())
            .collect();
        assert!(
            picks.windows(2).all(|p| p[1] >= p[0] + sample),
            "{:?}: {picks:?}",
            policy.kind()
        );
    }
    // The best of the sample: one emptier worker within the next sample wins.
    let mut spread = ResourceAware::default();
    for w in &mut workers {
        w.allocated.cpu = 2.0;
    }
    workers[123].allocated.cpu = 0.0;
    assert_eq!(spread.place(&workers, &req(1.0, 0.0, 0)), Some(123));
    // Only one worker in the whole cluster fits: it is found, from any start.
    for w in &mut workers {
        w.allocated.cpu = 4.0;
    }
    workers[19_876].allocated.cpu = 0.0;
    for _ in 0..3 {
        assert_eq!(spread.place(&workers, &req(1.0, 0.0, 0)), Some(19_876));
    }
}
