//! herd-master: parses its flags, sets up logging, the runtime and the signals, and runs
//! the master library (`herd_master::start`) until a signal or the REPL ends it.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info};

use herd::config::MasterConfig;
use herd::logging::LogOptions;
use herd_console::repl;

/// mimalloc instead of glibc's malloc: a task's way through the master is made of many
/// small allocations on two threads (the async workers and the store), and glibc's
/// arenas spent a sixth of the master's time on them at 8,000 placements a second.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "herd-master",
    version,
    about = "The herd master: cluster, liveness, scheduler"
)]
struct Cli {
    #[command(flatten)]
    config: MasterConfig,
    #[command(flatten)]
    log: LogOptions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    running.shutdown().await;
    Ok(())
}
