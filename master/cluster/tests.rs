//! Unit tests of the cluster: liveness at read time, streams, stalls, mass removals.
use super::*;
use herd::domain::{Resources, WorkerSpec};
use tokio::sync::mpsc;

pub(crate) fn spec(name: &str) -> WorkerSpec {
    WorkerSpec {
        name: name.into(),
        host: "h".into(),
        address: "127.0.0.1".into(),
        version: "t".into(),
        capacity: Resources {
            cpu: 2.0,
            memory_gb: 4.0,
            gpu: 0,
            disk_gb: 0.0,
        },
        labels: Default::default(),
        runtime: None,
        isolation: String::new(),
        gpus: Vec::new(),
    }
}

fn cluster() -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let r = registry_on(Store::scratch(dir.path()), Metrics::new());
    (r, dir)
}

/// The cluster these tests use (30 s heartbeat timeout, 600 s worker timeout), on `store`.
pub(crate) fn registry_on(store: Store, metrics: Arc<Metrics>) -> Cluster {
    Cluster::new(
        Settings {
            liveness: Liveness::new(Duration::from_secs(30), Duration::from_secs(600)),
            heartbeat_interval: Duration::from_secs(5),
            check_interval: Duration::from_secs(1),
            max_attempts: 3,
            scheduler: SchedulerKind::ResourceAware,
        },
        store,
        metrics,
        crate::events::Events::new(),
    )
}

/// A plain process task asking for `cpu` CPUs.
fn task_spec(cpu: f64) -> herd::domain::TaskSpec {
    herd::domain::TaskSpec {
        name: String::new(),
        image: None,
        command: Some("true".into()),
        resources: Resources {
            cpu,
            memory_gb: 0.0,
            gpu: 0,
            disk_gb: 0.0,
        },
        priority: 0,
        constraints: Vec::new(),
        run: Default::default(),
    }
}

fn listed(r: &Cluster, all: bool) -> usize {
    r.list(all, "", usize::MAX, usize::MAX).0.len()
}

/// The secret every worker of these tests is issued and presents.
const SECRET: &str = "the-secret";

/// Registers `spec` as its own process would: presenting [`SECRET`] (once issued).
fn register(r: &Cluster, spec: WorkerSpec) -> Registered {
    r.register(spec, SECRET, None, (SECRET.into(), secret::digest(SECRET)))
        .unwrap()
}

fn hb(id: &str, sequence: u64) -> pb::Heartbeat {
    pb::Heartbeat {
        worker_id: id.into(),
        sequence,
        worker_secret: SECRET.into(),
        ..Default::default()
    }
}

fn state(r: &Cluster, id: &str) -> pb::WorkerState {
    r.get(id).unwrap().state()
}

/// Lets `d` pass while the master keeps running (touched every half second, as the
/// ticker would), so no stall is seen.
async fn pass(r: &Cluster, d: Duration) {
    let mut left = d;
    while !left.is_zero() {
        let step = left.min(Duration::from_millis(500));
        tokio::time::advance(step).await;
        r.summary();
        left -= step;
    }
}

