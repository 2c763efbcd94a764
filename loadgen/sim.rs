//! Simulated workers: what each one does on its heartbeat stream (by [`Mode`]), how it
//! "runs" a task (at once: Started and Succeeded), and [`Arrivals`], where the driver
//! learns when a task reached its worker.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use herd::pb;
use herd::pb::master_message::Body as FromMaster;
use herd::pb::registry_client::RegistryClient;
use herd::pb::worker_message::Body as ToMaster;

use crate::cluster::join_bearer;

/// What a simulated worker does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Heartbeat every interval.
    Normal,
    /// Keep the stream open, send nothing.
    Silent,
    /// Close the stream and stop.
    Closed,
    /// Heartbeat as fast as acknowledgements come back (8 in flight).
    Flood,
}

/// When tasks reached their workers, and who waits to hear of one. One lock for both, so
/// a task that arrives while its waiter is being registered is never missed (with two
/// locks, the arrival could land between the waiter's two looks: the failure "a task
/// never reached a worker" that herd-bench reported at its defaults).
#[derive(Default)]
pub struct Arrivals {
    inner: Mutex<ArrivalsInner>,
}

#[derive(Default)]
struct ArrivalsInner {
    /// Arrived before anyone asked.
    arrived: HashMap<String, Instant>,
    waiting: HashMap<String, oneshot::Sender<Instant>>,
}

impl Arrivals {
    /// Task `id` reached its worker `at`.
    pub fn arrived(&self, id: &str, at: Instant) {
        let mut inner = self.inner.lock().unwrap();
        match inner.waiting.remove(id) {
            Some(waiter) => {
                let _ = waiter.send(at);
            }
            None => {
                inner.arrived.insert(id.to_string(), at);
            }
        }
    }

    /// When task `id` reaches (or reached) its worker.
    pub fn when(&self, id: &str) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().unwrap();
        match inner.arrived.remove(id) {
            Some(at) => {
                let _ = tx.send(at);
            }
            None => {
                inner.waiting.insert(id.to_string(), tx);
            }
        }
        rx
    }

    /// Forgets arrivals nobody asked about (tasks of the bulk phase).
    pub fn clear(&self) {
        self.inner.lock().unwrap().arrived.clear();
    }
}

/// Shared by every simulated worker.
pub struct Shared {
    pub interval: Duration,
    /// Heartbeat-to-ack latencies in µs, while recording.
    pub latencies: Mutex<Vec<u32>>,
    pub recording: AtomicU8,
    pub arrivals: Arrivals,
    pub tasks_started: AtomicU64,
    /// The connections the workers open their streams on, and how often they were
    /// replaced (the fail-over phase points them at the standby master).
    conns: RwLock<(Vec<Channel>, u64)>,
    /// Workers with an acknowledged stream on the newest connections.
    pub rejoined: AtomicU64,
    /// As herd-worker does: every final task update is repeated in each heartbeat until
    /// the master acknowledges it committed (the fail-over phase turns this on).
    pub repeat_results: AtomicBool,
    /// Per task, how often it reached a worker, while counting (the fail-over phase).
    pub starts: Mutex<Option<HashMap<String, u32>>>,
}

impl Shared {
    pub fn new(interval: Duration, conns: Vec<Channel>) -> Shared {
        Shared {
            interval,
            latencies: Mutex::new(Vec::new()),
            recording: AtomicU8::new(0),
            arrivals: Arrivals::default(),
            tasks_started: AtomicU64::new(0),
            conns: RwLock::new((conns, 0)),
            rejoined: AtomicU64::new(0),
            repeat_results: AtomicBool::new(false),
            starts: Mutex::new(None),
        }
    }

    /// The connection worker `i` uses now, and the generation of the connections.
    pub fn channel(&self, i: usize) -> (Channel, u64) {
        let conns = self.conns.read().unwrap();
        (conns.0[i % conns.0.len()].clone(), conns.1)
    }

    /// Points every worker's next stream at `conns`.
    pub fn move_to(&self, conns: Vec<Channel>) {
        let mut current = self.conns.write().unwrap();
        *current = (conns, current.1 + 1);
        self.rejoined.store(0, Ordering::SeqCst);
    }
}

/// One simulated worker as the driver sees it.
pub struct Sim {
    pub id: String,
    pub mode: watch::Sender<Mode>,
}

