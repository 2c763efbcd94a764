//! herd-bench: a load generator and benchmark report against a real herd-master started on
//! 127.0.0.1. It simulates N workers (N heartbeat streams multiplexed over a few HTTP/2
//! connections), then measures what docs/BENCHMARKS.md lists: master CPU and RSS,
//! heartbeat throughput and latency, false Inactive, time to Inactive, registration
//! throughput, restart reload, submit-to-start and placements.
//!
//! `herd-bench` (N = 10,000, 60 s steady phase), `herd-bench --smoke` (seconds, for CI),
//! `--json` for machines. `--pin` runs the master on core 0 and the generator on core 1.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use herd::auth::Bearer;
use herd::client::Authed;
use herd::pb;
use herd::pb::admin_client::AdminClient;
use herd::pb::master_message::Body as FromMaster;
use herd::pb::registry_client::RegistryClient;
use herd::pb::worker_message::Body as ToMaster;
use herd::time::parse_duration;

const TOKEN: &str = "herd-bench-token";
/// What the simulated workers present (the master's join token).
const JOIN_TOKEN: &str = "herd-bench-join-token";
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Parser, Clone)]
#[command(
    name = "herd-bench",
    version,
    about = "Load generator and benchmark report for herd"
)]
struct Cli {
    /// Simulated workers.
    #[arg(long, default_value_t = 10_000)]
    workers: usize,
    /// HTTP/2 connections the workers' streams are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Heartbeat period of every simulated worker.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// Length of the steady phase (CPU, RSS, latency, false Inactive).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Length of the saturation phase (heartbeats as fast as the master takes them).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    saturation: Duration,
    /// Tasks submitted for the placement figure.
    #[arg(long, default_value_t = 2_000)]
    tasks: usize,
    /// Tasks submitted one by one for the submit-to-start figure.
    #[arg(long, default_value_t = 100)]
    latency_tasks: usize,
    /// Small and short: N = 200, a few seconds per phase (CI runs this).
    #[arg(long)]
    smoke: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Run the master on core 0 (taskset) and the generator on core 1.
    #[arg(long)]
    pin: bool,
    /// The herd-master binary (default: next to herd-bench).
    #[arg(long)]
    master_bin: Option<PathBuf>,
}

/// What a simulated worker does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Heartbeat every interval.
    Normal,
    /// Keep the stream open, send nothing.
    Silent,
    /// Close the stream and stop.
    Closed,
    /// Heartbeat as fast as acknowledgements come back (8 in flight).
    Flood,
}

/// Shared by every simulated worker.
struct Shared {
    interval: Duration,
    /// Heartbeat-to-ack latencies in µs, while recording.
    latencies: Mutex<Vec<u32>>,
    recording: AtomicU8,
    /// When each task reached its worker.
    started: Mutex<HashMap<String, Instant>>,
    /// Waiters for a task to reach its worker.
    waiters: Mutex<HashMap<String, oneshot::Sender<Instant>>>,
    tasks_started: AtomicU64,
}

/// One simulated worker as the driver sees it.
struct Sim {
    id: String,
    mode: watch::Sender<Mode>,
}

struct MasterProcess {
    child: Child,
    port: u16,
    metrics_port: u16,
    data: PathBuf,
    bin: PathBuf,
    pin: bool,
}