#[tokio::test(start_paused = true)]
async fn liveness_follows_the_timeouts_exactly() {
    let (r, _dir) = cluster();
    let id = register(&r, spec("a")).id;
    assert_eq!(state(&r, &id), pb::WorkerState::Inactive, "no stream yet");
    let (tx, _rx) = mpsc::channel(4);
    let acc = r.connect(&hb(&id, 1), tx, None).unwrap();
    assert_eq!(state(&r, &id), pb::WorkerState::Active);

    pass(&r, Duration::from_millis(29_999)).await;
    assert_eq!(
        state(&r, &id),
        pb::WorkerState::Active,
        "before the timeout"
    );
    pass(&r, Duration::from_millis(1)).await;
    assert_eq!(
        state(&r, &id),
        pb::WorkerState::Inactive,
        "read time, no tick"
    );

    r.heartbeat(&id, acc.generation, &hb(&id, 2)).unwrap();
    assert_eq!(
        state(&r, &id),
        pb::WorkerState::Active,
        "a heartbeat revives it"
    );

    pass(&r, Duration::from_secs(600)).await;
    assert_eq!(state(&r, &id), pb::WorkerState::Removed);
    let out = r.tick(false);
    assert_eq!(out.removed, vec![id.clone()]);
    assert_eq!(out.rows.last().unwrap().state, WorkerState::Removed);
    let err = r.heartbeat(&id, acc.generation, &hb(&id, 3)).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(listed(&r, false) == 0, "Removed is hidden without --all");
    assert_eq!(listed(&r, true), 1);

    let again = register(&r, spec("a"));
    assert_eq!(again.id, id, "coming back by name keeps the id");
    assert!(again.reregistered);
    let (tx, _rx) = mpsc::channel(4);
    r.connect(&hb(&id, 1), tx, None).unwrap();
    assert_eq!(state(&r, &id), pb::WorkerState::Active);
}

#[tokio::test(start_paused = true)]
async fn a_closed_stream_is_inactive_at_once() {
    let (r, _dir) = cluster();
    let id = register(&r, spec("a")).id;
    let (tx, _rx) = mpsc::channel(4);
    let acc = r.connect(&hb(&id, 1), tx, None).unwrap();
    r.disconnect(&id, acc.generation);
    assert_eq!(state(&r, &id), pb::WorkerState::Inactive);
}

#[tokio::test(start_paused = true)]
async fn a_newer_stream_wins_and_the_old_one_is_ended() {
    let (r, _dir) = cluster();
    let id = register(&r, spec("a")).id;
    let (tx1, _rx1) = mpsc::channel(4);
    let old = r.connect(&hb(&id, 1), tx1, None).unwrap();
    let (tx2, _rx2) = mpsc::channel(4);
    let new = r.connect(&hb(&id, 1), tx2, None).unwrap();
    assert_eq!(old.end.await.unwrap().code(), tonic::Code::Aborted);
    assert!(r.heartbeat(&id, old.generation, &hb(&id, 2)).is_err());
    r.disconnect(&id, old.generation);
    assert_eq!(
        state(&r, &id),
        pb::WorkerState::Active,
        "old close is ignored"
    );
    r.heartbeat(&id, new.generation, &hb(&id, 2)).unwrap();
}

#[test]
fn names_map_to_one_id_and_strangers_are_refused() {
    let (r, _dir) = cluster();
    let a = register(&r, spec("a")).id;
    let b = register(&r, spec("b")).id;
    assert_ne!(a, b);
    assert_eq!(register(&r, spec("a")).id, a);
    assert_eq!(listed(&r, true), 2);
    assert_eq!(r.get("b").unwrap().id, b);
    let (tx, _rx) = mpsc::channel(4);
    assert!(matches!(
        r.connect(&hb("w-nope", 1), tx, None),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        r.heartbeat(&a, 1, &hb(&b, 1)),
        Err(Error::PermissionDenied(_))
    ));
}

/// Workers registering in name order are appended, others go in their place: the list
/// is in name order either way. New ids follow each other (adjacent rows in SQLite).
#[test]
fn workers_stay_in_name_order_and_new_ids_follow_each_other() {
    let (r, _dir) = cluster();
    let ids: Vec<String> = ["b", "d", "a", "c", "e"]
        .into_iter()
        .map(|name| register(&r, spec(name)).id)
        .collect();
    let names: Vec<String> = r
        .list(true, "", usize::MAX, usize::MAX)
        .0
        .into_iter()
        .map(|w| w.description.unwrap().name)
        .collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    let numbers: Vec<u32> = ids
        .iter()
        .map(|id| u32::from_str_radix(id.strip_prefix("w-").unwrap(), 16).unwrap())
        .collect();
    for pair in numbers.windows(2) {
        assert_eq!(pair[1], pair[0].wrapping_add(1), "ids {ids:?}");
    }
}