pub fn description(i: usize) -> pb::WorkerDescription {
    pb::WorkerDescription {
        name: format!("sim-{i:05}"),
        host: "bench".into(),
        address: "127.0.0.1".into(),
        version: herd::VERSION.into(),
        capacity: Some(pb::Resources {
            cpu: 64.0,
            memory_gb: 256.0,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A heartbeat; the first of a stream carries the worker's `secret`, and each carries the
/// final updates not yet acknowledged.
fn heartbeat(
    id: &str,
    sequence: u64,
    secret: &str,
    finished: &[pb::TaskUpdate],
) -> pb::WorkerMessage {
    pb::WorkerMessage {
        body: Some(ToMaster::Heartbeat(pb::Heartbeat {
            worker_id: id.to_string(),
            sequence,
            activity: pb::WorkerActivity::Idle as i32,
            usage: Some(pb::Usage::default()),
            worker_secret: secret.to_string(),
            finished: finished.to_vec(),
            ..Default::default()
        })),
    }
}

/// One simulated worker: keeps its stream, heartbeats by its mode, runs tasks instantly,
/// reconnects with backoff (and registers again on NOT_FOUND) like herd-worker does.
pub async fn simulate(
    shared: Arc<Shared>,
    index: usize,
    name: pb::WorkerDescription,
    sim_id: String,
    mut secret: String,
    mut mode: watch::Receiver<Mode>,
) {
    let mut id = sim_id;
    let mut sequence = 0u64;
    let mut backoff = Duration::from_millis(200);
    // Final updates not yet acknowledged (only while `repeat_results`).
    let mut unacked: Vec<pb::TaskUpdate> = Vec::new();
    // The connections' generation this worker last had an acknowledged stream on.
    let mut joined = None;
    loop {
        if *mode.borrow() == Mode::Closed {
            return;
        }
        let (channel, generation) = shared.channel(index);
        let mut registry = RegistryClient::with_interceptor(channel, join_bearer());
        let (tx, rx) = mpsc::channel::<pb::WorkerMessage>(64);
        sequence += 1;
        let _ = tx.try_send(heartbeat(&id, sequence, &secret, &unacked));
        let mut inbound = match registry.heartbeat(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                if let Ok(r) = registry
                    .register(pb::RegisterRequest {
                        worker: Some(name.clone()),
                        worker_secret: secret.clone(),
                    })
                    .await
                {
                    let r = r.into_inner();
                    id = r.worker_id;
                    if !r.worker_secret.is_empty() {
                        secret = r.worker_secret;
                    }
                }
                continue;
            }
            Err(_) => {
                tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
                backoff = (backoff * 2).min(backoff_cap(shared.interval));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let mut pending: VecDeque<(u64, Instant)> = VecDeque::new();
        pending.push_back((sequence, Instant::now()));
        let mut ticks = tokio::time::interval(shared.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let lost = loop {
            let current = *mode.borrow_and_update();
            if current == Mode::Closed {
                return;
            }
            if current == Mode::Flood && pending.len() < 8 {
                sequence += 1;
                if tx.send(heartbeat(&id, sequence, "", &[])).await.is_err() {
                    break true;
                }
                pending.push_back((sequence, Instant::now()));
                continue;
            }
            tokio::select! {
                _ = mode.changed() => {}
                _ = ticks.tick() => {
                    if current == Mode::Flood {
                        // Acknowledgements a busy master dropped: do not wait for them.
                        pending.clear();
                    }
                    if current == Mode::Normal {
                        sequence += 1;
                        if tx.send(heartbeat(&id, sequence, "", &unacked)).await.is_err() {
                            break true;
                        }
                        pending.push_back((sequence, Instant::now()));
                        // Acks may be dropped by a busy master; forget old sends.
                        while pending.len() > 16 {
                            pending.pop_front();
                        }
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(pb::MasterMessage { body: Some(FromMaster::Ack(ack)) })) => {
                        if joined != Some(generation) {
                            joined = Some(generation);
                            shared.rejoined.fetch_add(1, Ordering::SeqCst);
                        }
                        unacked.retain(|u| !ack.finished_task_ids.contains(&u.task_id));
                        while let Some((seq, at)) = pending.front().copied() {
                            if seq > ack.sequence {
                                break;
                            }
                            pending.pop_front();
                            if seq == ack.sequence && shared.recording.load(Ordering::Relaxed) == 1 {
                                let micros = at.elapsed().as_micros().min(u32::MAX as u128) as u32;
                                shared.latencies.lock().unwrap().push(micros);
                            }
                        }
                    }
                    Ok(Some(pb::MasterMessage { body: Some(FromMaster::Assign(task)) })) => {
                        shared.tasks_started.fetch_add(1, Ordering::Relaxed);
                        shared.arrivals.arrived(&task.task_id, Instant::now());
                        if let Some(starts) = shared.starts.lock().unwrap().as_mut() {
                            *starts.entry(task.task_id.clone()).or_default() += 1;
                        }
                        for event in [pb::TaskEvent::Started, pb::TaskEvent::Succeeded] {
                            let update = pb::TaskUpdate {
                                task_id: task.task_id.clone(),
                                attempt: task.attempt,
                                event: event as i32,
                                exit_code: (event == pb::TaskEvent::Succeeded).then_some(0),
                                message: String::new(),
                            };
                            if event == pb::TaskEvent::Succeeded
                                && shared.repeat_results.load(Ordering::Relaxed)
                            {
                                unacked.push(update.clone());
                            }
                            let update = pb::WorkerMessage {
                                body: Some(ToMaster::TaskUpdate(update)),
                            };
                            if tx.send(update).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break true,
                    Err(status) if status.code() == Code::NotFound => break false,
                    Err(_) => break true,
                },
            }
        };
        if lost {
            tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
            backoff = (backoff * 2).min(backoff_cap(shared.interval));
        }
    }
}

/// herd-worker's longest pause between attempts: one heartbeat interval, within 1..5 s.
fn backoff_cap(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(1), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver asks while the worker side reports, from two threads, many times: every
    /// waiter hears of its task. (The two-lock version this replaced lost some.)
    #[test]
    fn an_arrival_racing_its_waiter_is_never_missed() {
        let arrivals = Arc::new(Arrivals::default());
        let rounds = 20_000;
        let reporter = {
            let arrivals = arrivals.clone();
            std::thread::spawn(move || {
                for i in 0..rounds {
                    arrivals.arrived(&format!("t-{i}"), Instant::now());
                }
            })
        };
        let mut waits = Vec::with_capacity(rounds);
        for i in 0..rounds {
            waits.push(arrivals.when(&format!("t-{i}")));
        }
        reporter.join().unwrap();
        let missed = waits
            .into_iter()
            .filter_map(|mut rx| rx.try_recv().err())
            .count();
        assert_eq!(missed, 0, "waiters that never heard of their task");
    }
}
