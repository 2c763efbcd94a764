//! The programs' configuration: every flag also reads its environment variable, and a flag
//! given on the command line wins (DESIGN.md, "Configuration").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::error::Error;
use crate::time::parse_duration;

pub use crate::paths::{default_data_dir, local_data_dir};

/// Which placement policy the scheduler uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum SchedulerKind {
    /// Workers in turn.
    RoundRobin,
    /// Spread: the least allocated worker that fits (live CPU use breaks near-ties).
    #[default]
    ResourceAware,
    /// Pack: the most allocated worker that fits, so whole machines stay free.
    BinPack,
}

impl SchedulerKind {
    /// Every policy, in the order views list them.
    pub const ALL: [SchedulerKind; 3] = [
        SchedulerKind::RoundRobin,
        SchedulerKind::ResourceAware,
        SchedulerKind::BinPack,
    ];

    /// The name used in the grammar, SQLite and views.
    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::RoundRobin => "round-robin",
            SchedulerKind::ResourceAware => "resource-aware",
            SchedulerKind::BinPack => "bin-pack",
        }
    }
}

/// An address to listen on, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

fn parse_listen(text: &str) -> Result<Listen, Error> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Listen::Off);
    }
    text.parse().map(Listen::On).map_err(|_| {
        Error::invalid(format!(
            "'{text}' is not an address like 0.0.0.0:8080 (or off)"
        ))
    })
}

/// herd-master's settings.
#[derive(Debug, Clone, Args)]
pub struct MasterConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "HERD_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Folder for herd.db, the cluster token, task output and REPL history [default:
    /// $XDG_STATE_HOME/herd, else ~/.local/state/herd].
    #[arg(long, env = "HERD_DATA_DIR", default_value_os_t = default_data_dir(), hide_default_value = true)]
    pub data_dir: PathBuf,

    /// No heartbeat for this long: the worker is Inactive (never scheduled).
    #[arg(long, env = "HEARTBEAT_TIMEOUT_SECONDS", default_value = "30", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,

    /// No heartbeat for this long: the worker is Removed and its tasks re-queued.
    #[arg(long, env = "WORKER_TIMEOUT_SECONDS", default_value = "600", value_parser = parse_duration)]
    pub worker_timeout: Duration,

    /// Period of the liveness ticker (which also flushes state to SQLite).
    #[arg(long, env = "HERD_CHECK_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub check_interval: Duration,

    /// Heartbeat period told to workers when they register.
    #[arg(long, env = "HERD_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Placement policy [default: resource-aware, or the one last switched to at run
    /// time, which is kept in the data dir].
    #[arg(long, env = "HERD_SCHEDULER", value_enum)]
    pub scheduler: Option<SchedulerKind>,

    /// Placements of one task before losing its worker makes it fail instead of re-queue.
    #[arg(long, env = "HERD_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Also start one herd-worker on this machine, stopped with the master.
    #[arg(long, env = "HERD_LOCAL_WORKER")]
    pub local_worker: bool,

    /// Run without the interactive REPL (also the case when stdin is not a terminal).
    #[arg(long)]
    pub no_repl: bool,

    /// Bootstrap admin token (default: generated once, kept in <data-dir>/token). Named
    /// operator tokens with roles come from `token create`.
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Join token: lets workers register and heartbeat, nothing else (default: generated
    /// once, kept in <data-dir>/join-token).
    #[arg(long, env = "HERD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// Accept calls without a token. Anyone who reaches the master can then run commands
    /// on every worker.
    #[arg(long, env = "HERD_INSECURE")]
    pub insecure: bool,

    /// TLS certificate (PEM) for the gRPC server; needs --tls-key.
    #[arg(long, env = "HERD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM) for the gRPC server; needs --tls-cert.
    #[arg(long, env = "HERD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate (PEM): worker connections must present a client certificate it
    /// signed, naming the worker (a DNS name equal to the worker name). Needs --tls-cert.
    #[arg(long, env = "HERD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve Prometheus metrics over HTTP at this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "HERD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Address of the HTTP API and dashboard (`off` to disable; port 0 picks a free one
    /// and the master logs it).
    #[arg(long, env = "HERD_HTTP_LISTEN", default_value = "0.0.0.0:8080", value_parser = parse_listen)]
    pub http_listen: Listen,

    /// How long the output of a task is kept under <data-dir>/output after it was last
    /// written.
    #[arg(long, env = "HERD_TASK_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub task_retention: Duration,

    /// Where the cluster's state lives: SQLite in the data dir (the default), or a
    /// PostgreSQL database (postgres://USER@HOST:PORT/DB) shared by standby masters, of
    /// which one leads.
    #[arg(long, env = "HERD_STORE", hide_env_values = true, value_parser = parse_store)]
    pub store: Option<String>,

    /// After a take-over (a restart, or a fail-over to this master), how long workers that
    /// were Active have to reconnect before silence counts (default: 2 x
    /// --heartbeat-timeout).
    #[arg(long, env = "HERD_FAILOVER_GRACE", value_parser = parse_duration)]
    pub failover_grace: Option<Duration>,

    /// The gRPC URL other masters send clients to while this one leads (default:
    /// http(s)://HOST:PORT from --listen, with this machine's host name for 0.0.0.0).
    #[arg(long, env = "HERD_ADVERTISE")]
    pub advertise: Option<String>,
}

/// `--store`: a PostgreSQL URL (SQLite needs none: it is the default).
fn parse_store(text: &str) -> Result<String, Error> {
    let scheme = text.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("postgres" | "postgresql") => Ok(text.to_string()),
        _ => Err(Error::InvalidArgument(
            "expected postgres://USER@HOST:PORT/DATABASE (leave --store out for SQLite in the \
             data dir)"
                .into(),
        )),
    }
}

