//! herd's test kit, shared by the end-to-end tests and the benchmarks: masters as real
//! processes ([`Master`]) or in-process ([`InProcess`]), real herd-worker processes, clients,
//! each master on a free port with a temporary data dir. Waits poll with a deadline;
//! nothing sleeps blindly.

pub mod http;
mod inprocess;
pub mod netns;
mod programs;
pub mod webdriver;

pub use inprocess::InProcess;
pub use programs::{HERDCTL, MASTER, Program, WORKER};

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// A running herd-master.
pub struct Master {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Master {
    /// Starts a headless master on a free port, with `dir/data` as data dir.
    pub fn start(dir: &Path, args: &[&str]) -> Master {
        Master::start_on(dir, &dir.join("data"), free_port(), args)
    }

    /// Starts a headless master on `port` with `data_dir`.
    pub fn start_on(dir: &Path, data_dir: &Path, port: u16, args: &[&str]) -> Master {
        Master::start_with_env(dir, data_dir, port, args, &[])
    }

    /// Like [`Master::start_on`], with extra environment variables.
    pub fn start_with_env(
        dir: &Path,
        data_dir: &Path,
        port: u16,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Master {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = dir.join(format!("master-{}.log", fastrand::u32(..)));
        let child = Command::new(MASTER)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--no-repl")
            .args(args)
            .env("HERD_LOG", "info,herd_master=debug")
            .env("HERD_TOKEN", TOKEN)
            .env("HERD_JOIN_TOKEN", JOIN_TOKEN)
            // Tests run side by side: no HTTP listener unless a test asks for one.
            .env("HERD_HTTP_LISTEN", "off")
            // Nothing a test starts writes to the real per-user state folder.
            .env("XDG_STATE_HOME", dir.join("state"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start herd-master");
        Master {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An Admin client, once the master answers.
    pub async fn admin(&self) -> Admin {
        let deadline = Deadline::new(Duration::from_secs(15), "the master answers");
        loop {
            if let Ok((mut c, _)) = clients(&self.url()).await
                && c.list_workers(pb::ListWorkersRequest {
                    all: true,
                    ..Default::default()
                })
                .await
                .is_ok()
            {
                return c;
            }
            deadline.wait().await;
        }
    }

    pub async fn registry(&self) -> Registry {
        self.admin().await;
        clients(&self.url()).await.unwrap().1
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data_dir.join("herd.db")).unwrap()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running herd-worker.
pub struct Worker {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(dir: &Path, master: &str, name: &str, args: &[&str]) -> Worker {
        Worker::start_in(dir, master, name, &format!("work-{name}"), args)
    }

    /// Like [`Worker::start`], with `dir/work` as its work dir.
    pub fn start_in(dir: &Path, master: &str, name: &str, work: &str, args: &[&str]) -> Worker {
        let log = dir.join(format!("worker-{name}-{}.log", fastrand::u32(..)));
        let child = Command::new(WORKER)
            .arg("--master")
            .arg(master)
            .arg("--name")
            .arg(name)
            .args(if args.contains(&"--runtime") {
                &[][..]
            } else {
                &["--runtime", "none"][..]
            })
            .arg("--work-dir")
            .arg(dir.join(work))
            .args(args)
            .env("HERD_TOKEN", JOIN_TOKEN)
            .env("XDG_STATE_HOME", dir.join("state"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start herd-worker");
        Worker {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.signal_cont_quietly();
        self.kill9();
    }
}

impl Worker {
    fn signal_cont_quietly(&self) {
        // SAFETY: signalling our own child; a stopped child must be continued to die cleanly.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }
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

/// `(is_active, state)` of a worker row in SQLite.
pub fn db_row(conn: &rusqlite::Connection, id: &str) -> Option<(bool, String)> {
    conn.query_row(
        "SELECT is_active, state FROM workers WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

/// Waits until the worker row `id` in SQLite reads `(is_active, state)`.
pub async fn wait_db(
    conn: &rusqlite::Connection,
    id: &str,
    expected: (bool, &str),
    deadline: Duration,
) {
    let deadline = Deadline::new(deadline, format!("SQLite has {id} as {expected:?}"));
    while db_row(conn, id) != Some((expected.0, expected.1.to_string())) {
        deadline.wait().await;
    }
}

pub fn db_count(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM workers", [], |r| r.get(0))
        .unwrap()
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

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The pid the master logged for its local worker.
pub async fn local_worker_pid(master: &Master) -> u32 {
    let deadline = Deadline::new(Duration::from_secs(10), "the master logs its local worker");
    loop {
        let log = master.log_text();
        if let Some(pid) = log
            .lines()
            .find(|l| l.contains("local worker started"))
            .and_then(|l| l.split("pid=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|pid| pid.parse().ok())
        {
            return pid;
        }
        deadline.wait().await;
    }
}

/// Submits a process task.
pub async fn submit(admin: &mut Admin, command: &str, cpu: f64) -> pb::TaskInfo {
    submit_spec(
        admin,
        pb::TaskSpec {
            command: command.into(),
            resources: Some(pb::Resources {
                cpu,
                memory_gb: 0.0,
                gpu: 0,
                disk_gb: 0.0,
            }),
            ..Default::default()
        },
    )
    .await
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

/// Processes whose process group is `pgid` (zombies excluded).
pub fn group_members(pgid: i32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After "(comm)": state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            found.push(pid);
        }
    }
    found
}

/// Tasks rows in SQLite.
pub fn db_tasks(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap()
}

/// Writes `n` finished tasks (every 20,000th with a 64 KiB command) straight into a
/// stopped master's SQLite, as months of use would leave them.
pub fn seed_finished_tasks(db: &rusqlite::Connection, n: u64) {
    db.execute_batch("BEGIN").unwrap();
    {
        let mut insert = db
            .prepare(
                "INSERT INTO tasks (id, name, command, cpu, memory_gb, gpu, state, worker_id,
                     attempts, exit_code, reason, submitted_at, started_at, finished_at,
                     history, seq)
                 VALUES (?1, '', ?2, 1.0, 0.0, 0, ?3, 'w-00000001', 1, 0, '', ?4, ?4, ?4,
                     '[]', ?5)",
            )
            .unwrap();
        let big = "x".repeat(herd::domain::MAX_COMMAND_LEN);
        for i in 1..=n {
            let command = if i % 20_000 == 0 {
                big.as_str()
            } else {
                "true"
            };
            let state = if i % 10 == 0 { "failed" } else { "succeeded" };
            insert
                .execute(rusqlite::params![
                    format!("t-{i}"),
                    command,
                    state,
                    i as i64,
                    i as i64
                ])
                .unwrap();
        }
    }
    db.execute_batch("COMMIT").unwrap();
}

/// Pids of live processes with `arg` among their command-line arguments.
pub fn processes_with(arg: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) && process_alive(pid) {
            found.push(pid);
        }
    }
    found
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
