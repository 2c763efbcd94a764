//! herd-master: gRPC server, worker registry, liveness ticker, SQLite store, and the
//! `master> ` REPL when stdin is a terminal.

mod metrics;
mod registry;
mod scheduler;
mod server;
mod service;
mod store;
mod tasks;
mod ticker;

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use herd::auth::{Bearer, TOKEN_FILE, master_token};
use herd::config::MasterConfig;
use herd::console::Console;
use herd::render::Style;
use herd::repl;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::metrics::Metrics;
use crate::registry::{Liveness, Registry, Settings};
use crate::server::Gate;
use crate::service::Master;
use crate::store::Store;

#[derive(Parser)]
#[command(
    name = "herd-master",
    version,
    about = "The herd master: registry, liveness, scheduler"
)]
struct Cli {
    #[command(flatten)]
    config: MasterConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = cli.config.validate() {
        eprintln!("herd-master: {err}");
        return ExitCode::from(2);
    }
    let interactive = !cli.config.no_repl && std::io::stdin().is_terminal();
    herd::init_logging(repl::LogWriter::default);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("herd-master: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.config, interactive)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: MasterConfig, interactive: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    let db_path = config.data_dir.join("herd.db");
    let metrics = Metrics::new();
    let (store, loaded) = Store::open(&db_path, metrics.flush.clone())
        .with_context(|| format!("cannot open {}", db_path.display()))?;
    let token = if config.insecure {
        warn!(
            "--insecure: calls need no token; anyone who reaches this master can run commands on every worker"
        );
        None
    } else {
        let (token, made) =
            master_token(config.token.clone(), &config.data_dir).map_err(anyhow::Error::msg)?;
        let path = config.data_dir.join(TOKEN_FILE);
        if made {
            info!(file = %path.display(), "generated the cluster token (mode 0600); workers on other machines need it: --token-file or HERD_TOKEN");
        } else if config.token.is_none() {
            info!(file = %path.display(), "cluster token");
        }
        Some(token)
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let cert =
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            let key =
                std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
            Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let registry = Arc::new(Registry::new(
        Settings {
            liveness: Liveness {
                heartbeat_timeout: config.heartbeat_timeout,
                worker_timeout: config.worker_timeout,
            },
            heartbeat_interval: config.heartbeat_interval,
            max_attempts: config.max_attempts,
            scheduler: config.scheduler,
        },
        store.clone(),
        metrics.clone(),
    ));
    let known = loaded.workers.len();
    let known_tasks = loaded.tasks.len();
    registry.load(loaded.workers, loaded.tasks);

    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{} is already in use: is another herd-master running? choose another with --listen",
            config.listen
        ),
        Err(err) => bail!("cannot listen on {}: {err}", config.listen),
    };
    let addr = listener.local_addr()?;
    info!(
        %addr, data = %db_path.display(), known_workers = known, known_tasks,
        scheduler = ?config.scheduler,
        heartbeat_timeout = ?config.heartbeat_timeout, worker_timeout = ?config.worker_timeout,
        "herd-master listening"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ticker = ticker::spawn(
        registry.clone(),
        store.clone(),
        config.check_interval,
        shutdown_rx.clone(),
    );
    let master = Master {
        registry: registry.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        handshake_timeout: config.heartbeat_timeout,
    };
    let gate = Gate::new(token.clone());
    let server = server::serve_tcp(
        listener,
        tls,
        master.clone(),
        gate.clone(),
        shutdown_rx.clone(),
    )
    .await?;
    let metrics_server = config.metrics_listen.map(|addr| {
        tokio::spawn(metrics::serve(
            addr,
            metrics.clone(),
            registry.clone(),
            shutdown_rx.clone(),
        ))
    });

    // Under TLS the local worker checks the certificate by name: certificates name
    // `localhost`, not an address.
    let url = match scheme {
        "https" => format!("https://localhost:{}", addr.port()),
        _ => format!("http://{}", reachable(addr)),
    };
    let mut local_worker = if config.local_worker {
        let ca = config.tls_cert.as_deref();
        Some(start_local_worker(
            &url,
            ca,
            token.as_deref(),
            &config.data_dir,
        )?)
    } else {
        None
    };

    let repl_done = if interactive {
        let (done_tx, done_rx) = oneshot::channel();
        let channel = server::in_process(master, gate, shutdown_rx.clone());
        let bearer = Bearer::new(token.as_deref()).map_err(anyhow::Error::msg)?;
        let console = Console::new(channel, bearer, &url, Style::detect());
        let history = config.data_dir.join("history");
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("herd-repl".into())
            .spawn(move || {
                if let Err(err) = repl::run(console, "master> ", Some(history), handle) {
                    eprintln!("herd-master: the REPL failed: {err}");
                }
                let _ = done_tx.send(());
            })?;
        Some(done_rx)
    } else {
        None
    };

    wait_for_stop(repl_done).await;
    info!("stopping: closing worker streams and flushing state");
    registry.close_all();
    let _ = shutdown_tx.send(true);
    if let Some(child) = local_worker.as_mut() {
        stop_child(child).await;
    }
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => warn!(%err, "the gRPC server stopped with an error"),
        Ok(Err(err)) => warn!(%err, "the gRPC server task failed"),
        Err(_) => warn!("the gRPC server did not stop within 5s"),
    }
    let _ = ticker.await;
    if let Some(metrics_server) = metrics_server {
        match metrics_server.await {
            Ok(Err(err)) => warn!(%err, "the metrics server failed"),
            Err(err) => warn!(%err, "the metrics server task failed"),
            Ok(Ok(())) => {}
        }
    }
    info!("herd-master stopped");
    Ok(())
}

/// Waits for SIGTERM, or the REPL to end. Headless, SIGINT stops the master too; with a
/// REPL, Ctrl-C belongs to the REPL (it clears the line or interrupts a command).
async fn wait_for_stop(repl_done: Option<oneshot::Receiver<()>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let interactive = repl_done.is_some();
    let repl = async {
        match repl_done {
            Some(done) => {
                let _ = done.await;
            }
            None => std::future::pending().await,
        }
    };
    let interrupt = async {
        if interactive {
            std::future::pending::<()>().await;
        }
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::select! {
        _ = interrupt => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
        _ = repl => {}
    }
}

/// The address a local client uses to reach a server listening on `addr`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Starts `herd-worker` from beside this binary. It dies with the master (even on kill -9,
/// through the parent-death signal), and logs to `<data-dir>/local-worker.log`.
fn start_local_worker(
    url: &str,
    ca: Option<&Path>,
    token: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?.with_file_name("herd-worker");
    if !exe.exists() {
        bail!(
            "--local-worker needs herd-worker next to herd-master ({} is missing): \
             build both with cargo build --release",
            exe.display()
        );
    }
    let log_path = data_dir.join("local-worker.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut command = Command::new(&exe);
    command.arg("--master").arg(url);
    if let Some(ca) = ca {
        // The master's own certificate is the anchor the local worker trusts.
        command.arg("--ca").arg(ca);
    }
    match token {
        Some(token) => command.env("HERD_TOKEN", token),
        None => command.env_remove("HERD_TOKEN"),
    };
    command
        .env_remove("HERD_MASTER")
        .env_remove("HERD_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    info!(pid = child.id(), log = %log_path.display(), "local worker started");
    Ok(child)
}

/// Asks a child to stop (SIGTERM), and kills it if it has not within 5 s.
async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        warn!("the local worker did not stop within 5s; killing it");
        let _ = child.kill().await;
    }
}
