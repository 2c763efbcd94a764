//! herd's test kit, shared by the end-to-end tests and the benchmarks: masters as real
//! processes ([`Master`]) or in-process ([`InProcess`]), real herd-worker processes, clients,
//! each master on a free port with a temporary data dir. Waits poll with a deadline;
//! nothing sleeps blindly.

pub mod http;
mod inprocess;
pub mod netns;
mod pgbouncer;
mod processes;
mod procs;
mod programs;
mod relay;
mod sqlite;
pub mod webdriver;

/// This test process's throwaway PostgreSQL server: whether there is one (else the test is
/// skipped, or fails under CI), a fresh database on it (its URL), a query on one.
pub use herd_master::store::postgres::scratch::{
    available as postgres_available, database as postgres_database, query as postgres_query,
};
pub use inprocess::InProcess;
pub use pgbouncer::{Pooler, pgbouncer, pgbouncer_available};
pub use processes::{
    Master, Worker, local_worker_pid, master_command, output_within, run_refused_worker,
};
pub use procs::{
    KillUnder, Stat, args_of, children_named, group_members, pids, process_alive, processes_with,
};
pub use programs::{HERDCTL, MASTER, Program, WORKER};
pub use relay::Relay;
pub use sqlite::{db_count, db_row, db_tasks, seed_finished_tasks, wait_db};

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herd::auth::Bearer;
use herd::client::Authed;
use herd::pb;
use herd::pb::admin_client::AdminClient;
use herd::pb::registry_client::RegistryClient;

/// The admin token every test master and client uses (`--token`).
pub const TOKEN: &str = "test-token-0123456789";
/// The join token every test master and worker uses (`--join-token`).
pub const JOIN_TOKEN: &str = "test-join-token-0123456789";

/// An Admin client that presents [`TOKEN`].
pub type Admin = AdminClient<Authed>;
/// A Registry client that presents [`JOIN_TOKEN`].
pub type Registry = RegistryClient<Authed>;

/// Clients for `url`: Admin with [`TOKEN`], Registry with [`JOIN_TOKEN`].
pub async fn clients(url: &str) -> Result<(Admin, Registry), tonic::transport::Error> {
    let channel = herd::client::endpoint(url, None).unwrap().connect().await?;
    Ok((
        AdminClient::with_interceptor(channel.clone(), Bearer::new(Some(TOKEN)).unwrap()),
        RegistryClient::with_interceptor(channel, Bearer::new(Some(JOIN_TOKEN)).unwrap()),
    ))
}

/// An Admin client for `url` presenting `token`.
pub async fn admin_with(url: &str, token: &str) -> Admin {
    let channel = herd::client::endpoint(url, None)
        .unwrap()
        .connect()
        .await
        .unwrap();
    AdminClient::with_interceptor(channel, Bearer::new(Some(token)).unwrap())
}

/// Registers `name` directly; returns its id and the secret the master issued.
pub async fn register(registry: &mut Registry, name: &str) -> (String, String) {
    let r = registry
        .register(pb::RegisterRequest {
            worker: Some(description(name)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (r.worker_id, r.worker_secret)
}

/// Timings fast enough for tests and loose enough for a busy 2-core machine.
pub const FAST: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-timeout",
    "2s",
    "--check-interval",
    "100ms",
    "--worker-timeout",
    "60s",
];

/// A 1 s heartbeat timeout checked every 100 ms: for tests that time liveness itself.
pub const TIGHT: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--heartbeat-timeout",
    "1s",
    "--check-interval",
    "100ms",
];

/// Taken by the tests that load the machine on purpose (thousands of workers or tasks,
/// every core spinning): at most [`HEAVY_AT_ONCE`] of them run at a time (as when each
/// test file was a binary of its own, run two tests at a time), so that they do not
/// starve each other's workers, or the others', of CPU. The tests run side by side in one
/// binary (`.cargo/config.toml` sets how many). Held until dropped, across awaits.
pub fn heavy() -> Heavy {
    let mut busy = HEAVY_BUSY.lock().unwrap_or_else(|p| p.into_inner());
    while *busy >= HEAVY_AT_ONCE {
        busy = HEAVY_FREE.wait(busy).unwrap_or_else(|p| p.into_inner());
    }
    *busy += 1;
    Heavy(())
}

/// How many machine-loading tests may run at once: one per core.
pub const HEAVY_AT_ONCE: usize = 2;

static HEAVY_BUSY: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
static HEAVY_FREE: std::sync::Condvar = std::sync::Condvar::new();

/// The right to load the machine (see [`heavy`]); released when dropped, also by a test
/// that panics.
pub struct Heavy(());

impl Drop for Heavy {
    fn drop(&mut self) {
        *HEAVY_BUSY.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        HEAVY_FREE.notify_one();
    }
}

/// Median, p90 and maximum of latency samples, in milliseconds, for a benchmark's line.
pub fn latency_summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms  (n={})",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(1.0)),
        samples.len()
    )
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A deadline for polling: `while !done { deadline.wait().await }`.
pub struct Deadline {
    start: Instant,
    limit: Duration,
    what: String,
}

