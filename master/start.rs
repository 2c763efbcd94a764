//! Assembles a master from its configuration, and takes it apart again in order. What
//! [`start`] returns is serving: gRPC and HTTP listen, the ticker runs, SQLite is loaded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, Identity, ServerTlsConfig};
use tracing::{info, warn};

use herd::auth::{Bearer, JOIN_TOKEN_FILE, TOKEN_FILE, join_token, master_token};
use herd::config::{Listen, MasterConfig};
use herd_console::console::Console;
use herd_console::render::Style;
use herd_console::repl;

use crate::app::App;
use crate::cluster::{Cluster, Settings};
use crate::events::Events;
use crate::grpc::WorkerService;
use crate::history::History;
use crate::identity::{Credentials, cluster, digest};
use crate::liveness::Liveness;
use crate::local_worker::LocalWorker;
use crate::metrics::Metrics;
use crate::output::OutputDir;
use crate::store::postgres::{Fence, redact};
use crate::store::{Instruments, Store};
use crate::{grpc, history, http, lock, metrics, retention, ticker};

/// A master that serves. Dropping it without [`Running::shutdown`] leaves its tasks
/// running until the runtime ends; shut it down to flush its state and close streams.
pub struct Running {
    /// Where gRPC listens (the port is the bound one when `--listen` asked for port 0).
    pub grpc_addr: SocketAddr,
    /// Where the dashboard and the HTTP API listen, unless `--http-listen off`.
    pub http_addr: Option<SocketAddr>,
    /// The URL a client on this machine uses to reach gRPC (`http://127.0.0.1:PORT`, or
    /// `https://localhost:PORT` under TLS, whose certificates name hosts, not addresses).
    pub url: String,
    /// The data dir: herd.db, tokens, task output, REPL history.
    pub data_dir: PathBuf,
    services: WorkerService,
    shutdown_tx: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
    /// Held for the master's whole life: one master per data dir.
    _lock: lock::DataDirLock,
    tasks: Background,
}

/// What runs beside the gRPC server, in the order it is stopped.
struct Background {
    local_worker: Option<JoinHandle<()>>,
    sweeper: JoinHandle<()>,
    sampler: JoinHandle<()>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    ticker: JoinHandle<()>,
    metrics: Option<JoinHandle<std::io::Result<()>>>,
}

/// Starts a master: takes the data dir's lock, opens and loads SQLite, binds the
/// listeners and starts every background task. A master on a PostgreSQL store is started
/// by [`crate::leader::run`], which leads only once elected.
pub async fn start(config: MasterConfig) -> anyhow::Result<Running> {
    if config.store.is_some() {
        bail!("a master on a PostgreSQL store runs under herd_master::leader::run");
    }
    start_with(config, None, None).await
}

/// Listening sockets bound before the master starts: a standby's, handed to the leader it
/// becomes, so the port is never closed in between.
pub(crate) struct Bound {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
}

/// Starts a master that leads in `fence.term` on the PostgreSQL store of `config.store`,
/// serving on `bound`.
pub(crate) async fn start_leading(
    config: MasterConfig,
    fence: Fence,
    bound: Bound,
) -> anyhow::Result<Running> {
    start_with(config, Some(fence), Some(bound)).await
}

