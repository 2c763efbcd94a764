//! herd-worker as a library: [`run`] is the agent (register, adopt the id, heartbeat,
//! run tasks), [`supervisor::main`] the per-task supervisor the agent starts (the same
//! program in its hidden `supervise` mode). `main.rs` parses flags and forwards signals.

pub mod agent;
pub mod cgroup;
pub mod cli;
pub mod devices;
mod ending;
pub mod executor;
pub mod folder;
pub mod follow;
pub mod identity;
pub mod lease;
pub mod ledger;
pub mod procs;
pub mod supervisor;
pub mod telemetry;

use std::net::{ToSocketAddrs, UdpSocket};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use herd::config::WorkerConfig;
use herd::domain::{Runtime, validate_worker_name};
use herd::pb;

use crate::agent::Agent;
use crate::cgroup::Isolation;
use crate::executor::Executor;
use crate::identity::Secret;
use crate::telemetry::{Telemetry, detect_capacity};

/// Messages waiting to be forwarded to the master (task reports and output).
const OUTBOX_CAPACITY: usize = 256;
/// How often reported task folders are checked against `--task-retention`.
const CLEAN_EVERY: Duration = Duration::from_secs(3600);

/// Runs the worker agent until a stop request arrives on `stops` (SIGTERM or SIGINT in
/// the program; with `--drain-on-exit`, a second one stops the waiting) or the master
/// refuses it for good.
pub async fn run(
    config: WorkerConfig,
    mut stops: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    let host = sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into());
    let name = config.name.clone().unwrap_or_else(|| host.clone());
    validate_worker_name(&name)?;
    let work_dir = config
        .work_dir
        .clone()
        .unwrap_or_else(|| herd::config::default_data_dir().join(format!("work-{name}")));
    std::fs::create_dir_all(&work_dir)?;
    let (cpu, memory_gb) = detect_capacity();
    let gpus = devices::gpus(config.gpu_ids.as_deref(), config.gpu);
    let capacity = pb::Resources {
        cpu: config.cpu.unwrap_or(cpu),
        memory_gb: config.memory.unwrap_or(memory_gb),
        gpu: gpus.len() as u32,
        disk_gb: config
            .disk
            .unwrap_or_else(|| devices::free_disk_gb(&work_dir)),
    };
    let secret = Secret::open(&work_dir, &name, config.worker_secret.as_deref())
        .map_err(anyhow::Error::msg)?;
    let runtime = pick_runtime(&config.runtime).await?;
    let isolation = match Isolation::detect(config.isolation)? {
        (isolation, None) => isolation,
        (isolation, Some(why)) => {
            warn!(reason = %why, "cgroups are not usable; each task gets its own process group");
            isolation
        }
    };
    let labels = with_built_in_labels(config.labels, &host, runtime, &gpus);
    let description = pb::WorkerDescription {
        name: name.clone(),
        address: local_address(&config.master).unwrap_or_else(|| host.clone()),
        host,
        version: herd::VERSION.into(),
        capacity: Some(capacity),
        labels,
        container_runtime: runtime.map(Runtime::as_str).unwrap_or("").into(),
        isolation: isolation.label().into(),
        gpus,
    };
    info!(
        worker = %name, master = %config.master, cpu = capacity.cpu,
        memory_gb = capacity.memory_gb, gpu = capacity.gpu, disk_gb = capacity.disk_gb,
        runtime = runtime.map(Runtime::as_str).unwrap_or("none"),
        isolation = isolation.label(), kill_grace = ?config.kill_grace,
        work_dir = %work_dir.display(), "herd-worker starting"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (outbox, outbox_rx) = tokio::sync::mpsc::channel(OUTBOX_CAPACITY);
    let executor = Executor::new(work_dir, runtime, isolation, config.kill_grace, outbox)?
        .with_gpus(capacity.gpu > 0);
    // Before the first heartbeat, so that it already lists what we hold.
    follow::recover(&executor);
    let cleaner = {
        let executor = executor.clone();
        let retention = config.task_retention;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(CLEAN_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let executor = executor.clone();
                let _ = tokio::task::spawn_blocking(move || executor.clean(retention)).await;
            }
        })
    };
    let bearer = config.access.bearer(herd::auth::JOIN_TOKEN_FILE)?;
    let identity = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    let masters =
        herd::client::Masters::parse(&config.master, config.access.ca.as_deref(), identity)?;
    let agent = Agent::new(
        masters,
        bearer,
        description,
        Telemetry::start(Duration::from_secs(1)),
        executor.clone(),
        outbox_rx,
        secret,
    );
    let mut agent = tokio::spawn(agent.run(shutdown_rx));
    herd::service::ready(&format!("worker {name}: reaching {}", config.master));
    herd::service::spawn_watchdog();
    tokio::select! {
        _ = stops.recv() => {}
        ended = &mut agent => {
            // The master refused us for good: say why and end (the tasks' supervisors
            // keep running; they are reattached once the worker starts right).
            cleaner.abort();
            return match ended {
                Ok(Err(why)) => Err(anyhow::anyhow!(why)),
                Ok(Ok(())) => Ok(()),
                Err(err) => Err(anyhow::anyhow!("the agent failed: {err}")),
            };
        }
    }
    if config.drain_on_exit {
        herd::service::stopping("draining: waiting for the running tasks to end");
        // Every task ends and its result is acknowledged before we say goodbye.
        info!("draining: waiting for the running tasks to end and be acknowledged");
        let drained = async {
            let mut ticks = tokio::time::interval(Duration::from_millis(50));
            while !executor.is_idle() {
                ticks.tick().await;
            }
        };
        tokio::select! {
            _ = drained => info!("drained"),
            // A second signal: stop waiting; the supervisors keep the tasks.
            _ = stops.recv() => warn!("leaving before the tasks ended; they run on under their supervisors"),
        }
    } else {
        info!("leaving the running tasks to their supervisors");
    }
    cleaner.abort();
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    info!("herd-worker stopped");
    Ok(())
}