/// Names in every kind of order (in order, reversed, nearly in order as many
/// registrations in flight give them, shuffled) list in name order.
#[test]
fn names_in_any_arrival_order_list_in_name_order() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut nearly: Vec<usize> = (0..300).collect();
    for i in 0..nearly.len() {
        let j = (i + rng.usize(0..12)).min(nearly.len() - 1);
        nearly.swap(i, j);
    }
    let mut shuffled: Vec<usize> = (0..300).collect();
    rng.shuffle(&mut shuffled);
    for arrivals in [
        (0..300).collect(),
        (0..300).rev().collect(),
        nearly,
        shuffled,
    ] {
        let (r, _dir) = cluster();
        for &i in &arrivals {
            register(&r, spec(&format!("host{i:03}")));
        }
        let names: Vec<String> = r
            .list(true, "", usize::MAX, usize::MAX)
            .0
            .into_iter()
            .map(|w| w.description.unwrap().name)
            .collect();
        let expected: Vec<String> = (0..300).map(|i| format!("host{i:03}")).collect();
        assert_eq!(names, expected, "arrivals {arrivals:?}");
    }
}

/// After a take-over, a worker the store had Active stays Active for the failover grace
/// (2 x the 30 s heartbeat timeout here), then turns Inactive, written back; one that was
/// Inactive is Inactive at once. Neither is Removed for the master's downtime.
#[tokio::test(start_paused = true)]
async fn loaded_workers_get_the_failover_grace_and_are_not_removed_for_the_masters_downtime() {
    let (r, _dir) = cluster();
    let record = |id: &str, name: &str, state| WorkerRecord {
        id: id.into(),
        spec: spec(name),
        registered_at_ms: 1,
        last_heartbeat_ms: 1, // long, long ago
        state,
        draining: false,
        added_labels: Default::default(),
        secret_hash: None,
    };
    r.load(
        vec![
            record("w-1", "a", WorkerState::Active),
            record("w-2", "b", WorkerState::Inactive),
        ],
        Vec::new(),
        Vec::new(),
        0,
    );
    assert_eq!(
        state(&r, "w-1"),
        pb::WorkerState::Active,
        "within the grace"
    );
    assert_eq!(state(&r, "w-2"), pb::WorkerState::Inactive);
    let out = r.tick(false);
    assert!(out.rows.is_empty(), "nothing changed: {:?}", out.rows);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(state(&r, "w-1"), pb::WorkerState::Active);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        state(&r, "w-1"),
        pb::WorkerState::Inactive,
        "the grace is over"
    );
    let out = r.tick(false);
    assert_eq!(out.rows.len(), 1);
    assert_eq!(out.rows[0].state, WorkerState::Inactive, "written back");
    assert!(out.removed.is_empty());
    // Known from before secrets: it is issued one when it registers again.
    let again = r
        .register(spec("a"), "", None, (SECRET.into(), secret::digest(SECRET)))
        .unwrap();
    assert_eq!(
        (again.id.as_str(), again.secret.as_deref()),
        ("w-1", Some(SECRET))
    );
}