async fn start_with(
    config: MasterConfig,
    fence: Option<Fence>,
    bound: Option<Bound>,
) -> anyhow::Result<Running> {
    let (grpc_bound, http_bound) = match bound {
        Some(bound) => (Some(bound.grpc), bound.http),
        None => (None, None),
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    // Before anything in the dir is touched: one master per data dir.
    let dir_lock = lock::lock(&config.data_dir)?;
    info!(data_dir = %config.data_dir.display(), "data dir (herd.db, token, task output)");
    let db_path = config.data_dir.join("herd.db");
    let metrics = Metrics::new();
    let events = Events::new();
    let output = OutputDir::new(config.data_dir.join("output"));
    let term = fence.as_ref().map(|f| f.term);
    metrics.term.set(term.unwrap_or(0));
    let instruments = Instruments {
        liveness_commits: metrics.flush.clone(),
        commits: metrics.commits.clone(),
        failed_commits: metrics.store_failures.clone(),
    };
    let (store, loaded) = match (&config.store, fence) {
        (Some(url), Some(fence)) => Store::open_postgres(url, fence, instruments)
            .await
            .with_context(|| format!("cannot open the store {}", redact(url)))?,
        _ => Store::open(&db_path, output.clone(), instruments)
            .with_context(|| format!("cannot open {}", db_path.display()))?,
    };
    let (token, join) = tokens(&config)?;
    let credentials = Credentials::new(
        token.as_deref(),
        join.as_deref(),
        loaded.tokens.clone(),
        store.clone(),
    );
    // Standby masters: the cluster's bootstrap tokens work on whichever leads.
    let credentials = Arc::new(match (term, &token, &join) {
        (Some(_), Some(token), Some(join)) => {
            let given = |t: &Option<String>| t.as_ref().is_some_and(|t| !t.trim().is_empty());
            let own = cluster::Bootstrap {
                admin: digest(token),
                join: digest(join),
                admin_given: given(&config.token),
                join_given: given(&config.join_token),
            };
            let adopted = cluster::share(own, loaded.cluster_tokens.as_deref(), &store).await;
            credentials.with_cluster_tokens(&adopted)
        }
        _ => credentials,
    });
    let Tls {
        grpc: tls,
        http: http_tls,
    } = tls(&config)?;
    if let Some(ca) = &config.tls_client_ca {
        info!(ca = %ca.display(), "worker connections must present a client certificate naming the worker");
    }
    let https = tls.is_some();
    // A flag given wins; else the policy last switched to at run time; else the default.
    let scheduler = config
        .scheduler
        .or_else(|| {
            let kept = loaded.scheduler.as_deref()?;
            clap::ValueEnum::from_str(kept, false).ok()
        })
        .unwrap_or_default();
    let cluster = Arc::new(Cluster::new(
        Settings {
            liveness: Liveness::new(config.heartbeat_timeout, config.worker_timeout)
                .with_failover_grace(config.failover_grace()),
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
    cluster.load(
        loaded.workers,
        loaded.tasks,
        loaded.finished,
        loaded.last_task,
    );

    let listener = match grpc_bound {
        Some(listener) => listener,
        None => match TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "{} is already in use: is another herd-master running? choose another with --listen",
                config.listen
            ),
            Err(err) => bail!("cannot listen on {}: {err}", config.listen),
        },
    };
    let addr = listener.local_addr()?;
    info!(
        %addr, data = %db_path.display(), known_workers = known, unfinished_tasks,
        scheduler = %crate::ops::scheduler_name(scheduler),
        heartbeat_timeout = ?config.heartbeat_timeout, worker_timeout = ?config.worker_timeout,
        "herd-master listening"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ticker = ticker::spawn(
        cluster.clone(),
        store.clone(),
        config.check_interval,
        shutdown_rx.clone(),
    );
    let sweep = match config.store {
        Some(_) => retention::Sweep::Store(store.clone()),
        None => retention::Sweep::Files(output),
    };
    let sweeper = retention::spawn_sweeper(sweep, config.task_retention, shutdown_rx.clone());
    let app = App {
        cluster: cluster.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        credentials,
    };
    let services = WorkerService {
        app: app.clone(),
        handshake_timeout: config.heartbeat_timeout,
        require_client_cert: config.tls_client_ca.is_some(),
        term,
    };
    let grpc = grpc::serve_tcp(listener, tls, services.clone(), shutdown_rx.clone()).await?;
    let metrics_server = config.metrics_listen.map(|addr| {
        let cluster = cluster.clone();
        tokio::spawn(metrics::serve(
            addr,
            metrics.clone(),
            Arc::new(move || cluster.summary()),
            shutdown_rx.clone(),
        ))
    });

    let history = History::new();
    let sampler = history::spawn(
        history.clone(),
        cluster.clone(),
        events.clone(),
        shutdown_rx.clone(),
    );
    let (http_addr, http_server) = match config.http_listen {
        Listen::Off => (None, None),
        Listen::On(addr) => {
            let listener = match http_bound {
                Some(listener) => listener,
                None => match TcpListener::bind(addr).await {
                    Ok(listener) => listener,
                    Err(err) => bail!(
                        "cannot serve HTTP on {addr}: {err} (choose another with --http-listen, or off)"
                    ),
                },
            };
            let bound = listener.local_addr()?;
            let tls = http_tls;
            http::announce(
                bound,
                tls.is_some(),
                token.as_deref(),
                &config.data_dir.join(TOKEN_FILE),
            );
            let router = http::router(http::Http {
                app: app.clone(),
                events: events.clone(),
                history,
                shutdown: shutdown_rx.clone(),
            });
            let served = tokio::spawn(http::serve(listener, router, tls, shutdown_rx.clone()));
            (Some(bound), Some(served))
        }
    };

    // Under TLS the local worker checks the certificate by name: certificates name
    // `localhost`, not an address.
    let url = match https {
        true => format!("https://localhost:{}", addr.port()),
        false => format!("http://{}", reachable(addr)),
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
    Ok(Running {
        grpc_addr: addr,
        http_addr,
        url,
        data_dir: config.data_dir,
        services,
        shutdown_tx,
        shutdown_rx,
        _lock: dir_lock,
        tasks: Background {
            local_worker,
            sweeper,
            sampler,
            http: http_server,
            grpc,
            ticker,
            metrics: metrics_server,
        },
    })
}

/// The TLS of the gRPC and HTTP servers, from `--tls-cert`, `--tls-key` and
/// `--tls-client-ca`.
pub(crate) struct Tls {
    pub grpc: Option<ServerTlsConfig>,
    pub http: Option<Arc<rustls::ServerConfig>>,
}

pub(crate) fn tls(config: &MasterConfig) -> anyhow::Result<Tls> {
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
    let http = pem
        .as_ref()
        .map(|(cert, key)| http::tls_config(cert, key))
        .transpose()?;
    let mut grpc =
        pem.map(|(cert, key)| ServerTlsConfig::new().identity(Identity::from_pem(cert, key)));
    if let Some(ca) = &config.tls_client_ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        // Optional at the TLS layer (herdctl and the REPL carry tokens, not certificates);
        // the Registry service requires one naming the worker.
        grpc = grpc.map(|tls| {
            tls.client_ca_root(Certificate::from_pem(pem))
                .client_auth_optional(true)
        });
    }
    Ok(Tls { grpc, http })
}

/// The admin and join tokens: given, or made once and kept in the data dir; none with
/// `--insecure`.
fn tokens(config: &MasterConfig) -> anyhow::Result<(Option<String>, Option<String>)> {
    if config.insecure {
        warn!(
            "--insecure: calls need no token; anyone who reaches this master can run commands on every worker"
        );
        return Ok((None, None));
    }
    let (token, made) = master_token(config.token.clone(), &config.data_dir)?;
    let path = config.data_dir.join(TOKEN_FILE);
    if made {
        info!(file = %path.display(), "generated the admin token (mode 0600): herdctl and the dashboard use it; make tokens with roles with 'token create'");
    } else if config.token.is_none() {
        info!(file = %path.display(), "admin token");
    }
    let (join, made) = join_token(config.join_token.clone(), &config.data_dir)?;
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
    Ok((Some(token), Some(join)))
}

impl Running {
    /// A gRPC channel into this master that needs no network and no token: the REPL's
    /// (it is "repl" in the audit log).
    pub fn in_process_channel(&self) -> Channel {
        grpc::in_process(self.services.clone(), self.shutdown_rx.clone())
    }

    /// Starts the `master> ` REPL on this terminal, on a thread of its own, talking to
    /// this master in-process (it needs no token and is "repl" in the audit log; its
    /// history is kept in the data dir). The receiver fires when it ends (exit, Ctrl-D).
    pub fn spawn_repl(&self) -> anyhow::Result<oneshot::Receiver<()>> {
        let console = Console::new(
            self.in_process_channel(),
            Bearer::new(None)?,
            &self.url,
            Style::detect(),
        );
        let history = self.data_dir.join("history");
        let handle = tokio::runtime::Handle::current();
        let (done, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name("herd-repl".into())
            .spawn(move || {
                if let Err(err) = repl::run(console, "master> ", Some(history), handle) {
                    eprintln!("herd-master: the REPL failed: {err}");
                }
                let _ = done.send(());
            })?;
        Ok(ended)
    }

    /// Stops the master in order: streams closed, listeners stopped, state flushed to
    /// SQLite by the ticker's last pass, the local worker stopped.
    pub async fn shutdown(self) {
        info!("stopping: closing worker streams and flushing state");
        self.services.app.cluster.close_all();
        let _ = self.shutdown_tx.send(true);
        let tasks = self.tasks;
        if let Some(local_worker) = tasks.local_worker {
            let _ = local_worker.await;
        }
        let _ = tasks.sweeper.await;
        let _ = tasks.sampler.await;
        if let Some(http_server) = tasks.http {
            match tokio::time::timeout(Duration::from_secs(5), http_server).await {
                Ok(Ok(Err(err))) => warn!(%err, "the HTTP server failed"),
                Ok(Err(err)) => warn!(%err, "the HTTP server task failed"),
                Err(_) => warn!("the HTTP server did not stop within 5s"),
                Ok(Ok(Ok(()))) => {}
            }
        }
        let grpc = tasks.grpc.abort_handle();
        match tokio::time::timeout(Duration::from_secs(5), tasks.grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => warn!(%err, "the gRPC server stopped with an error"),
            Ok(Err(err)) => warn!(%err, "the gRPC server task failed"),
            Err(_) => {
                warn!("the gRPC server did not stop within 5s; its connections are cut");
                grpc.abort();
            }
        }
        let _ = tasks.ticker.await;
        if let Some(metrics_server) = tasks.metrics {
            match metrics_server.await {
                Ok(Err(err)) => warn!(%err, "the metrics server failed"),
                Err(err) => warn!(%err, "the metrics server task failed"),
                Ok(Ok(())) => {}
            }
        }
        info!("herd-master stopped");
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
