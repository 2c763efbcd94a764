//! A harness for the task lifecycle without processes or network (as Nomad's scheduler
//! `Harness`): the real cluster, the real operations (`Master`) and a scratch SQLite
//! store in a temp dir, driven by fake workers that register, open a "stream" (the
//! cluster's own `connect`, with a channel standing in for gRPC), heartbeat and report.
//! What the master sends a worker is captured ([`Harness::sent_to`]). Time is tokio's:
//! tests pause it and [`Harness::advance`] it, so timeouts take no wall time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use herd::config::SchedulerKind;
use herd::domain::WorkerSpec;
use herd::pb;
use herd::pb::master_message::Body as ToWorker;

use crate::app::App;
use crate::cluster::{Cluster, Settings};
use crate::events::Events;
use crate::identity::{Caller, Credentials};
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::output::OutputDir;
use crate::store::Store;

mod lifecycle;

/// The heartbeat interval of harness masters; the heartbeat timeout is 5 s and the worker
/// timeout 30 s (see [`Harness::settings`]).
pub const INTERVAL: Duration = Duration::from_secs(1);
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the master sent a worker, in a form a test can compare.
#[derive(Debug, Clone, PartialEq)]
pub enum Sent {
    /// Run attempt `.1` of task `.0` with these GPU indices.
    Assign(String, u32, Vec<u32>),
    /// Stop attempt `.1` of task `.0`.
    Cancel(String, u32),
}

/// A fake worker: its id, secret, current stream and what came down it.
struct Fake {
    id: String,
    secret: String,
    generation: Option<u64>,
    sequence: u64,
    inbox: Option<mpsc::Receiver<Result<Box<pb::MasterMessage>, Status>>>,
    end: Option<oneshot::Receiver<Status>>,
    /// The attempts it runs: every assignment it was sent, until it finishes one.
    holding: Vec<(String, u32)>,
    /// Final updates not yet acknowledged: repeated in every heartbeat, as a worker does.
    unacked: Vec<pb::TaskUpdate>,
}

pub struct Harness {
    dir: tempfile::TempDir,
    settings: Settings,
    pub app: App,
    workers: HashMap<String, Fake>,
}

impl Harness {
    /// The settings of a harness master: heartbeat every second, Inactive after 5 s,
    /// Removed after 30 s, three placements at most.
    pub fn settings() -> Settings {
        Settings {
            liveness: Liveness::new(HEARTBEAT_TIMEOUT, WORKER_TIMEOUT),
            heartbeat_interval: INTERVAL,
            check_interval: INTERVAL,
            max_attempts: 3,
            scheduler: SchedulerKind::ResourceAware,
        }
    }

    pub fn new() -> Harness {
        Harness::with(Harness::settings())
    }

    pub fn with(settings: Settings) -> Harness {
        let dir = tempfile::tempdir().expect("a temp dir");
        let app = open(dir.path(), settings);
        Harness {
            dir,
            settings,
            app,
            workers: HashMap::new(),
        }
    }

    /// The cluster under test.
    pub fn cluster(&self) -> &Cluster {
        &self.app.cluster
    }