#[tokio::test(start_paused = true)]
async fn a_name_is_only_taken_with_its_secret_and_the_holder_is_not_disturbed() {
    let (r, _dir) = cluster();
    let first = register(&r, spec("dup"));
    assert_eq!(
        first.secret.as_deref(),
        Some(SECRET),
        "issued at the first registration"
    );
    let (tx, _rx) = mpsc::channel(4);
    let mut held = r.connect(&hb(&first.id, 1), tx, None).unwrap();
    let fresh = || ("other".to_string(), secret::digest("other"));
    for presented in ["", "a-guess"] {
        let refused = r.register(spec("dup"), presented, None, fresh());
        let Err(Error::AlreadyExists(why)) = refused else {
            panic!("{refused:?}");
        };
        assert!(why.contains("'dup'") && why.contains(&first.id), "{why}");
    }
    // A stream for its id without the secret cannot replace the open one.
    let (tx, _rx) = mpsc::channel(4);
    let mut forged = hb(&first.id, 2);
    forged.worker_secret = "a-guess".into();
    assert!(matches!(
        r.connect(&forged, tx, None),
        Err(Error::PermissionDenied(_))
    ));
    assert!(held.end.try_recv().is_err(), "the open stream is untouched");
    assert!(
        r.heartbeat(&first.id, held.generation, &hb(&first.id, 3))
            .is_ok()
    );
    assert_eq!(state(&r, &first.id), pb::WorkerState::Active);
    // Coming back with it keeps the id, and issues nothing new.
    let again = register(&r, spec("dup"));
    assert_eq!((again.id, again.secret), (first.id, None));
}

#[tokio::test(start_paused = true)]
async fn a_stall_of_the_master_removes_no_one_and_restarts_every_clock() {
    let (r, _dir) = cluster();
    let id = register(&r, spec("a")).id;
    let (tx, _rx) = mpsc::channel(4);
    r.connect(&hb(&id, 1), tx, None).unwrap();
    // Paused far past the worker timeout: nothing ran, so nothing is held against it.
    tokio::time::advance(Duration::from_secs(700)).await;
    assert_eq!(state(&r, &id), pb::WorkerState::Active, "a fresh timeout");
    assert!(r.tick(false).removed.is_empty());
    // Its own silence after the stall still counts.
    pass(&r, Duration::from_secs(30)).await;
    assert_eq!(state(&r, &id), pb::WorkerState::Inactive);
}

#[tokio::test(start_paused = true)]
async fn removing_most_workers_at_once_is_held_back_for_a_while() {
    let (r, _dir) = cluster();
    let ids: Vec<String> = ["a", "b", "c"]
        .into_iter()
        .map(|n| register(&r, spec(n)).id)
        .collect();
    let mut streams = Vec::new();
    for id in &ids {
        let (tx, rx) = mpsc::channel(4);
        r.connect(&hb(id, 1), tx, None).unwrap();
        streams.push(rx);
    }
    // All three go silent while the master keeps running (ticks every half second).
    let mut left = Duration::from_secs(600);
    while !left.is_zero() {
        let step = left.min(Duration::from_millis(500));
        tokio::time::advance(step).await;
        assert!(r.tick(false).removed.is_empty(), "held");
        left -= step;
    }
    assert_eq!(
        state(&r, &ids[0]),
        pb::WorkerState::Inactive,
        "held, not Removed"
    );
    // After the hold (one heartbeat timeout), they go.
    let mut removed = Vec::new();
    let mut waited = Duration::ZERO;
    while removed.is_empty() {
        tokio::time::advance(Duration::from_millis(500)).await;
        waited += Duration::from_millis(500);
        removed = r.tick(false).removed;
    }
    assert!(waited >= Duration::from_secs(30), "{waited:?}");
    assert_eq!(removed.len(), 3);
    assert_eq!(state(&r, &ids[0]), pb::WorkerState::Removed);
}

