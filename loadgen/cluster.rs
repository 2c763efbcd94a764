//! The master under test: starting it (pinned or not), its process figures (CPU time, RSS)
//! and /metrics, and the Admin calls the phases poll it with. When the master exits, the
//! error names it and shows the end of its log, so a refused flag is never reported as
//! "did not answer".

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};

use herd::auth::Bearer;
use herd::client::Authed;
use herd::pb;
use herd::pb::admin_client::AdminClient;

/// What the simulated workers present (the master's join token), and the operator token.
pub use herd_testkit::{JOIN_TOKEN, TOKEN, free_port};
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The heartbeat timeout the master runs with: three heartbeat intervals (at least 3 s),
/// so a single late heartbeat never counts as a failure and the master accepts any
/// interval (it refuses a timeout that is not longer than the interval).
pub fn heartbeat_timeout(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(3))
}

pub type Admin = AdminClient<Authed>;

/// How the master is started; kept to restart it the same way.
#[derive(Clone)]
pub struct Launch {
    pub bin: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    pub metrics_port: u16,
    pub interval: Duration,
    pub pin: bool,
    /// `--store` for the master (PostgreSQL), if any.
    pub store: Option<String>,
}

pub struct MasterProcess {
    child: Child,
    pub launch: Launch,
    log: PathBuf,
}

impl MasterProcess {
    pub fn start(launch: &Launch) -> anyhow::Result<MasterProcess> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], launch.port));
        let mut command = herd_testkit::master_command(&launch.bin, addr, &launch.data);
        if launch.pin {
            pin_to_first_core(&mut command);
        }
        let log = std::env::var_os("HERD_BENCH_MASTER_LOG")
            .map(PathBuf::from)
            .unwrap_or_else(|| launch.data.join("master.log"));
        let millis = |d: Duration| format!("{}ms", d.as_millis());
        command
            .args(["--heartbeat-interval", &millis(launch.interval)])
            .args([
                "--heartbeat-timeout",
                &millis(heartbeat_timeout(launch.interval)),
            ])
            .args(["--check-interval", &millis(CHECK_INTERVAL)])
            .args(
                launch
                    .store
                    .iter()
                    .flat_map(|url| ["--store", url.as_str()]),
            )
            .args(["--worker-timeout", "600s"])
            .args([
                "--metrics-listen",
                &format!("127.0.0.1:{}", launch.metrics_port),
            ])
            .env(
                "HERD_LOG",
                std::env::var("HERD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?,
            );
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", launch.bin.display()))?;
        Ok(MasterProcess {
            child,
            launch: launch.clone(),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.launch.port)
    }

    pub fn metrics_port(&self) -> u16 {
        self.launch.metrics_port
    }

    /// An error if the master has exited: its status and the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "herd-master exited ({status}); the end of its log ({}):\n{}",
                self.log.display(),
                tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// An Admin client once the master answers (30 s at most).
    pub async fn admin(&mut self) -> anyhow::Result<Admin> {
        let url = self.url();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.check_alive()?;
            if let Ok(channel) = Endpoint::from_shared(url.clone())?.connect().await {
                let mut admin = AdminClient::with_interceptor(channel, bearer());
                if admin.summary(pb::SummaryRequest {}).await.is_ok() {
                    return Ok(admin);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the master at {url} did not answer within 30 s; the end of its log:\n{}",
                    tail(&self.log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs the master on the first core only, every thread of it from its first
/// instruction on (set in the child before it starts the program).
fn pin_to_first_core(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: sched_setaffinity is async-signal-safe; nothing else runs between fork and
    // exec.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn bearer() -> Bearer {
    Bearer::new(Some(TOKEN)).expect("a valid token")
}

/// What a simulated worker presents.
pub fn join_bearer() -> Bearer {
    Bearer::new(Some(JOIN_TOKEN)).expect("a valid token")
}

/// `n` HTTP/2 connections to the master.
pub async fn channels(url: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Endpoint::from_shared(url.to_string())?
                .tcp_nodelay(true)
                // Thousands of streams share one connection: room for what they all have
                // in flight. h2 also bounds the small DATA frames a connection may hold
                // unread to half its window (one heartbeat or ack is one such frame); with
                // the adaptive window's 64 KiB start that is ~140 frames, and a generator
                // that fell behind for a moment had its connections reset by its own h2
                // (GOAWAY too_many_data_frames), thousands of workers at once.
                .initial_connection_window_size(Some(64 << 20))
                .initial_stream_window_size(Some(1 << 20))
                .connect()
                .await?,
        );
    }
    Ok(out)
}

/// CPU time (user + system) of a process, from /proc.
pub fn cpu_time(pid: u32) -> Duration {
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
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Every counter and histogram sample of the master's /metrics.
pub fn scrape(port: u16) -> HashMap<String, f64> {
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
pub fn heartbeats_received(metrics_port: u16) -> f64 {
    scrape(metrics_port)
        .get("herd_heartbeats_received_total")
        .copied()
        .unwrap_or(0.0)
}

/// The mean of a histogram (`_sum / _count`), 0 without observations.
pub fn histogram_mean(samples: &HashMap<String, f64>, name: &str) -> f64 {
    let sum = samples.get(&format!("{name}_sum")).copied().unwrap_or(0.0);
    let count = samples
        .get(&format!("{name}_count"))
        .copied()
        .unwrap_or(0.0);
    if count > 0.0 { sum / count } else { 0.0 }
}

/// The upper bound of the bucket holding the largest observation of a histogram.
pub fn histogram_max(samples: &HashMap<String, f64>, name: &str) -> f64 {
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

/// Workers by state word, as `status` counts them.
pub async fn summary(admin: &mut Admin) -> HashMap<String, u32> {
    let s = admin
        .summary(pb::SummaryRequest {})
        .await
        .map(|r| r.into_inner())
        .unwrap_or_default();
    s.workers.into_iter().map(|c| (c.state, c.count)).collect()
}

/// Waits until at least `count` workers are Active (`within` at most). No worker may be
/// Removed meanwhile: nothing this bench does is long enough to justify it.
pub async fn wait_active(
    admin: &mut Admin,
    count: u32,
    after: &str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let counts = summary(admin).await;
        if counts.get("Removed").copied().unwrap_or(0) > 0 {
            bail!("a worker was Removed after {after}");
        }
        let active = counts.get("Active").copied().unwrap_or(0);
        if active >= count {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            bail!("{active} of {count} workers Active {within:?} after {after}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
