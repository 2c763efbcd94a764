//! herd-master: gRPC server, worker registry, liveness ticker, SQLite store, and the
//! `master> ` REPL when stdin is a terminal.

mod admin;
mod events;
mod history;
mod http;
mod identity;
mod liveness;
mod local_worker;
mod lock;
mod logs;
mod metrics;
mod ops;
mod output;
mod records;
mod registry;
mod scheduler;
mod server;
mod service;
mod store;
mod tasks;
mod ticker;
mod workers;

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use herd::auth::{Bearer, JOIN_TOKEN_FILE, TOKEN_FILE, join_token, master_token};
use herd::config::{Listen, MasterConfig};
use herd::console::Console;
use herd::render::Style;
use herd::repl;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::events::Events;
use crate::history::History;
use crate::identity::Credentials;
use crate::liveness::Liveness;
use crate::local_worker::LocalWorker;
use crate::metrics::Metrics;
use crate::output::OutputDir;
use crate::registry::{Registry, Settings};
use crate::service::Master;
use crate::store::Store;

/// mimalloc instead of glibc's malloc: a task's way through the master is made of many
/// small allocations on two threads (the async workers and the store), and glibc's
/// arenas spent a sixth of the master's time on them at 8,000 placements a second.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // Before any connection is opened.
    match store::pcache::install() {
        Ok(()) => tracing::debug!("SQLite's page cache skips truncations that drop nothing"),
        Err(err) => tracing::warn!("SQLite keeps its own page cache: {err}"),
    }
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
    // Before the master listens: a SIGTERM that comes as soon as it answers stops it
    // cleanly, where the signal's default action would kill it.
    let stops = Stops::register(interactive)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    // Before anything in the dir is touched: one master per data dir.
    let _lock = lock::lock(&config.data_dir)?;
    info!(data_dir = %config.data_dir.display(), "data dir (herd.db, token, task output)");
    let db_path = config.data_dir.join("herd.db");
    let metrics = Metrics::new();
    let events = Events::new();
    let output = OutputDir::new(config.data_dir.join("output"));
    let (store, loaded) = Store::open(&db_path, output.clone(), metrics.flush.clone())
        .with_context(|| format!("cannot open {}", db_path.display()))?;
    let (token, join) = if config.insecure {
        warn!(
            "--insecure: calls need no token; anyone who reaches this master can run commands on every worker"
        );
        (None, None)
    } else {
        let (token, made) =
            master_token(config.token.clone(), &config.data_dir).map_err(anyhow::Error::msg)?;
        let path = config.data_dir.join(TOKEN_FILE);
        if made {
            info!(file = %path.display(), "generated the admin token (mode 0600): herdctl and the dashboard use it; make tokens with roles with 'token create'");
        } else if config.token.is_none() {
            info!(file = %path.display(), "admin token");
        }
        let (join, made) =
            join_token(config.join_token.clone(), &config.data_dir).map_err(anyhow::Error::msg)?;
        let path = config.data_dir.join(JOIN_TOKEN_FILE);
        if made {
            info!(file = %path.display(), "generated the join token (mode 0600): workers on other machines need it (--token-file or HERD_TOKEN); it lets them register and heartbeat, nothing else");
        } else if config.join_token.is_none() {
            info!(file = %path.display(), "join token");
        }
        if join == token {
            bail!(
                "the join token and the admin token are the same: a worker machine would hold \
                 the admin token; give --join-token (or <data-dir>/join-token) another value"
            );
        }
        (Some(token), Some(join))
    };
    let credentials = Arc::new(Credentials::new(
        token.as_deref(),
        join.as_deref(),
        loaded.tokens.clone(),
        store.clone(),
    ));
    let pem = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let cert =
                std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
            let key =
                std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
            Some((cert, key))
        }
        _ => None,
    };
    let http_tls = pem.clone();
    let mut tls =
        pem.map(|(cert, key)| ServerTlsConfig::new().identity(Identity::from_pem(cert, key)));
    if let Some(ca) = &config.tls_client_ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        // Optional at the TLS layer (herdctl and the REPL carry tokens, not certificates);
        // the Registry service requires one naming the worker.
        tls = tls.map(|tls| {
            tls.client_ca_root(Certificate::from_pem(pem))
                .client_auth_optional(true)
        });
        info!(ca = %ca.display(), "worker connections must present a client certificate naming the worker");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    // A flag given wins; else the policy last switched to at run time; else the default.
    let scheduler = config
        .scheduler
        .or_else(|| {
            let kept = loaded.scheduler.as_deref()?;
            clap::ValueEnum::from_str(kept, false).ok()
        })
        .unwrap_or_default();
    let registry = Arc::new(Registry::new(
        Settings {
            liveness: Liveness::new(config.heartbeat_timeout, config.worker_timeout),
            heartbeat_interval: config.heartbeat_interval,
            check_interval: config.check_interval,
            max_attempts: config.max_attempts,
            scheduler,
        },
        store.clone(),
        metrics.clone(),
        events.clone(),
    ));
    let known = loaded.workers.len();
    let unfinished_tasks = loaded.tasks.len();
    registry.load(
        loaded.workers,
        loaded.tasks,
        loaded.finished,
        loaded.last_task,
    );

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
        %addr, data = %db_path.display(), known_workers = known, unfinished_tasks,
        ?scheduler,
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
    let sweeper = output::spawn_sweeper(output.clone(), config.task_retention, shutdown_rx.clone());
    let master = Master {
        registry: registry.clone(),
        store: store.clone(),
        output,
        metrics: metrics.clone(),
        handshake_timeout: config.heartbeat_timeout,
        credentials,
        require_client_cert: config.tls_client_ca.is_some(),
    };
    let server = server::serve_tcp(listener, tls, master.clone(), shutdown_rx.clone()).await?;
    let metrics_server = config.metrics_listen.map(|addr| {
        let registry = registry.clone();
        tokio::spawn(metrics::serve(
            addr,
            metrics.clone(),
            Arc::new(move || registry.summary()),
            shutdown_rx.clone(),
        ))
    });

    let history = History::new();
    let sampler = history::spawn(
        history.clone(),
        registry.clone(),
        events.clone(),
        shutdown_rx.clone(),
    );
    let http_server = match config.http_listen {
        Listen::Off => None,
        Listen::On(addr) => {
            let listener = match TcpListener::bind(addr).await {
                Ok(listener) => listener,
                Err(err) => bail!(
                    "cannot serve HTTP on {addr}: {err} (choose another with --http-listen, or off)"
                ),
            };
            let bound = listener.local_addr()?;
            let tls = http_tls
                .map(|(cert, key)| http::tls_config(&cert, &key))
                .transpose()?;
            http::announce(bound, tls.is_some(), token.as_deref());
            let app = http::router(http::Http {
                master: master.clone(),
                events: events.clone(),
                history,
                shutdown: shutdown_rx.clone(),
            });
            Some(tokio::spawn(http::serve(
                listener,
                app,
                tls,
                shutdown_rx.clone(),
            )))
        }
    };

    // Under TLS the local worker checks the certificate by name: certificates name
    // `localhost`, not an address.
    let url = match scheme {
        "https" => format!("https://localhost:{}", addr.port()),
        _ => format!("http://{}", reachable(addr)),
    };
    let local_worker = if config.local_worker {
        let worker = LocalWorker::new(
            url.clone(),
            config.tls_cert.as_deref(),
            join.as_deref(),
            &config.data_dir,
        )?;
        Some(worker.supervise(shutdown_rx.clone())?)
    } else {
        None
    };

    let repl_done = if interactive {
        let (done_tx, done_rx) = oneshot::channel();
        // The REPL is the master's own terminal: it needs no token, and is "repl" in
        // the audit log.
        let channel = server::in_process(master, shutdown_rx.clone());
        let bearer = Bearer::new(None).map_err(anyhow::Error::msg)?;
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

    stops.wait(repl_done).await;
    info!("stopping: closing worker streams and flushing state");
    registry.close_all();
    let _ = shutdown_tx.send(true);
    if let Some(local_worker) = local_worker {
        let _ = local_worker.await;
    }
    let _ = sweeper.await;
    let _ = sampler.await;
    if let Some(http_server) = http_server {
        match tokio::time::timeout(Duration::from_secs(5), http_server).await {
            Ok(Ok(Err(err))) => warn!(%err, "the HTTP server failed"),
            Ok(Err(err)) => warn!(%err, "the HTTP server task failed"),
            Err(_) => warn!("the HTTP server did not stop within 5s"),
            Ok(Ok(Ok(()))) => {}
        }
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

/// The signals that stop the master: SIGTERM, and headless, SIGINT too; with a REPL,
/// Ctrl-C belongs to the REPL (it clears the line or interrupts a command).
struct Stops {
    term: tokio::signal::unix::Signal,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Stops {
    fn register(interactive: bool) -> anyhow::Result<Stops> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let interrupt = match interactive {
            true => None,
            false => Some(signal(SignalKind::interrupt()).context("cannot handle SIGINT")?),
        };
        Ok(Stops { term, interrupt })
    }

    /// Waits for one of the signals, or the REPL to end.
    async fn wait(mut self, repl_done: Option<oneshot::Receiver<()>>) {
        let repl = async {
            match repl_done {
                Some(done) => {
                    let _ = done.await;
                }
                None => std::future::pending().await,
            }
        };
        let interrupt = async {
            match &mut self.interrupt {
                Some(interrupt) => interrupt.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => info!("SIGINT received"),
            _ = self.term.recv() => info!("SIGTERM received"),
            _ = repl => {}
        }
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