/// The scheduler keeps its view of workers between passes; time alone (no tick, no
/// heartbeat) makes a worker Inactive, and no task may go there even so.
#[tokio::test(start_paused = true)]
async fn a_worker_silent_past_the_timeout_gets_no_task_even_before_a_tick() {
    let (r, _dir) = cluster();
    let a = register(&r, spec("a")).id;
    let b = register(&r, spec("b")).id;
    let (tx_a, _rx_a) = mpsc::channel(16);
    let (tx_b, _rx_b) = mpsc::channel(16);
    r.connect(&hb(&a, 1), tx_a, None).unwrap();
    let acc_b = r.connect(&hb(&b, 1), tx_b, None).unwrap();
    let spec1 = || task_spec(1.0);
    // One task on each (ties go to the first by name): both are in the scheduler's view,
    // Active, with one CPU free.
    assert_eq!(r.enqueue(r.new_task(spec1())).worker_id, a);
    assert_eq!(r.enqueue(r.new_task(spec1())).worker_id, b);
    // Only b keeps heartbeating; a goes silent past the timeout, with no tick between.
    for seq in 2..=8 {
        pass(&r, Duration::from_secs(5)).await;
        r.heartbeat(&b, acc_b.generation, &hb(&b, seq)).unwrap();
    }
    assert_eq!(state(&r, &a), pb::WorkerState::Inactive);
    let t = r.enqueue(r.new_task(spec1()));
    assert_eq!(t.worker_id, b, "placed on a worker silent past its timeout");
}

/// A task that waited five minutes while smaller ones took the room it needs gets a worker
/// held for it: later (smaller) tasks no longer go there, so it fits once that drains.
#[tokio::test(start_paused = true)]
async fn a_long_waiting_large_task_has_a_worker_held_for_it() {
    let (r, _dir) = cluster();
    let a = register(&r, spec("a")).id;
    let (tx, _rx) = mpsc::channel(64);
    r.connect(&hb(&a, 1), tx, None).unwrap();
    let task = task_spec;
    // `a` has 2 CPUs: one small task takes half of it.
    assert_eq!(r.enqueue(r.new_task(task(1.0))).worker_id, a);
    // A large one that has waited long (submitted six minutes ago) cannot fit now.
    let mut large = r.new_task(task(2.0));
    large.submitted_ms -= 6 * 60 * 1000;
    let large = r.enqueue(large);
    assert!(large.worker_id.is_empty());
    assert!(
        large.reason.contains("worker a is held for it"),
        "{}",
        large.reason
    );
    // A small task that would fit is not placed on the held worker.
    let small = r.enqueue(r.new_task(task(1.0)));
    assert!(
        small.worker_id.is_empty(),
        "backfilled onto the held worker"
    );
    // A large task that has not waited long does not hold anything.
    let (r2, _dir2) = cluster();
    let b = register(&r2, spec("b")).id;
    let (tx2, _rx2) = mpsc::channel(64);
    r2.connect(&hb(&b, 1), tx2, None).unwrap();
    assert_eq!(r2.enqueue(r2.new_task(task(1.0))).worker_id, b);
    let fresh = r2.enqueue(r2.new_task(task(2.0)));
    assert!(!fresh.reason.contains("held"), "{}", fresh.reason);
    assert_eq!(r2.enqueue(r2.new_task(task(1.0))).worker_id, b, "backfill");
}

/// Tasks whose rows could not be stored are withdrawn: out of the queue and off their
/// worker, whose room goes to the next task.
#[tokio::test]
async fn a_withdrawn_task_frees_its_worker_and_leaves_the_queue() {
    let (r, _dir) = cluster();
    let a = register(&r, spec("a")).id;
    let (tx, _rx) = mpsc::channel(16);
    r.connect(&hb(&a, 1), tx, None).unwrap();
    let cpus = spec("a").capacity.cpu;
    let placed = r.enqueue(r.new_task(task_spec(cpus)));
    assert_eq!(placed.worker_id, a);
    let waiting = r.enqueue(r.new_task(task_spec(cpus)));
    assert!(waiting.worker_id.is_empty(), "the worker is full");
    r.withdraw(&[placed.id.clone(), waiting.id.clone()]);
    assert!(
        !matches!(r.task(&placed.id), Ok(crate::tasks::Lookup::Here(_))),
        "still in memory"
    );
    let next = r.enqueue(r.new_task(task_spec(cpus)));
    assert_eq!(next.worker_id, a, "the withdrawn task's room was not freed");
}
