//! herd-worker: parses its flags, sets up logging, the runtime and the signals, and runs
//! the worker library: the agent (`herd_worker::run`), or in the hidden `supervise` mode
//! the supervisor of one task (`herd_worker::supervisor::main`).

use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::info;

use herd_worker::cli::{Cli, Mode};

fn main() -> ExitCode {
    // A task's supervisor (`herd-worker supervise FOLDER`, started by the agent) reads no
    // config file: everything it needs is in the task's folder.
    if std::env::args_os().nth(1).is_some_and(|a| a == "supervise")
        && let Some(Mode::Supervise { folder }) = Cli::parse().mode
    {
        return herd_worker::supervisor::main(folder);
    }
    let parsed = herd::config_file::parse::<Cli>("/etc/herd/worker.toml");
    if parsed.cli.file.print_config {
        print!("{}", parsed.render::<Cli>());
        return ExitCode::SUCCESS;
    }
    let cli = parsed.cli;
    if let Some(Mode::Supervise { folder }) = cli.mode {
        return herd_worker::supervisor::main(folder);
    }
    if let Err(err) = cli.log.init(std::io::stderr) {
        eprintln!("herd-worker: {err}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("herd-worker: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let ran = runtime.block_on(async {
        let stops = forward_signals()?;
        herd_worker::run(cli.config, stops).await
    });
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("herd-worker: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Each SIGTERM or SIGINT becomes one stop request for the agent.
fn forward_signals() -> anyhow::Result<mpsc::UnboundedReceiver<()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => info!("SIGINT received, stopping"),
                _ = term.recv() => info!("SIGTERM received, stopping"),
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