    /// Registers `name` with `cpu` CPUs, 16 GB and `gpus` GPUs (indices 0..gpus), stores
    /// it as the gRPC service does, and opens its stream with an empty first heartbeat.
    pub async fn join(&mut self, name: &str, cpu: f64, gpus: u32) {
        let description = pb::WorkerDescription {
            name: name.into(),
            host: "harness".into(),
            address: "127.0.0.1".into(),
            version: "test".into(),
            capacity: Some(pb::Resources {
                cpu,
                memory_gb: 16.0,
                gpu: gpus,
                disk_gb: 100.0,
            }),
            gpus: (0..gpus)
                .map(|index| pb::GpuDevice {
                    index,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let spec = WorkerSpec::try_from(description).expect("a valid worker");
        let kept = self.workers.get(name).map(|f| f.secret.clone());
        let registered = self
            .app
            .register(spec, kept.as_deref().unwrap_or(""), None)
            .await
            .expect("registered");
        let secret = registered.secret.or(kept).unwrap_or_default();
        // A worker that registers again (Removed, or the master forgot it) still holds
        // what it ran, and still has its unacknowledged results.
        let (holding, unacked) = self
            .workers
            .remove(name)
            .map(|f| (f.holding, f.unacked))
            .unwrap_or_default();
        self.workers.insert(
            name.into(),
            Fake {
                id: registered.id,
                secret,
                generation: None,
                sequence: 0,
                inbox: None,
                end: None,
                holding,
                unacked,
            },
        );
        self.connect(name).await.expect("the stream opens");
    }

    /// Opens a new stream for `name` (a reconnect, or a restarted agent): its first
    /// heartbeat lists what it holds and its unacknowledged results. Returns where the
    /// master said output resumes, per held attempt: `(task, attempt, offset)`.
    pub async fn connect(&mut self, name: &str) -> Result<Vec<(String, u32, u64)>, Status> {
        let (tx, rx) = mpsc::channel(1024);
        let fake = self.workers.get_mut(name).expect("a joined worker");
        fake.sequence += 1;
        let first = heartbeat(fake);
        let accepted = self
            .app
            .cluster
            .connect(&first, tx, None)
            .map_err(Status::from)?;
        fake.generation = Some(accepted.generation);
        fake.inbox = Some(rx);
        fake.end = Some(accepted.end);
        let resume = accepted
            .resume
            .into_iter()
            .map(|r| (r.task_id, r.attempt, r.offset))
            .collect();
        self.acknowledge(name, accepted.acked).await;
        Ok(resume)
    }

    /// The state the master shows for worker `name`.
    pub fn state_of(&self, name: &str) -> pb::WorkerState {
        self.cluster().get(name).expect("a known worker").state()
    }

    /// The id `name` was given.
    pub fn id(&self, name: &str) -> String {
        self.workers[name].id.clone()
    }

    /// A heartbeat from `name` on its stream: the attempts it holds and the final updates
    /// it has not had acknowledged. Returns the ids acknowledged (only once committed, as
    /// the gRPC service does).
    pub async fn heartbeat(&mut self, name: &str) -> Result<Vec<String>, Status> {
        let fake = self.workers.get_mut(name).expect("a joined worker");
        fake.sequence += 1;
        let hb = heartbeat(fake);
        let generation = fake.generation.expect("an open stream");
        let acked = self
            .app
            .cluster
            .heartbeat(&fake.id, generation, &hb)
            .map_err(Status::from)?;
        Ok(self.acknowledge(name, acked).await)
    }

    /// What the service does with acknowledgements of finished tasks: they leave only
    /// once the results are committed.
    async fn acknowledge(&mut self, name: &str, acked: Vec<String>) -> Vec<String> {
        if acked.is_empty() || self.app.store.sync().await.is_err() {
            return Vec::new();
        }
        let fake = self.workers.get_mut(name).expect("a joined worker");
        // An ended attempt is held until its result is acknowledged, as a worker does.
        let done: Vec<(String, u32)> = fake
            .unacked
            .iter()
            .filter(|u| acked.contains(&u.task_id))
            .map(|u| (u.task_id.clone(), u.attempt))
            .collect();
        fake.holding.retain(|h| !done.contains(h));
        fake.unacked.retain(|u| !acked.contains(&u.task_id));
        acked
    }

    /// `name` holds `attempt` of `task` (as after a restart of its agent, or for an
    /// attempt the master never sent it).
    pub fn hold(&mut self, name: &str, task: &str, attempt: u32) {
        let fake = self.workers.get_mut(name).expect("a joined worker");
        fake.holding.push((task.to_string(), attempt));
    }

    /// `name` no longer holds `task` (its host lost it), and has no result for it.
    pub fn drop_task(&mut self, name: &str, task: &str) {
        let fake = self.workers.get_mut(name).expect("a joined worker");
        fake.holding.retain(|(id, _)| id != task);
    }

    /// `attempt` of `task` ended on `name`: the result is sent on the stream at once and
    /// repeated in heartbeats until acknowledged. The stream's answer comes back.
    pub fn finish(
        &mut self,
        name: &str,
        task: &str,
        attempt: u32,
        event: pb::TaskEvent,
        exit_code: Option<i32>,
    ) -> Result<(), Status> {
        self.end_unsent(name, task, attempt, event, exit_code);
        self.update(name, task, attempt, event, exit_code)
    }

    /// `attempt` of `task` ended on `name`, but its result never reached the master (the
    /// stream broke with it in flight): it is repeated in heartbeats until acknowledged,
    /// and the attempt stays held until then.
    pub fn end_unsent(
        &mut self,
        name: &str,
        task: &str,
        attempt: u32,
        event: pb::TaskEvent,
        exit_code: Option<i32>,
    ) {
        let fake = self.workers.get_mut(name).expect("a joined worker");
        fake.unacked.push(report(task, attempt, event, exit_code));
    }

    /// Output of `attempt` of `task` from `name`, starting at byte `offset`.
    pub fn output(
        &mut self,
        name: &str,
        task: &str,
        attempt: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Status> {
        let fake = &self.workers[name];
        let generation = fake.generation.expect("an open stream");
        let output = pb::TaskOutput {
            task_id: task.into(),
            attempt,
            data: data.to_vec(),
            offset,
            stream: pb::OutputStream::Stdout as i32,
        };
        self.app
            .cluster
            .task_output(&fake.id, generation, &output)
            .map_err(Status::from)
    }

    /// The output the master keeps of `attempt` of `task`.
    pub async fn kept_output(&self, task: &str, attempt: u32) -> Vec<u8> {
        self.commit().await;
        self.app
            .store
            .output(task, attempt, 0, 1 << 20)
            .await
            .expect("readable")
            .1
    }

    /// A task update from `name` on its stream (Started, or a result sent at once).
    pub fn update(
        &mut self,
        name: &str,
        task: &str,
        attempt: u32,
        event: pb::TaskEvent,
        exit_code: Option<i32>,
    ) -> Result<(), Status> {
        let fake = &self.workers[name];
        let generation = fake.generation.expect("an open stream");
        self.app
            .cluster
            .task_update(
                &fake.id,
                generation,
                &report(task, attempt, event, exit_code),
            )
            .map_err(Status::from)
    }

    /// The stream of `name` ends (the worker died, or the link broke).
    pub fn close_stream(&mut self, name: &str) {
        let fake = self.workers.get_mut(name).expect("a joined worker");
        if let Some(generation) = fake.generation.take() {
            self.app.cluster.disconnect(&fake.id, generation);
        }
        fake.inbox = None;
        fake.end = None;
    }

    /// The worker's end of its stream is gone, and the master has not noticed yet: what it
    /// sends now cannot be delivered.
    pub fn drop_inbox(&mut self, name: &str) {
        let fake = self.workers.get_mut(name).expect("a joined worker");
        fake.inbox = None;
    }

    /// The status the master ended `name`'s stream with, if it did.
    pub fn ended(&mut self, name: &str) -> Option<Status> {
        let fake = self.workers.get_mut(name).expect("a joined worker");
        fake.end.as_mut().and_then(|end| end.try_recv().ok())
    }

    /// Everything sent to `name` since the last look, acknowledgements left out. Waits for
    /// the store first: an assignment leaves only after its placement is committed.
    pub async fn sent_to(&mut self, name: &str) -> Vec<Sent> {
        self.commit().await;
        let fake = self.workers.get_mut(name).expect("a joined worker");
        let mut sent = Vec::new();
        let Some(inbox) = fake.inbox.as_mut() else {
            return sent;
        };
        while let Ok(Ok(message)) = inbox.try_recv() {
            match message.body {
                Some(ToWorker::Assign(a)) => {
                    // A worker takes every assignment it is sent, in place of an older
                    // attempt of the same task it still held.
                    fake.holding.retain(|(id, _)| *id != a.task_id);
                    fake.holding.push((a.task_id.clone(), a.attempt));
                    sent.push(Sent::Assign(a.task_id, a.attempt, a.gpu_ids));
                }
                Some(ToWorker::Cancel(c)) => sent.push(Sent::Cancel(c.task_id, c.attempt)),
                Some(ToWorker::Ack(_)) | None => {}
            }
        }
        sent
    }

    /// Submits a process task asking for `cpu` CPUs and `gpu` GPUs, as `task submit` does;
    /// returns its id once stored.
    pub async fn submit(&self, spec: pb::TaskSpec) -> String {
        self.app
            .submit(&Caller::repl(), Some(spec))
            .await
            .expect("submitted")
            .id
    }

    /// Submits `spec`, sees it sent to `name` as attempt 1 (the only worker with room)
    /// and reported started there; returns its id.
    pub async fn running(&mut self, name: &str, spec: pb::TaskSpec) -> String {
        let id = self.submit(spec).await;
        let sent = self.sent_to(name).await;
        assert!(
            matches!(sent.as_slice(), [Sent::Assign(t, 1, _)] if *t == id),
            "{id} was not sent to {name}: {sent:?}"
        );
        self.update(name, &id, 1, pb::TaskEvent::Started, None)
            .expect("started");
        id
    }

    pub async fn cancel(&self, id: &str) -> Result<pb::TaskInfo, herd::Error> {
        self.app.cancel(&Caller::repl(), id).await
    }

    pub async fn task(&self, id: &str) -> pb::TaskInfo {
        self.app.find_task(id).await.expect("a known task")
    }

    /// The disk fills up (`true`) or has room again (`false`): every write that writes
    /// something fails meanwhile.
    pub fn disk_full(&self, full: bool) {
        self.app.store.disk_full(full);
    }

    /// Waits until every write handed to the store so far is committed.
    pub async fn commit(&self) {
        self.app.store.sync().await.expect("the store commits");
    }

    /// One pass of the ticker (a flush the store cannot take is tried again next pass).
    pub async fn tick(&self) {
        crate::ticker::tick(&self.app.cluster, &self.app.store, false).await;
    }

    /// Moves (paused) time on, one tick per heartbeat interval; the workers in `alive`
    /// heartbeat at each step (what they hold and their unacknowledged results), the
    /// others are silent.
    pub async fn advance(&mut self, by: Duration, alive: &[&str]) {
        let mut left = by;
        while !left.is_zero() {
            let step = left.min(INTERVAL);
            tokio::time::advance(step).await;
            left -= step;
            for name in alive {
                self.heartbeat(name).await.expect("a heartbeat is taken");
            }
            self.tick().await;
        }
    }

    /// Kill -9 of the master and a start on the same data dir: everything in memory is
    /// gone; workers must connect again.
    pub async fn restart(&mut self) {
        // What the store has is on disk (a commit that cannot be made, on a full disk, is
        // lost with the process, as on kill -9).
        let _ = self.app.store.sync().await;
        self.app = open(self.dir.path(), self.settings);
        for fake in self.workers.values_mut() {
            fake.generation = None;
            fake.inbox = None;
            fake.end = None;
        }
    }
}

/// Opens the store in `dir` and a cluster loaded from it, as `herd_master::start` does.
fn open(dir: &std::path::Path, settings: Settings) -> App {
    let metrics = Metrics::new();
    let output = OutputDir::new(dir.join("output"));
    let (store, loaded) =
        Store::open(&dir.join("herd.db"), output, metrics.flush.clone()).expect("open");
    let cluster = Arc::new(Cluster::new(
        settings,
        store.clone(),
        metrics.clone(),
        Events::new(),
    ));
    cluster.load(
        loaded.workers,
        loaded.tasks,
        loaded.finished,
        loaded.last_task,
    );
    App {
        cluster,
        credentials: Arc::new(Credentials::new(None, None, loaded.tokens, store.clone())),
        store,
        metrics,
    }
}

fn heartbeat(fake: &Fake) -> pb::Heartbeat {
    pb::Heartbeat {
        worker_id: fake.id.clone(),
        sequence: fake.sequence,
        running_task_ids: fake.holding.iter().map(|(id, _)| id.clone()).collect(),
        held: fake
            .holding
            .iter()
            .map(|(id, attempt)| pb::TaskAttempt {
                task_id: id.clone(),
                attempt: *attempt,
            })
            .collect(),
        finished: fake.unacked.clone(),
        worker_secret: fake.secret.clone(),
        ..Default::default()
    }
}

/// A task update, as a worker sends it.
pub fn report(
    task: &str,
    attempt: u32,
    event: pb::TaskEvent,
    exit_code: Option<i32>,
) -> pb::TaskUpdate {
    pb::TaskUpdate {
        task_id: task.into(),
        attempt,
        event: event as i32,
        exit_code,
        message: String::new(),
    }
}

/// A process task asking for `cpu` CPUs and `gpu` GPUs.
pub fn spec(cpu: f64, gpu: u32) -> pb::TaskSpec {
    pb::TaskSpec {
        command: "true".into(),
        resources: Some(pb::Resources {
            cpu,
            memory_gb: 0.0,
            gpu,
            disk_gb: 0.0,
        }),
        ..Default::default()
    }
}