/// The labels a worker advertises: the built-in ones tasks can be constrained by (`os`,
/// `arch`, `hostname`, `runtime`, and `gpu.model` when known), then those given with
/// `--label` (which win).
fn with_built_in_labels(
    given: Vec<(String, String)>,
    host: &str,
    runtime: Option<Runtime>,
    gpus: &[pb::GpuDevice],
) -> std::collections::HashMap<String, String> {
    let mut labels: std::collections::HashMap<String, String> = [
        ("os", std::env::consts::OS.to_string()),
        ("arch", std::env::consts::ARCH.to_string()),
        ("hostname", host.to_string()),
        (
            "runtime",
            runtime.map(Runtime::as_str).unwrap_or("none").to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(model) = gpus
        .iter()
        .map(|g| g.model.as_str())
        .find(|m| !m.is_empty())
    {
        labels.insert("gpu.model".into(), model.to_string());
    }
    labels.extend(given);
    labels
}

/// Resolves `--runtime`: `auto` takes the first of docker, podman whose `info` succeeds.
async fn pick_runtime(choice: &str) -> anyhow::Result<Option<Runtime>> {
    let candidates = match choice {
        "auto" => vec![Runtime::Docker, Runtime::Podman],
        other => match Runtime::parse_optional(other)? {
            Some(runtime) => vec![runtime],
            None => return Ok(None),
        },
    };
    for runtime in candidates {
        if runtime_works(runtime).await {
            return Ok(Some(runtime));
        }
        if choice != "auto" {
            anyhow::bail!(
                "--runtime {choice}: '{choice} info' failed; install or start it, or use --runtime none"
            );
        }
    }
    warn!("no container runtime answers 'info'; image tasks will not be placed here");
    Ok(None)
}

async fn runtime_works(runtime: Runtime) -> bool {
    let probe = tokio::process::Command::new(runtime.as_str())
        .arg("info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(15), probe).await,
        Ok(Ok(status)) if status.success()
    )
}

/// The local IP this machine uses to reach the master (no packet is sent).
fn local_address(master: &str) -> Option<String> {
    let authority = master.split("://").nth(1)?.split('/').next()?;
    let target = authority.to_socket_addrs().ok()?.next()?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_model_is_a_built_in_label_when_known() {
        let a100 = devices::parse_nvidia_smi("0, NVIDIA A100-SXM4-80GB, 81920\n");
        let labels = with_built_in_labels(Vec::new(), "h", None, &a100);
        assert_eq!(labels["gpu.model"], "NVIDIA A100-SXM4-80GB");
        assert_eq!(labels["runtime"], "none");
        let unknown = devices::gpus(None, Some(2));
        assert!(!with_built_in_labels(Vec::new(), "h", None, &unknown).contains_key("gpu.model"));
        // A given label wins over the built-in one.
        let given = vec![("gpu.model".to_string(), "mine".to_string())];
        assert_eq!(
            with_built_in_labels(given, "h", None, &a100)["gpu.model"],
            "mine"
        );
    }
}