impl MasterProcess {
    fn start(
        bin: &PathBuf,
        data: &PathBuf,
        port: u16,
        metrics_port: u16,
        interval: Duration,
        pin: bool,
    ) -> anyhow::Result<MasterProcess> {
        let mut command = if pin && which("taskset") {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .args(["--no-repl", "--token", TOKEN, "--join-token", JOIN_TOKEN])
            .args([
                "--heartbeat-interval",
                &format!("{}ms", interval.as_millis()),
            ])
            .args([
                "--heartbeat-timeout",
                &format!("{}ms", HEARTBEAT_TIMEOUT.as_millis()),
            ])
            .args([
                "--check-interval",
                &format!("{}ms", CHECK_INTERVAL.as_millis()),
            ])
            .args(["--worker-timeout", "600s"])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--http-listen", "off"])
            .env(
                "HERD_LOG",
                std::env::var("HERD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new().create(true).append(true).open(
                    std::env::var_os("HERD_BENCH_MASTER_LOG")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| data.join("master.log")),
                )?,
            );
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(MasterProcess {
            child,
            port,
            metrics_port,
            data: data.clone(),
            bin: bin.clone(),
            pin,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn which(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CPU time (user + system) of a process, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After "(comm)": state is field 0, utime 11, stime 12.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A counter or histogram sample from the master's /metrics.
fn scrape(port: u16) -> HashMap<String, f64> {
    use std::io::Read;
    let mut out = HashMap::new();
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return out;
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((name, value)) = line.rsplit_once(' ')
            && let Ok(value) = value.parse()
        {
            out.insert(name.to_string(), value);
        }
    }
    out
}

/// The master's count of heartbeats received so far.
fn heartbeats_received(metrics_port: u16) -> f64 {
    scrape(metrics_port)
        .get("herd_heartbeats_received_total")
        .copied()
        .unwrap_or(0.0)
}

/// The upper bound of the bucket holding the largest observation of a histogram.
fn histogram_max(samples: &HashMap<String, f64>, name: &str) -> f64 {
    let total = samples
        .get(&format!("{name}_count"))
        .copied()
        .unwrap_or(0.0);
    let mut bounds: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix(&format!("{name}_bucket{{le=\""))?
                .strip_suffix("\"}")?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), *v))
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    bounds
        .into_iter()
        .find(|(_, count)| *count >= total)
        .map_or(f64::NAN, |(le, _)| le)
}

struct Percentiles {
    min: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

fn percentiles(samples: &mut [f64]) -> Percentiles {
    if samples.is_empty() {
        return Percentiles {
            min: f64::NAN,
            p50: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
        };
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        min: at(0.0),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn progress(json: bool, text: &str) {
    if !json || std::io::stderr().is_terminal() {
        eprintln!("herd-bench: {text}");
    }
}

async fn channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Endpoint::from_shared(url.to_string())?
                .tcp_nodelay(true)
                .http2_adaptive_window(true)
                .connect()
                .await?,
        );
    }
    Ok(out)
}

fn bearer() -> Bearer {
    Bearer::new(Some(TOKEN)).expect("a valid token")
}

/// What a simulated worker presents.
fn join_bearer() -> Bearer {
    Bearer::new(Some(JOIN_TOKEN)).expect("a valid token")
}

async fn admin_of(url: &str) -> anyhow::Result<AdminClient<Authed>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = Endpoint::from_shared(url.to_string())?.connect().await {
            let mut admin = AdminClient::with_interceptor(channel, bearer());
            if admin.summary(pb::SummaryRequest {}).await.is_ok() {
                return Ok(admin);
            }
        }
        if Instant::now() > deadline {
            bail!("the master at {url} did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn description(i: usize) -> pb::WorkerDescription {
    pb::WorkerDescription {
        name: format!("sim-{i:05}"),
        host: "bench".into(),
        address: "127.0.0.1".into(),
        version: herd::VERSION.into(),
        capacity: Some(pb::Resources {
            cpu: 64.0,
            memory_gb: 256.0,
            gpu: 0,
        }),
        labels: Default::default(),
        container_runtime: String::new(),
        ..Default::default()
    }
}

/// Waits (up to 60 s) until at least `count` workers are Active. No worker may be Removed
/// meanwhile: nothing this bench does is long enough to justify it.
async fn wait_active(
    admin: &mut AdminClient<Authed>,
    count: u32,
    after: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts = summary(admin).await;
        if counts.get("Removed").copied().unwrap_or(0) > 0 {
            bail!("a worker was Removed after {after}");
        }
        if counts.get("Active").copied().unwrap_or(0) >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("fewer than {count} workers Active 60 s after {after}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn summary(admin: &mut AdminClient<Authed>) -> HashMap<String, u32> {
    let s = admin
        .summary(pb::SummaryRequest {})
        .await
        .map(|r| r.into_inner())
        .unwrap_or_default();
    s.workers.into_iter().map(|c| (c.state, c.count)).collect()
}

fn heartbeat(id: &str, sequence: u64, secret: &str) -> pb::WorkerMessage {
    pb::WorkerMessage {
        body: Some(ToMaster::Heartbeat(pb::Heartbeat {
            worker_id: id.to_string(),
            sequence,
            activity: pb::WorkerActivity::Idle as i32,
            usage: Some(pb::Usage::default()),
            running_task_ids: Vec::new(),
            finished: Vec::new(),
            held: Vec::new(),
            worker_secret: secret.to_string(),
        })),
    }
}

/// One simulated worker: keeps its stream, heartbeats by its mode, runs tasks instantly,
/// reconnects with backoff (and registers again on NOT_FOUND) like herd-worker does.
async fn simulate(
    shared: Arc<Shared>,
    channel: Channel,
    name: pb::WorkerDescription,
    sim_id: String,
    mut secret: String,
    mut mode: watch::Receiver<Mode>,
) {
    let mut registry = RegistryClient::with_interceptor(channel, join_bearer());
    let mut id = sim_id;
    let mut sequence = 0u64;
    let mut backoff = Duration::from_millis(200);
    loop {
        if *mode.borrow() == Mode::Closed {
            return;
        }
        let (tx, rx) = mpsc::channel::<pb::WorkerMessage>(64);
        sequence += 1;
        let _ = tx.try_send(heartbeat(&id, sequence, &secret));
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
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
                if tx.send(heartbeat(&id, sequence, "")).await.is_err() {
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
                        if tx.send(heartbeat(&id, sequence, "")).await.is_err() {
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
                        let now = Instant::now();
                        shared.tasks_started.fetch_add(1, Ordering::Relaxed);
                        if let Some(waiter) = shared.waiters.lock().unwrap().remove(&task.task_id) {
                            let _ = waiter.send(now);
                        } else {
                            shared.started.lock().unwrap().insert(task.task_id.clone(), now);
                        }
                        for event in [pb::TaskEvent::Started, pb::TaskEvent::Succeeded] {
                            let update = pb::WorkerMessage {
                                body: Some(ToMaster::TaskUpdate(pb::TaskUpdate {
                                    task_id: task.task_id.clone(),
                                    attempt: task.attempt,
                                    event: event as i32,
                                    exit_code: (event == pb::TaskEvent::Succeeded).then_some(0),
                                    message: String::new(),
                                })),
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
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// A figure of the report.
struct Figure {
    name: &'static str,
    goal: String,
    value: f64,
    unit: &'static str,
    /// Whether the goal is met (None: informational).
    ok: Option<bool>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.smoke {
        cli.workers = cli.workers.min(200);
        cli.connections = cli.connections.min(2);
        cli.duration = Duration::from_secs(3);
        cli.saturation = Duration::from_secs(2);
        cli.tasks = cli.tasks.min(200);
        cli.latency_tasks = cli.latency_tasks.min(20);
    }
    if cli.pin {
        // SAFETY: a zeroed cpu_set_t with one bit set, for this process.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(1, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    let bin = match &cli.master_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("herd-master"),
    };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let n = cli.workers;
    let figures = run(&cli, &bin, &data, n).await?;
    report(&cli, &figures);
    Ok(())
}

async fn run(cli: &Cli, bin: &PathBuf, data: &PathBuf, n: usize) -> anyhow::Result<Vec<Figure>> {
    let json = cli.json;
    let mut figures = Vec::new();
    let mut master = MasterProcess::start(
        bin,
        data,
        free_port(),
        free_port(),
        cli.heartbeat_interval,
        cli.pin,
    )?;
    let url = master.url();
    let mut admin = admin_of(&url).await?;
    let baseline_rss = rss_kib(master.pid());
    progress(
        json,
        &format!(
            "master up (pid {}), registering {n} workers over {} connections",
            master.pid(),
            cli.connections
        ),
    );

    // Registration throughput.
    let conns = channels(&url, cli.connections).await?;
    let started = Instant::now();
    let mut ids = vec![(String::new(), String::new()); n];
    let (done_tx, mut done_rx) = mpsc::channel::<(usize, (String, String))>(1024);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    for i in 0..n {
        let mut registry =
            RegistryClient::with_interceptor(conns[i % conns.len()].clone(), join_bearer());
        let done = done_tx.clone();
        let permit = in_flight.clone().acquire_owned().await?;
        tokio::spawn(async move {
            let r = registry
                .register(pb::RegisterRequest {
                    worker: Some(description(i)),
                    worker_secret: String::new(),
                })
                .await;
            drop(permit);
            if let Ok(r) = r {
                let r = r.into_inner();
                let _ = done.send((i, (r.worker_id, r.worker_secret))).await;
            }
        });
    }
    drop(done_tx);
    let mut registered = 0;
    while let Some((i, id)) = done_rx.recv().await {
        ids[i] = id;
        registered += 1;
    }
    let took = started.elapsed();
    if registered != n {
        bail!("only {registered} of {n} registrations succeeded");
    }
    let reg_rate = n as f64 / took.as_secs_f64();
    figures.push(Figure {
        name: "registrations",
        goal: ">= 5000/s".into(),
        value: reg_rate,
        unit: "/s",
        ok: Some(reg_rate >= 5000.0),
    });
    progress(
        json,
        &format!("{n} registered in {took:.2?} ({reg_rate:.0}/s); opening streams"),
    );

    // Streams.
    let shared = Arc::new(Shared {
        interval: cli.heartbeat_interval,
        latencies: Mutex::new(Vec::new()),
        recording: AtomicU8::new(0),
        started: Mutex::new(HashMap::new()),
        waiters: Mutex::new(HashMap::new()),
        tasks_started: AtomicU64::new(0),
    });
    let mut sims = Vec::with_capacity(n);
    for (i, (id, secret)) in ids.iter().enumerate() {
        let (mode, mode_rx) = watch::channel(Mode::Normal);
        sims.push(Sim {
            id: id.clone(),
            mode: mode.clone(),
        });
        tokio::spawn(simulate(
            shared.clone(),
            conns[i % conns.len()].clone(),
            description(i),
            id.clone(),
            secret.clone(),
            mode_rx,
        ));
        // Spread the first heartbeats over one interval, as real workers would be.
        if i % 100 == 99 {
            tokio::time::sleep(cli.heartbeat_interval.mul_f64(100.0 / n as f64)).await;
        }
    }
    wait_active(&mut admin, n as u32, "the workers' first streams").await?;
    progress(
        json,
        &format!("all {n} Active; steady phase for {:?}", cli.duration),
    );

    // Steady phase: CPU, RSS, latency, false Inactive.
    tokio::time::sleep(cli.heartbeat_interval * 2).await;
    shared.recording.store(1, Ordering::Relaxed);
    let cpu_before = cpu_time(master.pid());
    let hb_before = heartbeats_received(master.metrics_port);
    let started = Instant::now();
    let mut false_inactive = 0u32;
    let mut peak_rss = 0;
    let mut reported = 0;
    while started.elapsed() < cli.duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let counts = summary(&mut admin).await;
        let not_active = counts.get("Inactive").copied().unwrap_or(0)
            + counts.get("Removed").copied().unwrap_or(0);
        false_inactive = false_inactive.max(not_active);
        peak_rss = peak_rss.max(rss_kib(master.pid()));
        let secs = started.elapsed().as_secs();
        if secs / 10 > reported {
            reported = secs / 10;
            progress(
                json,
                &format!(
                    "steady {secs}s: master cpu {:.1}%",
                    (cpu_time(master.pid()) - cpu_before).as_secs_f64()
                        / started.elapsed().as_secs_f64()
                        * 100.0
                ),
            );
        }
    }
    let elapsed = started.elapsed();
    shared.recording.store(0, Ordering::Relaxed);
    let cpu = (cpu_time(master.pid()) - cpu_before).as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let hb_after = heartbeats_received(master.metrics_port);
    let hb_rate = (hb_after - hb_before) / elapsed.as_secs_f64();
    let mut latencies: Vec<f64> = shared
        .latencies
        .lock()
        .unwrap()
        .iter()
        .map(|&us| us as f64 / 1000.0)
        .collect();
    let lat = percentiles(&mut latencies);
    let rss_per_worker = peak_rss.saturating_sub(baseline_rss) as f64 * 1024.0 / n as f64 / 1024.0;
    let metrics = scrape(master.metrics_port);
    let flush_mean_ms = metrics
        .get("herd_sqlite_flush_seconds_sum")
        .copied()
        .unwrap_or(0.0)
        / metrics
            .get("herd_sqlite_flush_seconds_count")
            .copied()
            .unwrap_or(1.0)
            .max(1.0)
        * 1000.0;
    let rate = 1.0 / cli.heartbeat_interval.as_secs_f64();
    figures.push(Figure {
        name: "master CPU at N x 1 hb/s",
        goal: "< 50% of one core".into(),
        value: cpu,
        unit: "%",
        ok: Some(cpu < 50.0),
    });
    figures.push(Figure {
        name: "heartbeats received",
        goal: format!("{:.0}/s (N x rate)", n as f64 * rate),
        value: hb_rate,
        unit: "/s",
        ok: None,
    });
    figures.push(Figure {
        name: "heartbeat-to-ack p50",
        goal: "-".into(),
        value: lat.p50,
        unit: "ms",
        ok: None,
    });
    figures.push(Figure {
        name: "heartbeat-to-ack p99",
        goal: "-".into(),
        value: lat.p99,
        unit: "ms",
        ok: None,
    });
    figures.push(Figure {
        name: "false Inactive",
        goal: "0".into(),
        value: false_inactive as f64,
        unit: "",
        ok: Some(false_inactive == 0),
    });
    figures.push(Figure {
        name: "RSS per connected worker",
        goal: "< 32 KiB".into(),
        value: rss_per_worker,
        unit: "KiB",
        ok: Some(rss_per_worker < 32.0),
    });
    figures.push(Figure {
        name: "master RSS",
        goal: "-".into(),
        value: peak_rss as f64 / 1024.0,
        unit: "MiB",
        ok: None,
    });
    figures.push(Figure {
        name: "SQLite flush of a tick, steady (mean)",
        goal: "< 10 ms".into(),
        value: flush_mean_ms,
        unit: "ms",
        ok: Some(flush_mean_ms < 10.0),
    });
    progress(
        json,
        &format!(
            "steady: cpu {cpu:.1}%, {hb_rate:.0} hb/s, ack p50 {:.2} ms p99 {:.2} ms; saturating for {:?}",
            lat.p50, lat.p99, cli.saturation
        ),
    );

    // Saturation: everybody floods.
    for sim in &sims {
        sim.mode.send_replace(Mode::Flood);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hb_before = heartbeats_received(master.metrics_port);
    let cpu_before = cpu_time(master.pid());
    let started = Instant::now();
    tokio::time::sleep(cli.saturation).await;
    let elapsed = started.elapsed();
    let hb_after = heartbeats_received(master.metrics_port);
    let sat_cpu = (cpu_time(master.pid()) - cpu_before).as_secs_f64() / elapsed.as_secs_f64();
    let sat_rate = (hb_after - hb_before) / elapsed.as_secs_f64();
    // Per core of master CPU actually used.
    let per_core = sat_rate / sat_cpu.max(0.01);
    for sim in &sims {
        sim.mode.send_replace(Mode::Normal);
    }
    figures.push(Figure {
        name: "saturation heartbeats",
        goal: "-".into(),
        value: sat_rate,
        unit: "/s",
        ok: None,
    });
    figures.push(Figure {
        name: "saturation per master core",
        goal: ">= 50000/s".into(),
        value: per_core,
        unit: "/s",
        ok: Some(per_core >= 50_000.0),
    });
    progress(
        json,
        &format!(
            "saturation: {sat_rate:.0} hb/s with the master at {:.0}% ({per_core:.0}/s per core)",
            sat_cpu * 100.0
        ),
    );
    // Let the master work off the flood before measuring anything that depends on how
    // fast it answers: wait until a second brings no more heartbeats than the steady rate.
    let steady = n as f64 * rate * 1.5;
    for _ in 0..30 {
        let before = heartbeats_received(master.metrics_port);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = heartbeats_received(master.metrics_port);
        if after - before <= steady {
            break;
        }
    }
    tokio::time::sleep(cli.heartbeat_interval * 2).await;

    // Time to Inactive: closed streams and silent ones.
    // A sample: polling thousands of workers every few ms would load the master being
    // measured.
    let k = (n / 20).clamp(1, 50);
    let closed: Vec<usize> = (0..k).collect();
    let silent: Vec<usize> = (k..2 * k).collect();
    let mut waits = Vec::new();
    for &i in &closed {
        sims[i].mode.send_replace(Mode::Closed);
    }
    let closed_at = Instant::now();
    for &i in &silent {
        sims[i].mode.send_replace(Mode::Silent);
    }
    for &i in closed.iter().chain(&silent) {
        let mut admin = admin.clone();
        let id = sims[i].id.clone();
        let is_closed = i < k;
        waits.push(tokio::spawn(async move {
            let limit = Instant::now() + Duration::from_secs(30);
            // For a silent worker: the longest silence (by the master's clock) it was still
            // shown Active with, and the silence when it was first shown Inactive.
            let mut longest_active = 0i64;
            loop {
                let info = admin
                    .get_worker(pb::GetWorkerRequest { worker: id.clone() })
                    .await
                    .ok()
                    .map(|r| r.into_inner());
                if let Some(w) = &info {
                    let silence = w.as_of_ms - w.last_heartbeat_ms;
                    match w.state() {
                        pb::WorkerState::Inactive if is_closed => {
                            return Some((closed_at.elapsed().as_secs_f64() * 1000.0, 0.0));
                        }
                        pb::WorkerState::Inactive => {
                            return Some((silence as f64, longest_active as f64));
                        }
                        _ => longest_active = longest_active.max(silence),
                    }
                }
                if Instant::now() > limit {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let mut closed_ms = Vec::new();
    let mut silent_ms = Vec::new();
    let mut still_active_ms = Vec::new();
    for (j, wait) in waits.into_iter().enumerate() {
        let (value, active) = wait.await?.context("a worker never went Inactive")?;
        if j < k {
            closed_ms.push(value);
        } else {
            silent_ms.push(value);
            still_active_ms.push(active);
        }
    }
    let closed_p = percentiles(&mut closed_ms);
    let silent_p = percentiles(&mut silent_ms);
    let timeout_ms = HEARTBEAT_TIMEOUT.as_secs_f64() * 1000.0;
    figures.push(Figure {
        name: "closed stream to Inactive p99",
        goal: "< 1000 ms".into(),
        value: closed_p.p99,
        unit: "ms",
        ok: Some(closed_p.p99 < 1000.0),
    });
    // Liveness is decided at read time: no answer may show Active after the timeout, and
    // none Inactive before it. (When an answer comes is up to the poller; what it says is
    // the master's.)
    let longest_active = still_active_ms.iter().copied().fold(0.0, f64::max);
    let earliest_inactive = silent_p.min;
    figures.push(Figure {
        name: "silent: longest silence shown Active",
        goal: format!("< {timeout_ms:.0} ms (the timeout)"),
        value: longest_active,
        unit: "ms",
        ok: Some(longest_active < timeout_ms),
    });
    figures.push(Figure {
        name: "silent: shortest silence shown Inactive",
        goal: format!(">= {timeout_ms:.0} ms"),
        value: earliest_inactive,
        unit: "ms",
        ok: Some(earliest_inactive >= timeout_ms),
    });
    progress(
        json,
        &format!(
            "{k} closed: Inactive after p99 {:.1} ms; {k} silent: after {:.0}..{:.0} ms of silence",
            closed_p.p99, silent_p.p50, silent_p.max
        ),
    );
    for &i in &silent {
        sims[i].mode.send_replace(Mode::Normal);
    }
    let live = (n - k) as u32;
    wait_active(&mut admin, live, "the silent workers' return").await?;

    // Tasks: submit-to-start one at a time, then placements in bulk.
    let mut latency = Vec::new();
    for _ in 0..cli.latency_tasks {
        let (tx, rx) = oneshot::channel();
        let start = Instant::now();
        let info = admin
            .submit_task(pb::SubmitTaskRequest {
                spec: Some(task_spec()),
            })
            .await?
            .into_inner();
        let at = {
            let early = shared.started.lock().unwrap().remove(&info.id);
            match early {
                Some(at) => at,
                None => {
                    shared.waiters.lock().unwrap().insert(info.id.clone(), tx);
                    let early = shared.started.lock().unwrap().remove(&info.id);
                    match early {
                        Some(at) => at,
                        // Long enough for an assignment the master could not send to be
                        // placed again (it re-queues it at its next pass).
                        None => tokio::time::timeout(Duration::from_secs(30), rx)
                            .await
                            .context("a task never reached a worker")??,
                    }
                }
            }
        };
        latency.push(at.duration_since(start).as_secs_f64() * 1000.0);
    }
    let lat = percentiles(&mut latency);
    figures.push(Figure {
        name: "submit-to-start median",
        goal: "< 10 ms".into(),
        value: lat.p50,
        unit: "ms",
        ok: Some(lat.p50 < 10.0),
    });
    let before = shared.tasks_started.load(Ordering::Relaxed);
    let started = Instant::now();
    let submitters = 32;
    let mut jobs = Vec::new();
    for s in 0..submitters {
        let mut admin = admin.clone();
        let count = cli.tasks / submitters + usize::from(s < cli.tasks % submitters);
        jobs.push(tokio::spawn(async move {
            for _ in 0..count {
                admin
                    .submit_task(pb::SubmitTaskRequest {
                        spec: Some(task_spec()),
                    })
                    .await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for job in jobs {
        job.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.tasks_started.load(Ordering::Relaxed) - before < cli.tasks as u64 {
        if Instant::now() > deadline {
            bail!("not every task reached a worker");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let placements = cli.tasks as f64 / started.elapsed().as_secs_f64();
    figures.push(Figure {
        name: "placements end to end",
        goal: "-".into(),
        value: placements,
        unit: "/s",
        ok: None,
    });
    let metrics = scrape(master.metrics_port);
    let pass_mean_us = metrics
        .get("herd_scheduling_pass_seconds_sum")
        .copied()
        .unwrap_or(0.0)
        / metrics
            .get("herd_scheduling_pass_seconds_count")
            .copied()
            .unwrap_or(1.0)
            .max(1.0)
        * 1e6;
    figures.push(Figure {
        name: "scheduling pass (mean)",
        goal: "-".into(),
        value: pass_mean_us,
        unit: "µs",
        ok: None,
    });
    progress(
        json,
        &format!(
            "submit-to-start median {:.2} ms; {placements:.0} placements/s end to end; restarting the master",
            lat.p50
        ),
    );

    // Restart: kill -9, reload, everyone back.
    let (bin, data, port, metrics_port, pin) = (
        master.bin.clone(),
        master.data.clone(),
        master.port,
        master.metrics_port,
        master.pin,
    );
    master.kill9();
    let started = Instant::now();
    master = MasterProcess::start(&bin, &data, port, metrics_port, cli.heartbeat_interval, pin)?;
    let mut admin = admin_of(&url).await?;
    let reload = started.elapsed();
    let counts = summary(&mut admin).await;
    let listed: u32 = counts.values().sum();
    wait_active(&mut admin, live, "the master's restart").await?;
    let back = started.elapsed();
    // Every worker changed state twice (Inactive at load, Active again): flushes of all N.
    tokio::time::sleep(CHECK_INTERVAL * 2).await;
    let metrics = scrape(master.metrics_port);
    let flush_max_ms = histogram_max(&metrics, "herd_sqlite_flush_seconds") * 1000.0;
    figures.push(Figure {
        name: "SQLite flush of N changed rows (max)",
        goal: "< 10 ms".into(),
        value: flush_max_ms,
        unit: "ms <=",
        ok: Some(flush_max_ms <= 10.0),
    });
    let back_goal = cli.heartbeat_interval + Duration::from_secs(5);
    figures.push(Figure {
        name: "restart: reload (to first answer)",
        goal: "< 1000 ms".into(),
        value: reload.as_secs_f64() * 1000.0,
        unit: "ms",
        ok: Some(reload < Duration::from_secs(1) && listed as usize == n),
    });
    figures.push(Figure {
        name: "restart: all Active again",
        goal: format!("< {} ms (interval + backoff cap)", back_goal.as_millis()),
        value: back.as_secs_f64() * 1000.0,
        unit: "ms",
        ok: Some(back <= back_goal),
    });
    progress(
        json,
        &format!(
            "restart: answering after {reload:.2?} with {listed} workers listed; all back after {back:.2?}"
        ),
    );
    for sim in &sims {
        sim.mode.send_replace(Mode::Closed);
    }
    drop(master);
    Ok(figures)
}

fn task_spec() -> pb::TaskSpec {
    pb::TaskSpec {
        name: String::new(),
        image: String::new(),
        command: "true".into(),
        resources: Some(pb::Resources {
            cpu: 0.01,
            memory_gb: 0.0,
            gpu: 0,
        }),
        ..Default::default()
    }
}

fn report(cli: &Cli, figures: &[Figure]) {
    if cli.json {
        let list: Vec<_> = figures
            .iter()
            .map(|f| json!({"figure": f.name, "goal": f.goal, "value": f.value, "unit": f.unit, "ok": f.ok}))
            .collect();
        println!(
            "{}",
            json!({
                "workers": cli.workers,
                "connections": cli.connections,
                "heartbeat_interval_ms": cli.heartbeat_interval.as_millis() as u64,
                "steady_seconds": cli.duration.as_secs_f64(),
                "figures": list,
            })
        );
        return;
    }
    println!();
    println!(
        "herd-bench: N = {} workers over {} connections, heartbeat every {:?}",
        cli.workers, cli.connections, cli.heartbeat_interval
    );
    println!(
        "{:<36} {:>14} {:<7} {:<32}",
        "figure", "measured", "", "goal"
    );
    for f in figures {
        let mark = match f.ok {
            Some(true) => "ok",
            Some(false) => "MISSED",
            None => "",
        };
        let value = if f.value.abs() >= 100.0 {
            format!("{:.0}", f.value)
        } else {
            format!("{:.2}", f.value)
        };
        println!(
            "{:<36} {:>14} {:<7} {:<32} {}",
            f.name, value, f.unit, f.goal, mark
        );
    }
}