impl Deadline {
    pub fn new(limit: Duration, what: impl Into<String>) -> Deadline {
        Deadline {
            start: Instant::now(),
            limit,
            what: what.into(),
        }
    }

    /// Sleeps a little, or panics once the deadline has passed.
    pub async fn wait(&self) {
        if self.start.elapsed() > self.limit {
            panic!(
                "timed out after {:?} waiting until {}",
                self.limit, self.what
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every worker the master lists (Removed included), page by page.
pub async fn workers(admin: &mut Admin) -> Vec<pb::WorkerInfo> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_workers(pb::ListWorkersRequest {
                all: true,
                page_size: 1000,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.workers);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Every task the master lists, newest first, page by page.
pub async fn all_tasks(admin: &mut Admin) -> Vec<pb::TaskInfo> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_tasks(pb::ListTasksRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// One worker by name, if the master knows it.
pub async fn worker(admin: &mut Admin, name: &str) -> Option<pb::WorkerInfo> {
    workers(admin)
        .await
        .into_iter()
        .find(|w| w.description.as_ref().is_some_and(|d| d.name == name))
}

/// Waits until the worker `name` is in `state`, and returns it.
pub async fn wait_state(
    admin: &mut Admin,
    name: &str,
    state: pb::WorkerState,
    deadline: Duration,
) -> pb::WorkerInfo {
    let deadline = Deadline::new(deadline, format!("{name} is {state:?}"));
    loop {
        if let Some(w) = worker(admin, name).await
            && w.state() == state
        {
            return w;
        }
        deadline.wait().await;
    }
}

/// A valid worker description for direct Register calls.
pub fn description(name: &str) -> pb::WorkerDescription {
    pb::WorkerDescription {
        name: name.into(),
        host: "test".into(),
        address: "127.0.0.1".into(),
        version: "test".into(),
        capacity: Some(pb::Resources {
            cpu: 2.0,
            memory_gb: 4.0,
            gpu: 0,
            disk_gb: 0.0,
        }),
        labels: Default::default(),
        container_runtime: String::new(),
        ..Default::default()
    }
}

pub fn now_ms() -> i64 {
    herd::time::now_ms()
}

/// Submits a process task.
pub async fn submit(admin: &mut Admin, command: &str, cpu: f64) -> pb::TaskInfo {
    submit_spec(admin, process(command, cpu)).await
}

/// Submits a process task that its worker leaves running when cut off from the master
/// (`--on-disconnect keep`): for tests of what the master does with a silent worker's
/// tasks, which the worker would otherwise stop first.
pub async fn submit_kept(admin: &mut Admin, command: &str, cpu: f64) -> pb::TaskInfo {
    let spec = pb::TaskSpec {
        keep_on_disconnect: true,
        ..process(command, cpu)
    };
    submit_spec(admin, spec).await
}

/// A process task running `command` with `cpu` cores.
pub fn process(command: &str, cpu: f64) -> pb::TaskSpec {
    pb::TaskSpec {
        command: command.into(),
        resources: Some(pb::Resources {
            cpu,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn submit_spec(admin: &mut Admin, spec: pb::TaskSpec) -> pb::TaskInfo {
    admin
        .submit_task(pb::SubmitTaskRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
}

pub async fn task(admin: &mut Admin, id: &str) -> pb::TaskInfo {
    admin
        .get_task(pb::GetTaskRequest { task_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until task `id` is in `state`, and returns it.
pub async fn wait_task(
    admin: &mut Admin,
    id: &str,
    state: pb::TaskState,
    deadline: Duration,
) -> pb::TaskInfo {
    let deadline = Deadline::new(deadline, format!("task {id} is {state:?}"));
    loop {
        let t = task(admin, id).await;
        if t.state() == state {
            return t;
        }
        let finished = matches!(
            t.state(),
            pb::TaskState::Succeeded | pb::TaskState::Failed | pb::TaskState::Cancelled
        );
        assert!(
            !finished,
            "task {id} ended {:?} ({}), not {state:?}",
            t.state(),
            t.reason
        );
        deadline.wait().await;
    }
}

/// A task's whole output as the master serves it.
pub async fn logs(admin: &mut Admin, id: &str, follow: bool) -> String {
    let mut stream = admin
        .task_logs(pb::TaskLogsRequest {
            task_id: id.into(),
            follow,
            offset: Some(0),
            length: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        out.extend(chunk.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs herdctl against `master` and returns (success, stdout, stderr).
pub fn herdctl(master: &str, args: &[&str]) -> (bool, String, String) {
    herdctl_as(master, TOKEN, args)
}

/// Runs herdctl presenting `token`.
pub fn herdctl_as(master: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(HERDCTL)
        .arg("--master")
        .arg(master)
        .args(args)
        .env("NO_COLOR", "1")
        .env("HERD_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("run herdctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Opens a heartbeat stream with `first` as its handshake.
pub async fn open_stream(
    registry: &mut Registry,
    first: pb::Heartbeat,
) -> (
    tokio::sync::mpsc::Sender<pb::WorkerMessage>,
    tonic::Streaming<pb::MasterMessage>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(pb::WorkerMessage {
        body: Some(pb::worker_message::Body::Heartbeat(first)),
    })
    .await
    .unwrap();
    let replies = registry
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, replies)
}

/// The status a stream ends with (it must not end OK).
pub async fn stream_error(replies: &mut tonic::Streaming<pb::MasterMessage>) -> tonic::Status {
    loop {
        match replies.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => return status,
        }
    }
}

/// Container tasks need a working runtime (scripts/setup-podman.sh). CI sets
/// HERD_REQUIRE_CONTAINERS=1 so that a missing runtime fails instead of skipping.
pub fn container_runtime() -> Option<&'static str> {
    let works = |rt: &str| {
        std::process::Command::new(rt)
            .args(["image", "exists", "localhost/busybox:test"])
            .status()
            .is_ok_and(|s| s.success())
    };
    let found = ["podman"].into_iter().find(|rt| works(rt));
    if found.is_none() {
        assert!(
            std::env::var_os("HERD_REQUIRE_CONTAINERS").is_none(),
            "HERD_REQUIRE_CONTAINERS is set but podman with localhost/busybox:test is not \
             available: run scripts/setup-podman.sh"
        );
        println!(
            "SKIPPED: no container runtime with localhost/busybox:test (run scripts/setup-podman.sh)"
        );
        eprintln!(
            "SKIPPED: no container runtime with localhost/busybox:test (run scripts/setup-podman.sh)"
        );
    }
    found
}

/// The name of the container of `attempt` of task `id` on the worker `worker` started by
/// [`Worker::start`] in `dir` (from its task folder: names are unique per host).
pub fn container_name(dir: &Path, worker: &str, id: &str, attempt: u32) -> String {
    let spec = dir.join(format!("work-{worker}/{id}-{attempt}/task.json"));
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&spec).unwrap()).unwrap();
    spec["container_name"].as_str().unwrap().to_string()
}

/// A task that prints the time in nanoseconds every 20 ms, for as long as it runs: which
/// attempts ran at the same time shows in their output.
pub const STAMPS: &str = "while :; do date +%s%N; sleep 0.02; done";

/// The nanosecond stamps ([`STAMPS`]) a task printed into `log`, in order (a last line
/// cut short by a kill is left out).
pub fn stamps(log: &Path) -> Vec<u128> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