impl MasterConfig {
    /// The failover grace in effect.
    pub fn failover_grace(&self) -> Duration {
        self.failover_grace.unwrap_or(self.heartbeat_timeout * 2)
    }

    /// Refuses settings under which liveness cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        if self.heartbeat_interval >= self.heartbeat_timeout {
            return Err(Error::setup(format!(
                "--heartbeat-interval ({:?}) must be shorter than --heartbeat-timeout ({:?}), \
                 or every worker is marked Inactive between two heartbeats",
                self.heartbeat_interval, self.heartbeat_timeout
            )));
        }
        if self.tls_client_ca.is_some() && self.local_worker {
            return Err(Error::setup(
                "--local-worker cannot be used with --tls-client-ca: the local worker \
                        has no client certificate; start a herd-worker with --client-cert \
                        and --client-key instead",
            ));
        }
        if self.worker_timeout <= self.heartbeat_timeout {
            return Err(Error::setup(format!(
                "--worker-timeout ({:?}) must be longer than --heartbeat-timeout ({:?}): \
                 a worker goes Inactive long before it is Removed",
                self.worker_timeout, self.heartbeat_timeout
            )));
        }
        Ok(())
    }
}

/// What `--isolation` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum IsolationChoice {
    #[default]
    Auto,
    Cgroup,
    ProcessGroup,
}

/// herd-worker's settings.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    /// URL of the master.
    #[arg(long, env = "HERD_MASTER", default_value = "http://127.0.0.1:50051")]
    pub master: String,

    /// Stable identity of this worker; re-registering with the same name keeps the id.
    /// Defaults to the host name.
    #[arg(long, env = "HERD_WORKER_NAME")]
    pub name: Option<String>,

    /// Advertised CPUs (default: detected).
    #[arg(long)]
    pub cpu: Option<f64>,

    /// Advertised memory in GB (default: detected).
    #[arg(long)]
    pub memory: Option<f64>,

    /// Advertised GPUs, indices 0..N-1 of unknown model (default: detected with
    /// `nvidia-smi`, none without it).
    #[arg(long, conflicts_with = "gpu_ids")]
    pub gpu: Option<u32>,

    /// Advertised GPUs by index, e.g. `0,2` (the others are left to something else).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub gpu_ids: Option<Vec<u32>>,

    /// Advertised disk in GB (default: the free space of --work-dir).
    #[arg(long)]
    pub disk: Option<f64>,

    /// Folder for task folders (output, exit status, supervisor state), kept across
    /// restarts so a restarted worker reattaches [default: work-NAME in the per-user state
    /// folder, $XDG_STATE_HOME/herd or ~/.local/state/herd].
    #[arg(long, env = "HERD_WORK_DIR")]
    pub work_dir: Option<PathBuf>,

    /// Container runtime for image tasks: auto, docker, podman or none. `auto` picks one
    /// whose `info` call succeeds.
    #[arg(long, env = "HERD_RUNTIME", default_value = "auto")]
    pub runtime: String,

    /// Labels, `key=value`, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// How long a cancelled task has between SIGTERM and SIGKILL.
    #[arg(long, env = "HERD_KILL_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub kill_grace: Duration,

    /// On SIGTERM, wait for the running tasks to end before leaving (default: leave them
    /// running under their supervisors, to be reattached at the next start).
    #[arg(long, env = "HERD_DRAIN_ON_EXIT")]
    pub drain_on_exit: bool,

    /// How task processes are contained: `auto` (a cgroup per task where cgroups are
    /// usable, else a process group), `cgroup` (refuse to start without cgroups) or
    /// `process-group` (the fallback, also to test it on a machine with cgroups).
    #[arg(long, env = "HERD_ISOLATION", value_enum, default_value = "auto")]
    pub isolation: IsolationChoice,

    /// How long a task folder (output, exit status) is kept after the master acknowledged
    /// the task's result.
    #[arg(long, env = "HERD_TASK_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub task_retention: Duration,

    /// The secret `worker add NAME` printed for this worker, for its first registration
    /// (afterwards the worker keeps its secret in the work dir).
    #[arg(long, env = "HERD_WORKER_SECRET", hide_env_values = true)]
    pub worker_secret: Option<String>,

    /// Client certificate (PEM) for a master started with --tls-client-ca; it must name
    /// this worker. Needs --client-key.
    #[arg(long, env = "HERD_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// Private key (PEM) of --client-cert.
    #[arg(long, env = "HERD_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    #[command(flatten)]
    pub access: Access,
}

/// How a client authenticates to the master and checks who it talks to.
#[derive(Debug, Clone, Args)]
pub struct Access {
    /// Token to present: the join token for herd-worker, an operator token for herdctl
    /// (default: the master's <data-dir>/join-token, or <data-dir>/token for herdctl, when
    /// on the master's machine).
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the token.
    #[arg(long, env = "HERD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// CA certificate (PEM) to check the master's TLS certificate (with an https:// URL).
    #[arg(long, env = "HERD_CA")]
    pub ca: Option<PathBuf>,
}

impl Access {
    /// The token to present, found as [`crate::auth::resolve_token`] says (`local`: which
    /// of the master's files to look for on its machine).
    pub fn bearer(&self, local: &str) -> Result<crate::auth::Bearer, crate::error::Error> {
        let token = crate::auth::resolve_token(self.token.clone(), self.token_file.clone(), local)?;
        crate::auth::Bearer::new(token.as_deref())
    }
}

fn parse_label(text: &str) -> Result<(String, String), Error> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| Error::invalid(format!("label '{text}' is not key=value")))
}
