//! herd-master: parses its flags, sets up logging, the runtime and the signals, and runs
//! the master library (`herd_master::start`) until a signal or the REPL ends it.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info};

use herd::config::MasterConfig;
use herd_console::repl;
use herd_master::cli::{Cli, Command, Tls};

/// mimalloc instead of glibc's malloc: a task's way through the master is made of many
/// small allocations on two threads (the async workers and the store), and glibc's
/// arenas spent a sixth of the master's time on them at 8,000 placements a second.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let parsed = herd::config_file::parse::<Cli>("/etc/herd/master.toml");
    if parsed.cli.file.print_config {
        print!("{}", parsed.render::<Cli>());
        return ExitCode::SUCCESS;
    }
    let cli = parsed.cli;
    if let Some(Command::Tls(tls)) = cli.command {
        return certificates(tls, &cli.config.data_dir);
    }
    if let Err(err) = cli.config.validate() {
        eprintln!("herd-master: {err}");
        return ExitCode::from(2);
    }
    let interactive = !cli.config.no_repl && std::io::stdin().is_terminal();
    // A master on a PostgreSQL store may be a standby: its REPL would have nothing to
    // talk to. herdctl follows whichever master leads.
    let standbys = cli.config.store.is_some();
    if interactive && standbys {
        eprintln!(
            "herd-master: no REPL with --store postgres://... (use herdctl, or the dashboard)"
        );
    }
    let interactive = interactive && !standbys;
    // At the REPL the log goes to <data-dir>/master.log, and only warnings to the screen.
    let log_file = interactive.then(|| herd_master::logfile::LogFile::open(&cli.config.data_dir));
    let logging = match log_file {
        Some(Ok(file)) => {
            eprintln!("log: {} (warnings also show here)", file.path().display());
            cli.log.init_split(file, repl::LogWriter::default)
        }
        Some(Err(err)) => {
            eprintln!("herd-master: cannot open its log: {err}");
            return ExitCode::FAILURE;
        }
        None => cli.log.init(repl::LogWriter::default),
    };
    if let Err(err) = logging {
        eprintln!("herd-master: {err}");
        return ExitCode::from(2);
    }
    // Before any connection is opened.
    match herd_master::store::pcache::install() {
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
    // cleanly, where the signal's default action would kill it. With a REPL, Ctrl-C
    // belongs to the REPL (it clears the line or interrupts a command).
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt: Option<Signal> = match interactive {
        true => None,
        false => Some(signal(SignalKind::interrupt()).context("cannot handle SIGINT")?),
    };
    herd::service::spawn_watchdog();
    if config.store.is_some() {
        let signalled = async {
            tokio::select! {
                _ = interrupt.as_mut().expect("headless").recv() => info!("SIGINT received"),
                _ = term.recv() => info!("SIGTERM received"),
            }
        };
        return herd_master::leader::run(config, signalled).await;
    }
    let running = herd_master::start(config).await?;
    herd::service::ready(&format!("listening on {}", running.grpc_addr));
    // The REPL ends the master when it ends; headless, only a signal does.
    let mut repl_ended = match interactive {
        true => Some(running.spawn_repl()?),
        false => None,
    };
    let repl = async {
        match &mut repl_ended {
            Some(ended) => {
                let _ = ended.await;
            }
            None => std::future::pending().await,
        }
    };
    let interrupted = async {
        match &mut interrupt {
            Some(interrupt) => interrupt.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = interrupted => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
        _ = repl => {}
    }
    herd::service::stopping("closing worker streams and flushing the store");
    running.shutdown().await;
    Ok(())
}

/// `herd-master tls init|worker`: writes the certificates and says how to use them.
fn certificates(tls: Tls, data_dir: &std::path::Path) -> ExitCode {
    use herd_master::certs;
    let default_dir = data_dir.join("tls");
    let done = match tls {
        Tls::Init { dir, names } => {
            let dir = dir.unwrap_or(default_dir);
            let names = match names.is_empty() {
                true => certs::default_names(),
                false => names,
            };
            certs::init(&dir, &names).map(|made| {
                let first = &made.names[0];
                let host = match first.parse::<std::net::Ipv6Addr>() {
                    Ok(_) => format!("[{first}]"),
                    Err(_) => first.clone(),
                };
                println!(
                    "wrote {ca}: the cluster's CA (give it to workers and herdctl: --ca)\n\
                     wrote {cakey}: the CA's key (keep it here; `herd-master tls worker NAME` signs with it)\n\
                     wrote {cert} and {key}: this master's certificate, for {names}\n\n\
                     In /etc/herd/master.toml (or as flags):\n\
                     \x20 tls-cert = \"{cert}\"\n\
                     \x20 tls-key = \"{key}\"\n\
                     \x20 # tls-client-ca = \"{ca}\"   (then every worker needs `herd-master tls worker NAME`)\n\n\
                     On each worker (/etc/herd/worker.toml), and for herdctl:\n\
                     \x20 master = \"https://{host}:50051\"\n\
                     \x20 ca = \"{ca}\"",
                    ca = made.ca.display(),
                    cakey = made.ca.with_file_name(certs::CA_KEY).display(),
                    cert = made.cert.display(),
                    key = made.key.display(),
                    names = made.names.join(", "),
                );
            })
        }
        Tls::Worker { name, dir } => {
            let dir = dir.unwrap_or(default_dir);
            certs::worker(&dir, &name).map(|(cert, key)| {
                println!(
                    "wrote {cert} and {key}: worker {name}'s client certificate\n\n\
                     Copy both to the worker, with {ca}; in its /etc/herd/worker.toml:\n\
                     \x20 client-cert = \"{cert}\"\n\
                     \x20 client-key = \"{key}\"",
                    cert = cert.display(),
                    key = key.display(),
                    ca = dir.join(certs::CA_CERT).display(),
                );
            })
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herd-master: {err}");
            ExitCode::from(2)
        }
    }
}
